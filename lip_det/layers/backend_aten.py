"""The ATen backend of lip2d: the lean forward/backward written with ATen ops, for any device.

Windows whose den is tiny (all logits ~50+ below the plane maximum) are recomputed exactly with
their own maximum (``lip2d_window_softmax``), so no logit range overflows or underflows.
"""

import torch
import torch.nn.functional as F

from .function import LeanLIP2d, accumulation_dtype, tiny_window_sum
from .reference import lip2d_window_softmax

__all__ = ["lip2d_aten"]


def _importance_and_den(logit, acc, kernel_size, stride, padding):
    logit = logit.to(acc)
    e = torch.exp(logit - logit.amax(dim=(-2, -1), keepdim=True))
    area = kernel_size[0] * kernel_size[1]
    den = F.avg_pool2d(e, kernel_size, stride, padding) * area  # window sums
    return e, den


def _exact(x, logit, acc, geometry):
    return lip2d_window_softmax(x.to(acc), logit.to(acc), *geometry)


def _aten_forward(x, logit, kernel_size, stride, padding):
    acc = accumulation_dtype(x.dtype)
    e, den = _importance_and_den(logit, acc, kernel_size, stride, padding)
    area = kernel_size[0] * kernel_size[1]
    out = F.avg_pool2d(e * x.to(acc), kernel_size, stride, padding) * area / den
    tiny = den < tiny_window_sum(acc)
    if tiny.any():
        out = torch.where(tiny, _exact(x, logit, acc, (kernel_size, stride, padding)), out)
    return out.to(x.dtype)


def _aten_backward(grad_out, x, logit, out, kernel_size, stride, padding):
    acc = accumulation_dtype(x.dtype)
    e, den = _importance_and_den(logit, acc, kernel_size, stride, padding)
    tiny = den < tiny_window_sum(acc)
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
