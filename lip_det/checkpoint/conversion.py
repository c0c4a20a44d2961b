"""What every converter of ImageNet weights into a detectron2 checkpoint shares, whatever the
architecture (:mod:`.convert_resnet`): the result and its report (:class:`Conversion`), the input
convention the weights expect, the error, and writing the ``.pkl`` that MODEL.WEIGHTS loads.
"""

import os
import pickle
import textwrap
from dataclasses import dataclass

from .checkpointer import atomic_write
from .files import CheckpointError, UnsafeCheckpointError

# Why a source tensor has no place in a detector (the converters' reports)
DROP_CLASSIFIER = "the ImageNet classifier; a detector has no place for it"
DROP_BN_COUNTER = "BatchNorm's batch counter, not a weight; FrozenBatchNorm2d has none"
DROP_MOMENTUM = "an SGD momentum buffer, not a weight"
DROP_NOT_A_TENSOR = "not a tensor"


def listing(names, limit=12):
    """``names`` joined with commas, the first ``limit`` of them, and how many more."""
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


__all__ = [
    "DEFAULT_PREFIX",
    "TORCHVISION_INPUT",
    "MSRA_INPUT",
    "ConversionError",
    "UnsafeCheckpointError",
    "Conversion",
    "InputConvention",
    "check_output",
    "save_d2_checkpoint",
]

# Full names inside a detectron2 model whose backbone is a FPN over the converted network.
DEFAULT_PREFIX = "backbone.bottom_up."

# One class for every reason a file cannot be converted, reading it included, so that a tool
# catches one thing; the converters know it by this name.
ConversionError = CheckpointError


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
# detectron2's MSRA (caffe2) weights: BGR, mean subtracted, not divided by a std.
MSRA_INPUT = InputConvention("BGR", (103.53, 116.28, 123.675), (1.0, 1.0, 1.0))


@dataclass
class Conversion:
    """The result of a converter's ``convert_state_dict``; ``weights`` use our backbone's names
    (without the prefix of the backbone inside the detector)."""

    source: str  # the source layout, e.g. "torchvision"
    source_title: str  # how messages name it, e.g. "a plain torchvision ResNet"
    architecture: str  # e.g. "ResNet"
    depth: int
    plain: bool  # the target is the plain network, not its LIP twin
    weights: dict  # our backbone name -> Tensor, in the model's order
    mapped: dict  # source name -> our name
    dropped: dict  # source name -> why it has no place
    approximated: dict  # our name -> how its value was derived
    filled: dict  # our name -> why it was filled in although the source has no such tensor
    left_at_init: list  # our names of LIP tensors not in the output (they keep avg pooling)
    input: InputConvention
    notes: list
    # name prefixes (ending in ".") of the target's LIP layers and logit trunks: how the report
    # groups ``left_at_init``
    lip_modules: tuple = ()

    @property
    def target(self):
        return f"{'' if self.plain else 'LIP-'}{self.architecture}-{self.depth}"

    def report(self, origin="checkpoint", output=None, prefix=DEFAULT_PREFIX, verbose=False):
        """Lines telling what went where, what was dropped and why, and what the weights expect.
        ``verbose`` adds one line per mapped tensor."""
        arrow = f" -> {output}" if output else ""
        items = [
            f"{origin}: {self.source_title}-{self.depth}{arrow}",
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
            modules = dict.fromkeys(_modules_of(self.left_at_init, self.lip_modules))
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


def _modules_of(names, modules):
    """Tensor names -> the outermost of ``modules`` (prefixes ending in ".") that holds each."""
    by_length = sorted(modules, key=len)
    for name in names:
        module = next((m for m in by_length if name.startswith(m)), None)
        yield module[:-1] if module else name


def _compact(names):
    """Many names of one kind (every BN's counter) as "*.suffix (count)"; few as they are."""
    if len(names) <= 4:
        return ", ".join(names)
    # torchvision-style names end in ".field", caffe2 names in "_field"
    suffixes = [
        "." + n.rsplit(".", 1)[1] if "." in n else "_" + n.rsplit("_", 1)[-1] for n in names
    ]
    return ", ".join(f"*{suffix} ({suffixes.count(suffix)})" for suffix in dict.fromkeys(suffixes))


def check_output(path, prefix, *, source=None, overwrite=True):
    """Raise ConversionError unless ``path`` and ``prefix`` can be written and loaded as given:
    checked before any conversion work. ``path`` must name a ``.pkl`` file, not a folder, under
    a folder that exists or can be created; it must not be ``source`` (the file to convert, by
    real path: a link to it counts), and with ``overwrite=False`` must not exist."""
    path = os.fspath(path)
    if not path.endswith(".pkl"):
        raise ConversionError(
            f"{path}: the output must be a .pkl file; detectron2 takes names as written only "
            "from .pkl checkpoints"
        )
    if prefix and not prefix.endswith("."):
        raise ConversionError(f"prefix {prefix!r} must be empty or end with '.'")
    if os.path.isdir(path):
        raise ConversionError(
            f"{path}: is a folder; the output must be the path of the .pkl file to write, e.g. "
            f"{os.path.join(path, 'NAME.pkl')}"
        )
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)  # the first existing folder above the output
    if not os.path.isdir(folder):
        raise ConversionError(f"{path}: cannot create its folder: {folder} is a file, not a folder")
    if source is not None and _same_file(path, source):
        raise ConversionError(
            f"{path}: is the checkpoint to convert itself; converting must not replace its "
            "source (not even with --overwrite): write the output to another path"
        )
    if not overwrite and os.path.lexists(path):
        raise ConversionError(
            f"{path}: exists already; pass --overwrite to replace it, or choose another output"
        )


def _same_file(a, b):
    a, b = os.fspath(a), os.fspath(b)
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)  # links included
    return os.path.realpath(a) == os.path.realpath(b)


def save_d2_checkpoint(conversion, path, *, prefix=DEFAULT_PREFIX, author="lip_det"):
    """Write ``conversion`` as a detectron2 checkpoint that loads with exact names: a ``.pkl`` of
    ``{"model": {prefix + name: numpy array}, "__author__": author, "matching_heuristics":
    False}``, written atomically (an interrupted run leaves no loadable-looking file).

    ``prefix`` is where the backbone sits in the detectron2 model: "backbone.bottom_up." under a
    FPN (the default), "backbone." for a bare backbone.
    """
    path = os.fspath(path)
    check_output(path, prefix)
    data = {
        "model": {prefix + k: v.cpu().numpy() for k, v in conversion.weights.items()},
        "__author__": author,
        "matching_heuristics": False,
    }
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        atomic_write(path, lambda f: pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL))
    except OSError as e:  # e.g. a read-only folder, a full disk
        raise ConversionError(f"{path}: cannot write it ({e.strerror or e})") from None
