"""LIP with its logit head's InstanceNorm and SoftGate fused in: the training path of a LIP whose
logit module is a :class:`ConvLogit`.

``torch.ops.lip_det.lip2d_norm_gate(x, y, weight, bias, eps, coeff, kernel_size, stride,
padding, impl)`` is ``lip2d(x, coeff * sigmoid(instance_norm(y, weight, bias, eps)))``, y being
the head's conv output. Unfused, autograd keeps three input-sized tensors per LIP besides x: the
norm's input y, the sigmoid's output and the logits. Fused, it keeps only y (with x, the output
and the two affine vectors): the norm, the gate and the logits are recomputed from y in the
backward pass, which costs a few elementwise passes and one reduction per plane. Per LIP-R50-FPN
Faster R-CNN training step that is 220 MiB of the 462 MiB LIP added (2 x 512x672 images).

The default kernels are composed of ``torch.ops.lip_det.lip2d`` and ``lip2d_backward`` (any
device, any ``impl`` they take) and ATen ops, so the fused operator runs wherever lip2d does; it
has its fake kernel and autograd like lip2d, so it compiles. On CPU, with ``lip_det._C`` built and
``impl`` "auto" or "cpu", both operators run fused C++ kernels instead (``csrc/lip2d_cpu.cpp``):
one pass per (sample, channel) plane for the norm's statistics, then the logits into a buffer of
one plane and the pooling; the backward pass adds the gate's and the norm's backward to lip2d's
in two more passes per plane. The composite stays the kernel for ``impl="aten"`` and for the
dtype mix it cannot express (logits narrower than the pooling: float64 x with float32 y).
Tracing and export use the unfused modules (each LIP then appears as the conv,
``instance_norm``, the gate and ``lip_det::lip2d``, as fvcore and the ONNX exporters expect).
"""

import torch

from . import backend_cpu
from .function import accumulation_dtype, output_size

__all__ = ["lip2d_norm_gate", "lip2d_norm_gate_op"]

_SCHEMA = (
    "(Tensor x, Tensor y, Tensor weight, Tensor bias, float eps, float coeff, int[2] kernel_size, "
    "int[2] stride, int[2] padding, str impl='auto') -> Tensor"
)
_BACKWARD_SCHEMA = (
    "(Tensor grad_out, Tensor x, Tensor y, Tensor weight, Tensor bias, Tensor out, float eps, "
    "float coeff, int[2] kernel_size, int[2] stride, int[2] padding, str impl='auto') "
    "-> (Tensor, Tensor, Tensor, Tensor)"
)


def _dtypes(x, y):
    """(logit dtype, pooling dtype): the logits in float32 at least (as SoftGate keeps them under
    autocast), pooled in the wider of that and x's dtype."""
    logit_dtype = accumulation_dtype(y.dtype)
    return logit_dtype, torch.promote_types(x.dtype, logit_dtype)


def _normalized(y, eps, dtype):
    """(y - mean) * rstd per (sample, channel) plane, in ``dtype``, and rstd."""
    y = y.to(dtype)
    var, mean = torch.var_mean(y, dim=(-2, -1), correction=0, keepdim=True)
    rstd = torch.rsqrt(var + eps)
    return (y - mean) * rstd, rstd


def _affine(t, weight, bias):
    return t * weight.to(t.dtype)[:, None, None] + bias.to(t.dtype)[:, None, None]


def _gated(y, weight, bias, eps, coeff, dtype):
    y_hat, rstd = _normalized(y, eps, dtype)
    gate = torch.sigmoid(_affine(y_hat, weight, bias))
    return y_hat, rstd, gate


def _check(x, y, weight, bias):
    torch._check(
        x.shape == y.shape and x.dim() == 4,
        lambda: (
            f"lip_det::lip2d_norm_gate needs x and y of one 4-D shape, got "
            f"{tuple(x.shape)} and {tuple(y.shape)}"
        ),
    )
    torch._check(
        weight.shape == bias.shape == (x.shape[1],),
        lambda: "lip_det::lip2d_norm_gate needs a weight and a bias per channel",
    )


def _composite(x, y, weight, bias, eps, coeff, kernel_size, stride, padding, impl="auto"):
    logit_dtype, dtype = _dtypes(x, y)
    _, _, gate = _gated(y, weight, bias, eps, coeff, logit_dtype)
    logit = gate.mul_(coeff).to(dtype)
    out = torch.ops.lip_det.lip2d(x.to(dtype), logit, kernel_size, stride, padding, impl)
    return out.to(x.dtype)


def _composite_backward(grad_out, x, y, weight, bias, out, eps, coeff, kernel_size, stride,
                        padding, impl="auto"):  # fmt: skip
    logit_dtype, dtype = _dtypes(x, y)
    y_hat, rstd, gate = _gated(y, weight, bias, eps, coeff, logit_dtype)
    logit = (coeff * gate).to(dtype)
    grad_x, grad_logit = torch.ops.lip_det.lip2d_backward(
        grad_out.to(dtype), x.to(dtype), logit, out.to(dtype), kernel_size, stride, padding, impl
    )
    del logit
    # d logit / d z = coeff * gate * (1 - gate), z = weight * y_hat + bias
    grad_z = grad_logit.to(logit_dtype).mul_(gate).mul_(1 - gate).mul_(coeff)
    del gate, grad_logit
    grad_weight = (grad_z * y_hat).sum(dim=(0, 2, 3))
    grad_bias = grad_z.sum(dim=(0, 2, 3))
    # instance norm backward: rstd * (g - mean(g) - y_hat * mean(g * y_hat)), g = dL/dy_hat
    grad_y_hat = grad_z.mul_(weight.to(logit_dtype)[:, None, None])
    mean_g = grad_y_hat.mean(dim=(-2, -1), keepdim=True)
    mean_gy = (grad_y_hat * y_hat).mean(dim=(-2, -1), keepdim=True)
    grad_y = (grad_y_hat - mean_g - y_hat * mean_gy) * rstd
    return (
        grad_x.to(x.dtype).contiguous(),
        grad_y.to(y.dtype).contiguous(),
        grad_weight.to(weight.dtype),
        grad_bias.to(bias.dtype),
    )


@torch.library.custom_op("lip_det::lip2d_norm_gate", mutates_args=(), schema=_SCHEMA)
def lip2d_norm_gate_op(x, y, weight, bias, eps, coeff, kernel_size, stride, padding, impl="auto"):
    _check(x, y, weight, bias)
    return _composite(x, y, weight, bias, eps, coeff, kernel_size, stride, padding, impl)


@torch.library.custom_op(
    "lip_det::lip2d_norm_gate_backward", mutates_args=(), schema=_BACKWARD_SCHEMA
)
def lip2d_norm_gate_backward_op(grad_out, x, y, weight, bias, out, eps, coeff, kernel_size, stride,
                                padding, impl="auto"):  # fmt: skip
    _check(x, y, weight, bias)
    return _composite_backward(grad_out, x, y, weight, bias, out, eps, coeff, kernel_size, stride,
                               padding, impl)  # fmt: skip


def cpu_kernel_dtype(x, y, impl):
    """The dtype the C++ kernels run x and y in (they accumulate float16/bfloat16 in float32),
    or None where the composite runs: no ``lip_det._C``, ``impl`` not "auto"/"cpu", or logits
    computed in a narrower dtype than the pooling (float64 x, float32 y)."""
    if impl not in ("auto", "cpu") or not backend_cpu.is_available():
        return None
    logit_dtype, dtype = _dtypes(x, y)
    if logit_dtype != dtype:
        return None
    return x.dtype if x.dtype == y.dtype else dtype


@lip2d_norm_gate_op.register_kernel("cpu")
def _(x, y, weight, bias, eps, coeff, kernel_size, stride, padding, impl="auto"):
    _check(x, y, weight, bias)
    dtype = cpu_kernel_dtype(x, y, impl)
    if dtype is None:
        return _composite(x, y, weight, bias, eps, coeff, kernel_size, stride, padding, impl)
    acc = accumulation_dtype(dtype)
    out = backend_cpu.cpu_norm_gate_forward(x.to(dtype), y.to(dtype), weight.to(acc),
                                            bias.to(acc), eps, coeff, kernel_size, stride,
                                            padding)  # fmt: skip
    return out.to(x.dtype)


@lip2d_norm_gate_backward_op.register_kernel("cpu")
def _(grad_out, x, y, weight, bias, out, eps, coeff, kernel_size, stride, padding, impl="auto"):
    _check(x, y, weight, bias)
    dtype = cpu_kernel_dtype(x, y, impl)
    if dtype is None:
        return _composite_backward(grad_out, x, y, weight, bias, out, eps, coeff, kernel_size,
                                   stride, padding, impl)  # fmt: skip
    acc = accumulation_dtype(dtype)
    grad_x, grad_y, grad_weight, grad_bias = backend_cpu.cpu_norm_gate_backward(
        grad_out.to(dtype), x.to(dtype), y.to(dtype), weight.to(acc), bias.to(acc),
        out.to(dtype), eps, coeff, kernel_size, stride, padding
    )  # fmt: skip
    return (
        grad_x.to(x.dtype),
        grad_y.to(y.dtype),
        grad_weight.to(weight.dtype),
        grad_bias.to(bias.dtype),
    )


@lip2d_norm_gate_op.register_fake
def _(x, y, weight, bias, eps, coeff, kernel_size, stride, padding, impl="auto"):
    _check(x, y, weight, bias)
    n, c, h, w = x.shape
    out_h, out_w = output_size(h, w, tuple(kernel_size), tuple(stride), tuple(padding))
    return x.new_empty((n, c, out_h, out_w))


@lip2d_norm_gate_backward_op.register_fake
def _(grad_out, x, y, weight, bias, out, eps, coeff, kernel_size, stride, padding, impl="auto"):
    _check(x, y, weight, bias)
    return (
        x.new_empty(x.shape),
        y.new_empty(y.shape),
        torch.empty_like(weight),
        torch.empty_like(bias),
    )


def _setup_context(ctx, inputs, output):
    x, y, weight, bias, *arguments = inputs
    ctx.save_for_backward(x, y, weight, bias, output)
    ctx.arguments = arguments


def _backward(ctx, grad_out):
    x, y, weight, bias, out = ctx.saved_tensors
    eps, coeff, *geometry_impl = ctx.arguments
    grads = lip2d_norm_gate_backward_op(grad_out, x, y, weight, bias, out, eps, coeff,
                                        *geometry_impl)  # fmt: skip
    return (*grads, None, None, None, None, None, None)


lip2d_norm_gate_op.register_autograd(_backward, setup_context=_setup_context)


def lip2d_norm_gate(x, y, weight, bias, eps, coeff, kernel_size, stride, padding, impl="auto"):
    """``lip2d(x, coeff * sigmoid(instance_norm(y, weight, bias, eps)))`` keeping only y (not
    the normalised y, the gate and the logits) for backward. ``kernel_size``, ``stride``,
    ``padding``: pairs; ``impl``: as for :func:`lip_det.lip2d`, except "reference"."""
    return lip2d_norm_gate_op(x, y, weight, bias, float(eps), float(coeff), list(kernel_size),
                              list(stride), list(padding), impl)  # fmt: skip
