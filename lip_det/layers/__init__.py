"""The LIP operator and its modules.

- ``dispatch``: :func:`lip2d`, the one place that picks an implementation;
- ``reference``: the formula in plain torch ops (tests, comparisons, exact degenerate windows);
- ``function``: :class:`LeanLIP2d`, the autograd node of the memory-lean backends;
- ``backend_aten``, ``backend_cpu`` (C++ in ``csrc/``), ``backend_triton``: those backends;
- ``lip``: the :class:`LIP` module; ``logit_modules``: the networks that predict its logits.
"""

from .dispatch import LIP_IMPLEMENTATIONS, available_implementations, lip2d
from .lip import LIP
from .logit_modules import (
    LOGIT_MODULES,
    STEM_LOGIT_MODULES,
    BottleneckTrunk,
    ConvLogit,
    SoftGate,
    build_logit_module,
)
from .reference import lip2d_reference, lip2d_window_softmax

__all__ = [
    "LIP",
    "LIP_IMPLEMENTATIONS",
    "LOGIT_MODULES",
    "STEM_LOGIT_MODULES",
    "BottleneckTrunk",
    "ConvLogit",
    "SoftGate",
    "available_implementations",
    "build_logit_module",
    "lip2d",
    "lip2d_reference",
    "lip2d_window_softmax",
]
