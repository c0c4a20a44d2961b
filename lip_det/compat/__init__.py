"""
detectron2 compatibility fixes — the only place lip_det adapts detectron2 to its environment.

The package index only carries detectron2's v0.6 release code (``pb1-detectron2``), without its C++
extension, and that code predates NumPy 2, Pillow 10, setuptools 81 and Python 3.11. Each fix is
one module here, in the order :func:`apply` runs them:

- ``missing_c_extension`` (:mod:`.c_extension`): inactive on HEAD, whose ``_C`` is compiled;
- ``pil_image_linear`` (:mod:`.pil_linear`): inactive on HEAD (fixed in ff53992b);
- ``pkg_resources`` (:mod:`.pkg_resources_shim`): **HEAD needs it** with setuptools >= 81;
- ``numpy_aliases`` (:mod:`.numpy_aliases`): inactive on HEAD (fixed by 2023-06);
- ``env_report_with_stand_in`` (:mod:`.env_report`): inactive on HEAD (no ``_C`` stand-in);
- ``map_dataset_sample_from_set`` (:mod:`.map_dataset_sampling`): inactive on HEAD (400a49c1);
- ``ddp_device_ids_on_cpu`` (:mod:`.ddp_device_ids`): **HEAD needs it** (same code as v0.6);
- ``trainer_state`` (:mod:`.trainer_state`): inactive on HEAD (fixed in ac6774fe);
- ``export_without_caffe2`` (:mod:`.export_without_caffe2`): inactive on HEAD (fixed in d29378aa);
- ``local_process_group`` (:mod:`.local_process_group`): inactive on HEAD (fixed in 650c60ed).

Each module's docstring says the problem, the probe, what the fix changes and the upstream code
it stands for. Every probe detects the *problem* (a missing module, a missing attribute, a
removed name still used in a known detectron2 file), never a version string. ``python -m
lip_det.collect_env`` prints every fix, active or not, with its one-line reason.

``apply()`` runs once, when ``lip_det`` is imported, and must run before ``detectron2.layers`` is
first imported (``import lip_det`` before other detectron2 imports in your own scripts). Fixes that
concern one detectron2 module act only while that module is being imported (or right after), via
a small import hook (:mod:`._hooks`) that watches exactly those module names; nothing is patched
globally except the ``detectron2._C`` stand-in.

This package imports only the standard library at load time and nothing from lip_det (the tests
load it by file path against a fake detectron2), so keep it that way.
"""

import sys

from . import (
    c_extension,
    ddp_device_ids,
    env_report,
    export_without_caffe2,
    local_process_group,
    map_dataset_sampling,
    numpy_aliases,
    pil_linear,
    pkg_resources_shim,
    trainer_state,
)
from ._base import Fix, find_spec
from .c_extension import MissingCExtensionError, has_c_extension
from .local_process_group import create_local_process_group

__all__ = [
    "Fix",
    "MissingCExtensionError",
    "MISSING_DETECTRON2",
    "active_fixes",
    "applied_fixes",
    "apply",
    "create_local_process_group",
    "has_c_extension",
]

MISSING_DETECTRON2 = (
    "lip_det needs detectron2, which is not installed in this Python ({python}).\n"
    "Install it from the lip_det checkout with one of:\n"
    "    make install              # a project venv (.venv) with torch, detectron2 and lip_det\n"
    "    {python} tools/install_detectron2.py   # into this Python, from the package index\n"
    "    {python} -m pip install --no-build-isolation "
    "'git+https://github.com/facebookresearch/detectron2.git'   # upstream source"
)

# The order matters: env_report looks for c_extension's stand-in; the fixes that hook a module's
# import are registered before any probe imports part of detectron2 (local_process_group does).
FIX_MODULES = (
    c_extension,
    pil_linear,
    pkg_resources_shim,
    numpy_aliases,
    env_report,
    map_dataset_sampling,
    ddp_device_ids,
    trainer_state,
    export_without_caffe2,
    local_process_group,
)

_FIXES: list[Fix] = []
_applied = False


def apply():
    """Apply every fix whose problem is detected (idempotent); returns the :class:`Fix` records.

    Raises ImportError with install instructions when detectron2 is not installed.
    """
    global _applied
    if _applied:
        return list(_FIXES)
    if find_spec("detectron2") is None:
        raise ImportError(MISSING_DETECTRON2.format(python=sys.executable))
    fixes = []
    for module in FIX_MODULES:
        finding = module.probe()
        if finding.active:
            module.apply(finding)
        fixes.append(
            Fix(module.NAME, finding.active, finding.problem, finding.modules, module.UPSTREAM)
        )
    _FIXES[:] = fixes
    _applied = True
    return list(_FIXES)


def applied_fixes():
    """Every :class:`Fix` record, active or not (empty before :func:`apply`)."""
    return list(_FIXES)


def active_fixes():
    """The :class:`Fix` records of the fixes that are active in this process."""
    return [fix for fix in _FIXES if fix.active]
