"""lip2d, the LIP operator, and the one place that picks its implementation.

LIP is a softmax-weighted mean over every pooling window:

    O = sum_window(exp(logit) * x) / sum_window(exp(logit))
      = avg_pool2d(x * exp(logit)) / avg_pool2d(exp(logit))

Zero padding cancels between numerator and denominator, so every output is a weighted mean over
the valid part of its window, and the output size is exactly ``avg_pool2d``'s.

Implementations (one dispatch point, :func:`lip2d`):

- ``"cpu"``: fused C++ kernels (``lip_det/layers/csrc``), built by setup.py; the CPU default.
- ``"triton"``: fused Triton kernels for CUDA tensors; the GPU default (ATen if they fail).
- ``"aten"``: the lean forward and backward in ATen ops; wherever neither is available.
- ``"reference"``: the paper's two-``avg_pool2d`` formula, autograd through every op (what the
  authors' code does); for tests and comparisons.

The first three are the kernels of one registered operator, ``torch.ops.lip_det.lip2d``
(:mod:`lip_det.layers.ops`): they keep only (x, logit, output) for backward, accumulate
float16/bfloat16 in float32, are overflow- and underflow-free for any logits, and compile,
export and trace as one op. Under ONNX export (either exporter) lip2d is written in standard ONNX
ops instead (:func:`lip2d_window_slices`, each window shifted by its own maximum).
"""

import torch
from torch.nn.modules.utils import _pair

from . import backend_cpu, backend_triton
from .ops import lip2d_op
from .reference import lip2d_reference, lip2d_window_slices

__all__ = ["LIP_IMPLEMENTATIONS", "available_implementations", "check_arguments", "lip2d"]

LIP_IMPLEMENTATIONS = ("cpu", "triton", "aten", "reference")


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


def _check_impl(impl, x):
    if impl == "auto":  # the operator picks per device when it runs (so exports stay portable)
        return
    if impl not in LIP_IMPLEMENTATIONS:
        raise ValueError(
            f"lip2d impl={impl!r} is not valid; choose one of {['auto', *LIP_IMPLEMENTATIONS]}"
        )
    if torch.compiler.is_compiling():  # checked when the model ran eagerly or at its first call
        return
    if impl == "triton" and x.device.type == "cuda" and backend_triton.failure() is not None:
        return  # it failed earlier in this process (one warning): the operator uses ATen
    if impl not in available_implementations(x.device):
        raise RuntimeError(
            f"lip2d impl={impl!r} cannot run on {x.device} here; available: "
            f"{available_implementations(x.device)} (see `python -m lip_det.collect_env`)"
        )


def check_arguments(x, logit, kernel_size, stride, padding, impl):
    """Validates lip2d's arguments (``logit``: the logits or any tensor of their shape); returns
    the geometry as pairs ``((kh, kw), (sh, sw), (ph, pw))``."""
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
    _check_impl(impl, x)
    return (kh, kw), (sh, sw), (ph, pw)


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
    geometry = check_arguments(x, logit, kernel_size, stride, padding, impl)
    if torch.onnx.is_in_onnx_export():  # standard ONNX ops, exact per-window shift
        return lip2d_window_slices(x, logit, *geometry)
    x_dtype = x.dtype
    if logit.dtype != x.dtype:
        # Mixed dtypes come from autocast (bfloat16 features, float32 logits): rounding the
        # logits would put their rounding error on every weight exp(logit), so pool in the wider
        # dtype (the kernels accumulate in float32 anyway) and return x's, so that a model's
        # dtypes are those it would have without LIP.
        dtype = torch.promote_types(x.dtype, logit.dtype)
        x, logit = x.to(dtype), logit.to(dtype)
    if impl == "reference":
        out = lip2d_reference(x, logit, *geometry)
    else:
        out = lip2d_op(x, logit, *(list(pair) for pair in geometry), impl)
    return out if out.dtype == x_dtype else out.to(x_dtype)
