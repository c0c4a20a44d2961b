"""
detectron2 compatibility fixes — the only place lip_det adapts detectron2 to its environment.

The package index only carries detectron2's v0.6 release code (``pb1-detectron2``), without its C++
extension, and that code predates NumPy 2, Pillow 10 and setuptools 81. Every fix below detects the
*problem* (a missing module, a missing attribute, a removed name still used in a detectron2 source
file), never a version string, so on upstream detectron2 built from source every check comes out
false and nothing is touched. ``python -m lip_det.collect_env`` prints which fixes are active.

``apply()`` runs once, when ``lip_det`` is imported, and must run before ``detectron2.layers`` is
first imported (``import lip_det`` before other detectron2 imports in your own scripts).
"""

import importlib
import importlib.util
import os
import re
import sys
import types
from dataclasses import dataclass

__all__ = ["Fix", "apply", "applied_fixes", "has_c_extension", "MissingCExtensionError"]

MISSING_DETECTRON2 = (
    "lip_det needs detectron2, which is not installed in this Python ({python}).\n"
    "Install it with `make install` in the lip_det checkout (uses the package index), or from "
    "upstream source:\n"
    "    pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'"
)


@dataclass
class Fix:
    name: str
    problem: str  # what was detected
    active: bool = False


_FIXES: list[Fix] = []
_applied = False


class MissingCExtensionError(AttributeError):
    """Raised when code reaches an op of detectron2's C++ extension in a pure-Python install.

    It subclasses AttributeError so that ``hasattr(detectron2._C, ...)`` keeps meaning "absent".
    """


class _MissingCExtension(types.ModuleType):
    """Stands in for ``detectron2._C`` so that importing detectron2 works; using an op fails."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        raise MissingCExtensionError(
            f"detectron2._C.{name} is not available: this detectron2 was installed without its C++ "
            "extension (the package-index v0.6 code). Deformable conv, rotated boxes and "
            "detectron2's fast COCOeval need detectron2 built from source: "
            "`make install DETECTRON2_SOURCE=/path/to/detectron2` (see README)."
        )


def has_c_extension() -> bool:
    """True when detectron2's compiled ``_C`` extension is importable (not our stand-in)."""
    mod = sys.modules.get("detectron2._C")
    if mod is not None:
        return not isinstance(mod, _MissingCExtension)
    return importlib.util.find_spec("detectron2._C") is not None


def _module_source(module_name):
    """Source text of a detectron2 module, read without importing it (or its parent packages,
    whose import may be what the fix has to prepare); "" if there is no such file."""
    spec = importlib.util.find_spec("detectron2")
    if spec is None or not spec.submodule_search_locations:
        return ""
    parts = module_name.split(".")[1:]
    for root in spec.submodule_search_locations:
        for candidate in (os.path.join(root, *parts) + ".py", os.path.join(root, *parts, "__init__.py")):
            if os.path.isfile(candidate):
                with open(candidate, encoding="utf-8") as f:
                    return f.read()
    return ""


def _fix_missing_c_extension():
    if has_c_extension():
        return None
    sys.modules["detectron2._C"] = _MissingCExtension("detectron2._C")
    import detectron2

    detectron2._C = sys.modules["detectron2._C"]
    return "detectron2._C missing: stand-in module installed (ops needing it raise a clear error)"


def _fix_pil_linear():
    # detectron2's ExtentTransform uses Image.LINEAR as a default argument, evaluated at import;
    # Pillow >= 10 removed that alias of BILINEAR. Provide it only while that module is imported.
    from PIL import Image

    module = "detectron2.data.transforms.transform"
    if hasattr(Image, "LINEAR") or "Image.LINEAR" not in _module_source(module):
        return None
    Image.LINEAR = Image.BILINEAR
    try:
        importlib.import_module(module)
    finally:
        del Image.LINEAR
    return f"PIL.Image.LINEAR missing but used by {module}: imported it with the alias in place"


def _fix_pkg_resources():
    # detectron2.model_zoo imports pkg_resources (dropped from setuptools >= 81) for one call,
    # resource_filename. Give that module a private shim instead of installing one globally.
    module = "detectron2.model_zoo.model_zoo"
    if importlib.util.find_spec("pkg_resources") is not None:
        return None
    if "import pkg_resources" not in _module_source(module):
        return None
    shim = types.ModuleType("pkg_resources")

    def resource_filename(package, resource):
        from importlib.resources import files

        return str(files(package).joinpath(resource))

    shim.resource_filename = resource_filename
    sys.modules["pkg_resources"] = shim
    try:
        importlib.import_module(module)
    finally:
        del sys.modules["pkg_resources"]
    return f"pkg_resources missing but imported by {module}: gave it a resource_filename shim"


# NumPy aliases removed in NumPy 1.24 (np.bool came back in 2.0 as the NumPy bool type).
_NUMPY_ALIASES = {"int": int, "float": float, "bool": bool}
_NUMPY_ALIAS_RE = re.compile(r"\bnp\.(int|float|bool)\b(?![_\d])")
# detectron2 modules known to use them; each is checked by its source, not by version.
_NUMPY_ALIAS_USERS = (
    "detectron2.data.build",
    "detectron2.structures.masks",
    "detectron2.utils.visualizer",
    "detectron2.evaluation.sem_seg_evaluation",
    "detectron2.evaluation.pascal_voc_evaluation",
)


class _NumpyWithAliases(types.ModuleType):
    """numpy, plus the removed builtin aliases — given only to detectron2 modules that use them."""

    def __init__(self, numpy, aliases):
        super().__init__("numpy")
        self._numpy = numpy
        self._aliases = aliases

    def __getattr__(self, name):
        if name in self._aliases:
            return self._aliases[name]
        return getattr(self._numpy, name)


def _fix_numpy_aliases():
    import numpy

    missing = {k: v for k, v in _NUMPY_ALIASES.items() if not hasattr(numpy, k)}
    if not missing:
        return None
    patched, used_names = [], set()
    for module_name in _NUMPY_ALIAS_USERS:
        used = set(_NUMPY_ALIAS_RE.findall(_module_source(module_name)))
        if not used & set(missing):
            continue
        module = importlib.import_module(module_name)
        if getattr(module, "np", None) is numpy:
            module.np = _NumpyWithAliases(numpy, missing)
            patched.append(module_name)
            used_names |= used & set(missing)
    if not patched:
        return None
    return f"np.{'/np.'.join(sorted(used_names))} removed from NumPy but used by: " + ", ".join(
        patched
    )


_FIX_FUNCTIONS = (
    ("missing_c_extension", _fix_missing_c_extension),
    ("pil_image_linear", _fix_pil_linear),
    ("pkg_resources", _fix_pkg_resources),
    ("numpy_aliases", _fix_numpy_aliases),
)


def apply():
    """Apply every fix whose problem is detected. Idempotent."""
    global _applied
    if _applied:
        return _FIXES
    if importlib.util.find_spec("detectron2") is None:
        raise ImportError(MISSING_DETECTRON2.format(python=sys.executable))
    for name, fn in _FIX_FUNCTIONS:
        problem = fn()
        _FIXES.append(Fix(name, problem or "not needed", active=problem is not None))
    _applied = True
    return _FIXES


def applied_fixes():
    """The list of :class:`Fix` records (call :func:`apply` first)."""
    return list(_FIXES)
