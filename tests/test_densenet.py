"""LIP-DenseNet-121 and its plain twin: registration, the published architecture (against a
reference written from its description), exact 2x2/2 LIP windows, shapes, FREEZE_AT, FPNs and
config validation. Tiny inputs and one thread: the machine is shared."""

import pytest
import torch
import torch.nn.functional as F
import torchvision
from _lip_densenet_reference import PublishedLIPDenseNet121, lip_parameter_names, randomise
from conftest import CONFIGS
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone

import lip_det
from lip_det.engine import get_lip_cfg, load_config
from lip_det.layers import LIP, available_implementations, lip2d, lip2d_window_softmax
from lip_det.modeling import DenseNet

PUBLISHED_FEATURES = 7_665_920  # the published LIP-DenseNet-121 without its classifier (BN)
PUBLISHED_TOTAL = 8_690_920  # with it
TORCHVISION_FEATURES = 6_953_856  # torchvision's densenet121().features
STAGES = ("dense2", "dense3", "dense4", "dense5")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def densenet_cfg(name="build_lip_densenet_backbone", norm="BN", depth=121, **lip):
    cfg = get_lip_cfg()
    cfg.MODEL.BACKBONE.NAME = name
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.DENSENET.DEPTH = depth
    cfg.MODEL.DENSENET.NORM = norm
    for key, value in lip.items():
        cfg.MODEL.LIP[key] = value
    return cfg


def count(module):
    return sum(p.numel() for p in module.parameters())


def test_import_registers_backbones():
    for name in (
        "build_lip_densenet_backbone",
        "build_lip_densenet_fpn_backbone",
        "build_retinanet_lip_densenet_fpn_backbone",
        "build_densenet_backbone",
        "build_densenet_fpn_backbone",
        "build_retinanet_densenet_fpn_backbone",
    ):
        assert BACKBONE_REGISTRY.get(name) is getattr(lip_det.modeling, name)


# --------------------------------------------------------------------------------------------------
# The published architecture


def test_reference_is_the_published_architecture():
    with torch.device("meta"):
        reference = PublishedLIPDenseNet121()
        plain = torchvision.models.densenet121()
    assert count(reference.features) == PUBLISHED_FEATURES
    assert count(reference) == PUBLISHED_TOTAL
    assert count(plain.features) == TORCHVISION_FEATURES
    # without its LIP modules it is torchvision's DenseNet-121, name for name
    lip = set(lip_parameter_names(reference))
    ours = {n: p.shape for n, p in reference.named_parameters() if n not in lip}
    assert ours == {n: p.shape for n, p in plain.named_parameters()}


def test_published_parameter_count_and_plain_twin():
    with torch.device("meta"):
        lip = build_backbone(densenet_cfg())
        plain = build_backbone(densenet_cfg("build_densenet_backbone"))
    assert count(lip) == PUBLISHED_FEATURES
    assert count(plain) == TORCHVISION_FEATURES
    # one module tree: the plain twin's names are the LIP model's minus its LIP modules
    lip_names = dict(lip.named_parameters())
    plain_names = dict(plain.named_parameters())
    assert set(plain_names) < set(lip_names)
    extra = {n for n in lip_names if n not in plain_names}
    assert all(".lip." in n or ".logit_trunk." in n for n in extra)
    assert sum(lip_names[n].numel() for n in extra) == PUBLISHED_FEATURES - TORCHVISION_FEATURES
    assert len([m for m in lip.modules() if isinstance(m, LIP)]) == 4


@pytest.mark.parametrize("depth", [169, 201])
def test_other_depths_match_torchvision(depth):
    with torch.device("meta"):
        plain = build_backbone(densenet_cfg("build_densenet_backbone", depth=depth))
        theirs = getattr(torchvision.models, f"densenet{depth}")()
    assert count(plain) == count(theirs.features)


@pytest.mark.parametrize("size", [(64, 64), (65, 67), (97, 70)])
def test_shapes_match_the_plain_twin_and_the_reference(size):
    x = torch.randn(1, 3, *size)
    lip = build_backbone(densenet_cfg()).eval()
    plain = build_backbone(densenet_cfg("build_densenet_backbone")).eval()
    reference = PublishedLIPDenseNet121().eval()
    with torch.no_grad():
        ours = {k: v.shape for k, v in lip(x).items()}
        twin = {k: v.shape for k, v in plain(x).items()}
        published = [t.shape for t in reference.stages(x)]
    assert ours == twin
    assert list(ours.values()) == published
    # named by stride, channels as published
    shapes = lip.output_shape()
    assert {k: (s.channels, s.stride) for k, s in shapes.items()} == {
        "dense2": (256, 4),
        "dense3": (512, 8),
        "dense4": (1024, 16),
        "dense5": (1024, 32),
    }
    h, w = size
    for name in STAGES:
        assert ours[name][1] == shapes[name].channels
        assert ours[name][2] <= -(-h // shapes[name].stride)  # never more than ceil(H / stride)


def test_dense5_is_normalised_and_rectified():
    backbone = build_backbone(densenet_cfg()).eval()
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 64, 64))
    assert out["dense5"].min() >= 0  # the final ReLU
    assert out["dense4"].min() < 0  # the other stages are the dense blocks' raw concatenation


def test_fresh_transition_lips_pool_as_the_plain_transitions():
    """A fresh LIP is average pooling, and the plain twin's weights load into the LIP model name
    by name: with LIP in the transitions only, the two compute the same features."""
    torch.manual_seed(0)
    plain = build_backbone(densenet_cfg("build_densenet_backbone")).eval()
    lip = build_backbone(
        densenet_cfg(DENSENET_PLACES=["transition1", "transition2", "transition3"])
    ).eval()
    incompatible = lip.load_state_dict(plain.state_dict(), strict=False)
    assert incompatible.unexpected_keys == []
    assert all(".lip." in k or ".logit_trunk." in k for k in incompatible.missing_keys)
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)  # (fresh BN: activations grow to 1e7)
    with torch.no_grad():
        ours, theirs = lip.double()(x), plain.double()(x)
    for name in STAGES:
        scale = theirs[name].abs().max()
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-10, atol=1e-10 * scale)


# --------------------------------------------------------------------------------------------------
# Exact 2x2/2 windows


def _blocks_softmax(x, logit):
    """LIP 2x2/2 with no padding written as a softmax over the 2x2 blocks themselves (rows 2i,
    2i+1, columns 2j, 2j+1): independent of unfold, of padding logic and of lip_det."""
    n, c, h, w = x.shape
    h, w = h // 2 * 2, w // 2 * 2

    def blocks(t):
        t = t[:, :, :h, :w].reshape(n, c, h // 2, 2, w // 2, 2)
        return t.permute(0, 1, 2, 4, 3, 5).reshape(n, c, h // 2, w // 2, 4)

    return (torch.softmax(blocks(logit), -1) * blocks(x)).sum(-1)


@pytest.mark.parametrize("impl", available_implementations("cpu"))
@pytest.mark.parametrize("size", [(6, 8), (7, 9), (5, 4)])
def test_lip2d_2x2_windows_are_exact(impl, size):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, *size, generator=g, dtype=torch.float64)
    logit = 12 * torch.rand(2, 3, *size, generator=g, dtype=torch.float64)
    out = lip2d(x, logit, 2, 2, 0, impl=impl)
    assert out.shape == F.avg_pool2d(x, 2, 2).shape
    torch.testing.assert_close(out, lip2d_window_softmax(x, logit, 2, 2, 0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out, _blocks_softmax(x, logit), rtol=1e-12, atol=1e-12)
    # float32, as the model runs
    out32 = lip2d(x.float(), logit.float(), 2, 2, 0, impl=impl)
    torch.testing.assert_close(out32, out.float(), rtol=1e-5, atol=1e-6)


def test_lip2d_2x2_window_is_not_shifted():
    """A logit spike at (1, 1) of a 4x4 input weighs only on output (0, 0): windows start at
    2i, as avg_pool2d's (the authors' CUDA kernel centres them at 2i - 1)."""
    x = torch.arange(16.0, dtype=torch.float64).view(1, 1, 4, 4)
    logit = torch.zeros_like(x)
    logit[..., 1, 1] = 40.0
    for impl in available_implementations("cpu"):
        out = lip2d(x, logit, 2, 2, 0, impl=impl)
        expected = F.avg_pool2d(x, 2, 2)
        expected[..., 0, 0] = x[..., 1, 1]
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", available_implementations("cpu"))
def test_lip2d_2x2_gradcheck(impl):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 2, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    logit = (3 * torch.randn(1, 2, 5, 6, generator=g, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: lip2d(a, b, 2, 2, 0, impl=impl), (x, logit))


def test_converted_reference_matches_in_float64_end_to_end():
    """The reference (random, non-trivial weights) loaded by name into our LIP-DenseNet-121
    gives the same dense2..dense5 (the converter's own test does this through the files)."""
    from lip_det.checkpoint.convert_densenet import convert_state_dict

    reference = randomise(PublishedLIPDenseNet121(), torch.Generator().manual_seed(0))
    ours = build_backbone(densenet_cfg(norm="FrozenBN")).eval()
    ours.load_state_dict(convert_state_dict(reference.state_dict()).weights, strict=True)
    x = torch.randn(1, 3, 48, 56, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        got = ours.double()(x)
        expected = reference.double().stages(x)
    for name, want in zip(STAGES, expected):
        torch.testing.assert_close(got[name], want, rtol=1e-10, atol=1e-10 * want.abs().max())


# --------------------------------------------------------------------------------------------------
# Config: places, freezing, FPNs, validation


@pytest.mark.parametrize(
    "places, lips",
    [
        ([], 0),
        (["stem"], 1),
        (["transition2"], 1),
        (["stem", "transition1", "transition2", "transition3"], 4),
    ],
)
def test_places_select_where_lip_is_used(places, lips):
    with torch.device("meta"):
        backbone = build_backbone(densenet_cfg(DENSENET_PLACES=places))
    assert len([m for m in backbone.modules() if isinstance(m, LIP)]) == lips
    assert (backbone.stem.__class__.__name__ == "LIPStem") == ("stem" in places)
    for index in (1, 2, 3):
        transition = getattr(backbone, f"dense{index + 2}").transition  # transition1 opens dense3
        assert (transition.lip is not None) == (f"transition{index}" in places)


def test_logit_modules_follow_the_lip_keys():
    with torch.device("meta"):
        backbone = build_backbone(
            densenet_cfg(BLOCK_LOGIT="projection", STEM_LOGIT="projection", GATE_COEFF=4.0)
        )
        wide = build_backbone(densenet_cfg(BOTTLENECK_WIDTH=64))
    transition = backbone.dense3.transition
    assert transition.logit_trunk is None and transition.lip.logit.conv.kernel_size == (1, 1)
    assert backbone.stem.lip.logit.conv.kernel_size == (1, 1)
    assert {m.coeff for m in backbone.modules() if type(m).__name__ == "SoftGate"} == {4.0}
    assert wide.dense4.transition.logit_trunk.conv2.out_channels == 64
    lip = wide.dense4.transition.lip
    assert (lip.kernel_size, lip.stride, lip.padding) == (2, 2, 0)
    assert (wide.stem.lip.kernel_size, wide.stem.lip.stride, wide.stem.lip.padding) == (3, 2, 1)


def test_freeze_at_freezes_lip_with_its_stage():
    cfg = densenet_cfg()
    cfg.MODEL.BACKBONE.FREEZE_AT = 2  # stem + dense2
    backbone = build_backbone(cfg)
    assert not any(p.requires_grad for p in backbone.stem.parameters())
    assert not any(p.requires_grad for p in backbone.dense2.parameters())
    assert isinstance(backbone.stem.conv1.norm, FrozenBatchNorm2d)
    assert isinstance(backbone.dense2.denselayer6.norm2, FrozenBatchNorm2d)
    assert isinstance(backbone.stem.lip.logit.conv.norm, torch.nn.InstanceNorm2d)
    # transition1 (and its LIP) opens dense3, which trains
    assert all(p.requires_grad for p in backbone.dense3.parameters())
    assert isinstance(backbone.dense3.transition.norm, torch.nn.BatchNorm2d)

    cfg.MODEL.BACKBONE.FREEZE_AT = 5
    backbone = build_backbone(cfg)
    assert not any(p.requires_grad for p in backbone.parameters())
    assert isinstance(backbone.dense5.norm, FrozenBatchNorm2d)


def test_train_frozen_lip_keeps_logit_modules_trainable():
    cfg = densenet_cfg(TRAIN_FROZEN_LIP=True)
    cfg.MODEL.BACKBONE.FREEZE_AT = 3  # stem, dense2, dense3
    backbone = build_backbone(cfg)
    transition = backbone.dense3.transition
    for module in (backbone.stem.lip, transition.lip, transition.logit_trunk):
        assert all(p.requires_grad for p in module.parameters())
    assert not backbone.stem.conv1.weight.requires_grad
    assert not transition.conv.weight.requires_grad
    assert isinstance(transition.norm, FrozenBatchNorm2d)
    backbone(torch.randn(1, 3, 64, 64))["dense5"].sum().backward()
    # (the trunk's gradient is zero until the zero-filled head has moved)
    assert transition.lip.logit.conv.weight.grad.abs().sum() > 0
    assert backbone.stem.lip.logit.conv.weight.grad.abs().sum() > 0
    assert transition.conv.weight.grad is None


def test_fpn_builders():
    x = torch.randn(1, 3, 64, 96)
    cfg = densenet_cfg("build_lip_densenet_fpn_backbone")
    cfg.MODEL.FPN.IN_FEATURES = list(STAGES)
    fpn = build_backbone(cfg)
    cfg = densenet_cfg("build_retinanet_densenet_fpn_backbone")
    cfg.MODEL.DENSENET.OUT_FEATURES = ["dense3", "dense4", "dense5"]
    cfg.MODEL.FPN.IN_FEATURES = ["dense3", "dense4", "dense5"]
    retina = build_backbone(cfg)
    assert {k: tuple(v.shape) for k, v in fpn(x).items()} == {
        "p2": (1, 256, 16, 24),
        "p3": (1, 256, 8, 12),
        "p4": (1, 256, 4, 6),
        "p5": (1, 256, 2, 3),
        "p6": (1, 256, 1, 2),
    }
    assert {k: tuple(v.shape[2:]) for k, v in retina(x).items()} == {
        "p3": (8, 12),
        "p4": (4, 6),
        "p5": (2, 3),
        "p6": (1, 2),
        "p7": (1, 1),
    }
    assert retina.size_divisibility == fpn.size_divisibility == 32
    assert isinstance(retina.bottom_up, DenseNet)
    assert "dense2" not in retina.bottom_up.output_shape()
    for name in ("build_densenet_fpn_backbone", "build_retinanet_lip_densenet_fpn_backbone"):
        cfg.MODEL.BACKBONE.NAME = name
        with torch.device("meta"):
            assert isinstance(build_backbone(cfg).bottom_up, DenseNet)


def test_norms_and_input_channels():
    cfg = densenet_cfg(norm="GN")
    with torch.device("meta"):
        backbone = build_backbone(cfg)
    assert isinstance(backbone.dense4.denselayer3.norm1, torch.nn.GroupNorm)
    backbone = lip_det.modeling.build_lip_densenet_backbone(densenet_cfg(), ShapeSpec(channels=1))
    assert backbone.eval()(torch.randn(1, 1, 32, 32))["dense5"].shape == (1, 1024, 1, 1)


@pytest.mark.parametrize(
    "section, key, value, message",
    [
        ("LIP", "DENSENET_PLACES", ["stem", "transiton1"],
         r"MODEL.LIP.DENSENET_PLACES entry = 'transiton1' is not valid; choose one of "
         r"\['stem', 'transition1', 'transition2', 'transition3'\]; did you mean 'transition1'"),
        ("LIP", "BLOCK_LOGIT", "Bottleneck", r"MODEL.LIP.BLOCK_LOGIT = 'Bottleneck' is not valid"),
        ("DENSENET", "DEPTH", 161,
         r"MODEL.DENSENET.DEPTH = 161 is not valid; choose one of \[121, 169, 201\]"),
        ("DENSENET", "OUT_FEATURES", ["res5"],
         r"MODEL.DENSENET.OUT_FEATURES entry = 'res5' is not valid; choose one of \['stem', "
         r"'dense2', 'dense3', 'dense4', 'dense5'\]"),
        ("DENSENET", "GROWTH_RATE", 0, r"MODEL.DENSENET.GROWTH_RATE = 0 must be >= 1"),
    ],
)  # fmt: skip
def test_invalid_values_fail_at_build_with_valid_choices(section, key, value, message):
    cfg = densenet_cfg()
    cfg.MODEL[section][key] = value
    with pytest.raises(ValueError, match=message), torch.device("meta"):
        build_backbone(cfg)


def test_the_plain_twin_ignores_lip_places():
    cfg = densenet_cfg("build_densenet_backbone", DENSENET_PLACES=["stem"])
    with torch.device("meta"):
        assert not any(isinstance(m, LIP) for m in build_backbone(cfg).modules())


# --------------------------------------------------------------------------------------------------
# Configs (tests/test_configs.py trains one step and infers with each)


def _flatten(cfg, prefix=""):
    out = {}
    for key, value in cfg.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _load(name):
    return _flatten(load_config(str(CONFIGS / "COCO-Detection" / name)))


def test_lip_and_plain_densenet_recipes_differ_only_in_backbone():
    lip = _load("faster_rcnn_LIP_DenseNet_121_FPN_1x.yaml")
    plain = _load("faster_rcnn_DenseNet_121_FPN_1x.yaml")
    assert {k for k in lip if lip[k] != plain[k]} == {"MODEL.BACKBONE.NAME", "MODEL.WEIGHTS"}
    assert (lip["MODEL.BACKBONE.NAME"], plain["MODEL.BACKBONE.NAME"]) == (
        "build_lip_densenet_fpn_backbone",
        "build_densenet_fpn_backbone",
    )
    assert (lip["MODEL.WEIGHTS"], plain["MODEL.WEIGHTS"]) == (
        "weights/LIP-DenseNet-121.pkl",
        "weights/DenseNet-121-torchvision.pkl",
    )
    # the ResNet configs' recipe: detectron2's 1x schedule, 16 images at lr 0.02, FrozenBN
    resnet = _load("faster_rcnn_LIP_R_50_FPN_1x.yaml")
    for key in ("SOLVER.STEPS", "SOLVER.MAX_ITER", "SOLVER.IMS_PER_BATCH", "SOLVER.BASE_LR",
                "INPUT.FORMAT", "MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD", "MODEL.BACKBONE.FREEZE_AT",
                "INPUT.MIN_SIZE_TRAIN"):  # fmt: skip
        assert lip[key] == resnet[key], key
    assert lip["MODEL.DENSENET.NORM"] == resnet["MODEL.RESNETS.NORM"] == "FrozenBN"
    assert lip["MODEL.FPN.IN_FEATURES"] == list(STAGES)
    assert lip["MODEL.LIP.DENSENET_PLACES"] == ["stem", "transition1", "transition2", "transition3"]

    retina = _load("retinanet_LIP_DenseNet_121_FPN_1x.yaml")
    assert retina["MODEL.BACKBONE.NAME"] == "build_retinanet_lip_densenet_fpn_backbone"
    assert retina["MODEL.FPN.IN_FEATURES"] == ["dense3", "dense4", "dense5"]
    assert retina["MODEL.WEIGHTS"] == "weights/LIP-DenseNet-121.pkl"
