"""lip2d, the LIP operator, and the one place that picks its implementation.

LIP is a softmax-weighted mean over every pooling window:

    O = sum_window(exp(logit) * x) / sum_window(exp(logit))
      = avg_pool2d(x * exp(logit)) / avg_pool2d(exp(logit))

Zero padding cancels between numerator and denominator, so every output is a weighted mean over
the valid part of its window, and the output size is exactly ``avg_pool2d``'s.

Implementations (one dispatch point, :func:`lip2d`):

- ``"cpu"``: fused C++ kernels (``lip_det/csrc``), built by setup.py; the CPU default.
- ``"triton"``: fused Triton kernels for CUDA tensors; the GPU default.
- ``"aten"``: a custom autograd function of ATen ops; the fallback wherever neither is available.
- ``"reference"``: the paper's two-``avg_pool2d`` formula, autograd through every op (what the
  authors' code does); for tests and comparisons.

All but ``"reference"`` keep only (x, logit, output) for backward, accumulate float16/bfloat16 in
float32, and are overflow- and underflow-free for any logits.
"""

import torch
from torch.nn.modules.utils import _pair

from . import backend_cpu, backend_triton
from .backend_aten import lip2d_aten
from .backend_cpu import lip2d_cpu
from .backend_triton import lip2d_triton
from .reference import lip2d_reference

__all__ = ["LIP_IMPLEMENTATIONS", "available_implementations", "lip2d"]


_IMPLEMENTATIONS = {
    "cpu": lip2d_cpu,
    "triton": lip2d_triton,
    "aten": lip2d_aten,
    "reference": lip2d_reference,
}
LIP_IMPLEMENTATIONS = tuple(_IMPLEMENTATIONS)


def available_implementations(device="cpu"):
    """The implementations that can run on ``device`` here, best first."""
    device = torch.device(device)
    names = []
    if device.type == "cuda" and backend_triton.is_available():
        names.append("triton")
    if device.type == "cpu" and backend_cpu.is_available():
        names.append("cpu")
    names += ["aten", "reference"]
    if device.type == "cpu" and backend_triton.interpreting():  # TRITON_INTERPRET=1: tests only
        names.append("triton")
    return names


def _resolve(impl, x):
    if impl == "auto":
        impl = available_implementations(x.device)[0]
    elif impl not in LIP_IMPLEMENTATIONS:
        raise ValueError(
            f"lip2d impl={impl!r} is not valid; choose one of {['auto', *LIP_IMPLEMENTATIONS]}"
        )
    elif impl not in available_implementations(x.device):
        raise RuntimeError(
            f"lip2d impl={impl!r} cannot run on {x.device} here; available: "
            f"{available_implementations(x.device)} (see `python -m lip_det.collect_env`)"
        )
    return _IMPLEMENTATIONS[impl]


def lip2d(x, logit, kernel_size=3, stride=2, padding=1, impl="auto"):
    """Local importance-based pooling.

    Args:
        x (Tensor): input features, shape (N, C, H, W).
        logit (Tensor): importance logits, same shape as ``x``; importance = exp(logit).
        kernel_size, stride, padding (int or pair): window geometry, as for ``avg_pool2d``.
            LIP-ResNet uses 3, 2, 1, which gives ceil(H/2) x ceil(W/2).
        impl (str): "auto" (the fastest available for the tensor's device) or one of
            ``LIP_IMPLEMENTATIONS``.

    Returns:
        Tensor of shape (N, C, H_out, W_out), the same as ``avg_pool2d(x, kernel_size, stride,
        padding)``, in x's dtype. Logits of another dtype are not rounded to x's: both are
        computed in the wider of the two (float32 logits with bfloat16 x, as SoftGate gives
        under autocast).
    """
    if x.shape != logit.shape:
        raise ValueError(
            f"lip2d needs x and logit of the same shape, got {tuple(x.shape)} and "
            f"{tuple(logit.shape)}"
        )
    if x.dim() != 4:
        raise ValueError(f"lip2d needs 4-D (N, C, H, W) tensors, got shape {tuple(x.shape)}")
    (kh, kw), (sh, sw), (ph, pw) = _pair(kernel_size), _pair(stride), _pair(padding)
    if min(kh, kw, sh, sw) < 1 or min(ph, pw) < 0 or ph > kh // 2 or pw > kw // 2:
        raise ValueError(
            f"lip2d needs kernel_size >= 1, stride >= 1 and 0 <= padding <= kernel_size // 2, got "
            f"kernel_size={kernel_size}, stride={stride}, padding={padding}"
        )
    h, w = x.shape[-2:]
    if h + 2 * ph < kh or w + 2 * pw < kw:
        raise ValueError(
            f"lip2d input of size {h}x{w} is smaller than its {kh}x{kw} window (padding {ph}, {pw})"
        )
    pool = _resolve(impl, x)
    if logit.dtype != x.dtype:
        # Mixed dtypes come from autocast (bfloat16 features, float32 logits): rounding the
        # logits would put their rounding error on every weight exp(logit), so pool in the wider
        # dtype (the kernels accumulate in float32 anyway) and return x's, so that a model's
        # dtypes are those it would have without LIP.
        dtype = torch.promote_types(x.dtype, logit.dtype)
        out = pool(x.to(dtype), logit.to(dtype), (kh, kw), (sh, sw), (ph, pw))
        return out.to(x.dtype)
    return pool(x, logit, (kh, kw), (sh, sw), (ph, pw))
