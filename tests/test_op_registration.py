"""lip2d as a registered operator: torch.ops.lip_det.lip2d and its backward pass opcheck for every
backend, shapes and dtypes; meta/fake shapes; the Triton path falls back to ATen with one warning
and never crashes."""

import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
import torch.nn.functional as F

import lip_det
from lip_det.layers import (
    available_implementations,
    backend_triton,
    lip2d_window_softmax,
    lip2d_window_softmax_backward,
)
from lip_det.layers.ops import OP_IMPLS

# the operator's own implementations that run on CPU tensors here ("auto" = "cpu" when built)
CPU_OP_IMPLS = ["auto", *(i for i in available_implementations("cpu") if i in ("cpu", "aten"))]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# odd sizes, pair kernel/stride/padding, a window that is not LIP-ResNet's
GEOMETRIES = [([3, 3], [2, 2], [1, 1]), ([3, 2], [2, 1], [1, 0]), ([5, 3], [3, 2], [2, 1])]


def _inputs(dtype, device="cpu", shape=(2, 3, 7, 9), requires_grad=True):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator, dtype=torch.float64)
    logit = 4 * torch.randn(shape, generator=generator, dtype=torch.float64)
    return tuple(t.to(device, dtype).requires_grad_(requires_grad) for t in (x, logit))


def test_schema_and_the_dispatch_point_calls_the_operator():
    assert str(torch.ops.lip_det.lip2d.default._schema) == (
        "lip_det::lip2d(Tensor x, Tensor logit, int[2] kernel_size, int[2] stride, "
        'int[2] padding, str impl="auto") -> Tensor'
    )
    assert "lip_det::lip2d_backward" in str(torch.ops.lip_det.lip2d_backward.default._schema)
    x, logit = _inputs(torch.float32, requires_grad=False)
    traced = torch.jit.trace(lambda a, b: lip_det.lip2d(a, b), (x, logit), check_trace=False)
    kinds = [node.kind() for node in traced.graph.nodes()]
    assert kinds.count("lip_det::lip2d") == 1
    torch.testing.assert_close(
        torch.ops.lip_det.lip2d(x, logit, [3, 3], [2, 2], [1, 1]), lip_det.lip2d(x, logit)
    )


@pytest.mark.parametrize("impl", CPU_OP_IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
def test_opcheck_forward_and_backward_on_cpu(impl, dtype, geometry):
    """Schema, autograd registration, fake tensor and AOT dispatch (static and dynamic shapes)."""
    x, logit = _inputs(dtype)
    torch.library.opcheck(torch.ops.lip_det.lip2d.default, (x, logit, *geometry, impl))
    out = torch.ops.lip_det.lip2d(x, logit, *geometry, impl).detach()
    grad = torch.randn_like(out)
    args = (grad, x.detach(), logit.detach(), out, *geometry, impl)
    torch.library.opcheck(torch.ops.lip_det.lip2d_backward.default, args)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("impl", ["auto", "aten"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
def test_opcheck_on_cuda(impl, dtype, geometry):
    x, logit = _inputs(dtype, "cuda")
    torch.library.opcheck(torch.ops.lip_det.lip2d.default, (x, logit, *geometry, impl))
    out = torch.ops.lip_det.lip2d(x, logit, *geometry, impl)
    expected = lip2d_window_softmax(x.double(), logit.double(), *geometry)
    eps = {torch.float16: 1e-2, torch.bfloat16: 5e-2}.get(dtype, 1e-5)
    torch.testing.assert_close(out.double(), expected, rtol=eps, atol=eps)


TRITON_OPCHECK = textwrap.dedent(
    """
    import torch, lip_det
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        for geometry in (([3, 3], [2, 2], [1, 1]), ([3, 2], [2, 1], [1, 0])):
            x = torch.randn(2, 3, 7, 9).to(dtype).requires_grad_()
            logit = (4 * torch.randn(2, 3, 7, 9)).to(dtype).requires_grad_()
            torch.library.opcheck(torch.ops.lip_det.lip2d.default, (x, logit, *geometry, "triton"))
    print("ok")
    """
)


@pytest.mark.skipif(backend_triton.triton is None, reason="triton is not installed")
def test_opcheck_of_the_triton_kernels_in_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run(
        [sys.executable, "-c", TRITON_OPCHECK], env=env, capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


def test_meta_tensors_give_avg_pool2d_shapes():
    for shape, geometry in [((2, 3, 7, 9), (3, 2, 1)), ((1, 4, 8, 5), ((3, 2), (2, 1), (1, 0)))]:
        x = torch.empty(shape, device="meta")
        out = lip_det.lip2d(x, x, *geometry)
        assert out.device.type == "meta"
        assert out.shape == F.avg_pool2d(torch.empty(shape), *geometry).shape


def test_operator_rejects_mixed_dtypes_and_shapes():
    x = torch.randn(1, 2, 6, 6)
    with pytest.raises(RuntimeError, match="one dtype"):
        torch.ops.lip_det.lip2d(x, x.double(), [3, 3], [2, 2], [1, 1])
    with pytest.raises(RuntimeError, match="one 4-D shape"):
        torch.ops.lip_det.lip2d(x, x[:, :1], [3, 3], [2, 2], [1, 1])
    with pytest.raises(RuntimeError, match="choose one of"):
        torch.ops.lip_det.lip2d(x, x, [3, 3], [2, 2], [1, 1], "reference")
    assert set(OP_IMPLS) == {"auto", "cpu", "triton", "aten"}


def test_window_softmax_backward_is_autograd_of_the_window_softmax():
    torch.manual_seed(0)
    for geometry in [(3, 2, 1), ((3, 2), (2, 1), (1, 0)), (2, 2, 0)]:
        x = torch.randn(2, 3, 7, 8, dtype=torch.float64, requires_grad=True)
        logit = (30 * torch.randn(2, 3, 7, 8, dtype=torch.float64)).requires_grad_()
        out = lip2d_window_softmax(x, logit, *geometry)
        grad = torch.randn_like(out)
        expected = torch.autograd.grad(out, (x, logit), grad)
        got = lip2d_window_softmax_backward(grad, x.detach(), logit.detach(), *geometry)
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)


@pytest.fixture
def fresh_triton_state(monkeypatch):
    monkeypatch.setattr(backend_triton, "_failure", None)
    return backend_triton


@pytest.mark.skipif(backend_triton.triton is None, reason="triton is not installed")
@pytest.mark.skipif(torch.cuda.is_available(), reason="on CUDA the Triton launch would succeed")
def test_a_failing_triton_launch_falls_back_to_aten_with_one_warning(fresh_triton_state):
    """A real failure: Triton cannot launch on CPU tensors outside its interpreter. The call
    returns the ATen result, one RuntimeWarning names the error, later calls stay silent, and
    "triton" leaves the CUDA implementations."""
    if backend_triton.interpreting():
        pytest.skip("under TRITON_INTERPRET=1 the launch succeeds")
    x, logit = _inputs(torch.float32)
    with pytest.warns(RuntimeWarning, match=r"lip2d: the Triton kernel failed \(\w+"):
        out = torch.ops.lip_det.lip2d(x, logit, [3, 3], [2, 2], [1, 1], "triton")
    assert backend_triton.failure() is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out.backward(torch.ones_like(out))
        again = torch.ops.lip_det.lip2d(x, logit, [3, 3], [2, 2], [1, 1], "triton")
    reference_x, reference_l = (t.detach().double().requires_grad_() for t in (x, logit))
    expected = lip2d_window_softmax(reference_x, reference_l)
    expected.backward(torch.ones_like(expected))
    for got, want in ((out, expected), (again, expected), (x.grad, reference_x.grad)):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    assert not backend_triton.is_available()


def test_cuda_prefers_triton_until_it_fails(fresh_triton_state, monkeypatch):
    if backend_triton.triton is None:
        pytest.skip("triton is not installed")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert available_implementations("cuda")[0] == "triton"
    monkeypatch.setattr(backend_triton, "_failure", "RuntimeError: no kernel image")
    assert available_implementations("cuda")[:2] == ["aten", "reference"]
    assert backend_triton.run(lambda: 1) is None  # once failed, the kernels are not tried again
    # and an explicit impl="triton" still passes lip2d's checks (the operator computes with ATen)
    from types import SimpleNamespace

    from lip_det.layers import dispatch

    dispatch._check_impl("triton", SimpleNamespace(device=torch.device("cuda")))


def test_self_test_passes_every_cpu_implementation():
    from lip_det.layers import self_test

    rows = dict(self_test("cpu"))
    assert set(rows) == {i for i in available_implementations("cpu") if i in ("cpu", "aten")}
    assert all(status.startswith("ok (worst error") for status in rows.values()), rows


def test_self_test_reports_a_broken_implementation(monkeypatch):
    from lip_det.layers import diagnostics, self_test

    monkeypatch.setattr(
        diagnostics, "lip2d", lambda x, logit, *a, **k: torch.zeros_like(x)[..., ::2, ::2]
    )
    rows = dict(self_test("cpu"))
    assert all(status.startswith("FAILED: ") for status in rows.values()), rows


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_self_test_on_cuda():
    from lip_det.layers import self_test

    rows = dict(self_test("cuda"))
    assert rows and all(status.startswith("ok") for status in rows.values()), rows
