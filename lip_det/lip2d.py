"""The LIP operator: a softmax-weighted mean over every pooling window.

    O = sum_window(exp(logit) * x) / sum_window(exp(logit))
      = avg_pool2d(x * exp(logit)) / avg_pool2d(exp(logit))

Zero padding cancels between numerator and denominator, so every output is a weighted mean over
the valid part of its window, and the output size is exactly ``avg_pool2d``'s.
"""

import torch
import torch.nn.functional as F

__all__ = ["lip2d", "lip2d_reference", "LIP_IMPLEMENTATIONS"]


def lip2d_reference(x, logit, kernel_size=3, stride=2, padding=1):
    """The paper's formula with two ``avg_pool2d`` calls (the authors' "primitive" version).

    The logits are shifted by their per-(sample, channel) maximum first. A constant shift inside
    a window leaves the result unchanged and keeps exp() from overflowing; logits whose range
    within one plane spans more than ~80 (float32) can still underflow a whole window to 0/0.
    """
    shift = logit.detach().amax(dim=(-2, -1), keepdim=True)
    importance = torch.exp(logit - shift)
    numerator = F.avg_pool2d(x * importance, kernel_size, stride, padding)
    denominator = F.avg_pool2d(importance, kernel_size, stride, padding)
    return numerator / denominator


# One dispatch point: name -> implementation. "auto" resolves per call (device, dtype).
LIP_IMPLEMENTATIONS = {"reference": lip2d_reference}


def _resolve(impl, x):
    if impl == "auto":
        return LIP_IMPLEMENTATIONS["reference"]
    try:
        return LIP_IMPLEMENTATIONS[impl]
    except KeyError:
        raise ValueError(
            f"lip2d impl={impl!r} is not valid; choose one of {['auto', *LIP_IMPLEMENTATIONS]}"
        ) from None


def lip2d(x, logit, kernel_size=3, stride=2, padding=1, impl="auto"):
    """Local importance-based pooling.

    Args:
        x (Tensor): input features, shape (N, C, H, W).
        logit (Tensor): importance logits, same shape as ``x``; importance = exp(logit).
        kernel_size, stride, padding (int or pair): window geometry, as for ``avg_pool2d``.
            LIP-ResNet uses 3, 2, 1, which gives ceil(H/2) x ceil(W/2).
        impl (str): "auto" or a key of ``LIP_IMPLEMENTATIONS``.

    Returns:
        Tensor of shape (N, C, H_out, W_out), the same as ``avg_pool2d(x, kernel_size, stride,
        padding)``.
    """
    if x.shape != logit.shape:
        raise ValueError(
            f"lip2d needs x and logit of the same shape, got {tuple(x.shape)} and "
            f"{tuple(logit.shape)}"
        )
    if x.dim() != 4:
        raise ValueError(f"lip2d needs 4-D (N, C, H, W) tensors, got shape {tuple(x.shape)}")
    return _resolve(impl, x)(x, logit, kernel_size, stride, padding)
