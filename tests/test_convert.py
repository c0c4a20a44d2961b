"""lip_det.convert on whole networks.

Published LIP-ResNets: a reference model written from the spec (docs/lip-architecture.md),
independent of lip_det's modules, is saved in the published layout, converted, loaded through
detectron2's checkpointer, and must compute the same res2..res5. Plain ResNets (torchvision,
detectron2's MSRA caffe2 .pkl): every tensor with a place is loaded, the plain twins reproduce
their source, and the 3x3 -> 1x1 approximation is exact where it claims to be.
"""

import importlib.util
import pickle
import re
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.layers import Conv2d, FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import build_backbone, build_model
from detectron2.modeling.backbone.resnet import build_resnet_backbone
from torch import nn

from lip_det import add_lip_config
from lip_det.checkpoint.convert import (
    BASIC_BLOCK_NOTE,
    MSRA_INPUT,
    TAP_SUM,
    TORCHVISION_INPUT,
    ConversionError,
    convert_file,
    convert_state_dict,
    read_checkpoint,
)

GATE_COEFF = 12.0
TRUNK_WIDTH = 128
BLOCKS = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}
TOOL = Path(__file__).resolve().parents[1] / "tools" / "convert_lip_to_d2.py"


# --------------------------------------------------------------------------------------------------
# The published architecture, from the spec; attribute names give the published checkpoint layout.


def lip_pool(x, logit):
    """The spec's operator as written: logits are in (0, 12), so exp() needs no overflow guard."""
    importance = logit.exp()
    return F.avg_pool2d(x * importance, 3, 2, 1) / F.avg_pool2d(importance, 3, 2, 1)


class GatedLogit(nn.Module):
    """conv -> InstanceNorm(affine) -> 12 * sigmoid."""

    def __init__(self, in_channels, out_channels, kernel_size):
        super().__init__()
        padding = kernel_size // 2
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, bias=False)
        self.bn = nn.InstanceNorm2d(out_channels, affine=True)

    def forward(self, x):
        return GATE_COEFF * torch.sigmoid(self.bn(self.conv(x)))


class StemLIP(nn.Module):  # maxpool.logit.*
    def __init__(self, channels):
        super().__init__()
        self.logit = GatedLogit(channels, channels, 3)

    def forward(self, x):
        return lip_pool(x, self.logit(x))


class HeadLIP(nn.Module):  # *.postprocessing.*: one head of the bottleneck logit module
    def __init__(self, channels):
        super().__init__()
        self.postprocessing = GatedLogit(TRUNK_WIDTH, channels, 1)

    def forward(self, x, shared):
        return lip_pool(x, self.postprocessing(shared))


class SharedTrunk(nn.Module):  # bottleneck_shared.logit.*
    def __init__(self, in_channels):
        super().__init__()
        w = TRUNK_WIDTH
        self.logit = nn.Sequential(OrderedDict(
            conv1=nn.Conv2d(in_channels, w, 1, bias=False), bn1=nn.InstanceNorm2d(w, affine=True),
            relu1=nn.ReLU(), conv2=nn.Conv2d(w, w, 3, padding=1, bias=False),
            bn2=nn.InstanceNorm2d(w, affine=True), relu2=nn.ReLU(),
        ))  # fmt: skip

    def forward(self, x):
        return self.logit(x)


class Bottleneck(nn.Module):
    def __init__(self, in_channels, planes, stride):
        super().__init__()
        out_channels = 4 * planes
        self.stride = stride
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride == 2:  # LIP in both branches; the main branch's conv2 is LIP + 1x1
            self.bottleneck_shared = SharedTrunk(in_channels)
            self.conv2 = nn.Sequential(HeadLIP(planes), nn.Conv2d(planes, planes, 1, bias=False))
            self.downsample = nn.ModuleDict(OrderedDict(
                lip=HeadLIP(in_channels), conv=nn.Conv2d(in_channels, out_channels, 1, bias=False),
                bn=nn.BatchNorm2d(out_channels),
            ))  # fmt: skip
        else:
            self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
            if in_channels != out_channels:
                self.downsample = nn.ModuleDict(OrderedDict(
                    conv=nn.Conv2d(in_channels, out_channels, 1, bias=False),
                    bn=nn.BatchNorm2d(out_channels),
                ))  # fmt: skip
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        if self.stride == 2:
            shared = self.bottleneck_shared(x)
            out = self.conv2[1](self.conv2[0](out, shared))
        else:
            out = self.conv2(out)
        out = self.bn3(self.conv3(F.relu(self.bn2(out))))
        shortcut = x
        if self.downsample is not None:
            if self.stride == 2:
                shortcut = self.downsample["lip"](x, shared)
            shortcut = self.downsample["bn"](self.downsample["conv"](shortcut))
        return F.relu(out + shortcut)


class PublishedLIPResNet(nn.Module):
    def __init__(self, depth):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = StemLIP(64)
        in_channels = 64
        for index, (num_blocks, planes) in enumerate(zip(BLOCKS[depth], (64, 128, 256, 512))):
            stride = 1 if index == 0 else 2
            blocks = [Bottleneck(in_channels, planes, stride)]
            blocks += [Bottleneck(4 * planes, planes, 1) for _ in range(num_blocks - 1)]
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))
            in_channels = 4 * planes
        self.fc = nn.Linear(2048, 1000)

    def forward(self, x):
        """-> the outputs of layer1..layer4 (detectron2's res2..res5)."""
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        outputs = []
        for index in range(1, 5):
            x = getattr(self, f"layer{index}")(x)
            outputs.append(x)
        return outputs


def randomise(model, generator):
    """Random weights everywhere (LIP heads included, which start at zero in the paper; logits
    then span most of (0, 12)) and BatchNorm statistics measured on a random batch, then
    perturbed: every LIP and BN term is non-trivial, and activations stay of order one.

    The last BN of each residual branch gets a small scale, as in trained ResNets: with full-size
    random branches every block amplifies float32 rounding by ~1.3x, and two exact float32
    implementations (even the reference against itself in float64) drift 1e-4 apart by res5."""
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.Conv2d):
                std = (2.0 / module.weight[0].numel()) ** 0.5
                module.weight.normal_(0.0, std, generator=generator)
            elif isinstance(module, (nn.BatchNorm2d, nn.InstanceNorm2d)):
                low, high = (0.1, 0.3) if name.endswith(".bn3") else (0.5, 1.5)
                module.weight.uniform_(low, high, generator=generator)
                module.bias.normal_(0.0, 0.2, generator=generator)
        batch_norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        for bn in batch_norms:
            bn.momentum = 1.0  # running statistics = this batch's
        model.train()
        model(torch.randn(2, 3, 64, 64, generator=generator))
        for bn in batch_norms:
            bn.momentum = 0.1
            bn.running_mean.add_(0.1 * torch.randn(bn.num_features, generator=generator))
            bn.running_var.mul_(
                torch.empty(bn.num_features).uniform_(0.7, 1.4, generator=generator)
            )
            bn.num_batches_tracked.fill_(450_000)
    return model.eval()


def rcnn_cfg(lip=True, stride_in_1x1=False):
    """The parts of lip_det's faster_rcnn_(LIP_)R_50_FPN configs that matter for loading weights
    (FrozenBN, detectron2's default)."""
    cfg = get_cfg()
    add_lip_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.NAME = f"build_{'lip_' if lip else ''}resnet_fpn_backbone"
    cfg.MODEL.RESNETS.DEPTH = 50
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = stride_in_1x1
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[32], [64], [128], [256], [512]]
    cfg.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 2
    return cfg


def load_with_detectron2(model, path):
    """DetectionCheckpointer.load's two steps, keeping the incompatible keys it only logs."""
    checkpointer = DetectionCheckpointer(model)
    return checkpointer._load_model(checkpointer._load_file(str(path)))


def load_tool():
    spec = importlib.util.spec_from_file_location("convert_lip_to_d2", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # On a few shared cores, OpenMP threads of one process spin against each other's: a 64x64
    # R-50 forward takes ~5 s with 2 threads on a busy 2-core machine, 0.1 s with 1.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    reference = randomise(PublishedLIPResNet(50), torch.Generator().manual_seed(0))
    path = tmp_path_factory.mktemp("published") / "lip_resnet-50.pth"
    torch.save(reference.state_dict(), path)
    return reference, path


# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth, params", [(50, 21_815_232), (101, 40_807_360), (152, 56_451_008)])
def test_reference_has_the_published_size_and_converts_at_every_depth(depth, params):
    with torch.device("meta"):
        reference = PublishedLIPResNet(depth)
    named = dict(reference.named_parameters())
    # the spec's counts (no fc) check that the reference really is the published architecture
    assert sum(p.numel() for n, p in named.items() if not n.startswith("fc.")) == params
    lip = sum(p.numel() for n, p in named.items() if ".logit." in n or ".postprocessing." in n)
    assert lip == 1_059_712

    state = reference.state_dict()
    conversion = convert_state_dict(state, source="lip")
    assert (conversion.source, conversion.depth) == ("lip", depth)
    assert len(conversion.mapped) + len(conversion.dropped) == len(state)
    assert not conversion.approximated and not conversion.left_at_init and not conversion.filled
    buffers = ("running_mean", "running_var")
    weights = conversion.weights.items()
    assert sum(t.numel() for n, t in weights if not n.endswith(buffers)) == params


def test_converted_lip_resnet50_reproduces_the_published_network(published, tmp_path):
    reference, src = published
    dst = tmp_path / "LIP-R-50.pkl"
    conversion = convert_file(src, dst, source="lip")

    source_names = list(reference.state_dict())
    counters = {n for n in source_names if n.endswith(".num_batches_tracked")}
    assert set(conversion.dropped) == {"fc.weight", "fc.bias"} | counters
    assert set(conversion.mapped) == set(source_names) - set(conversion.dropped)
    assert conversion.mapped["layer2.0.conv2.0.postprocessing.bn.bias"] == (
        "res3.0.main_lip.logit.conv.norm.bias"
    )
    assert conversion.mapped["layer4.0.downsample.lip.postprocessing.conv.weight"] == (
        "res5.0.shortcut_lip.logit.conv.weight"
    )

    with open(dst, "rb") as f:
        data = pickle.load(f)
    assert data["matching_heuristics"] is False
    model = build_model(rcnn_cfg())
    expected_names = {"backbone.bottom_up." + n for n in model.backbone.bottom_up.state_dict()}
    assert set(data["model"]) == expected_names  # exact names, nothing else

    incompatible = load_with_detectron2(model, dst)
    assert incompatible.unexpected_keys == [] and incompatible.incorrect_shapes == []
    assert [k for k in incompatible.missing_keys if k.startswith("backbone.bottom_up.")] == []

    model.eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model.backbone.bottom_up(x)
        theirs = reference(x)
    for name, expected in zip(("res2", "res3", "res4", "res5"), theirs):
        scale = expected.abs().max().item()
        assert scale > 0.1  # the comparison is not between vanishing activations
        torch.testing.assert_close(ours[name], expected, rtol=1e-5, atol=1e-5 * scale)


def test_tool_reports_what_was_dropped_and_writes_other_prefixes(published, tmp_path, capsys):
    _, src = published
    dst = tmp_path / "bare.pkl"
    assert load_tool().main([str(src), str(dst), "--prefix", "backbone."]) == 0
    out = capsys.readouterr().out
    assert "a published LIP-ResNet-50" in out
    assert "dropped fc.weight, fc.bias: the ImageNet classifier" in out
    assert "dropped *.num_batches_tracked (53): BatchNorm's batch counter" in out
    assert 'expects INPUT.FORMAT "RGB", MODEL.PIXEL_MEAN [123.675, 116.28, 103.53]' in out
    with open(dst, "rb") as f:
        names = list(pickle.load(f)["model"])
    assert names[0] == "backbone.stem.conv1.weight"
    assert all(n.startswith("backbone.") and not n.startswith("backbone.bottom_up.") for n in names)


def test_tool_fails_with_one_line_on_the_wrong_depth(published, tmp_path, capsys):
    _, src = published
    dst = tmp_path / "LIP-R-101.pkl"
    assert load_tool().main([str(src), str(dst), "--from", "lip", "--depth", "101"]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"error: {src}: expected a depth-101 ResNet, but the file holds a ResNet-50 (blocks per "
        "stage [3, 4, 6, 3]; depth 101 has [3, 4, 23, 3])\n"
    )
    assert not dst.exists()


# --------------------------------------------------------------------------------------------------
# Wrong files, on meta-device state dicts (names and shapes are all that matter here)


@pytest.fixture(scope="module")
def meta_state():
    with torch.device("meta"):
        return PublishedLIPResNet(50).state_dict()


def test_plain_resnet_where_lip_weights_were_expected():
    with torch.device("meta"):
        state = torchvision.models.resnet50().state_dict()
    with pytest.raises(ConversionError) as e:
        convert_state_dict(state, source="lip", origin="resnet50.pth")
    assert str(e.value) == (
        "resnet50.pth: expected a published LIP-ResNet checkpoint, found a plain torchvision "
        "ResNet-50; to initialise a LIP-ResNet from it, use --from torchvision"
    )


def test_lip_weights_where_a_plain_resnet_was_expected(meta_state):
    with pytest.raises(ConversionError) as e:
        convert_state_dict(meta_state, source="torchvision", origin="lip.pth")
    assert str(e.value) == (
        "lip.pth: expected a plain torchvision ResNet checkpoint, found a published "
        "LIP-ResNet-50; use --from lip"
    )
    with pytest.raises(ConversionError) as e:
        convert_state_dict(meta_state, plain=True, origin="lip.pth")
    assert str(e.value).startswith(
        "lip.pth: a plain ResNet was asked for (--plain), but this is a LIP-ResNet-50 checkpoint"
    )


def test_missing_unmapped_and_misshapen_tensors_are_named(meta_state):
    state = dict(meta_state)
    del state["layer3.0.downsample.lip.postprocessing.bn.bias"]
    state["layer2.0.conv2.2.weight"] = torch.empty(128, 128, 1, 1, device="meta")
    state["layer1.0.conv1.weight"] = torch.empty(64, 64, 3, 3, device="meta")
    with pytest.raises(ConversionError) as e:
        convert_state_dict(state, origin="lip.pth")
    assert str(e.value) == (
        "lip.pth: 1 tensor(s) with no place in a LIP-ResNet-50: layer2.0.conv2.2.weight; "
        "1 tensor(s) of the wrong shape: layer1.0.conv1.weight (64, 64, 3, 3) for "
        "res2.0.conv1.weight (64, 64, 1, 1); 2 LIP-ResNet-50 tensor(s) not in the file "
        "(detectron2 names): res2.0.conv1.weight, res4.0.shortcut_lip.logit.conv.norm.bias"
    )


# --------------------------------------------------------------------------------------------------
# torchvision ResNets


def detector_backbone(cfg):
    """Just the backbone of a detectron2 model, under the model's own name ("backbone.")."""
    model = nn.Module()
    model.backbone = build_backbone(cfg)
    return model.eval()


def torchvision_features(model, x):
    """torchvision ResNet -> the outputs of layer1..layer4."""
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    outputs = []
    for index in range(1, 5):
        x = getattr(model, f"layer{index}")(x)
        outputs.append(x)
    return outputs


def assert_features_match(ours, theirs):
    for name, expected in zip(("res2", "res3", "res4", "res5"), theirs):
        scale = expected.abs().max().item()
        assert scale > 0.1  # the comparison is not between vanishing activations
        torch.testing.assert_close(ours[name], expected, rtol=1e-5, atol=1e-5 * scale)


def bottom_up_load_report(incompatible):
    """detectron2's missing keys inside the (LIP-)ResNet, and any other incompatibility."""
    prefix = "backbone.bottom_up."
    assert incompatible.unexpected_keys == [] and incompatible.incorrect_shapes == []
    return {k[len(prefix) :] for k in incompatible.missing_keys if k.startswith(prefix)}


@pytest.fixture(scope="module")
def torchvision_r50(tmp_path_factory):
    model = randomise(torchvision.models.resnet50(), torch.Generator().manual_seed(2))
    path = tmp_path_factory.mktemp("torchvision") / "resnet50-0676ba61.pth"
    torch.save(model.state_dict(), path)
    return model, path


@pytest.fixture(scope="module")
def lip_from_torchvision(torchvision_r50, tmp_path_factory):
    _, src = torchvision_r50
    dst = tmp_path_factory.mktemp("converted") / "LIP-R-50-from-torchvision.pkl"
    conversion = convert_file(src, dst, source="torchvision", depth=50)
    model = detector_backbone(rcnn_cfg())
    incompatible = load_with_detectron2(model, dst)
    return conversion, model.backbone.bottom_up, incompatible


def test_torchvision_plain_twin_reproduces_torchvision(torchvision_r50, tmp_path):
    reference, src = torchvision_r50
    dst = tmp_path / "R-50-torchvision.pkl"
    conversion = convert_file(src, dst, plain=True)
    assert (conversion.source, conversion.target) == ("torchvision", "ResNet-50")
    assert not conversion.approximated and not conversion.left_at_init
    assert "load into a config with MODEL.RESNETS.STRIDE_IN_1X1 False" in conversion.notes

    model = detector_backbone(rcnn_cfg(lip=False))
    assert bottom_up_load_report(load_with_detectron2(model, dst)) == set()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert_features_match(model.backbone.bottom_up(x), torchvision_features(reference, x))


def test_torchvision_fills_every_lip_resnet_tensor_that_has_a_place(
    torchvision_r50, lip_from_torchvision
):
    reference, _ = torchvision_r50
    conversion, bottom_up, incompatible = lip_from_torchvision
    source = reference.state_dict()
    assert set(conversion.dropped) == {"fc.weight", "fc.bias"} | {
        n for n in source if n.endswith(".num_batches_tracked")
    }
    assert set(conversion.mapped) == set(source) - set(conversion.dropped)
    assert conversion.approximated == {f"res{s}.0.conv2.weight": TAP_SUM for s in (3, 4, 5)}

    ours = bottom_up.state_dict()
    for source_name, name in conversion.mapped.items():
        expected = source[source_name]
        if name in conversion.approximated:
            expected = expected.sum(dim=(2, 3), keepdim=True)
        assert torch.equal(ours[name], expected), name

    # The LIP modules are left out of the file, and detectron2 reports exactly them as missing.
    lip_names = {n for n in ours if ".logit_trunk." in n or "lip.logit." in n}
    assert len(lip_names) == 3 + 3 * (6 + 3 + 3)  # stem; trunk and two heads in res3..res5
    assert bottom_up_load_report(incompatible) == lip_names == set(conversion.left_at_init)


def test_lip_modules_keep_their_average_pooling_initialisation(lip_from_torchvision):
    _, bottom_up, _ = lip_from_torchvision
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(1, 64, 9, 9, generator=generator)
    average = F.avg_pool2d(x, 3, 2, 1, count_include_pad=False)
    with torch.no_grad():
        torch.testing.assert_close(bottom_up.stem.lip(x), average)
        block = bottom_up.res4[0]
        x = torch.randn(1, 512, 9, 9, generator=generator)
        shared = block.logit_trunk(x)
        average = F.avg_pool2d(x, 3, 2, 1, count_include_pad=False)
        torch.testing.assert_close(block.shortcut_lip(x, shared), average)


def test_summed_taps_are_exact_for_locally_constant_input(torchvision_r50, lip_from_torchvision):
    reference, _ = torchvision_r50
    _, bottom_up, _ = lip_from_torchvision
    generator = torch.Generator().manual_seed(5)
    for ours, theirs in ((bottom_up.res3[0], reference.layer2[0]),
                         (bottom_up.res5[0], reference.layer4[0])):  # fmt: skip
        # constant per channel; the plain block's first output row and column read its zero
        # padding, which LIP's weighted mean over the valid part of the window never does
        x = torch.rand(1, ours.in_channels, 1, 1, generator=generator).expand(-1, -1, 8, 8)
        with torch.no_grad():
            expected = theirs(x)[..., 1:, 1:]
            got = ours(x)[..., 1:, 1:]
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max())
        # on a generic input the 1x1 is only an approximation of the strided 3x3
        x = torch.rand(1, ours.in_channels, 8, 8, generator=generator)
        with torch.no_grad():
            assert not torch.allclose(ours(x)[..., 1:, 1:], theirs(x)[..., 1:, 1:], rtol=1e-3)


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_torchvision_depths_convert_completely(depth):
    with torch.device("meta"):
        state = getattr(torchvision.models, f"resnet{depth}")().state_dict()
    for plain in (False, True):
        conversion = convert_state_dict(state, plain=plain)
        assert conversion.depth == depth
        assert len(conversion.mapped) + len(conversion.dropped) == len(state)
        assert {n for n in conversion.dropped if "num_batches" not in n} == {"fc.weight", "fc.bias"}
        lip_bottleneck = depth >= 50 and not plain
        assert len(conversion.approximated) == (3 if lip_bottleneck else 0)
        assert bool(conversion.left_at_init) is not plain
        assert (BASIC_BLOCK_NOTE in conversion.notes) == (depth < 50 and not plain)
    with pytest.raises(ConversionError, match="already expects RGB input"):
        convert_state_dict(state, keep_input_format=True)  # an option for caffe2 weights only


# --------------------------------------------------------------------------------------------------
# detectron2's MSRA R-50.pkl (caffe2 names, BGR input, stride in the 1x1 conv)

C2_BRANCHES = {"conv1": "branch2a", "conv2": "branch2b", "conv3": "branch2c", "shortcut": "branch1"}
C2_FIELDS = {"weight": "w", "norm.weight": "bn_s", "norm.bias": "bn_b"}


def caffe2_name(name):
    """detectron2 ResNet name -> the name in an MSRA caffe2 .pkl (None: no such blob)."""
    stem = {"stem.conv1.weight": "conv1_w", "stem.conv1.norm.weight": "res_conv1_bn_s",
            "stem.conv1.norm.bias": "res_conv1_bn_b"}  # fmt: skip
    if name in stem:
        return stem[name]
    match = re.fullmatch(
        r"res(\d)\.(\d+)\.(conv\d|shortcut)\.(weight|norm\.weight|norm\.bias)", name
    )
    if match is None:
        return None  # running statistics: caffe2 folded them into the affine scale and bias
    return f"res{match[1]}_{match[2]}_{C2_BRANCHES[match[3]]}_{C2_FIELDS[match[4]]}"


def msra_r50(generator):
    """A random plain detectron2 R-50 as MSRA's weights would build it, and its caffe2 blobs,
    including the extras of a real R-50.pkl: fc1000, momentum buffers and a conv1 bias."""
    reference = build_resnet_backbone(
        rcnn_cfg(lip=False, stride_in_1x1=True), ShapeSpec(channels=3)
    )
    with torch.no_grad():
        for name, module in reference.named_modules():
            if isinstance(module, Conv2d):
                std = (2.0 / module.weight[0].numel()) ** 0.5
                module.weight.normal_(0.0, std, generator=generator)
            elif isinstance(module, FrozenBatchNorm2d):
                low, high = (0.1, 0.3) if name.endswith("conv3.norm") else (0.5, 1.5)
                module.weight.uniform_(low, high, generator=generator)
                module.bias.normal_(0.0, 0.2, generator=generator)
    blobs = {}
    for name, value in reference.state_dict().items():
        if caffe2_name(name) is not None:
            blobs[caffe2_name(name)] = value.numpy().copy()
    # conv1 with a bias c, compensated in its BN so that the function is the reference's
    conv_bias = torch.randn(64, generator=generator)
    blobs["conv1_b"] = conv_bias.numpy()
    stem_norm = reference.stem.conv1.norm
    blobs["res_conv1_bn_b"] = (stem_norm.bias - stem_norm.weight * conv_bias).numpy()
    blobs["fc1000_w"] = torch.randn(1000, 2048, generator=generator).numpy()
    blobs["fc1000_b"] = torch.zeros(1000).numpy()
    blobs["conv1_w_momentum"] = torch.zeros(64, 3, 7, 7).numpy()
    return reference.eval(), blobs


def test_msra_pkl_gives_plain_and_lip_weights_for_rgb_torchvision_input(tmp_path):
    reference, blobs = msra_r50(torch.Generator().manual_seed(6))
    src, dst = tmp_path / "R-50.pkl", tmp_path / "R-50-msra.pkl"
    with open(src, "wb") as f:
        pickle.dump(blobs, f, protocol=4)  # a plain pickle of arrays, like Detectron's files
    conversion = convert_file(src, dst, plain=True)
    assert conversion.source == "msra" and conversion.input == TORCHVISION_INPUT
    assert conversion.dropped == {
        "fc1000_w": "the ImageNet classifier; a detector has no place for it",
        "fc1000_b": "the ImageNet classifier; a detector has no place for it",
        "conv1_w_momentum": "an SGD momentum buffer, not a weight",
    }
    assert conversion.mapped["conv1_b"] == "stem.conv1.norm.running_mean"
    assert "load into a config with MODEL.RESNETS.STRIDE_IN_1X1 True" in conversion.notes

    model = detector_backbone(rcnn_cfg(lip=False, stride_in_1x1=True))
    assert bottom_up_load_report(load_with_detectron2(model, dst)) == set()
    bgr = 50.0 * torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    # the same image, as lip_det's configs feed it: RGB, divided by torchvision's std
    rgb = bgr.flip(1) / torch.tensor(TORCHVISION_INPUT.pixel_std).view(1, 3, 1, 1)
    with torch.no_grad():
        assert_features_match(model.backbone.bottom_up(rgb), reference(bgr).values())

    # the same file for LIP-ResNet-50: LIP modules left out, the strided convs summed, and with
    # keep_input_format caffe2's own conv1
    state = read_checkpoint(src)
    lip = convert_state_dict(state)
    assert lip.approximated == {f"res{s}.0.conv2.weight": TAP_SUM for s in (3, 4, 5)}
    assert len(lip.left_at_init) == 39
    assert all(".logit_trunk." in n or "lip.logit." in n for n in lip.left_at_init)
    kept = convert_state_dict(state, keep_input_format=True)
    assert kept.input == MSRA_INPUT
    assert torch.equal(kept.weights["stem.conv1.weight"], torch.from_numpy(blobs["conv1_w"]))
