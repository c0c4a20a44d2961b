"""Memory-lean lip2d: custom autograd functions that keep only (x, logit, output) for backward.

Both recompute the importance e = exp(logit - plane max) in backward instead of storing it, and
use the closed-form gradient of a weighted mean (w = e / window sum of e):

    dL/dx_i = e_i * SA_i,    dL/dlogit_i = e_i * (x_i * SA_i - SB_i)
    SA = scatter-pool(g / den),    SB = scatter-pool(g * out / den)

where den is the window sum of e and scatter-pool the transposed pooling (avg_pool2d_backward).
Windows whose den is tiny (all logits ~50+ below the plane maximum) are recomputed exactly with
their own maximum (``lip2d_window_softmax``), so no logit range overflows or underflows.
"""

import torch
import torch.nn.functional as F

__all__ = ["LeanLIP2d", "lip2d_aten", "lip2d_cpu", "cpu_extension_available"]

try:
    from lip_det import _C as _cpu_ext
except ImportError:  # built by setup.py; without it lip2d falls back to "aten"
    _cpu_ext = None


def cpu_extension_available():
    return _cpu_ext is not None


def _accumulation_dtype(dtype):
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _tiny(dtype):
    # below this window sum (of e <= 1) precision is no longer trusted: use the exact path
    return 1e-200 if dtype == torch.float64 else 1e-20


class LeanLIP2d(torch.autograd.Function):
    """lip2d as one autograd node that saves only (x, logit, out).

    ``kernels`` is a pair ``(forward(x, logit, k, s, p) -> out,
    backward(grad_out, x, logit, out, k, s, p) -> (grad_x, grad_logit))``: the ATen, C++ and
    Triton implementations differ only in those two functions.
    """

    @staticmethod
    def forward(ctx, kernels, x, logit, kernel_size, stride, padding):
        out = kernels[0](x, logit, kernel_size, stride, padding)
        ctx.kernels = kernels
        ctx.geometry = (kernel_size, stride, padding)
        ctx.save_for_backward(x, logit, out)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, logit, out = ctx.saved_tensors
        grad_x, grad_logit = ctx.kernels[1](grad_out, x, logit, out, *ctx.geometry)
        return None, grad_x, grad_logit, None, None, None


def _importance_and_den(logit, acc, kernel_size, stride, padding):
    logit = logit.to(acc)
    e = torch.exp(logit - logit.amax(dim=(-2, -1), keepdim=True))
    area = kernel_size[0] * kernel_size[1]
    den = F.avg_pool2d(e, kernel_size, stride, padding) * area  # window sums
    return e, den


def _exact(x, logit, acc, geometry):
    from .lip2d import lip2d_window_softmax

    return lip2d_window_softmax(x.to(acc), logit.to(acc), *geometry)


def _aten_forward(x, logit, kernel_size, stride, padding):
    acc = _accumulation_dtype(x.dtype)
    e, den = _importance_and_den(logit, acc, kernel_size, stride, padding)
    area = kernel_size[0] * kernel_size[1]
    out = F.avg_pool2d(e * x.to(acc), kernel_size, stride, padding) * area / den
    tiny = den < _tiny(acc)
    if tiny.any():
        out = torch.where(tiny, _exact(x, logit, acc, (kernel_size, stride, padding)), out)
    return out.to(x.dtype)


def _aten_backward(grad_out, x, logit, out, kernel_size, stride, padding):
    acc = _accumulation_dtype(x.dtype)
    e, den = _importance_and_den(logit, acc, kernel_size, stride, padding)
    tiny = den < _tiny(acc)
    g = grad_out.to(acc)
    area = kernel_size[0] * kernel_size[1]
    a = torch.where(tiny, 0.0, g / den) * area  # avg_pool2d_backward divides by the area
    b = a * out.to(acc)

    def scatter(t):
        return torch.ops.aten.avg_pool2d_backward(
            t, e, kernel_size, stride, padding, False, True, None
        )

    sa, sb = scatter(a), scatter(b)
    grad_x = e * sa
    grad_logit = e * (x.to(acc) * sa - sb)
    if tiny.any():  # the exact windows' share, by autograd through the window softmax
        with torch.enable_grad():
            xs = x.detach().to(acc).requires_grad_()
            ls = logit.detach().to(acc).requires_grad_()
            exact = _exact(xs, ls, acc, (kernel_size, stride, padding))
            gx, gl = torch.autograd.grad(exact, (xs, ls), torch.where(tiny, g, 0.0))
        grad_x, grad_logit = grad_x + gx, grad_logit + gl
    return grad_x.to(x.dtype), grad_logit.to(logit.dtype)


def lip2d_aten(x, logit, kernel_size, stride, padding):
    return LeanLIP2d.apply((_aten_forward, _aten_backward), x, logit, kernel_size, stride, padding)


def lip2d_cpu(x, logit, kernel_size, stride, padding):
    kernels = (_cpu_ext.lip2d_forward, _cpu_ext.lip2d_backward)
    return LeanLIP2d.apply(kernels, x, logit, kernel_size, stride, padding)
