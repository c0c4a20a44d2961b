"""The ATen backend of lip2d: the lean forward/backward written with ATen ops, for any device.

Windows whose den is tiny (all logits ~50+ below the plane maximum) are recomputed exactly with
their own maximum (``lip2d_window_softmax`` and its closed-form gradient), so no logit range
overflows or underflows. These are plain functions on tensors: the kernels of the registered
operator on devices without a fused kernel, and wherever ``impl="aten"`` is asked for.
"""

import torch
import torch.nn.functional as F

from .function import accumulation_dtype, tiny_window_sum
from .reference import lip2d_window_softmax, lip2d_window_softmax_backward

__all__ = ["aten_backward", "aten_forward"]


def _importance_and_den(logit, acc, kernel_size, stride, padding):
    logit = logit.to(acc)
    e = torch.exp(logit - logit.amax(dim=(-2, -1), keepdim=True))
    area = kernel_size[0] * kernel_size[1]
    den = F.avg_pool2d(e, kernel_size, stride, padding) * area  # window sums
    return e, den


def aten_forward(x, logit, kernel_size, stride, padding):
    acc = accumulation_dtype(x.dtype)
    e, den = _importance_and_den(logit, acc, kernel_size, stride, padding)
    area = kernel_size[0] * kernel_size[1]
    out = F.avg_pool2d(e * x.to(acc), kernel_size, stride, padding) * area / den
    tiny = den < tiny_window_sum(acc)
    if tiny.any():
        exact = lip2d_window_softmax(x.to(acc), logit.to(acc), kernel_size, stride, padding)
        out = torch.where(tiny, exact, out)
    return out.to(x.dtype).contiguous()


def aten_backward(grad_out, x, logit, out, kernel_size, stride, padding):
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
    if tiny.any():  # the exact windows' share, by the window softmax's closed-form gradient
        gx, gl = lip2d_window_softmax_backward(
            torch.where(tiny, g, 0.0), x.to(acc), logit.to(acc), kernel_size, stride, padding
        )
        grad_x, grad_logit = grad_x + gx, grad_logit + gl
    return grad_x.to(x.dtype).contiguous(), grad_logit.to(logit.dtype).contiguous()
