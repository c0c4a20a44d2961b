"""Convert ImageNet ResNet checkpoints into detectron2 checkpoints for lip_det's backbones.

Sources, detected from the tensor names (or named with ``source=``):

- ``"lip"``: the authors' published LIP-ResNet-50/101/152 (sebgao/LIP; the layout of
  docs/lip-architecture.md) -> LIP-ResNet, every tensor one-to-one.
- ``"torchvision"``: torchvision's ResNet-18...152 -> initial weights for the LIP-ResNet of the
  same depth, or with ``plain=True`` for detectron2's plain ResNet.
- ``"msra"``: detectron2's MSRA ``R-50.pkl`` / ``R-101.pkl`` (caffe2 names) -> the same.

The names and shapes to produce come from building the target backbone itself (on the meta
device), so a conversion only succeeds if every tensor fits the model that will load it, and the
output names are exact: detectron2 loads them as they are (``matching_heuristics: False``).
Reading the file, writing the result and the report are :mod:`.files` and :mod:`.conversion`.
"""

import functools
import re
from dataclasses import dataclass

import torch
from detectron2.checkpoint.c2_model_loading import convert_basic_c2_names
from detectron2.config import get_cfg
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling.backbone.resnet import build_resnet_backbone

from ..config import add_lip_config
from ..layers import LIP, BottleneckTrunk
from ..modeling import NUM_BLOCKS_PER_STAGE, build_lip_resnet_backbone
from .conversion import (
    DROP_BN_COUNTER,
    DROP_CLASSIFIER,
    DROP_MOMENTUM,
    DROP_NOT_A_TENSOR,
    MSRA_INPUT,
    TORCHVISION_INPUT,
    Conversion,
    ConversionError,
    listing,
)

__all__ = [
    "SOURCES",
    "SOURCE_TITLES",
    "TAP_SUM",
    "BASIC_BLOCK_NOTE",
    "detect_source",
    "convert_state_dict",
]

SOURCES = ("lip", "torchvision", "msra")
SOURCE_TITLES = {
    "lip": "a published LIP-ResNet",
    "torchvision": "a plain torchvision ResNet",
    "msra": "a plain caffe2 (MSRA) ResNet",
}

# --------------------------------------------------------------------------------------------------
# Source layouts


_DROPPED = {
    "lip": [(r"fc\.(weight|bias)", DROP_CLASSIFIER), (r".*\.num_batches_tracked", DROP_BN_COUNTER)],
    "torchvision": [
        (r"fc\.(weight|bias)", DROP_CLASSIFIER),
        (r".*\.num_batches_tracked", DROP_BN_COUNTER),
    ],
    "msra": [(r".*_momentum", DROP_MOMENTUM), (r"(fc1000|pred)_[wb]", DROP_CLASSIFIER)],
}

# torchvision-style names (torchvision, and the published LIP models which extend them):
# (pattern, replacement) for re.fullmatch, outside and inside the blocks ``layer{s}.{i}.``.
_STEM_RULES = [
    (r"conv1\.weight", "stem.conv1.weight"),
    (r"bn1\.(\w+)", r"stem.conv1.norm.\1"),
]
_LIP_STEM_RULES = [
    (r"maxpool\.logit\.conv\.weight", "stem.lip.logit.conv.weight"),
    (r"maxpool\.logit\.bn\.(weight|bias)", r"stem.lip.logit.conv.norm.\1"),
]
_BLOCK_RULES = [
    (r"conv(\d)\.weight", r"conv\1.weight"),
    (r"bn(\d)\.(\w+)", r"conv\1.norm.\2"),
]
_TORCHVISION_BLOCK_RULES = [
    (r"downsample\.0\.weight", "shortcut.weight"),
    (r"downsample\.1\.(\w+)", r"shortcut.norm.\1"),
]
_LIP_BLOCK_RULES = [
    (r"downsample\.conv\.weight", "shortcut.weight"),
    (r"downsample\.bn\.(\w+)", r"shortcut.norm.\1"),
    (r"bottleneck_shared\.logit\.conv(\d)\.weight", r"logit_trunk.conv\1.weight"),
    (r"bottleneck_shared\.logit\.bn(\d)\.(weight|bias)", r"logit_trunk.conv\1.norm.\2"),
    (r"conv2\.0\.postprocessing\.conv\.weight", "main_lip.logit.conv.weight"),
    (r"conv2\.0\.postprocessing\.bn\.(weight|bias)", r"main_lip.logit.conv.norm.\1"),
    (r"conv2\.1\.weight", "conv2.weight"),  # the 1x1 conv after the main-branch LIP
    (r"downsample\.lip\.postprocessing\.conv\.weight", "shortcut_lip.logit.conv.weight"),
    (r"downsample\.lip\.postprocessing\.bn\.(weight|bias)", r"shortcut_lip.logit.conv.norm.\1"),
]


def _rename_torchvision_style(name, lip):
    block = re.fullmatch(r"layer([1-4])\.(\d+)\.(.+)", name)
    if block:
        prefix, rest = f"res{int(block[1]) + 1}.{block[2]}.", block[3]
        rules = _BLOCK_RULES + (_LIP_BLOCK_RULES if lip else _TORCHVISION_BLOCK_RULES)
    else:
        prefix, rest = "", name
        rules = _STEM_RULES + (_LIP_STEM_RULES if lip else [])
    for pattern, replacement in rules:
        match = re.fullmatch(pattern, rest)
        if match:
            return prefix + match.expand(replacement)
    return None


def _rename(names, source):
    """source name -> our backbone name (or None where no rule applies)."""
    if source == "msra":
        # detectron2's own caffe2 -> detectron2 renaming (res2_0_branch2a_w -> res2.0.conv1.weight)
        return dict(zip(names, convert_basic_c2_names(list(names))))
    return {name: _rename_torchvision_style(name, lip=source == "lip") for name in names}


def detect_source(state):
    """The layout of a state dict from its names: "lip", "torchvision", "msra" or None."""
    names = list(state)
    if any(n.startswith("maxpool.logit.") or ".bottleneck_shared." in n for n in names):
        return "lip"
    if "conv1_w" in names or any(re.match(r"res\d_\d+_branch", n) for n in names):
        return "msra"
    if "conv1.weight" in names or any(n.startswith("layer1.") for n in names):
        return "torchvision"
    return None


def _blocks_per_stage(state, source):
    pattern = r"res([2-5])_(\d+)_" if source == "msra" else r"layer([1-4])\.(\d+)\."
    first_stage = 2 if source == "msra" else 1
    counts = [0, 0, 0, 0]
    for name in state:
        match = re.match(pattern, name)
        if match:
            stage = int(match[1]) - first_stage
            counts[stage] = max(counts[stage], int(match[2]) + 1)
    conv3 = "_branch2c_" if source == "msra" else ".conv3."
    bottleneck = any(conv3 in name for name in state)
    return counts, bottleneck


def _infer_depth(state, source, origin):
    counts, bottleneck = _blocks_per_stage(state, source)
    for depth, blocks in NUM_BLOCKS_PER_STAGE.items():
        if blocks == counts and (depth >= 50) == bottleneck:
            return depth, counts
    kind = "bottleneck" if bottleneck else "basic"
    raise ConversionError(
        f"{origin}: {counts} {kind} blocks per stage match no ResNet depth; expected one of "
        + ", ".join(f"{d}: {b}" for d, b in NUM_BLOCKS_PER_STAGE.items())
    )


# --------------------------------------------------------------------------------------------------
# Target backbones


@dataclass(frozen=True)
class _Target:
    shapes: dict  # our backbone name -> torch.Size, in the model's order
    lip_modules: tuple  # name prefixes of the LIP layers and logit trunks


@functools.cache
def _target(depth, lip):
    """Names and shapes of the backbone a converted checkpoint is loaded into: the paper's
    LIP-ResNet (lip_det's MODEL.LIP defaults) or detectron2's ResNet, both with FrozenBN as in
    every lip_det config that starts from ImageNet weights."""
    cfg = get_cfg()
    add_lip_config(cfg)
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.NORM = "FrozenBN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    if depth in (18, 34):
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    build = build_lip_resnet_backbone if lip else build_resnet_backbone
    with torch.device("meta"):  # names and shapes only: no memory, no initialisation cost
        backbone = build(cfg, ShapeSpec(channels=3))
    shapes = {name: t.shape for name, t in backbone.state_dict().items()}
    lip_modules = tuple(
        name + "."
        for name, module in backbone.named_modules()
        if isinstance(module, (LIP, BottleneckTrunk))
    )
    return _Target(shapes, lip_modules)


# --------------------------------------------------------------------------------------------------
# Conversion

# FrozenBatchNorm2d's own "identity" running_var (1 - eps), with which x * weight + bias is exact.
_IDENTITY_VAR = FrozenBatchNorm2d(1).running_var.item()
_IDENTITY_STATISTICS = (
    "caffe2's BN is a fixed affine (scale, bias); running_mean 0 and running_var 1 - eps make "
    "FrozenBatchNorm2d compute exactly that"
)
TAP_SUM = (
    "3x3 taps summed into LIP-ResNet's 1x1 conv2 (the LIP does the striding): exact where the "
    "input is constant over the conv's window while the LIP still pools as an average (its "
    "initial state), an approximation elsewhere"
)
BASIC_BLOCK_NOTE = (
    "LIPBasicBlock runs conv1 (3x3, same weights) at stride 1 after the LIP instead of at stride "
    "2: the same function where the input is locally constant and the LIP pools as an average"
)


def _check_kind(origin, source, found, depth, plain, keep_input_format):
    if source not in ("auto", *SOURCES):
        raise ConversionError(f"source {source!r} is not valid; choose one of {['auto', *SOURCES]}")
    if source not in ("auto", found):
        hint = f"use --from {found}"
        if source == "lip":
            hint = f"to initialise a LIP-ResNet from it, use --from {found}"
        raise ConversionError(
            f"{origin}: expected {SOURCE_TITLES[source]} checkpoint, found "
            f"{SOURCE_TITLES[found]}-{depth}; {hint}"
        )
    if plain and found == "lip":
        raise ConversionError(
            f"{origin}: a plain ResNet was asked for (--plain), but this is a LIP-ResNet-{depth} "
            "checkpoint, whose LIP modules and 1x1 conv2 have no place in a plain ResNet; "
            "convert it without --plain"
        )
    if keep_input_format and found != "msra":
        raise ConversionError(
            f"{origin}: keeping the input format (--keep-input-format) applies to caffe2 (msra) "
            f"checkpoints; this is {SOURCE_TITLES[found]}-{depth}, which already expects RGB input "
            "with torchvision's mean and std"
        )
    if found == "lip" and depth < 50:
        raise ConversionError(
            f"{origin}: LIP-ResNet checkpoints with basic blocks (depth {depth}) have no published "
            "layout; expected depth 50, 101 or 152"
        )


def convert_state_dict(
    state, *, source="auto", depth=None, plain=False, keep_input_format=False, origin="checkpoint"
):
    """Map a source state dict onto lip_det's LIP-ResNet (or, with ``plain``, detectron2's ResNet).

    Args:
        state (dict): name -> Tensor, as :func:`read_checkpoint` returns.
        source (str): "auto" or one of SOURCES; a different detected layout is an error.
        depth (int or None): expected depth; None infers it from the blocks per stage.
        plain (bool): target detectron2's plain ResNet instead of LIP-ResNet.
        keep_input_format (bool): for "msra", keep caffe2's BGR / std-1 input convention instead
            of rewriting conv1 for the RGB / torchvision-normalised input of lip_det's configs.
        origin (str): how errors name the checkpoint (its path).

    Returns:
        Conversion. Raises ConversionError (naming the tensors) if a source tensor has no place,
        a target tensor has no source, or shapes differ.
    """
    found = detect_source(state)
    if found is None:
        raise ConversionError(
            f"{origin}: not a ResNet checkpoint: expected torchvision-style names (conv1.weight, "
            "layer1.0.conv1.weight, ...) or caffe2 names (conv1_w, res2_0_branch2a_w, ...), found "
            + listing(list(state), 4)
        )
    found_depth, counts = _infer_depth(state, found, origin)
    _check_kind(origin, source, found, found_depth, plain, keep_input_format)
    if depth is not None and depth != found_depth:
        expected = NUM_BLOCKS_PER_STAGE.get(depth, "no such depth")
        raise ConversionError(
            f"{origin}: expected a depth-{depth!r} ResNet, but the file holds a "
            f"ResNet-{found_depth} (blocks per stage {counts}; depth {depth!r} has {expected})"
        )
    target = _target(found_depth, not plain)

    weights, mapped, dropped, approximated, conv_biases = {}, {}, {}, {}, {}
    unmapped, wrong_shape = [], []
    renamed = _rename(state, found)
    for name, value in state.items():
        reason = next((r for p, r in _DROPPED[found] if re.fullmatch(p, name)), None)
        if reason is None and not isinstance(value, torch.Tensor):
            reason = DROP_NOT_A_TENSOR
        if reason is not None:
            dropped[name] = reason
            continue
        ours = renamed[name]
        if found == "msra" and ours not in target.shapes and ours.endswith(".bias"):
            # caffe2's conv1_b: our convs have no bias, its norm's running_mean absorbs it below
            norm = ours[: -len("bias")] + "norm.running_mean"
            if norm in target.shapes:
                conv_biases[norm] = value.detach().float()
                mapped[name] = norm
                continue
        if ours not in target.shapes or ours in weights:
            unmapped.append(name)
            continue
        tensor = value.detach()
        tensor = tensor.float() if tensor.is_floating_point() else tensor
        want = target.shapes[ours]
        if found != "lip" and _is_kxk_for_1x1(tensor.shape, want):
            # a plain stride-2 block's 3x3 conv2, where LIP-ResNet has a 1x1 after its LIP
            tensor = tensor.sum(dim=(2, 3), keepdim=True)
            approximated[ours] = TAP_SUM
        if tensor.shape != want:
            wrong_shape.append(f"{name} {tuple(value.shape)} for {ours} {tuple(want)}")
            continue
        weights[ours] = tensor
        mapped[name] = ours

    filled, left_at_init, missing = {}, [], []
    for ours, shape in target.shapes.items():
        if ours in weights:
            continue
        if found != "lip" and not plain and ours.startswith(target.lip_modules):
            left_at_init.append(ours)
        elif found == "msra" and ours.endswith((".norm.running_mean", ".norm.running_var")):
            # caffe2's BN is a fixed affine (scale, bias): FrozenBatchNorm2d's identity statistics
            # make it exactly that (detectron2's own R-50.pkl loading fills var 1, off by eps).
            if ours in conv_biases:
                weights[ours] = -conv_biases[ours]
                filled[ours] = "running_mean = -(conv bias): caffe2's conv bias, folded into the BN"
            elif ours.endswith("mean"):
                weights[ours] = torch.zeros(shape)
                filled[ours] = _IDENTITY_STATISTICS
            else:
                weights[ours] = torch.full(shape, _IDENTITY_VAR)
                filled[ours] = _IDENTITY_STATISTICS
        else:
            missing.append(ours)

    problems = []
    if unmapped:
        problems.append(
            f"{len(unmapped)} tensor(s) with no place in a {_title(found_depth, plain)}: "
            + listing(unmapped)
        )
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} tensor(s) of the wrong shape: {listing(wrong_shape)}")
    if missing:
        problems.append(
            f"{len(missing)} {_title(found_depth, plain)} tensor(s) not in the file "
            f"(detectron2 names): {listing(missing)}"
        )
    if problems:
        raise ConversionError(f"{origin}: " + "; ".join(problems))

    notes, convention = [], TORCHVISION_INPUT
    if found == "msra":
        if keep_input_format:
            convention = MSRA_INPUT
        else:
            # caffe2 conv1 reads BGR minus the mean; ours reads (RGB - mean) / std with the same
            # mean reversed, so reversing its input channels and scaling them by std is exact.
            std = torch.tensor(TORCHVISION_INPUT.pixel_std).view(1, 3, 1, 1)
            weights["stem.conv1.weight"] = weights["stem.conv1.weight"].flip(1) * std
            notes.append("stem.conv1.weight rewritten from BGR / std 1 to RGB / torchvision std")
    if plain:
        stride_in_1x1 = found == "msra"  # caffe2 strides in the 1x1 conv, torchvision in the 3x3
        notes.append(f"load into a config with MODEL.RESNETS.STRIDE_IN_1X1 {stride_in_1x1}")
    elif found_depth < 50:
        notes.append(BASIC_BLOCK_NOTE)
    return Conversion(
        source=found,
        source_title=SOURCE_TITLES[found],
        architecture="ResNet",
        depth=found_depth,
        plain=plain,
        weights={k: weights[k] for k in target.shapes if k in weights},
        mapped=mapped,
        dropped=dropped,
        approximated=approximated,
        filled=filled,
        left_at_init=left_at_init,
        input=convention,
        notes=notes,
        lip_modules=target.lip_modules,
    )


def _is_kxk_for_1x1(shape, want):
    """A k x k conv weight (k > 1) where the target has a 1x1 with the same channels."""
    same_channels = len(shape) == 4 and shape[:2] == want[:2]
    return same_channels and tuple(want[2:]) == (1, 1) and tuple(shape[2:]) != (1, 1)


def _title(depth, plain):
    return f"{'' if plain else 'LIP-'}ResNet-{depth}"
