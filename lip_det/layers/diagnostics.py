"""A self-test of every lip2d implementation on a device against the float64 window softmax:
what ``python -m lip_det.collect_env`` reports on a CUDA machine, so that a kernel that does not
compile, launch or compute right on that GPU shows up before a training run."""

import warnings

import torch

from . import backend_triton
from .dispatch import available_implementations, lip2d
from .reference import lip2d_window_softmax

__all__ = ["self_test"]

# (shape, geometry, logit scale, dtype, tolerance): odd sizes, a pair geometry, logits whose
# windows lie far below their plane's maximum, half precision
_CASES = [
    ((2, 8, 33, 40), (3, 2, 1), 10.0, torch.float32, 1e-4),
    ((1, 3, 9, 11), ((3, 2), (2, 1), (1, 0)), 40.0, torch.float32, 1e-4),
    ((2, 4, 12, 14), (3, 2, 1), 20.0, torch.float16, 2e-2),
    ((2, 4, 12, 14), (2, 2, 0), 20.0, torch.bfloat16, 6e-2),
]


def _worst_error(impl, device):
    """Largest |error| / (1 + |reference|) of output and both gradients over the cases."""
    worst = 0.0
    generator = torch.Generator().manual_seed(0)
    for shape, geometry, scale, dtype, tolerance in _CASES:
        x = torch.randn(shape, generator=generator, dtype=torch.float64)
        logit = scale * torch.randn(shape, generator=generator, dtype=torch.float64)
        grad = torch.randn_like(lip2d_window_softmax(x, logit, *geometry))
        xs, ls = (t.to(device, dtype).requires_grad_() for t in (x, logit))
        out = lip2d(xs, ls, *geometry, impl=impl)
        out.backward(grad.to(device, dtype))
        xd, ld = x.clone().requires_grad_(), logit.clone().requires_grad_()
        expected = lip2d_window_softmax(xd, ld, *geometry)
        expected.backward(grad)
        for got, want in ((out, expected), (xs.grad, xd.grad), (ls.grad, ld.grad)):
            error = ((got.detach().double().cpu() - want).abs() / (1 + want.abs())).max().item()
            if not error <= tolerance:  # also catches NaN
                raise AssertionError(f"{dtype} {tuple(shape)}: error {error:.2e} > {tolerance:g}")
            worst = max(worst, error / tolerance)
    return worst


def self_test(device="cuda"):
    """Runs every memory-lean implementation available on ``device`` (forward and backward)
    against the float64 window softmax; returns ``[(impl, status)]``, status being
    "ok (worst error x% of its tolerance)" or "FAILED: ...".

    A Triton kernel that fails makes lip2d fall back to ATen (one warning); that is reported as
    a failure of "triton" with the error, and "triton" is no longer chosen in this process.
    """
    device = torch.device(device)
    rows = []
    for impl in available_implementations(device):
        if impl == "reference" or (impl == "triton" and device.type != "cuda"):
            # the reference formula underflows on purpose-made windows far below their plane's
            # maximum (this test has some); the interpreter (TRITON_INTERPRET=1) is for tests
            continue
        had_failed = backend_triton.failure()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                worst = _worst_error(impl, device)
            if impl == "triton" and backend_triton.failure() and not had_failed:
                raise RuntimeError(f"kernel failed, lip2d uses ATen: {backend_triton.failure()}")
            rows.append((impl, f"ok (worst error {100 * worst:.0f}% of its tolerance)"))
        except Exception as error:  # report every implementation, never crash the report
            rows.append((impl, f"FAILED: {type(error).__name__}: {error}"))
    if device.type == "cuda" and backend_triton.failure() and "triton" not in dict(rows):
        rows.append(("triton", f"FAILED earlier in this process: {backend_triton.failure()}"))
    return rows
