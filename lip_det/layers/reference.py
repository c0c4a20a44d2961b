"""The LIP formula written with plain torch ops: the definition the fused backends are tested
against, the exact path for degenerate windows, and the decomposition used for export.

    O = sum_window(exp(logit) * x) / sum_window(exp(logit))
      = avg_pool2d(x * exp(logit)) / avg_pool2d(exp(logit))
"""

import torch
import torch.nn.functional as F
from torch.nn.modules.utils import _pair

from .function import accumulation_dtype, output_size

__all__ = [
    "lip2d_reference",
    "lip2d_window_slices",
    "lip2d_window_softmax",
    "lip2d_window_softmax_backward",
]


def lip2d_reference(x, logit, kernel_size=3, stride=2, padding=1):
    """The paper's formula with two ``avg_pool2d`` calls, differentiated by autograd.

    The logits are shifted by their per-(sample, channel) maximum first: a constant shift leaves
    the result unchanged and keeps exp() from overflowing (a window whose logits all lie ~88 below
    that maximum still underflows to 0/0 in float32).
    """
    shift = logit.detach().amax(dim=(-2, -1), keepdim=True)
    importance = torch.exp(logit - shift)
    numerator = F.avg_pool2d(x * importance, kernel_size, stride, padding)
    denominator = F.avg_pool2d(importance, kernel_size, stride, padding)
    return numerator / denominator


def _windows(x, logit, kernel_size, stride, padding):
    """(n, c, kh*kw, out_h, out_w) views of every window of x and logit (padded logits -inf)."""
    (kh, kw), (sh, sw), (ph, pw) = _pair(kernel_size), _pair(stride), _pair(padding)
    n, c, h, w = x.shape
    out_h, out_w = output_size(h, w, (kh, kw), (sh, sw), (ph, pw))
    # pad logits with -inf so padded cells get weight exactly 0
    logit = F.pad(logit, (pw, pw, ph, ph), value=float("-inf"))
    x = F.pad(x, (pw, pw, ph, ph))
    windows_l = F.unfold(logit, (kh, kw), stride=(sh, sw)).view(n, c, kh * kw, out_h, out_w)
    windows_x = F.unfold(x, (kh, kw), stride=(sh, sw)).view(n, c, kh * kw, out_h, out_w)
    return windows_x, windows_l


def lip2d_window_softmax(x, logit, kernel_size=3, stride=2, padding=1):
    """LIP as an explicit softmax over each window (``unfold``): exact for any logit range, but
    it materialises kh*kw copies of the input. The exact path for rare degenerate windows."""
    windows_x, windows_l = _windows(x, logit, kernel_size, stride, padding)
    return (torch.softmax(windows_l, dim=2) * windows_x).sum(dim=2)


def lip2d_window_softmax_backward(grad_out, x, logit, kernel_size=3, stride=2, padding=1):
    """(dL/dx, dL/dlogit) of :func:`lip2d_window_softmax`, in closed form (no autograd, so that
    it runs inside an operator's kernel): per window, d out / d x_j = w_j and
    d out / d logit_j = w_j (x_j - out); ``fold`` sums each cell's share over its windows."""
    (kh, kw), (sh, sw), (ph, pw) = _pair(kernel_size), _pair(stride), _pair(padding)
    n, c, h, w = x.shape
    windows_x, windows_l = _windows(x, logit, kernel_size, stride, padding)
    weights = torch.softmax(windows_l, dim=2)
    out = (weights * windows_x).sum(dim=2, keepdim=True)
    grad_windows_x = grad_out.unsqueeze(2) * weights
    grad_windows_l = grad_windows_x * (windows_x - out)

    def fold(t):
        t = F.fold(
            t.reshape(n, c * kh * kw, -1), (h + 2 * ph, w + 2 * pw), (kh, kw), stride=(sh, sw)
        )
        return t[..., ph : ph + h, pw : pw + w]

    return fold(grad_windows_x), fold(grad_windows_l)


def lip2d_window_slices(x, logit, kernel_size=3, stride=2, padding=1):
    """LIP in standard ops only (pad, strided slices, max-pool, exp, add, mul, div), each window
    shifted by its own maximum logit: exact and overflow- and underflow-free for any logits, with
    nothing bigger than the output per intermediate.

    This is what export formats without the ``lip_det::lip2d`` operator get (ONNX, through both
    exporters): ``O = sum_d exp(l_d - M) x_d / sum_d exp(l_d - M)`` over the kh*kw window
    offsets d, where ``l_d``, ``x_d`` are the strided slices of the padded logits (-inf) and
    inputs (0) at offset d and ``M = max_pool2d(logit)`` is each window's maximum. float16 and
    bfloat16 are computed in float32, as the kernels do.
    """
    (kh, kw), (sh, sw), (ph, pw) = _pair(kernel_size), _pair(stride), _pair(padding)
    acc = accumulation_dtype(torch.promote_types(x.dtype, logit.dtype))
    h, w = x.shape[-2:]
    out_h, out_w = output_size(h, w, (kh, kw), (sh, sw), (ph, pw))
    lp = F.pad(logit.to(acc), (pw, pw, ph, ph), value=float("-inf"))
    xp = F.pad(x.to(acc), (pw, pw, ph, ph))
    window_max = F.max_pool2d(lp, (kh, kw), (sh, sw))
    num = den = None
    for dy in range(kh):
        for dx in range(kw):
            rows = slice(dy, dy + sh * (out_h - 1) + 1, sh)
            cols = slice(dx, dx + sw * (out_w - 1) + 1, sw)
            e = torch.exp(lp[:, :, rows, cols] - window_max)
            ex = e * xp[:, :, rows, cols]
            num, den = (ex, e) if num is None else (num + ex, den + e)
    return (num / den).to(x.dtype)
