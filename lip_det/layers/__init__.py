"""The LIP operator and its modules.

- ``dispatch``: :func:`lip2d`, the one place that picks an implementation;
- ``reference``: the formula in plain torch ops (tests, comparisons, exact degenerate windows);
- ``ops``: the registered operator ``torch.ops.lip_det.lip2d`` (and ``lip2d_backward``): kernels
  per device, fake kernels, autograd; what compiles, exports and traces;
- ``function``: what the memory-lean kernels share (closed-form gradient, dtype rules);
- ``backend_aten``, ``backend_cpu`` (C++ in ``csrc/``), ``backend_triton``: those kernels;
- ``fused``: ``torch.ops.lip_det.lip2d_norm_gate``, LIP with its head's InstanceNorm and
  SoftGate fused in (the training path: autograd keeps the head's conv output only);
- ``lip``: the :class:`LIP` module; ``logit_modules``: the networks that predict its logits;
- ``diagnostics``: :func:`self_test`, every implementation on a device against the reference
  (for collect_env).
"""

from .diagnostics import self_test
from .dispatch import LIP_IMPLEMENTATIONS, available_implementations, lip2d
from .flops import register_default_flop_handles
from .fused import lip2d_norm_gate
from .lip import LIP
from .logit_modules import (
    LOGIT_MODULES,
    STEM_LOGIT_MODULES,
    BottleneckTrunk,
    ConvLogit,
    SoftGate,
    build_logit_module,
)
from .ops import lip2d_decompositions
from .reference import (
    lip2d_reference,
    lip2d_window_slices,
    lip2d_window_softmax,
    lip2d_window_softmax_backward,
)

# every fvcore FlopCountAnalysis (detectron2's analyze_model included) counts lip2d
register_default_flop_handles()

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
    "lip2d_decompositions",
    "lip2d_norm_gate",
    "lip2d_reference",
    "lip2d_window_slices",
    "lip2d_window_softmax",
    "lip2d_window_softmax_backward",
    "self_test",
]
