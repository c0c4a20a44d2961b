import pytest
import torch
from conftest import lip_cfg
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, BottleneckBlock

import lip_det
from lip_det.layers import BottleneckTrunk, ConvLogit
from lip_det.modeling import LIPBasicBlock, LIPBottleneckBlock, LIPStem


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def lip_params(module):
    return sum(
        n_params(m) for m in module.modules() if isinstance(m, (lip_det.LIP, BottleneckTrunk))
    )


def test_import_registers_backbones():
    for name in (
        "build_lip_resnet_backbone",
        "build_lip_resnet_fpn_backbone",
        "build_retinanet_lip_resnet_fpn_backbone",
    ):
        assert BACKBONE_REGISTRY.get(name) is getattr(lip_det, name)


@pytest.mark.parametrize("depth, total", [(50, 21_815_232), (101, 40_807_360), (152, 56_451_008)])
def test_published_parameter_counts(depth, total):
    backbone = build_backbone(lip_cfg(depth))
    assert n_params(backbone) == total
    assert lip_params(backbone) == 1_059_712


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
@pytest.mark.parametrize("size", [(64, 96), (67, 93), (33, 50)])
def test_same_shapes_as_plain_resnet(depth, size):
    cfg = lip_cfg(depth)
    lip_backbone = build_backbone(cfg).eval()
    cfg.MODEL.BACKBONE.NAME = "build_resnet_backbone"
    plain = build_backbone(cfg).eval()
    assert lip_backbone.output_shape() == plain.output_shape()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        got, expected = lip_backbone(x), plain(x)
    assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in expected.items()}


def test_paper_architecture_blocks():
    backbone = build_backbone(lip_cfg(50))
    assert isinstance(backbone.stem, LIPStem)
    assert isinstance(backbone.stem.lip.logit, ConvLogit)
    assert backbone.stem.lip.logit.conv.kernel_size == (3, 3)  # "simplified"
    assert type(backbone.res2[0]) is BottleneckBlock
    for stage in (backbone.res3, backbone.res4, backbone.res5):
        first = stage[0]
        assert isinstance(first, LIPBottleneckBlock) and first.stride == 2
        assert first.conv2.kernel_size == (1, 1)  # LIP + 1x1 replaces the 3x3/2 conv
        assert first.logit_trunk.conv1.out_channels == 128
        assert first.main_lip.logit.conv.out_channels == first.conv1.out_channels
        assert first.shortcut_lip.logit.conv.out_channels == first.in_channels
        assert all(type(b) is BottleneckBlock and b.stride == 1 for b in stage[1:])


def test_basic_block_design_keeps_plain_conv_shapes():
    backbone = build_backbone(lip_cfg(18))
    cfg = lip_cfg(18)
    cfg.MODEL.BACKBONE.NAME = "build_resnet_backbone"
    plain = build_backbone(cfg)
    for name in ("res3", "res4", "res5"):
        block, plain_block = getattr(backbone, name)[0], getattr(plain, name)[0]
        assert isinstance(block, LIPBasicBlock) and isinstance(plain_block, BasicBlock)
        assert block.stride == plain_block.stride == 2
        for conv in ("conv1", "conv2", "shortcut"):
            assert getattr(block, conv).weight.shape == getattr(plain_block, conv).weight.shape
        assert block.conv1.stride == (1, 1) and block.shortcut.stride == (1, 1)
    # the conv weights are exactly the plain ResNet-18's; the LIP modules are what is added
    assert n_params(backbone) - lip_params(backbone) == n_params(plain)


def test_fresh_lip_basic_block_equals_plain_block_on_avg_pooled_input():
    # With its average-pooling initialisation, the LIP block computes the plain block's convs on
    # the (valid-cell) average-pooled input: a direct check of the documented design.
    torch.manual_seed(0)
    block = LIPBasicBlock(8, 16, stride=2, logit="projection").eval()
    x = torch.randn(2, 8, 9, 11)
    pooled = torch.nn.functional.avg_pool2d(x, 3, 2, 1, count_include_pad=False)
    expected = torch.relu(block.conv2(torch.relu(block.conv1(pooled))) + block.shortcut(pooled))
    torch.testing.assert_close(block(x), expected)


@pytest.mark.parametrize(
    "places, expect",
    [
        (["stem"], {"stem": True, "res3": (False, False)}),
        (["res4.main"], {"stem": False, "res4": (True, False), "res3": (False, False)}),
        (["res3.shortcut", "res5.main"], {"res3": (False, True), "res5": (True, False)}),
    ],
)
def test_places_select_where_lip_is_used(places, expect):
    backbone = build_backbone(lip_cfg(50, PLACES=places))
    if "stem" in expect:
        assert isinstance(backbone.stem, LIPStem if expect["stem"] else BasicStem)
    for stage in ("res3", "res4", "res5"):
        first = getattr(backbone, stage)[0]
        main, shortcut = expect.get(stage, (False, False))
        if not (main or shortcut):
            assert type(first) is BottleneckBlock
            continue
        assert (first.main_lip is not None, first.shortcut_lip is not None) == (main, shortcut)
        # a branch without LIP is the plain strided conv
        assert first.conv2.kernel_size == ((1, 1) if main else (3, 3))
        assert first.shortcut.stride == ((1, 1) if shortcut else (2, 2))
    out = backbone(torch.randn(1, 3, 64, 64))
    assert out["res5"].shape == (1, 2048, 2, 2)


def test_projection_logits_ablation_is_a_config():
    backbone = build_backbone(lip_cfg(50, BLOCK_LOGIT="projection", STEM_LOGIT="projection"))
    assert not any(isinstance(m, BottleneckTrunk) for m in backbone.modules())
    assert backbone.stem.lip.logit.conv.kernel_size == (1, 1)
    first = backbone.res3[0]
    assert first.main_lip.logit.conv.in_channels == first.conv1.out_channels
    assert first.shortcut_lip.logit.conv.in_channels == first.in_channels


def test_width_and_gate_coefficient_are_configurable():
    backbone = build_backbone(lip_cfg(18, BOTTLENECK_WIDTH=32, GATE_COEFF=4.0))
    assert backbone.res4[0].logit_trunk.conv2.out_channels == 32
    gates = [m.coeff for m in backbone.modules() if type(m).__name__ == "SoftGate"]
    assert len(gates) == 7 and set(gates) == {4.0}


def test_freeze_at_freezes_lip_with_its_stage():
    cfg = lip_cfg(18)
    cfg.MODEL.BACKBONE.FREEZE_AT = 2  # stem + res2
    backbone = build_backbone(cfg)
    assert not any(p.requires_grad for p in backbone.stem.parameters())
    assert not any(p.requires_grad for p in backbone.stem.lip.parameters())
    assert isinstance(backbone.stem.conv1.norm, FrozenBatchNorm2d)
    assert all(p.requires_grad for p in backbone.res3.parameters())
    # InstanceNorm inside logit modules is not BatchNorm: freezing leaves it as it is
    assert isinstance(backbone.stem.lip.logit.conv.norm, torch.nn.InstanceNorm2d)

    cfg.MODEL.BACKBONE.FREEZE_AT = 4  # stem, res2, res3, res4
    backbone = build_backbone(cfg)
    assert not any(p.requires_grad for p in backbone.res4[0].parameters())
    assert all(p.requires_grad for p in backbone.res5.parameters())


def test_train_frozen_lip_keeps_logit_modules_trainable():
    cfg = lip_cfg(18, TRAIN_FROZEN_LIP=True)
    cfg.MODEL.BACKBONE.FREEZE_AT = 3  # stem, res2, res3
    backbone = build_backbone(cfg)
    assert all(p.requires_grad for p in backbone.stem.lip.parameters())
    assert not backbone.stem.conv1.weight.requires_grad
    res3 = backbone.res3[0]
    assert all(p.requires_grad for p in res3.logit_trunk.parameters())
    assert all(p.requires_grad for p in res3.main_lip.parameters())
    assert not res3.conv1.weight.requires_grad and isinstance(res3.conv1.norm, FrozenBatchNorm2d)
    # and a gradient actually reaches the stem's logit module
    backbone(torch.randn(1, 3, 64, 64))["res5"].sum().backward()
    assert backbone.stem.lip.logit.conv.weight.grad.abs().sum() > 0
    assert backbone.stem.conv1.weight.grad is None


def test_fpn_builders():
    x = torch.randn(1, 3, 64, 96)
    cfg = lip_cfg(18, name="build_lip_resnet_fpn_backbone")
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    fpn = build_backbone(cfg)
    cfg = lip_cfg(18, name="build_retinanet_lip_resnet_fpn_backbone")
    cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]
    retina = build_backbone(cfg)
    assert {k: tuple(v.shape) for k, v in fpn(x).items()} == {
        "p2": (1, 256, 16, 24),
        "p3": (1, 256, 8, 12),
        "p4": (1, 256, 4, 6),
        "p5": (1, 256, 2, 3),
        "p6": (1, 256, 1, 2),
    }
    assert list(retina(x)) == ["p3", "p4", "p5", "p6", "p7"]
    assert retina.size_divisibility == fpn.size_divisibility == 32


@pytest.mark.parametrize(
    "key, value, message",
    [
        (
            "PLACES",
            ["stem", "res3.mian"],
            r"MODEL.LIP.PLACES entry = 'res3.mian' is not valid; "
            r"choose one of \['stem', 'res3.main'",
        ),
        (
            "STEM_LOGIT",
            "bottleneck",
            r"MODEL.LIP.STEM_LOGIT = 'bottleneck' is not valid; choose "
            r"one of \['simplified', 'projection'\]",
        ),
        ("BLOCK_LOGIT", "Bottleneck", r"MODEL.LIP.BLOCK_LOGIT = 'Bottleneck' is not valid"),
        ("IMPL", "cuda", r"MODEL.LIP.IMPL = 'cuda' is not valid; choose one of \['auto', "),
        ("BOTTLENECK_WIDTH", 0, r"MODEL.LIP.BOTTLENECK_WIDTH = 0 must be >= 1"),
        ("GATE_COEFF", -1.0, r"MODEL.LIP.GATE_COEFF = -1.0 must be > 0"),
    ],
)
def test_invalid_lip_values_fail_at_build_with_valid_choices(key, value, message):
    with pytest.raises(ValueError, match=message):
        build_backbone(lip_cfg(50, **{key: value}))


def test_invalid_depth_and_res5_dilation():
    with pytest.raises(
        ValueError,
        match=r"MODEL.RESNETS.DEPTH = 42 is not valid; choose one of "
        r"\[18, 34, 50, 101, 152\]",
    ):
        build_backbone(lip_cfg(42))
    cfg = lip_cfg(50)
    cfg.MODEL.RESNETS.RES5_DILATION = 2
    with pytest.raises(ValueError, match="RES5_DILATION = 2 makes res5 stride 1"):
        build_backbone(cfg)
    cfg.MODEL.LIP.PLACES = ["stem", "res3.main", "res3.shortcut", "res4.main", "res4.shortcut"]
    assert build_backbone(cfg).output_shape()["res5"].stride == 16


def test_input_channels_follow_input_shape():
    backbone = build_lip_backbone_with_channels(1)
    assert backbone.eval()(torch.randn(1, 1, 32, 32))["res5"].shape == (1, 512, 1, 1)


def build_lip_backbone_with_channels(channels):
    return lip_det.build_lip_resnet_backbone(lip_cfg(18), ShapeSpec(channels=channels))
