"""Op level: every lip2d implementation, the authors' primitive formula and avg_pool2d."""

import torch
import torch.nn.functional as F

from lip_det.layers import available_implementations, lip2d
from lip_det.utils.benchmark import (
    fastest_ratio,
    median_ratio,
    peak_memory_bytes,
    saved_tensor_bytes,
    time_interleaved,
)

from .common import summary

__all__ = [
    "KERNEL_SIZE",
    "LEAN_IMPLEMENTATIONS",
    "OP_SHAPES",
    "PADDING",
    "QUICK_OP_SHAPES",
    "STRIDE",
    "benchmark_op",
    "lip2d_primitive",
    "op_implementations",
]

# The performance issue's shapes: LIP inputs at strides 4, 8 and 16 of a batch of four 800x1344
# images (the last two are what LIP-R50's res4 and res5 main-branch LIPs pool).
OP_SHAPES = ((4, 64, 200, 336), (4, 256, 100, 168), (4, 512, 50, 84))
# Small enough for tests and CI; odd sizes exercise the border windows.
QUICK_OP_SHAPES = ((2, 16, 40, 56), (2, 32, 21, 27))
KERNEL_SIZE, STRIDE, PADDING = 3, 2, 1
LEAN_IMPLEMENTATIONS = ("cpu", "triton", "aten")


def lip2d_primitive(x, logit, kernel_size=3, stride=2, padding=1):
    """LIP as the authors' code computes it: ATen ops, differentiated by autograd, no shift.

    Keeps exp(logit), x*exp(logit) and both pooled maps for backward, and overflows to inf/nan
    for logits above ~88 (float32); here only as the baseline lip2d is measured against.
    """
    weight = logit.exp()
    numerator = F.avg_pool2d(x * weight, kernel_size, stride, padding)
    return numerator / F.avg_pool2d(weight, kernel_size, stride, padding)


def op_implementations(device):
    """The lip2d implementations benchmarked on ``device``, best first."""
    # Triton on CPU only runs under TRITON_INTERPRET=1, an emulator for tests, not a benchmark.
    device = torch.device(device)
    return [n for n in available_implementations(device) if n != "triton" or device.type == "cuda"]


def _op_functions(device):
    """name -> f(x, logit); "avg_pool2d" ignores the logit."""
    fns = {"avg_pool2d": lambda x, logit: F.avg_pool2d(x, KERNEL_SIZE, STRIDE, PADDING)}
    for impl in op_implementations(device):
        fns[impl] = lambda x, logit, impl=impl: lip2d(
            x, logit, KERNEL_SIZE, STRIDE, PADDING, impl=impl
        )
    fns["primitive"] = lambda x, logit: lip2d_primitive(x, logit, KERNEL_SIZE, STRIDE, PADDING)
    return fns


def benchmark_op(shape, *, device="cpu", dtype=torch.float32, rounds=5, warmup=1,
                 min_sample_s=0.05, log=print):  # fmt: skip
    """Forward and forward+backward of every lip2d implementation on ``device``, the authors'
    primitive and avg_pool2d, for one input shape, timed in interleaved rounds.

    Logits are drawn in (0, 12), the range of LIP-ResNet's SoftGate, where the unshifted
    primitive is finite. Forward runs under ``torch.no_grad``; forward+backward computes the
    gradients of x and logit (avg_pool2d: of x) for a fixed random output gradient.
    """
    device = torch.device(device)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator).to(device, dtype).requires_grad_()
    logit = (12 * torch.rand(shape, generator=generator)).to(device, dtype).requires_grad_()
    out_shape = F.avg_pool2d(x.detach(), KERNEL_SIZE, STRIDE, PADDING).shape
    grad_out = torch.randn(out_shape, generator=generator).to(device, dtype)
    input_bytes = x.numel() * x.element_size()
    output_bytes = grad_out.numel() * grad_out.element_size()

    fns = _op_functions(device)
    timed = {}
    for name, f in fns.items():
        inputs = (x,) if name == "avg_pool2d" else (x, logit)

        def forward(f=f):
            with torch.no_grad():
                f(x, logit)

        def forward_backward(f=f, inputs=inputs):
            torch.autograd.grad(f(x, logit), inputs, grad_out)

        timed[(name, "fwd")] = forward
        timed[(name, "fwd_bwd")] = forward_backward

    samples = time_interleaved(
        timed, rounds=rounds, device=device, warmup=warmup, min_sample_s=min_sample_s
    )
    results = {}
    for name, f in fns.items():
        fwd_bwd = timed[(name, "fwd_bwd")]
        saved = saved_tensor_bytes(lambda f=f: f(x, logit))
        peak = peak_memory_bytes(fwd_bwd, device)
        results[name] = {
            "fwd": summary(samples[(name, "fwd")]),
            "fwd_bwd": summary(samples[(name, "fwd_bwd")]),
            "fwd_ratio_to_avg_pool2d": median_ratio(samples, (name, "fwd"), ("avg_pool2d", "fwd")),
            "fwd_bwd_ratio_to_avg_pool2d": median_ratio(
                samples, (name, "fwd_bwd"), ("avg_pool2d", "fwd_bwd")
            ),
            "fwd_bwd_best_ratio_to_avg_pool2d": fastest_ratio(
                samples, (name, "fwd_bwd"), ("avg_pool2d", "fwd_bwd")
            ),
            "peak_bytes": peak,
            "peak_x_input": peak / input_bytes,
            "saved_bytes": saved,
            "saved_x_input": saved / input_bytes,
            "lean": name in LEAN_IMPLEMENTATIONS,
        }
        r = results[name]
        log(
            f"  op {tuple(shape)} {name:>10}: fwd {r['fwd']['median_ms']:8.2f} ms, fwd+bwd "
            f"{r['fwd_bwd']['median_ms']:8.2f} ms ({r['fwd_bwd_ratio_to_avg_pool2d']:.2f}x "
            f"avg_pool2d), peak {peak / 2**20:.1f} MiB, saved {saved / input_bytes:.2f}x input"
        )
    return {
        "shape": list(shape),
        "dtype": str(dtype).replace("torch.", ""),
        "input_bytes": input_bytes,
        "output_bytes": output_bytes,
        "results": results,
    }
