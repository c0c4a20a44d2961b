"""lip_det.compat: each detectron2 fix is active exactly when its problem exists here, the patched
detectron2 code works, and on an upstream-HEAD-like detectron2 no fix is active."""

import builtins
import glob
import importlib
import importlib.util
import json
import logging
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import lip_det  # noqa: F401  (applies the fixes)
from lip_det import compat

REPO = Path(__file__).resolve().parents[1]
FIX_NAMES = [
    "missing_c_extension",
    "pil_image_linear",
    "pkg_resources",
    "numpy_aliases",
    "env_report_with_stand_in",
    "map_dataset_sample_from_set",
    "ddp_device_ids_on_cpu",
    "trainer_state",
]


def _fix(name):
    (fix,) = [fix for fix in compat.applied_fixes() if fix.name == name]
    return fix


def _detectron2_file(*parts):
    import detectron2

    return os.path.join(os.path.dirname(detectron2.__file__), *parts)


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def test_apply_is_idempotent_and_reports_every_fix():
    before = compat.applied_fixes()
    hooks = {name: list(hooks) for name, hooks in compat._module_hooks.hooks.items()}
    assert compat.apply() == before
    assert compat._module_hooks.hooks == hooks  # no hook registered twice
    assert [fix.name for fix in before] == FIX_NAMES
    assert compat.active_fixes() == [fix for fix in before if fix.active]
    for fix in before:
        assert fix.problem and "\n" not in fix.problem


# ---- detectron2._C -------------------------------------------------------------------------------


def test_missing_c_extension_stand_in():
    compiled = glob.glob(_detectron2_file("_C*.so")) + glob.glob(_detectron2_file("_C*.pyd"))
    assert _fix("missing_c_extension").active == (not compiled)
    if compiled:
        assert compat.has_c_extension()
        pytest.skip("this detectron2 has its compiled _C; the stand-in is not used")

    import torch
    from detectron2 import _C
    from detectron2.layers import batched_nms
    from detectron2.layers.rotated_boxes import pairwise_iou_rotated

    assert not compat.has_c_extension()
    assert isinstance(_C, compat._MissingCExtension)
    # detectron2.layers imported (it imports _C at module level) and its torchvision-based ops work
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    keep = batched_nms(boxes, torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0, 0, 0]), 0.5)
    assert keep.tolist() == [0, 2]
    # an op of the extension fails clearly, naming the op
    rotated = torch.tensor([[5.0, 5.0, 10.0, 10.0, 0.0]])
    with pytest.raises(compat.MissingCExtensionError) as excinfo:
        pairwise_iou_rotated(rotated, rotated)
    message = str(excinfo.value)
    assert message.startswith("detectron2._C.box_iou_rotated is not available")
    assert "without its C++ extension" in message and "DETECTRON2_SOURCE" in message
    assert not hasattr(_C, "deform_conv_forward")  # still an AttributeError for hasattr()
    with pytest.raises(AttributeError):
        _C.__file__  # noqa: B018


def test_detectron2_env_report_with_stand_in():
    fix = _fix("env_report_with_stand_in")
    assert fix.active == _fix("missing_c_extension").active
    if not fix.active:
        pytest.skip("no _C stand-in")
    import detectron2
    from detectron2.engine.defaults import collect_env_info  # what default_setup logs

    stand_in = sys.modules["detectron2._C"]
    report = collect_env_info()
    (row,) = [line for line in report.splitlines() if line.startswith("detectron2._C")]
    assert "not built" in row  # detectron2's own words for a missing extension
    assert sys.modules["detectron2._C"] is stand_in and detectron2._C is stand_in  # restored


# ---- PIL.Image.LINEAR ----------------------------------------------------------------------------


def test_pil_linear_alias_only_while_importing():
    source = _read(_detectron2_file("data", "transforms", "transform.py"))
    problem = "Image.LINEAR" in source and not hasattr(Image, "LINEAR")
    fix = _fix("pil_image_linear")
    assert fix.active == problem
    if problem:
        assert fix.modules == ("detectron2.data.transforms.transform",)

    from detectron2.data.transforms import ExtentTransform

    assert not problem or not hasattr(Image, "LINEAR")  # not left behind globally
    transform = ExtentTransform(src_rect=(0, 0, 4, 4), output_size=(2, 2))
    assert transform.interp == Image.BILINEAR
    image = np.arange(16, dtype=np.uint8).reshape(4, 4)
    out = transform.apply_image(image)
    assert out.shape == (2, 2) and out.dtype == np.uint8
    assert out[0, 0] < out[0, 1] < out[1, 0] < out[1, 1]  # resampled, orientation kept


# ---- pkg_resources -------------------------------------------------------------------------------


def test_pkg_resources_shim_and_model_zoo_config_lookup():
    source = _read(_detectron2_file("model_zoo", "model_zoo.py"))
    problem = "import pkg_resources" in source and importlib.util.find_spec("pkg_resources") is None
    assert _fix("pkg_resources").active == problem

    import detectron2.model_zoo
    from detectron2.model_zoo import get_config_file, model_zoo

    if problem:  # a private shim, not a global pkg_resources module
        assert isinstance(model_zoo.pkg_resources, compat._PkgResourcesShim)
        assert sys.modules.get("pkg_resources") is not model_zoo.pkg_resources
        # the shim resolves package resources like pkg_resources.resource_filename
        shim = model_zoo.pkg_resources
        assert shim.resource_filename("lip_det", "compat/__init__.py") == compat.__file__
        with pytest.raises(AttributeError, match="only has resource_filename"):
            shim.get_distribution("detectron2")
    name = "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"
    path = os.path.join(os.path.dirname(detectron2.model_zoo.__file__), "configs", name)
    if os.path.exists(path):
        assert get_config_file(name) == path
    else:  # package-index detectron2 ships no configs: detectron2's own message
        with pytest.raises(RuntimeError, match=f"^{name} not available in Model Zoo!$"):
            get_config_file(name)


# ---- NumPy aliases -------------------------------------------------------------------------------


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_numpy_aliases_class_histogram_is_logged():
    problem = not hasattr(np, "int") and "np.int)" in _read(_detectron2_file("data", "build.py"))
    fix = _fix("numpy_aliases")
    assert fix.active == problem
    if problem:
        assert "detectron2.data.build" in fix.modules and "np.int" in fix.problem

    from detectron2.data.build import print_instances_class_histogram

    logger = logging.getLogger("detectron2.data.build")  # detectron2 logs under the caller's name
    records, level = _Records(), logger.level
    logger.addHandler(records)
    logger.setLevel(logging.INFO)
    try:
        dataset = [
            {"annotations": [{"category_id": 0}, {"category_id": 1}, {"category_id": 1}]},
            {"annotations": [{"category_id": 1}, {"category_id": 0, "iscrowd": 1}]},
        ]
        print_instances_class_histogram(dataset, ["lipcat", "lipdog"])
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)
    (message,) = [m for m in records.messages if "Distribution of instances" in m]
    assert "among all 2 categories" in message
    cells = [cell.strip() for line in message.splitlines() for cell in line.split("|")]
    assert cells[cells.index("lipcat") + 1] == "1"  # the crowd annotation is not counted
    assert cells[cells.index("lipdog") + 1] == "3"
    assert cells[cells.index("total") + 1] == "4"
    assert not problem or not hasattr(np, "int")  # numpy itself is not patched


def test_numpy_aliases_polygons_to_bitmask():
    from detectron2.structures.masks import polygons_to_bitmask

    empty = polygons_to_bitmask([], 4, 5)
    assert empty.shape == (4, 5) and empty.dtype == bool and not empty.any()
    square = polygons_to_bitmask([np.array([1.0, 1.0, 4.0, 1.0, 4.0, 3.0, 1.0, 3.0])], 5, 6)
    assert square.dtype == bool and square[2, 2] and not square[0, 0] and not square[4, 5]


def test_numpy_aliases_reach_every_listed_module():
    fix = _fix("numpy_aliases")
    if not fix.active:
        pytest.skip("NumPy still has the aliases, or detectron2 does not use them")
    with warnings.catch_warnings():  # NumPy 2 warns on np.str / np.object lookups
        warnings.simplefilter("ignore")
        removed = [
            a for a in ("int", "float", "str", "bool", "object", "complex") if not hasattr(np, a)
        ]
    checked = 0
    for name in fix.modules:
        try:
            module = importlib.import_module(name)
        except ImportError:  # e.g. an optional dependency of that module is missing
            continue
        for alias in removed:
            assert getattr(module.np, alias) is getattr(builtins, alias)
        assert module.np.zeros(2).sum() == 0  # everything else is numpy's
        checked += 1
    assert checked


# ---- detectron2 missing --------------------------------------------------------------------------


def test_import_without_detectron2_raises_one_clear_error():
    # sys.modules[name] = None is how Python marks a module as not importable
    code = "import sys; sys.modules['detectron2'] = None; import lip_det"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    expected = compat.MISSING_DETECTRON2.format(python=sys.executable)
    assert result.stderr.rstrip().endswith("ImportError: " + expected)
    assert result.stderr.count("Traceback") == 1 and "During handling" not in result.stderr
    assert "tools/install_detectron2.py" in expected and "make install" in expected


# ---- no-op on an upstream-HEAD-like detectron2 ---------------------------------------------------

# as in detectron2 (v0.6 and HEAD alike)
_COLLECT_ENV = """
    def collect_env_info():
        try:
            import detectron2._C as _C
        except ImportError:
            return "_C not built"
        return _C.get_compiler_version()
"""
_FAKE_TREES = {
    # sources as upstream HEAD has them: compiled _C, none of the removed names
    "head": {
        "_C.py": "def get_compiler_version():\n    return 'GCC 12'\n",
        "utils/collect_env.py": _COLLECT_ENV,
        "data/build.py": """
            import numpy as np

            def histogram(n):
                return np.zeros((n,), dtype=int)  # v0.6 had dtype=np.int here
        """,
        "data/transforms/transform.py": """
            from PIL import Image

            def interp(interp=Image.BILINEAR):
                return interp
        """,
        "model_zoo/model_zoo.py": """
            from importlib import resources

            def config_dir():
                return str(resources.files("detectron2.model_zoo").joinpath("configs"))
        """,
    },
    # the same, as the v0.6 release code has it
    "v0.6": {
        "data/build.py": """
            import numpy as np

            def histogram(n):
                return np.zeros((n,), dtype=np.int)
        """,
        "data/transforms/transform.py": """
            from PIL import Image

            def interp(interp=Image.LINEAR):
                return interp
        """,
        "model_zoo/model_zoo.py": """
            import pkg_resources

            def config_dir():
                return pkg_resources.resource_filename("detectron2.model_zoo", "configs")
        """,
        "utils/collect_env.py": _COLLECT_ENV,
    },
}

_PROBE = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("compat_under_test", sys.argv[1])
compat = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = compat
spec.loader.exec_module(compat)
fixes = compat.apply()
import numpy, detectron2
from detectron2.data import build
from detectron2.data.transforms import transform
from detectron2.model_zoo import model_zoo
from detectron2.utils.collect_env import collect_env_info
print(json.dumps({
    "env_report": collect_env_info(),
    "detectron2": detectron2.__file__,
    "active": [fix.name for fix in fixes if fix.active],
    "has_c_extension": compat.has_c_extension(),
    "hooks_installed": compat._module_hooks in sys.meta_path,
    "histogram": build.histogram(3).tolist(),
    "numpy_is_plain": build.np is numpy,
    "interp": int(transform.interp()),
    "config_dir": model_zoo.config_dir(),
}))
"""


def _make_fake_detectron2(root, files):
    package = root / "detectron2"
    for name in ("", "data", "data/transforms", "model_zoo", "utils"):
        (package / name).mkdir(parents=True, exist_ok=True)
        (package / name / "__init__.py").write_text("")
    (package / "__init__.py").write_text('__version__ = "0.0+fake"\n')
    for name, text in files.items():
        (package / name).write_text(textwrap.dedent(text))
    return package


@pytest.mark.parametrize("tree", ["head", "v0.6"])
def test_fixes_follow_the_sources_not_the_version(tmp_path, tree):
    package = _make_fake_detectron2(tmp_path, _FAKE_TREES[tree])
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    )
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, compat.__file__],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    probe = json.loads(result.stdout.splitlines()[-1])
    assert probe["detectron2"] == str(package / "__init__.py")
    assert probe["histogram"] == [0, 0, 0]
    assert probe["interp"] == int(Image.BILINEAR)
    assert probe["config_dir"] == str(package / "model_zoo" / "configs")
    if tree == "head":
        assert probe["active"] == []
        assert probe["has_c_extension"] and not probe["hooks_installed"]
        assert probe["numpy_is_plain"]
        assert probe["env_report"] == "GCC 12"
    else:
        expected = ["missing_c_extension"]
        expected += ["pil_image_linear"] if not hasattr(Image, "LINEAR") else []
        expected += ["pkg_resources"] if importlib.util.find_spec("pkg_resources") is None else []
        expected += ["numpy_aliases"] if not hasattr(np, "int") else []
        expected += ["env_report_with_stand_in"]
        assert probe["active"] == expected
        assert probe["env_report"] == "_C not built"
        assert not probe["has_c_extension"]
