"""What every memory-lean lip2d kernel shares: the closed-form gradient and the dtype rules.

Every lean backend (ATen, C++, Triton) keeps only (x, logit, output) for backward, recomputes the
importance e = exp(logit - max) there instead of storing it, and uses the closed-form gradient of
a weighted mean (w = e / window sum of e):

    dL/dx_i = e_i * SA_i,    dL/dlogit_i = e_i * (x_i * SA_i - SB_i)
    SA = scatter-pool(g / den),    SB = scatter-pool(g * out / den)

where den is the window sum of e and scatter-pool the transposed pooling (avg_pool2d_backward).
The backends are the kernels of the registered operator ``torch.ops.lip_det.lip2d`` and its
``lip2d_backward`` (:mod:`lip_det.layers.ops`), which differ only per device and ``impl``.
"""

import torch

__all__ = ["accumulation_dtype", "output_size", "tiny_window_sum"]


def accumulation_dtype(dtype):
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def tiny_window_sum(dtype):
    # below this window sum (of e <= 1) precision is no longer trusted: use the exact path
    return 1e-200 if dtype == torch.float64 else 1e-20


def output_size(h, w, kernel_size, stride, padding):
    """(H_out, W_out) of a lip2d (= avg_pool2d) window geometry; works with symbolic sizes."""
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
