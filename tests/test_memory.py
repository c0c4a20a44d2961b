"""Training memory of LIP blocks: recomputing the LIP parts in backward (``recompute=True`` /
set_lip_recompute) gives the same results and keeps less for backward than the default, which
keeps less than the unfused modules."""

import pytest
import torch
from conftest import lip_cfg
from detectron2.modeling import build_backbone

from lip_det.layers import LIP, ConvLogit
from lip_det.modeling import LIPBasicBlock, LIPBottleneckBlock, LIPStem
from lip_det.modeling.blocks import set_lip_recompute
from lip_det.utils.benchmark import saved_tensor_bytes


def _backbone(depth):
    torch.manual_seed(0)
    model = build_backbone(lip_cfg(depth, norm="GN"))
    for module in model.modules():
        if isinstance(module, ConvLogit):  # fresh ones give constant logits: spread them out
            torch.nn.init.normal_(module.conv.weight, std=0.5)
    return model.train()


def _step(model, x):
    model.zero_grad(set_to_none=True)
    out = model(x)
    sum((v * v).mean() for v in out.values()).backward()
    return {k: v.detach() for k, v in out.items()}, {
        n: p.grad.clone() for n, p in model.named_parameters()
    }


def _unfuse(model):
    for module in model.modules():
        if isinstance(module, LIP):
            module.fuse_norm_gate = False


@pytest.mark.parametrize("depth", [18, 50])
def test_recompute_gives_the_same_step_and_keeps_less(depth):
    model = _backbone(depth).double()  # float64: the three routes agree to rounding
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    saved, results = {}, {}
    for mode in ("unfused", "default", "recompute"):
        if mode == "unfused":
            _unfuse(model)
        else:
            for module in model.modules():
                if isinstance(module, LIP):
                    module.fuse_norm_gate = True
        assert set_lip_recompute(model, mode == "recompute") == 4  # the stem, res3-5's first
        saved[mode] = saved_tensor_bytes(lambda: model(x))  # noqa: B023
        results[mode] = _step(model, x)
    assert saved["unfused"] > saved["default"] > saved["recompute"]
    for mode in ("default", "recompute"):
        (out, grads), (want, want_grads) = results[mode], results["unfused"]
        for key in want:
            torch.testing.assert_close(out[key], want[key], rtol=1e-10, atol=1e-12)
        for name in want_grads:
            torch.testing.assert_close(grads[name], want_grads[name], rtol=1e-8, atol=1e-12)


def test_recompute_keeps_nothing_for_lip_beyond_the_plain_block():
    """A recomputing LIP bottleneck keeps for backward what detectron2's plain stride-2
    BottleneckBlock of the same width keeps, plus the two pooled (quarter-size) tensors its
    stride-1 convs read: nothing of the logit modules."""
    from detectron2.modeling.backbone.resnet import BottleneckBlock

    torch.manual_seed(0)
    kwargs = {"bottleneck_channels": 16, "norm": "BN", "stride": 2}
    lip = LIPBottleneckBlock(32, 64, recompute=True, bottleneck_width=16, **kwargs).train()
    plain = BottleneckBlock(32, 64, **kwargs).train()
    x = torch.randn(2, 32, 40, 48)
    pooled = (2 * 16 * 20 * 24 + 2 * 32 * 20 * 24) * 4  # main (bottleneck) and shortcut
    assert saved_tensor_bytes(lambda: lip(x)) <= saved_tensor_bytes(lambda: plain(x)) + pooled
    lip.recompute = False
    assert saved_tensor_bytes(lambda: lip(x)) > 1.5 * saved_tensor_bytes(lambda: plain(x))


def test_recompute_constructor_flag_and_eval():
    stem = LIPStem(3, 8, norm="BN", recompute=True)
    block = LIPBasicBlock(8, 16, norm="BN", recompute=True, bottleneck_width=8)
    model = torch.nn.Sequential(stem, block)
    assert stem.recompute and block.recompute
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        want = model.eval()(x)
    assert set_lip_recompute(model, False) == 2 and not stem.recompute
    with torch.no_grad():
        torch.testing.assert_close(model(x), want)


def test_recompute_compiles_without_graph_breaks():
    torch._dynamo.reset()
    torch.manual_seed(0)
    block = LIPBottleneckBlock(8, 16, bottleneck_channels=4, bottleneck_width=8, norm="BN",
                               recompute=True).train()  # fmt: skip
    x = torch.randn(2, 8, 17, 20, requires_grad=True)
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    grad = torch.autograd.grad(out.square().mean(), x)[0]
    want = block(x)
    want_grad = torch.autograd.grad(want.square().mean(), x)[0]
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, want_grad, rtol=1e-4, atol=1e-7)
    torch._dynamo.reset()


@pytest.mark.parametrize(
    "name, depth, blocks",
    [
        ("build_lip_resnet_backbone", 18, 4),  # the stem and res3-res5's first blocks
        ("build_lip_resnet_backbone", 50, 4),
        ("build_lip_densenet_backbone", 121, 4),  # the stem and three transitions
    ],
)
def test_config_key_recompute_reaches_every_lip_block(name, depth, blocks):
    def recomputing_blocks(recompute):
        cfg = lip_cfg(depth, name=name, RECOMPUTE=recompute)
        cfg.MODEL.DENSENET.DEPTH = depth
        model = build_backbone(cfg)
        marked = [m for m in model.modules() if getattr(m, "RECOMPUTES_LIP", False)]
        assert len(marked) == blocks
        return sum(m.recompute for m in marked)

    assert recomputing_blocks(False) == 0
    assert recomputing_blocks(True) == blocks


def test_densenet_transition_recomputes_the_same_gradients_and_keeps_less():
    from lip_det.modeling.lip_densenet import DenseTransition

    torch.manual_seed(0)
    transition = DenseTransition(16, 8, norm="BN", bottleneck_width=8).double().train()
    _spread(transition)
    x = torch.randn(2, 16, 18, 22, dtype=torch.float64, requires_grad=True)
    results, saved = [], []
    for recompute in (False, True):
        transition.recompute = recompute
        saved.append(saved_tensor_bytes(lambda: transition(x)))  # noqa: B023
        out = transition(x)
        results.append(
            (out, *torch.autograd.grad(out.square().sum(), (x, *transition.parameters())))
        )
    assert saved[1] < saved[0]
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def _spread(model):
    for module in model.modules():
        if isinstance(module, ConvLogit):
            torch.nn.init.normal_(module.conv.weight, std=0.5)
    return model
