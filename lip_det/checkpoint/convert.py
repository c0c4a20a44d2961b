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
"""

import functools
import os
import pickle
import re
import textwrap
import warnings
import zipfile
from dataclasses import dataclass

import numpy as np
import torch
from detectron2.checkpoint.c2_model_loading import convert_basic_c2_names
from detectron2.config import get_cfg
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling.backbone.resnet import build_resnet_backbone

from ..config import add_lip_config
from ..layers import LIP, BottleneckTrunk
from ..modeling import NUM_BLOCKS_PER_STAGE, build_lip_resnet_backbone

__all__ = [
    "SOURCES",
    "DEFAULT_PREFIX",
    "TORCHVISION_INPUT",
    "MSRA_INPUT",
    "ConversionError",
    "UnsafeCheckpointError",
    "Conversion",
    "InputConvention",
    "read_checkpoint",
    "load_checkpoint_file",
    "detect_source",
    "convert_state_dict",
    "save_d2_checkpoint",
    "convert_file",
]

SOURCES = ("lip", "torchvision", "msra")
SOURCE_TITLES = {
    "lip": "a published LIP-ResNet",
    "torchvision": "a plain torchvision ResNet",
    "msra": "a plain caffe2 (MSRA) ResNet",
}
# Full names inside a detectron2 model whose backbone is a FPN over the (LIP-)ResNet.
DEFAULT_PREFIX = "backbone.bottom_up."


@dataclass(frozen=True)
class InputConvention:
    """What input the converted weights expect, in detectron2 config terms."""

    format: str  # INPUT.FORMAT
    pixel_mean: tuple  # MODEL.PIXEL_MEAN
    pixel_std: tuple  # MODEL.PIXEL_STD

    def describe(self):
        return (
            f'INPUT.FORMAT "{self.format}", MODEL.PIXEL_MEAN {list(self.pixel_mean)}, '
            f"MODEL.PIXEL_STD {list(self.pixel_std)}"
        )


# ImageNet mean/std of torchvision in 0-255 RGB: what the LIP and torchvision models were trained
# with, and what every lip_det config uses.
TORCHVISION_INPUT = InputConvention("RGB", (123.675, 116.28, 103.53), (58.395, 57.12, 57.375))
# detectron2's MSRA weights: BGR, mean subtracted, not divided by a std.
MSRA_INPUT = InputConvention("BGR", (103.53, 116.28, 123.675), (1.0, 1.0, 1.0))


class ConversionError(ValueError):
    """A checkpoint that cannot be converted. The message is one line that names the file."""


class UnsafeCheckpointError(ConversionError):
    """A checkpoint that holds Python objects besides tensors/arrays, which are not unpickled
    because that could run arbitrary code."""


# --------------------------------------------------------------------------------------------------
# Reading checkpoint files

_ZIP_HEADER = b"PK\x03\x04"
# torch.save's pre-1.6 ("legacy") format starts with its pickled magic number; the published LIP
# models (PyTorch 1.0) may use it.
_LEGACY_TORCH_HEADER = pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2)[:-1]
# All a caffe2 .pkl (a dict of numpy arrays, often pickled by Python 2) needs.
_PICKLE_GLOBALS = {
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
}


class _RefusedGlobal(pickle.UnpicklingError):
    pass


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles containers of numpy arrays and refuses any other global: plain pickle would
    import and call whatever a downloaded file names."""

    def find_class(self, module, name):
        if (module, name) not in _PICKLE_GLOBALS:
            raise _RefusedGlobal(f"{module}.{name}")
        with warnings.catch_warnings():  # NumPy 2 renamed numpy.core to numpy._core
            warnings.simplefilter("ignore", DeprecationWarning)
            return super().find_class(module, name)


def _unreadable(path, error):
    # the first clause of the first line: torch appends paragraphs of generic advice
    reason = (str(error).strip().splitlines() or [""])[0].split(". ")[0][:160]
    return (
        f"{path}: cannot be read, the file is truncated or corrupt "
        f"({type(error).__name__}: {reason})"
    )


def _torch_load(path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            raise ConversionError(_unreadable(path, e)) from None
        raise UnsafeCheckpointError(
            f"{path}: holds Python objects besides tensors (e.g. a whole pickled model), which are "
            "not unpickled because that could run arbitrary code; save model.state_dict() instead"
        ) from None
    except Exception as e:  # a damaged file fails deep inside torch with many exception types
        if _is_foreign_zip(path):
            raise ConversionError(
                f"{path}: a zip archive, not a torch.save file; if it is a downloaded folder, "
                "unzip it and convert the .pth inside"
            ) from None
        raise ConversionError(_unreadable(path, e)) from None


def _is_foreign_zip(path):
    """A complete zip archive without torch.save's data.pkl (e.g. a downloaded Drive folder)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return not any(name.endswith("data.pkl") for name in archive.namelist())


def _pickle_load(path):
    try:
        with open(path, "rb") as f:
            return _ArrayUnpickler(f, encoding="latin1").load()
    except _RefusedGlobal as e:
        raise UnsafeCheckpointError(
            f"{path}: holds Python objects besides arrays ({e}), which are not unpickled because "
            "that could run arbitrary code"
        ) from None
    except (EOFError, pickle.UnpicklingError) as e:
        if isinstance(e, EOFError) or "truncated" in str(e):
            raise ConversionError(_unreadable(path, e)) from None
        raise ConversionError(f"{path}: not a checkpoint (not a readable pickle: {e})") from None
    except Exception as e:
        raise ConversionError(f"{path}: not a checkpoint (not a readable pickle: {e})") from None


def _unwrap(obj, path):
    if isinstance(obj, dict) and "model" in obj and "__author__" in obj:
        raise ConversionError(
            f"{path}: already a detectron2 checkpoint (written by {obj['__author__']!r}); "
            "give it to MODEL.WEIGHTS as it is"
        )
    if isinstance(obj, dict):
        # a training script's {"state_dict": ..., "epoch": ...}; a caffe2 detection model's blobs
        for key in ("state_dict", "blobs"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not any(
        isinstance(v, (torch.Tensor, np.ndarray)) for v in obj.values()
    ):
        found = "a dict without tensors" if isinstance(obj, dict) else type(obj).__name__
        raise ConversionError(
            f"{path}: not a model checkpoint: it holds {found}, expected a dict of tensors"
        )
    state = {
        str(k): torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in obj.items()
    }
    if all(k.startswith("module.") for k in state):  # saved from a (Distributed)DataParallel
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def read_checkpoint(path):
    """The state dict in a checkpoint file: name -> Tensor (non-tensor entries kept as they are).

    Reads torch.save files (zip and legacy formats, ``weights_only=True``) and pickles of numpy
    arrays (caffe2 / Detectron ``.pkl``); unwraps ``{"state_dict": ...}`` and ``{"blobs": ...}`` and
    strips DataParallel's ``module.`` prefix. Anything else raises :class:`ConversionError`.
    """
    obj, _ = load_checkpoint_file(path)
    return _unwrap(obj, os.fspath(path))


def load_checkpoint_file(path):
    """``(object, format)`` of a checkpoint file, format "torch" (a torch.save file, read with
    ``weights_only=True``) or "pickle" (a pickle of numpy arrays, detectron2's ``.pkl``), read
    without running code from the file. Raises :class:`ConversionError` for anything else, and
    :class:`UnsafeCheckpointError` for a file that holds other Python objects."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            head = f.read(len(_LEGACY_TORCH_HEADER))
    except OSError as e:
        raise ConversionError(f"{path}: cannot open the file ({e.strerror})") from None
    if not head:
        raise ConversionError(f"{path}: empty file, expected a checkpoint")
    if head.startswith(_ZIP_HEADER) or head == _LEGACY_TORCH_HEADER:
        return _torch_load(path), "torch"
    if head.startswith(b"\x80"):  # the PROTO opcode that starts a pickle (protocol >= 2)
        return _pickle_load(path), "pickle"
    raise ConversionError(
        f"{path}: not a checkpoint (neither a torch.save file nor a pickle; it starts with "
        f"{head[:8]!r})"
    )


# --------------------------------------------------------------------------------------------------
# Source layouts

_CLASSIFIER = "the ImageNet classifier; a detector has no place for it"
_BN_COUNTER = "BatchNorm's batch counter, not a weight; FrozenBatchNorm2d has none"
_MOMENTUM = "an SGD momentum buffer, not a weight"
_NOT_A_TENSOR = "not a tensor"

_DROPPED = {
    "lip": [(r"fc\.(weight|bias)", _CLASSIFIER), (r".*\.num_batches_tracked", _BN_COUNTER)],
    "torchvision": [(r"fc\.(weight|bias)", _CLASSIFIER), (r".*\.num_batches_tracked", _BN_COUNTER)],
    "msra": [(r".*_momentum", _MOMENTUM), (r"(fc1000|pred)_[wb]", _CLASSIFIER)],
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


@dataclass
class Conversion:
    """The result of :func:`convert_state_dict`; ``weights`` use our backbone's names."""

    source: str
    depth: int
    plain: bool
    weights: dict  # our backbone name -> Tensor, in the model's order
    mapped: dict  # source name -> our name
    dropped: dict  # source name -> why it has no place
    approximated: dict  # our name -> how its value was derived
    filled: dict  # our name -> why it was filled in although the source has no such tensor
    left_at_init: list  # our names of LIP tensors not in the output (they keep avg pooling)
    input: InputConvention
    notes: list

    @property
    def target(self):
        return f"{'' if self.plain else 'LIP-'}ResNet-{self.depth}"

    def report(self, origin="checkpoint", output=None, prefix=DEFAULT_PREFIX, verbose=False):
        """Lines telling what went where, what was dropped and why, and what the weights expect.
        ``verbose`` adds one line per mapped tensor."""
        arrow = f" -> {output}" if output else ""
        items = [
            f"{origin}: {SOURCE_TITLES[self.source]}-{self.depth}{arrow}",
            f"wrote {len(self.weights)} tensors of {self.target} as {prefix}<name>; "
            f"source tensors: {len(self.mapped)} mapped, {len(self.dropped)} dropped",
        ]
        if verbose:
            items += [f"mapped {src} -> {ours}" for src, ours in self.mapped.items()]
        by_reason = {}
        for name, reason in self.dropped.items():
            by_reason.setdefault(reason, []).append(name)
        for reason, names in by_reason.items():
            items.append(f"dropped {_compact(names)}: {reason}")
        source_of = {ours: src for src, ours in self.mapped.items()}
        for how in dict.fromkeys(self.approximated.values()):
            names = [n for n, h in self.approximated.items() if h == how]
            pairs = ", ".join(f"{n} <- {source_of[n]}" for n in names)
            items.append(f"approximated {pairs}: {how}")
        for why in dict.fromkeys(self.filled.values()):
            items.append(
                f"filled in {_compact([n for n, w in self.filled.items() if w == why])}: {why}"
            )
        if self.left_at_init:
            modules = dict.fromkeys(_modules_of(self.left_at_init))
            items.append(
                f"left out {', '.join(modules)}: they keep their initialisation (LIP = average "
                "pooling); detectron2 lists them as not found in the checkpoint"
            )
        items += [f"note: {note}" for note in self.notes]
        items.append(f"expects {self.input.describe()}")
        lines = [items[0]]
        for item in items[1:]:
            lines += textwrap.wrap(
                item, 100, initial_indent="  ", subsequent_indent="      ", break_on_hyphens=False
            )
        return lines


def _modules_of(names):
    """LIP tensor names -> the LIP modules and logit trunks that hold them."""
    for name in names:
        for marker in (".logit_trunk.", ".main_lip.", ".shortcut_lip.", "stem.lip."):
            if marker in name:
                yield name[: name.index(marker) + len(marker) - 1]
                break
        else:
            yield name


def _compact(names):
    """Many names of one kind (every BN's counter) as "*.suffix (count)"; few as they are."""
    if len(names) <= 4:
        return ", ".join(names)
    # torchvision-style names end in ".field", caffe2 names in "_field"
    suffixes = [
        "." + n.rsplit(".", 1)[1] if "." in n else "_" + n.rsplit("_", 1)[-1] for n in names
    ]
    return ", ".join(f"*{suffix} ({suffixes.count(suffix)})" for suffix in dict.fromkeys(suffixes))


def _listing(names, limit=12):
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


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
            + _listing(list(state), 4)
        )
    found_depth, counts = _infer_depth(state, found, origin)
    _check_kind(origin, source, found, found_depth, plain, keep_input_format)
    if depth is not None and depth != found_depth:
        expected = NUM_BLOCKS_PER_STAGE.get(depth, "no such depth")
        raise ConversionError(
            f"{origin}: expected a depth-{depth} ResNet, but the file holds a ResNet-{found_depth} "
            f"(blocks per stage {counts}; depth {depth} has {expected})"
        )
    target = _target(found_depth, not plain)

    weights, mapped, dropped, approximated, conv_biases = {}, {}, {}, {}, {}
    unmapped, wrong_shape = [], []
    renamed = _rename(state, found)
    for name, value in state.items():
        reason = next((r for p, r in _DROPPED[found] if re.fullmatch(p, name)), None)
        if reason is None and not isinstance(value, torch.Tensor):
            reason = _NOT_A_TENSOR
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
            + _listing(unmapped)
        )
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} tensor(s) of the wrong shape: {_listing(wrong_shape)}")
    if missing:
        problems.append(
            f"{len(missing)} {_title(found_depth, plain)} tensor(s) not in the file "
            f"(detectron2 names): {_listing(missing)}"
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
    )


def _is_kxk_for_1x1(shape, want):
    """A k x k conv weight (k > 1) where the target has a 1x1 with the same channels."""
    same_channels = len(shape) == 4 and shape[:2] == want[:2]
    return same_channels and tuple(want[2:]) == (1, 1) and tuple(shape[2:]) != (1, 1)


def _title(depth, plain):
    return f"{'' if plain else 'LIP-'}ResNet-{depth}"


def _check_output(path, prefix):
    if not os.fspath(path).endswith(".pkl"):
        raise ConversionError(
            f"{path}: the output must be a .pkl file; detectron2 takes names as written only "
            "from .pkl checkpoints"
        )
    if prefix and not prefix.endswith("."):
        raise ConversionError(f"prefix {prefix!r} must be empty or end with '.'")


def save_d2_checkpoint(conversion, path, *, prefix=DEFAULT_PREFIX, author="lip_det"):
    """Write ``conversion`` as a detectron2 checkpoint that loads with exact names.

    ``prefix`` is where the backbone sits in the detectron2 model: "backbone.bottom_up." under a
    FPN (the default), "backbone." for a bare (LIP-)ResNet backbone.
    """
    path = os.fspath(path)
    _check_output(path, prefix)
    data = {
        "model": {prefix + k: v.cpu().numpy() for k, v in conversion.weights.items()},
        "__author__": author,
        "matching_heuristics": False,
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    partial = path + ".partial"  # an interrupted run must not leave a loadable-looking file
    with open(partial, "wb") as f:
        pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(partial, path)


def convert_file(src, dst, *, prefix=DEFAULT_PREFIX, **kwargs):
    """Read ``src``, convert it (``kwargs`` as for :func:`convert_state_dict`), write ``dst``."""
    _check_output(dst, prefix)
    src = os.fspath(src)
    conversion = convert_state_dict(read_checkpoint(src), origin=src, **kwargs)
    author = (
        f"lip_det convert: {conversion.source} {os.path.basename(src)} -> {conversion.target}, "
        f"{conversion.input.describe()}"
    )
    save_d2_checkpoint(conversion, dst, prefix=prefix, author=author)
    return conversion
