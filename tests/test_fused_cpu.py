"""The C++ CPU kernels of lip_det::lip2d_norm_gate and its backward (``lip_det._C``): the same
output and four gradients as the ATen composite and as the unfused modules (ConvLogit ->
lip2d), in every dtype and geometry the composite takes, and they pass opcheck."""

import pytest
import torch
import torch.nn.functional as F

from lip_det import LIP
from lip_det.layers import backend_cpu, build_logit_module, fused, lip2d

pytestmark = pytest.mark.skipif(not backend_cpu.is_available(), reason="needs lip_det._C")

# odd sizes, pair kernel/stride/padding, a window that is not LIP-ResNet's
GEOMETRIES = [([3, 3], [2, 2], [1, 1]), ([3, 2], [2, 1], [1, 0]), ([5, 3], [3, 2], [2, 1])]
SHAPES = [(2, 3, 7, 9), (1, 4, 12, 5)]
EPS, COEFF = 1e-5, 12.0


def _inputs(shape, x_dtype, y_dtype=None, w_dtype=None, scale=1.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    c = shape[1]
    x = torch.randn(shape, generator=generator, dtype=torch.float64)
    y = scale * torch.randn(shape, generator=generator, dtype=torch.float64) + 0.3
    weight = 2 * torch.randn(c, generator=generator, dtype=torch.float64)
    bias = torch.randn(c, generator=generator, dtype=torch.float64)
    y_dtype, w_dtype = y_dtype or x_dtype, w_dtype or fused.accumulation_dtype(y_dtype or x_dtype)
    return x.to(x_dtype), y.to(y_dtype), weight.to(w_dtype), bias.to(w_dtype)


def _grad_out(x, geometry, seed=1):
    out_h, out_w = fused.output_size(*x.shape[-2:], *geometry)
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((*x.shape[:2], out_h, out_w), generator=generator).to(x.dtype)


def _fused_op(x, y, weight, bias, geometry, impl="auto", coeff=COEFF):
    return torch.ops.lip_det.lip2d_norm_gate(x, y, weight, bias, EPS, coeff, *geometry, impl)


def _both(x, y, weight, bias, geometry, coeff=COEFF):
    """(the CPU kernels' output and gradients, the composite's), called directly."""
    grad = _grad_out(x, geometry)
    got = [torch.ops.lip_det.lip2d_norm_gate(x, y, weight, bias, EPS, coeff, *geometry)]
    got += torch.ops.lip_det.lip2d_norm_gate_backward(
        grad, x, y, weight, bias, got[0], EPS, coeff, *geometry
    )
    want = [fused._composite(x, y, weight, bias, EPS, coeff, *geometry)]
    want += fused._composite_backward(grad, x, y, weight, bias, want[0], EPS, coeff, *geometry)
    return got, want


def _tolerance(dtype):
    return {
        torch.float64: {"rtol": 1e-12, "atol": 1e-12},
        torch.float32: {"rtol": 2e-5, "atol": 2e-5},
    }.get(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_cpu_kernels_equal_the_composite(dtype, geometry, shape):
    got, want = _both(*_inputs(shape, dtype), geometry)
    for name, a, b in zip(("out", "grad_x", "grad_y", "grad_weight", "grad_bias"), got, want):
        assert a.dtype == b.dtype and a.shape == b.shape and a.is_contiguous(), name
        torch.testing.assert_close(a, b, **_tolerance(dtype), msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
def test_cpu_kernels_equal_the_unfused_formula_under_autograd(dtype, geometry):
    """Against autograd through instance_norm, sigmoid and lip2d (the modules' ops)."""
    x, y, weight, bias = (t.requires_grad_() for t in _inputs((2, 3, 9, 8), dtype))
    grad = _grad_out(x, geometry)
    out = _fused_op(x, y, weight, bias, geometry)
    got = [out.detach(), *torch.autograd.grad(out, (x, y, weight, bias), grad)]
    logit = COEFF * torch.sigmoid(F.instance_norm(y, weight=weight, bias=bias, eps=EPS))
    out = lip2d(x, logit, *geometry)
    want = [out.detach(), *torch.autograd.grad(out, (x, y, weight, bias), grad)]
    tolerance = _tolerance(dtype) if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-5}
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **tolerance)


@pytest.mark.parametrize(
    "x_dtype, y_dtype, w_dtype",
    [
        (torch.float16, None, None),
        (torch.bfloat16, None, None),
        (torch.bfloat16, torch.bfloat16, torch.float32),
        (torch.bfloat16, torch.float32, None),  # autocast: bfloat16 features, float32 conv
        (torch.float32, torch.bfloat16, None),
        (torch.float32, torch.float16, torch.float64),
        (torch.float64, torch.float32, None),  # pooled wider than the logits: the composite runs
        (torch.float64, torch.float64, torch.float32),
    ],
    ids=str,
)
@pytest.mark.parametrize("geometry", GEOMETRIES[:2], ids=str)
def test_cpu_kernels_follow_the_composites_dtype_rules(x_dtype, y_dtype, w_dtype, geometry):
    inputs = _inputs((2, 3, 7, 9), x_dtype, y_dtype, w_dtype)
    got, want = _both(*inputs, geometry)
    computed_in = fused._dtypes(*inputs[:2])[0]  # the logits' dtype
    for name, a, b in zip(("out", "grad_x", "grad_y", "grad_weight", "grad_bias"), got, want):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert torch.isfinite(a).all(), name
        # float16/bfloat16 results: one rounding of the same float32 values, give or take
        tolerance = {"rtol": 1e-2, "atol": 1e-2} if a.dtype.itemsize == 2 else None
        tolerance = tolerance or _tolerance(computed_in)
        torch.testing.assert_close(a.double(), b.double(), **tolerance, msg=name)


def test_large_coefficients_flat_planes_and_strided_inputs():
    """Windows far below their plane's maximum logit (coeff 200: the exact per-window path), a
    constant plane (zero variance), channels_last inputs."""
    x, y, weight, bias = _inputs((2, 3, 8, 7), torch.float64, scale=3.0)
    y[0, 1] = 0.5
    for coeff in (200.0, COEFF):
        got, want = _both(x, y, weight, bias, GEOMETRIES[0], coeff)
        for a, b in zip(got, want):
            assert torch.isfinite(a).all()
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    strided = [t.to(memory_format=torch.channels_last) for t in (x, y)]
    got, _ = _both(*strided, weight, bias, GEOMETRIES[0])
    want, _ = _both(x, y, weight, bias, GEOMETRIES[0])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_the_cpu_kernels_run_only_for_auto_and_cpu(monkeypatch):
    calls = []
    for name in ("cpu_norm_gate_forward", "cpu_norm_gate_backward"):
        kernel = getattr(backend_cpu, name)
        monkeypatch.setattr(
            backend_cpu, name, lambda *a, k=kernel, n=name: calls.append(n) or k(*a)
        )
    x, y, weight, bias = (t.requires_grad_() for t in _inputs((1, 2, 6, 6), torch.float64))
    for impl, expected in (("auto", 2), ("cpu", 2), ("aten", 0)):
        calls.clear()
        _fused_op(x, y, weight, bias, GEOMETRIES[0], impl).sum().backward()
        assert len(calls) == expected, (impl, calls)
    calls.clear()
    monkeypatch.setattr(backend_cpu, "_cpu_ext", None)  # no extension: the composite
    want = _fused_op(x, y, weight, bias, GEOMETRIES[0], "aten")
    torch.testing.assert_close(_fused_op(x, y, weight, bias, GEOMETRIES[0]), want)
    assert not calls


def test_gradcheck_through_the_cpu_kernels():
    x, y, weight, bias = (t.requires_grad_() for t in _inputs((1, 3, 6, 7), torch.float64))
    for geometry in GEOMETRIES[:2]:
        assert torch.autograd.gradcheck(
            lambda a, b, w, c, g=geometry: _fused_op(a, b, w, c, g), (x, y, weight, bias)
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
def test_opcheck_with_the_cpu_kernels(dtype, geometry):
    x, y, weight, bias = _inputs((2, 3, 7, 9), dtype)
    args = (x.requires_grad_(), y.requires_grad_(), weight.requires_grad_(), bias)
    torch.library.opcheck(
        torch.ops.lip_det.lip2d_norm_gate.default, (*args, EPS, COEFF, *geometry, "auto")
    )
    out = _fused_op(*(t.detach() for t in args), geometry)
    backward_args = (_grad_out(x, geometry), *(t.detach() for t in args), out)
    torch.library.opcheck(
        torch.ops.lip_det.lip2d_norm_gate_backward.default,
        (*backward_args, EPS, COEFF, *geometry, "auto"),
    )


@pytest.mark.parametrize("kind", ["simplified", "bottleneck"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_lip_modules_fused_equal_unfused(kind, dtype):
    """Training (C++ fused kernels) and inference, against ConvLogit -> lip2d."""
    torch.manual_seed(0)
    lip = LIP(build_logit_module(kind, 5, 5)).to(dtype)
    torch.nn.init.normal_(lip.logit.conv.weight, std=0.5)
    torch.nn.init.normal_(lip.logit.conv.norm.weight)
    torch.nn.init.normal_(lip.logit.conv.norm.bias)
    x = torch.randn(2, 5, 11, 9, dtype=dtype, requires_grad=True)
    features = torch.randn(2, 5, 11, 9, dtype=dtype) if kind == "bottleneck" else None
    results = {}
    for fuse in (True, False):
        lip.fuse_norm_gate = fuse
        lip.zero_grad(set_to_none=True)
        x.grad = None
        out = lip(x, features)
        out.backward(torch.linspace(-1, 1, out.numel(), dtype=dtype).view_as(out))
        with torch.no_grad():
            inferred = lip.eval()(x, features)
        lip.train()
        results[fuse] = [out.detach(), inferred, x.grad] + [p.grad for p in lip.parameters()]
    tolerance = _tolerance(dtype) if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-5}
    for a, b in zip(results[True], results[False]):
        torch.testing.assert_close(a, b, **tolerance)


def test_inference_fuses_on_cpu_unless_the_logit_module_is_watched(monkeypatch):
    """Without autograd a CPU LIP runs the fused kernel; a hook on its logit module (what
    lip_det.visualize reads the logits with) or impl="aten" keeps the modules."""
    calls = []
    kernel = backend_cpu.cpu_norm_gate_forward
    monkeypatch.setattr(
        backend_cpu, "cpu_norm_gate_forward", lambda *a: calls.append(1) or kernel(*a)
    )
    torch.manual_seed(0)
    lip = LIP(build_logit_module("projection", 4, 4)).eval()
    torch.nn.init.normal_(lip.logit.conv.weight)
    x = torch.randn(1, 4, 9, 9)
    with torch.no_grad():
        fused_out = lip(x)
        assert len(calls) == 1
        seen = []
        handle = lip.logit.register_forward_hook(lambda m, i, o: seen.append(o))
        watched = lip(x)
        handle.remove()
        assert len(calls) == 1 and len(seen) == 1
        lip.impl = "aten"
        lip(x)
        assert len(calls) == 1
    torch.testing.assert_close(fused_out, watched, rtol=1e-5, atol=1e-6)
