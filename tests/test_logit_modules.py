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
