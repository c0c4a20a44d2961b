"""torch.compile(fullgraph=True) of lip2d and of every LIP backbone, in training (forward and
backward) and in eval: no graph break, and compiled results equal eager ones."""

import pytest
import torch
from conftest import lip_cfg
from detectron2.modeling import build_backbone

import lip_det
from lip_det.layers import ConvLogit, available_implementations, lip2d_window_softmax
from lip_det.modeling import LIPBottleneckBlock

# the operator's implementations on CPU ("auto" is "cpu" where the C++ kernels are built); the
# "reference" formula is plain torch ops, which Inductor compiles like any other
OP_IMPLS = ["auto", "aten"] if "cpu" in available_implementations("cpu") else ["aten"]


def _rel_error(got, want):
    return ((got.double() - want.double()).norm() / want.double().norm().clamp_min(1e-30)).item()


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("impl", OP_IMPLS)
@pytest.mark.parametrize("dynamic", [False, True])
def test_compiled_lip2d_equals_eager_forward_and_backward(impl, dynamic):
    def fn(x, logit):
        return lip_det.lip2d(x, logit, (3, 2), (2, 1), (1, 0), impl=impl).sin()

    compiled = torch.compile(fn, fullgraph=True, dynamic=dynamic)
    torch.manual_seed(0)
    for shape in [(2, 3, 9, 11), (1, 4, 12, 7)]:  # a second shape: a dynamic graph is reused
        x = torch.randn(shape, requires_grad=True)
        logit = (5 * torch.randn(shape)).requires_grad_()
        out = compiled(x, logit)
        grads = torch.autograd.grad(out.sum(), (x, logit))
        want = lip2d_window_softmax(x.double(), logit.double(), (3, 2), (2, 1), (1, 0)).sin()
        want_grads = torch.autograd.grad(want.sum(), (x, logit))
        torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-6)
        for got, expected in zip(grads, want_grads):
            torch.testing.assert_close(got, expected.float(), rtol=1e-4, atol=1e-5)
        with torch.no_grad():
            torch.testing.assert_close(compiled(x, logit), out.detach())


def _spread_logits(model):
    for module in model.modules():
        if isinstance(module, ConvLogit):  # fresh ones give constant logits: spread them out
            torch.nn.init.normal_(module.conv.weight, std=0.5)
    return model


def _check_compiled_against_eager(model, x, backend, tolerance):
    """Train (outputs and every parameter gradient) and eval (outputs), compiled vs eager."""
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    for training in (True, False):
        model.train(training)
        results = []
        for fn in (compiled, model):
            model.zero_grad(set_to_none=True)
            with torch.set_grad_enabled(training):
                out = fn(x)
            outputs = out if isinstance(out, dict) else {"out": out}
            if training:
                sum((v * v).mean() for v in outputs.values()).backward()
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
            results.append(({k: v.detach() for k, v in outputs.items()}, grads))
        (got, got_grads), (want, want_grads) = results
        for key in want:
            assert _rel_error(got[key], want[key]) < tolerance, (training, key)
        assert got_grads.keys() == want_grads.keys()
        assert len(want_grads) == (len(list(model.parameters())) if training else 0)
        for name in want_grads:
            assert _rel_error(got_grads[name], want_grads[name]) < 10 * tolerance, name


@pytest.mark.parametrize(
    "name, depth",
    [
        ("build_lip_resnet_backbone", 18),
        ("build_lip_resnet_backbone", 50),
        ("build_lip_resnet_fpn_backbone", 18),
        ("build_retinanet_lip_resnet_fpn_backbone", 18),
        ("build_lip_densenet_backbone", 121),
    ],
)
def test_every_lip_backbone_compiles_without_graph_breaks(name, depth):
    """fullgraph=True fails on any graph break; aot_eager runs AOTAutograd's forward and backward
    graphs (the operator's fake kernels and autograd formula) with eager kernels, so the results
    match eager to float32 rounding."""
    cfg = lip_cfg(depth if depth < 121 else 50, name)
    cfg.MODEL.DENSENET.NORM = "BN"
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    if name == "build_retinanet_lip_resnet_fpn_backbone":
        cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]
    torch.manual_seed(0)
    model = _spread_logits(build_backbone(cfg))
    _check_compiled_against_eager(model, torch.randn(2, 3, 64, 96), "aot_eager", 1e-5)


def test_lip_blocks_compiled_by_inductor_equal_eager():
    """Inductor's generated code around the operator (the convs, norms and gates it fuses),
    forward and backward: equal to eager within float32 tolerance. (The stem is a conv and a LIP:
    the same operator.)"""
    torch.manual_seed(0)
    model = LIPBottleneckBlock(16, 32, bottleneck_channels=8, bottleneck_width=16, norm="BN")
    _check_compiled_against_eager(
        _spread_logits(model), torch.randn(2, 16, 19, 25), "inductor", 1e-4
    )
