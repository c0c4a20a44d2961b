import pytest
import torch
import torch.nn.functional as F

from lip_det import LIP
from lip_det.layers import BottleneckTrunk, ConvLogit, SoftGate, build_logit_module


def test_softgate_bounds_and_coefficient():
    x = torch.linspace(-50, 50, 101)
    for coeff in (12.0, 3.0):
        y = SoftGate(coeff)(x)
        torch.testing.assert_close(y, coeff * torch.sigmoid(x))
        assert y.min() >= 0 and y.max() <= coeff
        assert SoftGate(coeff)(torch.zeros(1)).item() == pytest.approx(coeff / 2)


@pytest.mark.parametrize("kind, kernel", [("simplified", 3), ("projection", 1)])
def test_fresh_lip_is_average_pooling(kind, kernel):
    torch.manual_seed(0)
    lip = LIP(build_logit_module(kind, 8, 8))
    assert lip.logit.conv.kernel_size == (kernel, kernel)
    x = torch.randn(2, 8, 13, 10)
    torch.testing.assert_close(
        lip(x), F.avg_pool2d(x, 3, 2, 1, count_include_pad=False), rtol=1e-5, atol=1e-6
    )


def test_fresh_bottleneck_head_is_average_pooling():
    torch.manual_seed(0)
    trunk = BottleneckTrunk(8, width=16)
    head = build_logit_module("bottleneck", 16, 4)
    lip = LIP(head)
    x = torch.randn(2, 8, 9, 9)
    pooled = torch.randn(2, 4, 9, 9)
    shared = trunk(x)
    assert shared.shape == (2, 16, 9, 9)
    torch.testing.assert_close(
        lip(pooled, shared), F.avg_pool2d(pooled, 3, 2, 1, count_include_pad=False)
    )
    # the trunk is Kaiming-initialised (not zero); only the head's conv starts at zero
    assert trunk.conv1.weight.abs().sum() > 0 and head.conv.weight.abs().sum() == 0


def test_logit_modules_use_affine_instance_norm():
    module = ConvLogit(4, 6, kernel_size=1, gate_coeff=7.0)
    assert isinstance(module.conv.norm, torch.nn.InstanceNorm2d) and module.conv.norm.affine
    assert module.conv.bias is None
    assert module.gate.coeff == 7.0


def test_trained_logits_change_the_pooling():
    torch.manual_seed(0)
    lip = LIP(build_logit_module("simplified", 3, 3))
    torch.nn.init.normal_(lip.logit.conv.weight)
    x = torch.randn(1, 3, 8, 8)
    out = lip(x)
    logit = lip.logit(x)
    weights = torch.exp(logit)
    expected = F.avg_pool2d(x * weights, 3, 2, 1) / F.avg_pool2d(weights, 3, 2, 1)
    torch.testing.assert_close(out, expected)
    assert not torch.allclose(out, F.avg_pool2d(x, 3, 2, 1, count_include_pad=False))


def test_unknown_logit_module_lists_valid_ones():
    with pytest.raises(
        ValueError, match=r"'gaussian'.*\['simplified', 'projection', 'bottleneck'\]"
    ):
        build_logit_module("gaussian", 4, 4)


def test_inference_gates_in_place_with_the_same_result():
    """Without autograd ConvLogit gates its own conv output in place: same values as the training
    path, and the caller's input is untouched."""
    torch.manual_seed(0)
    module = ConvLogit(6, 5, kernel_size=3, gate_coeff=7.0)
    torch.nn.init.normal_(module.conv.weight)
    x = torch.randn(2, 6, 9, 11, requires_grad=True)
    expected = 7.0 * torch.sigmoid(module.conv(x))
    trained = module(x)
    assert trained.grad_fn is not None
    saved = x.detach().clone()
    with torch.no_grad():
        inferred = module(x)
    torch.testing.assert_close(inferred, expected.detach())
    torch.testing.assert_close(trained.detach(), expected.detach())
    assert torch.equal(x.detach(), saved)


def _trained_lip(kind, channels=5, dtype=torch.float64):
    lip = LIP(build_logit_module(kind, channels, channels)).to(dtype)
    torch.nn.init.normal_(lip.logit.conv.weight, std=0.5)
    torch.nn.init.normal_(lip.logit.conv.norm.weight)
    torch.nn.init.normal_(lip.logit.conv.norm.bias)
    return lip


def _forward_backward(lip, x, features=None):
    lip.zero_grad(set_to_none=True)
    x.grad = None
    out = lip(x, features)
    out.backward(torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out))
    return [out.detach(), x.grad.clone()] + [p.grad.clone() for p in lip.parameters()]


@pytest.mark.parametrize("kind", ["simplified", "projection", "bottleneck"])
def test_training_fuses_norm_and_gate_into_lip2d_with_the_same_results(kind):
    """In training a ConvLogit's InstanceNorm and SoftGate run inside lip_det::lip2d_norm_gate:
    the same output and gradients (input, conv, norm weight and bias) as the modules, in float64,
    and autograd keeps one input-sized tensor (the conv output) fewer per gate and norm."""
    torch.manual_seed(0)
    lip = _trained_lip(kind, 5)
    x = torch.randn(2, 5, 9, 11, dtype=torch.float64, requires_grad=True)
    features = torch.randn(2, 5, 9, 11, dtype=torch.float64) if kind == "bottleneck" else None
    fused = _forward_backward(lip, x, features)
    lip.fuse_norm_gate = False
    unfused = _forward_backward(lip, x, features)
    for got, want in zip(fused, unfused):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    plane = x.numel() * x.element_size()
    lip.fuse_norm_gate = True
    saved = {}
    for fuse in (True, False):
        lip.fuse_norm_gate = fuse
        storages = {}

        def pack(t, storages=storages):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            lip(x, features)
        saved[fuse] = [n for n in storages.values() if n == plane]
    # x, the head's input and its conv output, against those plus the norm's output (saved by
    # sigmoid as its output) and the logits
    assert len(saved[False]) - len(saved[True]) == 2, saved


def test_fused_norm_gate_gradcheck_and_opcheck():
    torch.manual_seed(1)
    x = torch.randn(1, 3, 6, 7, dtype=torch.float64, requires_grad=True)
    y = torch.randn(1, 3, 6, 7, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)

    def fused(a, b, w, c):
        return torch.ops.lip_det.lip2d_norm_gate(a, b, w, c, 1e-5, 12.0, [3, 2], [2, 1], [1, 0])

    assert torch.autograd.gradcheck(fused, (x, y, weight, bias))
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        args = [t.detach().to(dtype).requires_grad_() for t in (x, y)] + [weight, bias]
        torch.library.opcheck(
            torch.ops.lip_det.lip2d_norm_gate.default,
            (*args, 1e-5, 12.0, [3, 3], [2, 2], [1, 1], "auto"),
        )


def test_inference_and_tracing_keep_the_unfused_modules():
    """What fvcore and the exporters see: instance_norm, sigmoid and lip_det::lip2d, never the
    fused training operator (also when a model is traced in training mode)."""
    lip = _trained_lip("simplified", 4, torch.float32)
    x = torch.randn(1, 4, 8, 8, requires_grad=True)
    for training in (True, False):
        lip.train(training)
        traced = torch.jit.trace(lip, (x,), check_trace=False)
        kinds = {node.kind() for node in traced.inlined_graph.nodes()}
        assert "lip_det::lip2d" in kinds and "aten::instance_norm" in kinds
        assert "lip_det::lip2d_norm_gate" not in kinds
    lip.train()
    with torch.no_grad():
        torch.testing.assert_close(lip(x), traced(x))
