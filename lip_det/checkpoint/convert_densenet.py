"""Convert ImageNet DenseNet checkpoints into detectron2 checkpoints for lip_det's (LIP-)DenseNet.

Sources, detected from the tensor names (or named with ``source=``):

- ``"lip"``: the authors' published LIP-DenseNet-121 (sebgao/LIP, ``imagenet/lip_densenet.py``:
  torchvision's names plus ``features.pool0.logit.*`` and ``features.transition{i}.pool.logit.*``)
  -> LIP-DenseNet, every tensor one-to-one.
- ``"torchvision"``: torchvision's densenet121/169/201 (either the ``denselayer1.norm1`` names or
  the ``denselayer1.norm.1`` names of its original weight files) -> the plain DenseNet twin of
  the same depth, or initial weights for the LIP-DenseNet, whose LIP modules keep their
  initialisation (average pooling).

As for the ResNets (:mod:`.convert_resnet`), the names and shapes to produce come from building
the target backbone on the meta device, so a conversion succeeds only if every tensor fits, and
the names are exact. Reading the file, writing the result and the report: :mod:`.files`,
:mod:`.conversion`.
"""

import functools
import re
from dataclasses import dataclass

import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec

from ..config import add_lip_config
from ..layers import LIP, BottleneckTrunk
from ..modeling.lip_densenet import (
    NUM_LAYERS_PER_BLOCK,
    build_densenet_backbone,
    build_lip_densenet_backbone,
)
from .conversion import (
    DROP_BN_COUNTER,
    DROP_CLASSIFIER,
    DROP_NOT_A_TENSOR,
    TORCHVISION_INPUT,
    Conversion,
    ConversionError,
    listing,
)

__all__ = ["SOURCES", "SOURCE_TITLES", "STEM_NOTE", "detect_source", "convert_state_dict"]

SOURCES = ("lip", "torchvision")
SOURCE_TITLES = {
    "lip": "a published LIP-DenseNet",
    "torchvision": "a plain torchvision DenseNet",
}
# what the ResNet converter's other layouts are called, for a --from that names one
_OTHER_TITLES = {"msra": "a plain caffe2 (MSRA) ResNet"}

STEM_NOTE = (
    "the stem's LIP starts as average pooling where torchvision max-pools, so the network differs "
    "from torchvision's until fine-tuned (the transitions' LIPs start as exactly its average "
    "pooling)"
)

_DROPPED = [
    (r"classifier\.(weight|bias)", DROP_CLASSIFIER),
    (r".*\.num_batches_tracked", DROP_BN_COUNTER),
]

# --------------------------------------------------------------------------------------------------
# Source layout

# torchvision's own fix-up of its original densenet weight files ("norm.1" -> "norm1"), from
# torchvision.models.densenet._load_state_dict
_OLD_TORCHVISION = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var"
    r"|num_batches_tracked))$"
)


def _rule(pattern, stage, replacement, lip=False):
    return re.compile(pattern), stage, replacement, lip


# (pattern on the name after "features.", stage of our name from the pattern's first group,
#  replacement of the rest, LIP-only). Stage: None (the stem), "block" (denseblock{b} ->
#  dense{b+1}), "transition" (transition{t} -> dense{t+2}) or "dense5".
_RULES = [
    _rule(r"conv0\.weight", None, "stem.conv1.weight"),
    _rule(r"norm0\.(\w+)", None, r"stem.conv1.norm.\1"),
    _rule(r"pool0\.logit\.conv1\.weight", None, "stem.lip.logit.conv.weight", lip=True),
    _rule(r"pool0\.logit\.bn1\.(weight|bias)", None, r"stem.lip.logit.conv.norm.\1", lip=True),
    _rule(
        r"denseblock([1-4])\.(denselayer\d+\.(?:norm[12]\.\w+|conv[12]\.weight))", "block", r"\2"
    ),
    _rule(r"transition([1-3])\.(norm\.\w+|conv\.weight)", "transition", r"transition.\2"),
    _rule(
        r"transition([1-3])\.pool\.logit\.conv([12])\.weight",
        "transition",
        r"transition.logit_trunk.conv\2.weight",
        lip=True,
    ),
    _rule(
        r"transition([1-3])\.pool\.logit\.bn([12])\.(weight|bias)",
        "transition",
        r"transition.logit_trunk.conv\2.norm.\3",
        lip=True,
    ),
    _rule(
        r"transition([1-3])\.pool\.logit\.conv3\.weight",
        "transition",
        "transition.lip.logit.conv.weight",
        lip=True,
    ),
    _rule(
        r"transition([1-3])\.pool\.logit\.bn3\.(weight|bias)",
        "transition",
        r"transition.lip.logit.conv.norm.\2",
        lip=True,
    ),
    _rule(r"norm5\.(\w+)", "dense5", r"norm.\1"),
]


def _canonical(name):
    """torchvision's original "denselayer1.norm.1.weight" as "denselayer1.norm1.weight"."""
    match = _OLD_TORCHVISION.match(name)
    return match[1] + match[2] if match else name


def _rename(name, lip):
    """A source name -> our backbone name, or None where no rule applies."""
    name = _canonical(name)
    if not name.startswith("features."):
        return None
    rest = name[len("features.") :]
    for pattern, stage, replacement, lip_only in _RULES:
        if lip_only and not lip:
            continue
        match = pattern.fullmatch(rest)
        if match is None:
            continue
        if stage is None:
            return match.expand(replacement)
        if stage == "dense5":
            return "dense5." + match.expand(replacement)
        offset = 1 if stage == "block" else 2
        return f"dense{int(match[1]) + offset}." + match.expand(replacement)
    return None


def detect_source(state):
    """The layout of a state dict from its names: "lip", "torchvision" or None (no DenseNet)."""
    names = list(state)
    if not any(re.match(r"features\.denseblock\d+\.denselayer\d+\.", n) for n in names):
        return None
    if any(n.startswith("features.pool0.logit.") or ".pool.logit." in n for n in names):
        return "lip"
    return "torchvision"


def _layers_per_block(state):
    counts = [0, 0, 0, 0]
    for name in state:
        match = re.match(r"features\.denseblock([1-4])\.denselayer(\d+)\.", name)
        if match:
            block = int(match[1]) - 1
            counts[block] = max(counts[block], int(match[2]))
    return counts


def _infer_depth(state, origin):
    counts = _layers_per_block(state)
    for depth, layers in NUM_LAYERS_PER_BLOCK.items():
        if tuple(counts) == layers:
            return depth, counts
    raise ConversionError(
        f"{origin}: {counts} dense layers per block match no DenseNet depth lip_det builds; "
        "expected one of " + ", ".join(f"{d}: {list(b)}" for d, b in NUM_LAYERS_PER_BLOCK.items())
    )


# --------------------------------------------------------------------------------------------------
# Target backbones


@dataclass(frozen=True)
class _Target:
    shapes: dict  # our backbone name -> torch.Size, in the model's order
    lip_modules: tuple  # name prefixes of the LIP layers and logit trunks


@functools.cache
def _target(depth, lip):
    """Names and shapes of the backbone a converted checkpoint is loaded into: the published
    LIP-DenseNet (lip_det's MODEL.LIP defaults) or its plain twin, with FrozenBN as in every
    lip_det config that starts from ImageNet weights."""
    cfg = get_cfg()
    add_lip_config(cfg)
    cfg.MODEL.DENSENET.DEPTH = depth
    cfg.MODEL.DENSENET.NORM = "FrozenBN"
    cfg.MODEL.DENSENET.OUT_FEATURES = ["dense2", "dense3", "dense4", "dense5"]
    build = build_lip_densenet_backbone if lip else build_densenet_backbone
    with torch.device("meta"):  # names and shapes only
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


def _title(depth, plain):
    return f"{'' if plain else 'LIP-'}DenseNet-{depth}"


def _check_kind(origin, source, found, depth, plain, keep_input_format):
    valid = ("auto", *SOURCES, *_OTHER_TITLES)
    if source not in valid:
        raise ConversionError(f"source {source!r} is not valid; choose one of {list(valid)}")
    if source not in ("auto", found):
        title = SOURCE_TITLES.get(source) or _OTHER_TITLES[source]
        hint = f"use --from {found}"
        if source == "lip":
            hint = f"to initialise a LIP-DenseNet from it, use --from {found}"
        raise ConversionError(
            f"{origin}: expected {title} checkpoint, found {SOURCE_TITLES[found]}-{depth}; {hint}"
        )
    if plain and found == "lip":
        raise ConversionError(
            f"{origin}: a plain DenseNet was asked for (--plain), but this is a "
            f"LIP-DenseNet-{depth} checkpoint, whose LIP modules have no place in a plain "
            "DenseNet; convert it without --plain"
        )
    if keep_input_format:
        raise ConversionError(
            f"{origin}: keeping the input format (--keep-input-format) applies to caffe2 (msra) "
            f"checkpoints; this is {SOURCE_TITLES[found]}-{depth}, which already expects RGB input "
            "with torchvision's mean and std"
        )


def convert_state_dict(
    state, *, source="auto", depth=None, plain=False, keep_input_format=False, origin="checkpoint"
):
    """Map a DenseNet state dict onto lip_det's LIP-DenseNet (or, with ``plain``, its plain twin).

    Args:
        state (dict): name -> Tensor, as :func:`~.files.read_checkpoint` returns.
        source (str): "auto", "lip" or "torchvision"; a different detected layout is an error.
        depth (int or None): expected depth (121, 169, 201); None infers it from the layers per
            dense block.
        plain (bool): target the plain DenseNet (``build_densenet_backbone``) instead.
        keep_input_format (bool): only for caffe2 ResNets; an error here.
        origin (str): how errors name the checkpoint (its path).

    Returns:
        Conversion. Raises ConversionError (naming the tensors) if a source tensor has no place,
        a target tensor has no source, or shapes differ.
    """
    found = detect_source(state)
    if found is None:
        raise ConversionError(
            f"{origin}: not a DenseNet checkpoint: expected torchvision-style names "
            "(features.conv0.weight, features.denseblock1.denselayer1.norm1.weight, ...), found "
            + listing(list(state), 4)
        )
    found_depth, counts = _infer_depth(state, origin)
    _check_kind(origin, source, found, found_depth, plain, keep_input_format)
    if depth is not None and depth != found_depth:
        expected = list(NUM_LAYERS_PER_BLOCK[depth]) if depth in NUM_LAYERS_PER_BLOCK else None
        raise ConversionError(
            f"{origin}: expected a depth-{depth} DenseNet, but the file holds a "
            f"DenseNet-{found_depth} (dense layers per block {counts}; depth {depth} has "
            f"{expected or 'no such depth'})"
        )
    target = _target(found_depth, not plain)
    lip_source = found == "lip"

    weights, mapped, dropped = {}, {}, {}
    unmapped, wrong_shape = [], []
    for name, value in state.items():
        reason = next((r for p, r in _DROPPED if re.fullmatch(p, _canonical(name))), None)
        if reason is None and not isinstance(value, torch.Tensor):
            reason = DROP_NOT_A_TENSOR
        if reason is not None:
            dropped[name] = reason
            continue
        ours = _rename(name, lip_source)
        if ours not in target.shapes or ours in weights:
            unmapped.append(name)
            continue
        tensor = value.detach()
        tensor = tensor.float() if tensor.is_floating_point() else tensor
        if tensor.shape != target.shapes[ours]:
            want = tuple(target.shapes[ours])
            wrong_shape.append(f"{name} {tuple(value.shape)} for {ours} {want}")
            continue
        weights[ours] = tensor
        mapped[name] = ours

    left_at_init, missing = [], []
    for ours in target.shapes:
        if ours in weights:
            continue
        if not lip_source and not plain and ours.startswith(target.lip_modules):
            left_at_init.append(ours)
        else:
            missing.append(ours)

    problems = []
    title = _title(found_depth, plain)
    if unmapped:
        problems.append(
            f"{len(unmapped)} tensor(s) with no place in a {title}: {listing(unmapped)}"
        )
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} tensor(s) of the wrong shape: {listing(wrong_shape)}")
    if missing:
        problems.append(
            f"{len(missing)} {title} tensor(s) not in the file (detectron2 names): "
            + listing(missing)
        )
    if problems:
        raise ConversionError(f"{origin}: " + "; ".join(problems))

    notes = []
    if plain:
        notes.append("load into build_densenet_backbone / build_densenet_fpn_backbone")
    elif not lip_source:
        notes.append(STEM_NOTE)
    return Conversion(
        source=found,
        source_title=SOURCE_TITLES[found],
        architecture="DenseNet",
        depth=found_depth,
        plain=plain,
        weights={k: weights[k] for k in target.shapes if k in weights},
        mapped=mapped,
        dropped=dropped,
        approximated={},
        filled={},
        left_at_init=left_at_init,
        input=TORCHVISION_INPUT,
        notes=notes,
        lip_modules=target.lip_modules,
    )
