"""lip2d as a registered PyTorch operator: ``torch.ops.lip_det.lip2d`` and its backward.

Registered with ``torch.library`` the way torchvision registers ``roi_align``, so that
torch.compile (no graph break), torch.export, FakeTensor/meta shape propagation, TorchScript
tracing and fvcore (a ``lip_det::lip2d`` node) all see one operator::

    lip_det::lip2d(Tensor x, Tensor logit, int[2] kernel_size, int[2] stride, int[2] padding,
                   str impl="auto") -> Tensor
    lip_det::lip2d_backward(Tensor grad_out, Tensor x, Tensor logit, Tensor out,
                            int[2] kernel_size, int[2] stride, int[2] padding,
                            str impl="auto") -> (Tensor grad_x, Tensor grad_logit)

Kernels, per device and ``impl`` ("auto" picks per device when the kernel runs, so an exported
graph keeps "auto" and runs on whatever device it is given):

- CPU: the fused C++ kernels of ``lip_det._C`` ("auto", "cpu"); the ATen kernels ("aten", or
  "auto" without the extension); the Triton kernels for ``impl="triton"`` (under
  TRITON_INTERPRET=1, the tests' way of running them without a GPU);
- CUDA: the Triton kernels ("auto", "triton"), launched through :func:`backend_triton.run`: if
  Triton fails, one warning and the ATen kernels from then on; ATen for float64 (Triton
  accumulates in float32) and ``impl="aten"``;
- every other device: the ATen kernels.

The fake (meta) kernels give the output shape of ``avg_pool2d``; autograd saves only
(x, logit, out) and calls ``lip2d_backward``, so the lean memory profile holds through every
route. x and logit must have one shape and one dtype (:func:`lip_det.lip2d` promotes mixed
dtypes first); the outputs are contiguous.
"""

import torch

from . import backend_cpu, backend_triton
from .backend_aten import aten_backward, aten_forward
from .function import output_size
from .reference import lip2d_window_slices

__all__ = ["OP_IMPLS", "lip2d_decompositions", "lip2d_op", "lip2d_backward_op"]

OP_IMPLS = ("auto", "cpu", "triton", "aten")  # the implementations the operator's kernels know

_SCHEMA = (
    "(Tensor x, Tensor logit, int[2] kernel_size, int[2] stride, int[2] padding, "
    "str impl='auto') -> Tensor"
)
_BACKWARD_SCHEMA = (
    "(Tensor grad_out, Tensor x, Tensor logit, Tensor out, int[2] kernel_size, int[2] stride, "
    "int[2] padding, str impl='auto') -> (Tensor, Tensor)"
)


def _check(x, logit, impl):
    torch._check(
        x.shape == logit.shape and x.dim() == 4,
        lambda: (
            f"lip_det::lip2d needs x and logit of one 4-D shape, got {tuple(x.shape)} and "
            f"{tuple(logit.shape)}"
        ),
    )
    torch._check(
        x.dtype == logit.dtype,
        lambda: f"lip_det::lip2d needs x and logit of one dtype, got {x.dtype} and {logit.dtype}",
    )
    torch._check(
        impl in OP_IMPLS, lambda: f"lip_det::lip2d impl={impl!r}: choose one of {OP_IMPLS}"
    )


def _geometry(kernel_size, stride, padding):
    return tuple(kernel_size), tuple(stride), tuple(padding)


# ---- the kernels --------------------------------------------------------------------------------


def _cpu_kernels(impl):
    if impl == "triton":  # TRITON_INTERPRET=1 only; elsewhere the launch fails and falls back
        return backend_triton.triton_forward, backend_triton.triton_backward
    if impl == "aten" or not backend_cpu.is_available():
        return aten_forward, aten_backward
    return backend_cpu.cpu_forward, backend_cpu.cpu_backward


def _run(fused, fallback, args, dtype):
    """A Triton kernel with the ATen fallback (float64: ATen, as Triton accumulates in float32)."""
    if dtype != torch.float64:
        result = backend_triton.run(fused, *args)
        if result is not None:
            return result
    return fallback(*args)


@torch.library.custom_op("lip_det::lip2d", mutates_args=(), schema=_SCHEMA)
def lip2d_op(x, logit, kernel_size, stride, padding, impl="auto"):
    _check(x, logit, impl)
    return aten_forward(x, logit, *_geometry(kernel_size, stride, padding))


@torch.library.custom_op("lip_det::lip2d_backward", mutates_args=(), schema=_BACKWARD_SCHEMA)
def lip2d_backward_op(grad_out, x, logit, out, kernel_size, stride, padding, impl="auto"):
    _check(x, logit, impl)
    return aten_backward(grad_out, x, logit, out, *_geometry(kernel_size, stride, padding))


@lip2d_op.register_kernel("cpu")
def _(x, logit, kernel_size, stride, padding, impl="auto"):
    _check(x, logit, impl)
    geometry = _geometry(kernel_size, stride, padding)
    forward, _ = _cpu_kernels(impl)
    if impl == "triton":
        return _run(forward, aten_forward, (x, logit, *geometry), x.dtype)
    return forward(x, logit, *geometry)


@lip2d_backward_op.register_kernel("cpu")
def _(grad_out, x, logit, out, kernel_size, stride, padding, impl="auto"):
    _check(x, logit, impl)
    geometry = _geometry(kernel_size, stride, padding)
    _, backward = _cpu_kernels(impl)
    args = (grad_out, x, logit, out, *geometry)
    if impl == "triton":
        return _run(backward, aten_backward, args, x.dtype)
    return backward(*args)


@lip2d_op.register_kernel("cuda")
def _(x, logit, kernel_size, stride, padding, impl="auto"):
    _check(x, logit, impl)
    torch._check(impl != "cpu", lambda: "lip_det::lip2d impl='cpu' needs CPU tensors")
    args = (x, logit, *_geometry(kernel_size, stride, padding))
    if impl == "aten":
        return aten_forward(*args)
    return _run(backend_triton.triton_forward, aten_forward, args, x.dtype)


@lip2d_backward_op.register_kernel("cuda")
def _(grad_out, x, logit, out, kernel_size, stride, padding, impl="auto"):
    _check(x, logit, impl)
    torch._check(impl != "cpu", lambda: "lip_det::lip2d impl='cpu' needs CPU tensors")
    args = (grad_out, x, logit, out, *_geometry(kernel_size, stride, padding))
    if impl == "aten":
        return aten_backward(*args)
    return _run(backend_triton.triton_backward, aten_backward, args, x.dtype)


# ---- fake (meta) kernels and autograd -----------------------------------------------------------


@lip2d_op.register_fake
def _(x, logit, kernel_size, stride, padding, impl="auto"):
    _check(x, logit, impl)
    n, c, h, w = x.shape
    out_h, out_w = output_size(h, w, *_geometry(kernel_size, stride, padding))
    return x.new_empty((n, c, out_h, out_w))


@lip2d_backward_op.register_fake
def _(grad_out, x, logit, out, kernel_size, stride, padding, impl="auto"):
    _check(x, logit, impl)
    return x.new_empty(x.shape), logit.new_empty(logit.shape)


def _setup_context(ctx, inputs, output):
    x, logit, kernel_size, stride, padding, impl = inputs
    ctx.save_for_backward(x, logit, output)
    ctx.arguments = (kernel_size, stride, padding, impl)


def _backward(ctx, grad_out):
    x, logit, out = ctx.saved_tensors
    grad_x, grad_logit = lip2d_backward_op(grad_out, x, logit, out, *ctx.arguments)
    return grad_x, grad_logit, None, None, None, None


lip2d_op.register_autograd(_backward, setup_context=_setup_context)


# ---- export -------------------------------------------------------------------------------------


def _decomposed(x, logit, kernel_size, stride, padding, impl="auto"):
    return lip2d_window_slices(x, logit, kernel_size, stride, padding)


def lip2d_decompositions():
    """``{torch.ops.lip_det.lip2d.default: decomposition}`` for
    ``ExportedProgram.run_decompositions``: lip2d rewritten in standard ops
    (:func:`lip2d_window_slices`), for consumers without the operator, e.g.
    ``torch.onnx.export(ep.run_decompositions(lip2d_decompositions()), ...)``. (Exporting a
    model to ONNX directly needs none of this: under ONNX export :func:`lip_det.lip2d` emits those
    ops itself.)"""
    return {torch.ops.lip_det.lip2d.default: _decomposed}
