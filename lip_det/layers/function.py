"""LeanLIP2d: lip2d as one autograd node that keeps only (x, logit, output) for backward.

Every memory-lean backend (ATen, C++, Triton) recomputes the importance e = exp(logit - max) in
backward instead of storing it, and uses the closed-form gradient of a weighted mean
(w = e / window sum of e):

    dL/dx_i = e_i * SA_i,    dL/dlogit_i = e_i * (x_i * SA_i - SB_i)
    SA = scatter-pool(g / den),    SB = scatter-pool(g * out / den)

where den is the window sum of e and scatter-pool the transposed pooling (avg_pool2d_backward).
The backends differ only in the two kernels they hand to :class:`LeanLIP2d`.
"""

import torch

__all__ = ["LeanLIP2d", "accumulation_dtype"]


def accumulation_dtype(dtype):
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def tiny_window_sum(dtype):
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
