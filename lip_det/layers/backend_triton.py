"""Fused lip2d kernels in Triton, chosen automatically for CUDA tensors.

One program instance handles BLOCK output elements. Each window is evaluated with its own maximum
logit subtracted (exact softmax weights, no overflow or underflow for any logits) and accumulated
in float32. The backward pass recomputes the window weights from (x, logit, output) and scatters
w * g and w * g * (x - out) into float32 gradient buffers with atomic adds, so nothing but the
inputs and the output is kept for it.

Runs on CPU tensors too under ``TRITON_INTERPRET=1`` (how the tests check it without a GPU).

A GPU path that cannot fail silently, nor crash a run: :func:`run` launches a kernel and, if
Triton fails to compile or launch it (a driver, toolchain or Triton-version problem), returns
None after one warning naming the error; the operator then computes that call, and every later
one in the process, with the ATen kernels, and ``available_implementations("cuda")`` no longer
lists "triton". (An error the GPU reports asynchronously after a launch cannot be caught there;
``lip_det.layers.self_test`` checks every backend against the reference up front.)
"""

import os
import warnings

import torch

from .function import output_size

__all__ = ["failure", "interpreting", "is_available", "run", "triton_backward", "triton_forward"]

try:
    import triton
    import triton.language as tl
except ImportError:  # triton ships with CUDA builds of torch; CPU-only installs go without
    triton = None


def interpreting():
    """True under TRITON_INTERPRET=1, where the kernels run (slowly) on CPU tensors."""
    return triton is not None and os.environ.get("TRITON_INTERPRET") == "1"


_failure = None  # "ErrorType: message" of the first failed launch in this process, or None


def is_available():
    """Triton is installed, CUDA is present, and no Triton launch has failed in this process."""
    return triton is not None and _failure is None and torch.cuda.is_available()


def failure():
    """The error of the Triton launch that disabled this backend, or None."""
    return _failure


def run(launch, *args):
    """``launch(*args)``, or None (after one warning for the process) if Triton cannot compile or
    launch the kernel; also None once an earlier launch has failed."""
    global _failure
    if _failure is not None or triton is None:
        return None
    try:
        return launch(*args)
    except Exception as error:  # any compile or launch failure: fall back, never crash a run
        _failure = f"{type(error).__name__}: {error}".strip()
        warnings.warn(
            f"lip2d: the Triton kernel failed ({_failure}); lip2d uses its ATen implementation "
            "for the rest of this process (`python -m lip_det.collect_env` self-tests every "
            "backend)",
            RuntimeWarning,
            stacklevel=2,
        )
        return None


BLOCK = 256

if triton is not None:

    @triton.jit
    def _window_max(l_ptr, base, oy, ox, mask, H, W, SH, SW, PH, PW, KH: tl.constexpr,
                    KW: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
        m = tl.full((BLOCK,), float("-inf"), tl.float32)
        for dy in tl.static_range(KH):
            for dx in tl.static_range(KW):
                y = oy * SH - PH + dy
                xx = ox * SW - PW + dx
                valid = mask & (y >= 0) & (y < H) & (xx >= 0) & (xx < W)
                logit = tl.load(l_ptr + base + y * W + xx, mask=valid, other=float("-inf"))
                m = tl.maximum(m, logit.to(tl.float32))
        return m

    @triton.jit
    def _lip2d_forward_kernel(x_ptr, l_ptr, o_ptr, total, H, W, HO, WO, SH, SW, PH, PW,
                              KH: tl.constexpr, KW: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < total
        ox = offs % WO
        oy = (offs // WO) % HO
        base = (offs // (WO * HO)) * H * W
        m = _window_max(l_ptr, base, oy, ox, mask, H, W, SH, SW, PH, PW, KH, KW, BLOCK)
        num = tl.zeros((BLOCK,), tl.float32)
        den = tl.zeros((BLOCK,), tl.float32)
        for dy in tl.static_range(KH):
            for dx in tl.static_range(KW):
                y = oy * SH - PH + dy
                xx = ox * SW - PW + dx
                valid = mask & (y >= 0) & (y < H) & (xx >= 0) & (xx < W)
                idx = base + y * W + xx
                logit = tl.load(l_ptr + idx, mask=valid, other=0.0).to(tl.float32)
                x = tl.load(x_ptr + idx, mask=valid, other=0.0).to(tl.float32)
                e = tl.where(valid, tl.exp(logit - m), 0.0)
                den += e
                num += e * x
        out = num / tl.where(mask, den, 1.0)
        tl.store(o_ptr + offs, out.to(o_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _lip2d_backward_kernel(g_ptr, x_ptr, l_ptr, o_ptr, gx_ptr, gl_ptr, total, H, W, HO, WO,
                               SH, SW, PH, PW, KH: tl.constexpr, KW: tl.constexpr,
                               BLOCK: tl.constexpr):  # fmt: skip
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < total
        ox = offs % WO
        oy = (offs // WO) % HO
        base = (offs // (WO * HO)) * H * W
        m = _window_max(l_ptr, base, oy, ox, mask, H, W, SH, SW, PH, PW, KH, KW, BLOCK)
        den = tl.zeros((BLOCK,), tl.float32)
        for dy in tl.static_range(KH):
            for dx in tl.static_range(KW):
                y = oy * SH - PH + dy
                xx = ox * SW - PW + dx
                valid = mask & (y >= 0) & (y < H) & (xx >= 0) & (xx < W)
                logit = tl.load(l_ptr + base + y * W + xx, mask=valid, other=0.0).to(tl.float32)
                den += tl.where(valid, tl.exp(logit - m), 0.0)
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        out = tl.load(o_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        g_over_den = g / tl.where(mask, den, 1.0)
        for dy in tl.static_range(KH):
            for dx in tl.static_range(KW):
                y = oy * SH - PH + dy
                xx = ox * SW - PW + dx
                valid = mask & (y >= 0) & (y < H) & (xx >= 0) & (xx < W)
                idx = base + y * W + xx
                logit = tl.load(l_ptr + idx, mask=valid, other=0.0).to(tl.float32)
                x = tl.load(x_ptr + idx, mask=valid, other=0.0).to(tl.float32)
                gw = tl.where(valid, g_over_den * tl.exp(logit - m), 0.0)
                tl.atomic_add(gx_ptr + idx, gw, mask=valid)
                tl.atomic_add(gl_ptr + idx, gw * (x - out), mask=valid)


def _launch_args(x, kernel_size, stride, padding):
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    n, c, h, w = x.shape
    out_h, out_w = output_size(h, w, kernel_size, stride, padding)
    total = n * c * out_h * out_w
    grid = (triton.cdiv(total, BLOCK),)
    return grid, total, (h, w, out_h, out_w, sh, sw, ph, pw), {"KH": kh, "KW": kw, "BLOCK": BLOCK}


def triton_forward(x, logit, kernel_size, stride, padding):
    x, logit = x.contiguous(), logit.contiguous()
    grid, total, sizes, meta = _launch_args(x, kernel_size, stride, padding)
    out = x.new_empty((x.shape[0], x.shape[1], sizes[2], sizes[3]))
    _lip2d_forward_kernel[grid](x, logit, out, total, *sizes, **meta)
    return out


def triton_backward(grad_out, x, logit, out, kernel_size, stride, padding):
    x, logit = x.contiguous(), logit.contiguous()
    grid, total, sizes, meta = _launch_args(x, kernel_size, stride, padding)
    grad_x = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    grad_logit = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    _lip2d_backward_kernel[grid](
        grad_out.contiguous(), x, logit, out.contiguous(), grad_x, grad_logit, total, *sizes,
        **meta,
    )  # fmt: skip
    return grad_x.to(x.dtype), grad_logit.to(logit.dtype)
