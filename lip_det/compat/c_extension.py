"""missing_c_extension: a stand-in for ``detectron2._C`` when detectron2 has no C++ extension.

Problem: the package index's detectron2 (``pb1-detectron2``, the v0.6 release code) ships without
``layers/csrc``, so it installs without ``_C``; yet ``layers/deform_conv.py:11``,
``layers/rotated_boxes.py:4``, ``layers/roi_align_rotated.py:8`` and
``evaluation/fast_eval_api.py:8`` (v0.6) import ``_C`` at module level, so ``import
detectron2.layers`` fails and with it every model.

Probe (direct): ``importlib.util.find_spec("detectron2._C")`` is None and nothing is imported under
that name. A ``_C`` that is there but fails to import (built against another torch) is left to
fail with its own error.

Change: ``sys.modules["detectron2._C"]`` (and ``detectron2._C``) becomes :class:`StandIn`, a module
whose every op raises :class:`MissingCExtensionError` naming the op, so that detectron2 imports and
only the ops of the extension (rotated boxes, deformable conv, the C++ COCOeval) fail.

Upstream: no code change; HEAD's ``setup.py:40`` (``get_extensions``) compiles ``_C`` from
``layers/csrc`` in a source install, so on HEAD this fix is inactive.
"""

import importlib
import importlib.machinery
import sys
import types

from ._base import Finding, find_spec

__all__ = ["MissingCExtensionError", "StandIn", "has_c_extension", "stand_in_installed"]

NAME = "missing_c_extension"
UPSTREAM = "HEAD compiles _C in a source install (setup.py:40 get_extensions)"


class MissingCExtensionError(AttributeError):
    """Raised when code reaches an op of detectron2's C++ extension in a pure-Python install.

    It subclasses AttributeError so that ``hasattr(detectron2._C, ...)`` keeps meaning "absent".
    """


class StandIn(types.ModuleType):
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


def stand_in_installed():
    """True when ``detectron2._C`` is this fix's stand-in."""
    return isinstance(sys.modules.get("detectron2._C"), StandIn)


def has_c_extension() -> bool:
    """True when detectron2's compiled ``_C`` extension is present and imports (not the stand-in).

    Use it to choose code paths that need ``_C``, e.g. ``COCOEvaluator(use_fast_impl=...)``.
    """
    module = sys.modules.get("detectron2._C")
    if module is None:
        if find_spec("detectron2") is None or find_spec("detectron2._C") is None:
            return False
        try:
            import torch  # noqa: F401  (the extension links against libtorch)

            module = importlib.import_module("detectron2._C")
        except ImportError:
            return False
    return not isinstance(module, StandIn)


def probe():
    if "detectron2._C" in sys.modules or find_spec("detectron2._C") is not None:
        return Finding(False, "not needed: detectron2._C (the C++ extension) is there")
    return Finding(
        True, "detectron2._C missing (no C++ extension): stand-in whose ops raise an error"
    )


def apply(finding):
    stand_in = StandIn("detectron2._C", "Stand-in for detectron2's C++ extension.")
    stand_in.__spec__ = importlib.machinery.ModuleSpec(
        "detectron2._C", None, origin="stand-in from lip_det.compat"
    )
    sys.modules["detectron2._C"] = stand_in
    import detectron2

    detectron2._C = stand_in
