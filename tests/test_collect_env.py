"""`python -m lip_det.collect_env` names versions, where detectron2 comes from, and the fixes."""

import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import detectron2
import pytest
import torch
import torchvision

import lip_det
from lip_det import compat

REPO = Path(__file__).resolve().parents[1]


def _report():
    result = subprocess.run(
        [sys.executable, "-m", "lip_det.collect_env"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    table, fixes = result.stdout.split("\n\n", 1)
    rows = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in table.splitlines())
    return rows, fixes


def test_collect_env_names_versions_and_active_fixes():
    rows, fixes = _report()

    assert rows["Python"] == f"{sys.version.split()[0]} @ {sys.executable}"
    assert rows["torch"].startswith(f"{torch.__version__} @ ")
    assert rows["CUDA available"].startswith(str(torch.cuda.is_available()))
    assert rows["torchvision"].startswith(f"{torchvision.__version__} @ ")
    d2_dir = os.path.dirname(detectron2.__file__)
    assert rows["detectron2"].startswith(f"{detectron2.__version__} @ {d2_dir}")
    if compat.has_c_extension():
        assert rows["detectron2._C"].startswith("compiled @ ")
    else:
        assert rows["detectron2._C"].startswith("missing")
    for label, dist in [("fvcore", "fvcore"), ("pycocotools", "pycocotools")]:
        assert rows[label].startswith(importlib.metadata.version(dist) + " @ ")
    try:
        fast = importlib.metadata.version("faster-coco-eval")
    except importlib.metadata.PackageNotFoundError:
        assert "faster-coco-eval" not in rows
    else:
        assert rows["faster-coco-eval"].startswith(fast + " @ ")
    assert rows["lip_det"] == f"{lip_det.__version__} @ {os.path.dirname(lip_det.__file__)}"
    spec = importlib.util.find_spec("lip_det._C")  # lip_det's optional compiled kernels
    assert rows["lip_det._C"] == (f"compiled @ {spec.origin}" if spec else "not built")

    # the fixes: the same as in this process (same environment), each with its one-line problem
    lines = fixes.strip().splitlines()
    active = compat.active_fixes()
    assert lines[0] == f"detectron2 compatibility fixes (lip_det.compat): {len(active)} active"
    reported = [line.split(maxsplit=2) for line in lines[1:]]
    assert [(state, name) for state, name, _ in reported] == [
        ("active" if fix.active else "inactive", fix.name) for fix in compat.applied_fixes()
    ]
    for (_, _, problem), fix in zip(reported, compat.applied_fixes()):
        assert problem == fix.problem
    # an inactive fix says why it is not needed; the two that upstream HEAD needs too say so
    for _, name, problem in reported:
        assert problem != "not needed"
        if name in ("pkg_resources", "ddp_device_ids_on_cpu"):
            assert "HEAD" in problem, problem


def test_self_test_rows_check_every_implementation_on_the_device():
    """On CUDA collect_env adds these rows for "cuda"; here they are made for the CPU."""
    from lip_det.collect_env import _self_test_rows
    from lip_det.layers import available_implementations

    rows = dict(_self_test_rows("cpu"))
    expected = [i for i in available_implementations("cpu") if i not in ("reference", "triton")]
    assert list(rows) == [f"lip2d self-test {impl} (cpu)" for impl in expected]
    assert all(status.startswith("ok (worst error ") for status in rows.values()), rows


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_collect_env_self_tests_cuda():
    rows, _ = _report()
    tested = [key for key in rows if key.startswith("lip2d self-test ")]
    assert tested and all(rows[key].startswith("ok") for key in tested), rows
