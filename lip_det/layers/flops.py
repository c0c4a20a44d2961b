"""FLOP counting of LIP models with fvcore.

fvcore's ``FlopCountAnalysis`` traces a model with ``torch.jit``. lip2d's memory-lean
implementations ("cpu", "triton", "aten") appear in that trace as one node that fvcore cannot see
into: a ``lip_det::lip2d`` node where lip2d is the registered operator ``torch.ops.lip_det.lip2d``,
a ``prim::PythonOp.LeanLIP2d`` node where it is the custom autograd Function ``LeanLIP2d``.
Without a handle fvcore skips it and reports it as an unsupported op. :func:`lip2d_flop_jit`
counts either as

    2 * kh * kw FLOPs per output element:
    kh * kw multiply-adds for the window sum of x * exp(logit) (one fused multiply-add = one flop,
    as fvcore counts a kh x kw depthwise convolution), and kh * kw adds for the window sum of
    exp(logit).

The exp and the division are elementwise and, as fvcore does for every elementwise op, not
counted. The window size is read from each node, so LIPs of different kernel sizes in one model
are each counted with their own. lip2d's "reference" implementation is plain ATen ops
(avg_pool2d, exp, mul, div), all of which fvcore skips.

``import lip_det`` adds the handle to fvcore's default handles
(:func:`register_default_flop_handles`), so every ``FlopCountAnalysis`` counts lip2d: fvcore's,
and detectron2's ``detectron2.utils.analysis.FlopCountAnalysis`` that its
``tools/analyze_model.py --tasks flop`` runs. On an fvcore without that table, add them to each
analysis::

    from fvcore.nn import FlopCountAnalysis
    from lip_det.layers.flops import add_lip_flop_handles

    flops = add_lip_flop_handles(FlopCountAnalysis(model, inputs))
    flops.total(), flops.by_operator()  # lip2d's FLOPs under the key that ends in "lip2d"
"""

import importlib
import math

from fvcore.nn.jit_handles import get_shape
from torch.nn.modules.utils import _pair

__all__ = [
    "LIP2D_OP_NAMES",
    "add_lip_flop_handles",
    "lip2d_flop_jit",
    "lip_flop_handles",
    "register_default_flop_handles",
]

# The traced node of lip2d's memory-lean implementations: lip2d as the registered operator, and
# as the custom autograd Function LeanLIP2d.
LIP2D_OP_NAMES = ("lip_det::lip2d", "prim::PythonOp.LeanLIP2d")


def _kernel_size(node):
    if node.kind() == "prim::PythonOp":
        # LeanLIP2d.apply(kernels, x, logit, kernel_size, stride, padding): the non-tensor
        # arguments, in order, are kernels, kernel_size, stride, padding
        return node.scalar_args()[1]
    # lip_det::lip2d(x, logit, kernel_size, stride, padding, impl): kernel_size is a constant,
    # or, as traced, a prim::ListConstruct of constants
    value = node.inputsAt(2)
    constant = value.toIValue()
    if constant is None and value.node().kind() == "prim::ListConstruct":
        constant = [v.toIValue() for v in value.node().inputs()]
    if constant is None or None in _pair(constant):
        raise ValueError(f"lip2d FLOP count: the kernel size of {node} is not a constant")
    return constant


def lip2d_flop_jit(inputs, outputs):
    """fvcore op handle of a traced lip2d node: 2 * kh * kw per output element (module docstring).

    Args:
        inputs, outputs (list[torch._C.Value]): the node's inputs and outputs, as fvcore passes
            them.
    """
    kh, kw = _pair(_kernel_size(outputs[0].node()))
    return 2 * kh * kw * math.prod(get_shape(outputs[0]))


def lip_flop_handles():
    """``{op name: handle}`` for fvcore: ``FlopCountAnalysis(...).set_op_handle(**handles)``."""
    return dict.fromkeys(LIP2D_OP_NAMES, lip2d_flop_jit)


def add_lip_flop_handles(flop_count_analysis):
    """Register :func:`lip_flop_handles` on an fvcore ``FlopCountAnalysis``; returns it."""
    return flop_count_analysis.set_op_handle(**lip_flop_handles())


def register_default_flop_handles():
    """Add :func:`lip_flop_handles` to fvcore's default op handles (``_DEFAULT_SUPPORTED_OPS``,
    which every ``FlopCountAnalysis`` starts from), leaving a handle someone registered for the
    same name alone. Returns whether fvcore has that table."""
    # the module: fvcore.nn's attribute flop_count is the function of that name
    flop_count = importlib.import_module("fvcore.nn.flop_count")
    defaults = getattr(flop_count, "_DEFAULT_SUPPORTED_OPS", None)
    if not isinstance(defaults, dict):
        return False
    for name, handle in lip_flop_handles().items():
        defaults.setdefault(name, handle)
    return True
