import itertools
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

import lip_det
from lip_det.layers import (
    available_implementations,
    backend_cpu,
    backend_triton,
    lip2d_window_slices,
    lip2d_window_softmax,
)

# every implementation that runs on CPU here ("cpu" when the C++ extension is built)
CPU_IMPLS = [i for i in available_implementations("cpu") if i != "triton"]
LEAN_IMPLS = [i for i in CPU_IMPLS if i != "reference"]


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def lip_by_windows(x, logit, kernel_size, stride, padding):
    """Independent float64 evaluation: walk every window explicitly, skipping padded cells."""
    (kh, kw), (sh, sw), (ph, pw) = map(_pair, (kernel_size, stride, padding))
    n, c, h, w = x.shape
    out_h = (h + 2 * ph - kh) // sh + 1
    out_w = (w + 2 * pw - kw) // sw + 1
    x, logit = x.double(), logit.double()
    out = torch.zeros(n, c, out_h, out_w, dtype=torch.float64)
    for i, j in itertools.product(range(out_h), range(out_w)):
        rows = [r for r in range(i * sh - ph, i * sh - ph + kh) if 0 <= r < h]
        cols = [q for q in range(j * sw - pw, j * sw - pw + kw) if 0 <= q < w]
        xs = x[:, :, rows][:, :, :, cols].reshape(n, c, -1)
        weights = torch.softmax(logit[:, :, rows][:, :, :, cols].reshape(n, c, -1), dim=-1)
        out[:, :, i, j] = (weights * xs).sum(-1)
    return out


GEOMETRIES = [
    (3, 2, 1),  # LIP-ResNet
    (2, 2, 0),  # LIP-DenseNet transitions
    (3, 1, 1),
    ((3, 2), (2, 1), (1, 0)),
    (5, 3, 2),
]


@pytest.mark.parametrize("impl", ["auto", *CPU_IMPLS])
@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("size", [(7, 9), (8, 6)])
def test_matches_explicit_windows_in_float64(impl, geometry, size):
    torch.manual_seed(0)
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    logit = 3 * torch.randn(2, 3, *size, dtype=torch.float64)
    out = lip_det.lip2d(x, logit, *geometry, impl=impl)
    expected = lip_by_windows(x, logit, *geometry)
    assert out.shape == F.avg_pool2d(x, *geometry).shape == expected.shape
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("impl", CPU_IMPLS)
@pytest.mark.parametrize("geometry", [(3, 2, 1), (2, 2, 0), ((3, 2), (2, 1), (1, 0))])
def test_gradcheck_float64(impl, geometry):
    torch.manual_seed(1)
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    logit = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b: lip_det.lip2d(a, b, *geometry, impl=impl), (x, logit)
    )


def test_zero_logit_is_average_pooling_over_valid_cells():
    x = torch.randn(2, 4, 11, 10, dtype=torch.float64)
    out = lip_det.lip2d(x, torch.zeros_like(x))
    # zero padding cancels, so borders average only the cells inside the image
    expected = F.avg_pool2d(x, 3, 2, 1, count_include_pad=False)
    torch.testing.assert_close(out, expected)


def test_constant_logit_shift_changes_nothing():
    x = torch.randn(1, 3, 9, 9, dtype=torch.float64)
    logit = torch.randn(1, 3, 9, 9, dtype=torch.float64)
    torch.testing.assert_close(lip_det.lip2d(x, logit), lip_det.lip2d(x, logit + 37.5))


def test_large_beta_times_input_is_max_pooling():
    torch.manual_seed(2)
    # distinct values, 0.15 apart, so no window has a near-tie for its maximum
    x = torch.stack([0.15 * torch.randperm(42, dtype=torch.float64) for _ in range(6)])
    x = x.reshape(2, 3, 6, 7)
    out = lip_det.lip2d(x, 100.0 * x)
    expected = F.max_pool2d(x, 3, 2, 1)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    # and beta = 1 is SoftPool: strictly between average and max
    soft = lip_det.lip2d(x, x)
    assert (soft <= expected + 1e-12).all() and (soft >= lip_det.lip2d(x, 0 * x) - 1e-12).all()


def test_large_logits_do_not_overflow_in_float32():
    x = torch.randn(1, 2, 8, 8)
    logit = torch.full_like(x, 500.0) + torch.randn_like(x)  # exp(500) overflows float32
    out = lip_det.lip2d(x, logit)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(
        out.double(), lip_by_windows(x, logit, 3, 2, 1), rtol=1e-4, atol=1e-5
    )


def test_output_size_is_ceil_half_for_odd_and_even_sizes():
    for h, w in [(1, 1), (2, 3), (33, 64), (65, 17)]:
        out = lip_det.lip2d(torch.randn(1, 1, h, w), torch.randn(1, 1, h, w))
        assert out.shape[-2:] == (-(-h // 2), -(-w // 2))


def test_bad_input_errors():
    x = torch.randn(1, 2, 8, 8)
    with pytest.raises(ValueError, match=r"same shape, got \(1, 2, 8, 8\) and \(1, 1, 8, 8\)"):
        lip_det.lip2d(x, x[:, :1])
    with pytest.raises(ValueError, match=r"4-D"):
        lip_det.lip2d(x[0], x[0])
    with pytest.raises(ValueError, match=r"impl='cuda_magic' is not valid; choose one of \['auto'"):
        lip_det.lip2d(x, x, impl="cuda_magic")


def test_cpu_extension_is_built_and_the_default():
    # the Makefile installs with --no-build-isolation, so setup.py builds lip_det._C
    assert backend_cpu.is_available(), "lip_det._C missing: reinstall lip_det"
    assert available_implementations("cpu")[0] == "cpu"


def test_auto_falls_back_to_aten_without_the_extension(monkeypatch):
    monkeypatch.setattr(backend_cpu, "_cpu_ext", None)
    assert available_implementations("cpu")[:2] == ["aten", "reference"]
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(lip_det.lip2d(x, x), lip2d_window_softmax(x, x))
    with pytest.raises(RuntimeError, match=r"impl='cpu' cannot run on cpu here; available: "):
        lip_det.lip2d(x, x, impl="cpu")


@pytest.mark.parametrize("impl", LEAN_IMPLS)
def test_backward_keeps_only_inputs_and_output(impl):
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    logit = torch.randn(2, 3, 16, 16, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = lip_det.lip2d(x, logit, impl=impl)
    assert len(saved) == 3
    assert {t.data_ptr() for t in saved} == {x.data_ptr(), logit.data_ptr(), out.data_ptr()}
    # the primitive formula keeps several input-sized tensors instead
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        lip_det.lip2d(x, logit, impl="reference")
    assert sum(t.numel() for t in saved) > 2 * x.numel()


@pytest.mark.parametrize("impl", LEAN_IMPLS)
@pytest.mark.parametrize("geometry", [(3, 2, 1), (2, 2, 0), ((3, 2), (2, 1), (1, 0))])
def test_extreme_logits_are_exact_including_windows_far_below_the_plane_max(impl, geometry):
    # the left half of each plane sits 110 above the right half: with one shift per plane, the
    # right half's windows would underflow to 0/0 in float32 (exp(-110) < 1e-45)
    torch.manual_seed(3)
    x = torch.randn(2, 3, 10, 12)
    logit = 5 * torch.randn(2, 3, 10, 12)
    logit[..., :6] += 55
    logit[..., 6:] -= 55
    xs, ls = x.clone().requires_grad_(), logit.clone().requires_grad_()
    out = lip_det.lip2d(xs, ls, *geometry, impl=impl)
    xd, ld = x.double().requires_grad_(), logit.double().requires_grad_()
    expected = lip2d_window_softmax(xd, ld, *geometry)
    grad = torch.randn_like(expected)
    out.backward(grad.float())
    expected.backward(grad)
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(xs.grad.double(), xd.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ls.grad.double(), ld.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("impl", LEAN_IMPLS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_finite_and_close_for_logits_in_plus_minus_60(impl, dtype):
    torch.manual_seed(4)
    x = torch.randn(2, 4, 12, 14).to(dtype)
    logit = torch.empty(2, 4, 12, 14).uniform_(-60, 60).to(dtype)
    xs, ls = x.clone().requires_grad_(), logit.clone().requires_grad_()
    out = lip_det.lip2d(xs, ls, impl=impl)
    assert out.dtype == dtype
    grad = torch.randn(out.shape, dtype=torch.float64)
    out.backward(grad.to(dtype))
    xd, ld = x.double().requires_grad_(), logit.double().requires_grad_()
    expected = lip2d_window_softmax(xd, ld)
    expected.backward(grad)
    eps = {torch.float16: 1e-2, torch.bfloat16: 5e-2}[dtype]
    for got, want in ((out, expected), (xs.grad, xd.grad), (ls.grad, ld.grad)):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got.double(), want, rtol=eps, atol=eps)


@pytest.mark.skipif(not backend_triton.is_available(), reason="needs CUDA and triton")
def test_triton_on_cuda_matches_reference():
    torch.manual_seed(5)
    x = torch.randn(2, 8, 33, 40, device="cuda")
    logit = 10 * torch.randn_like(x)
    xs, ls = x.clone().requires_grad_(), logit.clone().requires_grad_()
    assert available_implementations("cuda")[0] == "triton"
    out = lip_det.lip2d(xs, ls)
    xd, ld = x.double().requires_grad_(), logit.double().requires_grad_()
    expected = lip2d_window_softmax(xd, ld)
    grad = torch.randn_like(expected)
    out.backward(grad.float())
    expected.backward(grad)
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(xs.grad.double(), xd.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ls.grad.double(), ld.grad, rtol=1e-4, atol=1e-5)


TRITON_INTERPRETER_CHECK = textwrap.dedent(
    """
    import torch, lip_det
    from lip_det.layers import lip2d_window_softmax
    torch.manual_seed(0)
    worst = 0.0
    for geometry in [(3, 2, 1), (2, 2, 0), ((3, 2), (2, 1), (1, 0))]:
        x = torch.randn(2, 3, 9, 11)
        logit = 20 * torch.randn_like(x)
        xs, ls = x.clone().requires_grad_(), logit.clone().requires_grad_()
        out = lip_det.lip2d(xs, ls, *geometry, impl="triton")
        xd, ld = x.double().requires_grad_(), logit.double().requires_grad_()
        expected = lip2d_window_softmax(xd, ld, *geometry)
        grad = torch.randn_like(expected)
        out.backward(grad.float())
        expected.backward(grad)
        for got, want in ((out, expected), (xs.grad, xd.grad), (ls.grad, ld.grad)):
            worst = max(worst, (got.double() - want).abs().max().item())
    print("max abs error", worst)
    """
)


@pytest.mark.skipif(backend_triton.triton is None, reason="triton is not installed")
def test_triton_kernels_in_the_interpreter_match_reference():
    # the GPU kernels, run by Triton's CPU interpreter: checks their indexing and maths here
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run(
        [sys.executable, "-c", TRITON_INTERPRETER_CHECK],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    error = float(result.stdout.split("max abs error")[1])
    assert error < 1e-5


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("size", [(7, 9), (8, 6)])
def test_window_slices_the_export_formula_is_exact(geometry, size):
    """lip2d_window_slices (what ONNX export emits: strided slices, per-window max shift) equals
    the explicit windows, also with logits 110 apart across the plane, in float64 and float32."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    logit = 3 * torch.randn(2, 3, *size, dtype=torch.float64)
    logit[..., : size[1] // 2] += 55
    logit[..., size[1] // 2 :] -= 55
    expected = lip_by_windows(x, logit, *geometry)
    torch.testing.assert_close(
        lip2d_window_slices(x, logit, *geometry), expected, rtol=1e-12, atol=1e-12
    )
    got = lip2d_window_slices(x.float(), logit.float(), *geometry)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)
