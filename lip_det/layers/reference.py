"""The LIP formula written with plain torch ops, differentiated by autograd: the definition the
fused backends are tested against, and the exact path for degenerate windows.

    O = sum_window(exp(logit) * x) / sum_window(exp(logit))
      = avg_pool2d(x * exp(logit)) / avg_pool2d(exp(logit))
"""

import torch
import torch.nn.functional as F
from torch.nn.modules.utils import _pair

__all__ = ["lip2d_reference", "lip2d_window_softmax"]


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


def lip2d_window_softmax(x, logit, kernel_size=3, stride=2, padding=1):
    """LIP as an explicit softmax over each window (``unfold``): exact for any logit range, but
    it materialises kh*kw copies of the input. The exact path for rare degenerate windows."""
    (kh, kw), (sh, sw), (ph, pw) = _pair(kernel_size), _pair(stride), _pair(padding)
    n, c, h, w = x.shape
    out_h, out_w = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    # pad logits with -inf so padded cells get weight exactly 0
    logit = F.pad(logit, (pw, pw, ph, ph), value=float("-inf"))
    x = F.pad(x, (pw, pw, ph, ph))
    windows_l = F.unfold(logit, (kh, kw), stride=(sh, sw)).view(n, c, kh * kw, out_h, out_w)
    windows_x = F.unfold(x, (kh, kw), stride=(sh, sw)).view(n, c, kh * kw, out_h, out_w)
    return (torch.softmax(windows_l, dim=2) * windows_x).sum(dim=2)
