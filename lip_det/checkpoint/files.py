"""Reading checkpoint files: the one reader behind the MODEL.WEIGHTS check (:mod:`.weights`) and
the converters (:mod:`.convert`).

A file is opened by its content, as detectron2's ``DetectionCheckpointer`` would open it by its
extension: a torch.save file (zip or pre-1.6 "legacy" format) with ``torch.load(weights_only=
True)``, anything else that starts like a pickle as a pickle of numpy arrays (detectron2's and
caffe2's ``.pkl``). Neither runs code from the file: a file that holds other Python objects
raises :class:`UnsafeCheckpointError`. The tensors are then found where the writers put them
(``{"model": ...}``, ``{"state_dict": ...}``, ``{"blobs": ...}`` or the whole file) and
DataParallel's ``module.`` prefix is stripped, as detectron2 strips it. Every failure is a
:class:`CheckpointError` whose message is one line that names the file.
"""

import os
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "CheckpointError",
    "UnsafeCheckpointError",
    "Detectron2CheckpointError",
    "CheckpointFile",
    "detectron2_resnet",
    "load_checkpoint_file",
    "read_checkpoint_file",
    "read_checkpoint",
]


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, or not used as asked. The message is one line that
    names the file. (``ConversionError`` is this class under the converters' name.)"""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint that holds Python objects besides tensors/arrays, which are not unpickled
    because that could run arbitrary code."""


class Detectron2CheckpointError(CheckpointError):
    """A file in detectron2's ``.pkl`` layout given where a checkpoint to convert is expected.
    ``author`` is its ``__author__``, ``depth`` the depth of the ResNet its tensors describe (None
    when they describe none); :meth:`for_depth` is the message for whoever asked for a depth."""

    def __init__(self, path, author, resnet):
        self.path, self.author = path, author
        self.depth, self.blocks = resnet if resnet else (None, None)
        held = f", of a ResNet-{self.depth} backbone" if self.depth else ""
        use = f" of a config with MODEL.RESNETS.DEPTH {self.depth}" if self.depth else ""
        super().__init__(
            f"{path}: already a detectron2 checkpoint (written by {author!r}){held}; give it to "
            f"MODEL.WEIGHTS{use} as it is"
        )

    def for_depth(self, depth):
        """The message for someone who asked for a ResNet of ``depth``: that the depth differs,
        where it does."""
        if self.depth is None or depth is None or depth == self.depth:
            return str(self)
        from ..modeling.lip_resnet import NUM_BLOCKS_PER_STAGE

        wanted = NUM_BLOCKS_PER_STAGE.get(depth, "no such depth")
        return (
            f"{self.path}: already a detectron2 checkpoint (written by {self.author!r}), of a "
            f"ResNet-{self.depth} backbone, but --depth {depth!r} was asked for: the depth differs "
            f"(blocks per stage {self.blocks}; depth {depth!r} has {wanted}), and converting "
            f"cannot change it; convert an ImageNet ResNet-{depth} checkpoint instead, or give "
            f"this file to the MODEL.WEIGHTS of a config with MODEL.RESNETS.DEPTH {self.depth}"
        )


# --------------------------------------------------------------------------------------------------
# Opening a file: its Python object, without running code from it

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
    # arrays pickled with protocol 5 (what save_d2_checkpoint writes): np.frombuffer + reshape
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
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
            raise CheckpointError(_unreadable(path, e)) from None
        raise UnsafeCheckpointError(
            f"{path}: holds Python objects besides tensors (e.g. a whole pickled model), which are "
            "not unpickled because that could run arbitrary code; save model.state_dict() instead"
        ) from None
    except Exception as e:  # a damaged file fails deep inside torch with many exception types
        if _is_foreign_zip(path):
            raise CheckpointError(
                f"{path}: a zip archive, not a torch.save file; if it is a downloaded folder, "
                "unzip it and convert the .pth inside"
            ) from None
        raise CheckpointError(_unreadable(path, e)) from None


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
            raise CheckpointError(_unreadable(path, e)) from None
        raise CheckpointError(f"{path}: not a checkpoint (not a readable pickle: {e})") from None
    except Exception as e:
        raise CheckpointError(f"{path}: not a checkpoint (not a readable pickle: {e})") from None


def load_checkpoint_file(path):
    """``(object, format)`` of a checkpoint file, format "torch" (a torch.save file, read with
    ``weights_only=True``) or "pickle" (a pickle of numpy arrays, detectron2's ``.pkl``), read
    without running code from the file. Raises :class:`CheckpointError` for anything else, and
    :class:`UnsafeCheckpointError` for a file that holds other Python objects."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            head = f.read(len(_LEGACY_TORCH_HEADER))
    except OSError as e:
        raise CheckpointError(f"{path}: cannot open the file ({e.strerror})") from None
    if not head:
        raise CheckpointError(f"{path}: empty file, expected a checkpoint")
    if head.startswith(_ZIP_HEADER) or head == _LEGACY_TORCH_HEADER:
        return _torch_load(path), "torch"
    if head.startswith(b"\x80"):  # the PROTO opcode that starts a pickle (protocol >= 2)
        return _pickle_load(path), "pickle"
    raise CheckpointError(
        f"{path}: not a checkpoint (neither a torch.save file nor a pickle; it starts with "
        f"{head[:8]!r})"
    )


# --------------------------------------------------------------------------------------------------
# Finding the tensors in it

_D2_RESNET_BLOCK = re.compile(r"(?:^|\.)res([2-5])\.(\d+)\.")


def detectron2_resnet(names):
    """``(depth, blocks per stage)`` of the (LIP-)ResNet whose detectron2 tensor names (``...
    res4.22.conv1.weight``; any prefix, ``roi_heads.res5`` of C4 models included) are ``names``;
    None when they describe no ResNet of a known depth. ``(None, blocks)`` when the blocks per
    stage match no depth."""
    from ..modeling.lip_resnet import NUM_BLOCKS_PER_STAGE

    counts, bottleneck = [0, 0, 0, 0], False
    for name in names:
        match = _D2_RESNET_BLOCK.search(name)
        if match:
            stage = int(match[1]) - 2
            counts[stage] = max(counts[stage], int(match[2]) + 1)
            bottleneck = bottleneck or ".conv3." in name[match.end() - 1 :]
    if not any(counts):
        return None
    for depth, blocks in NUM_BLOCKS_PER_STAGE.items():
        if blocks == counts and (depth >= 50) == bottleneck:
            return depth, counts
    return None, counts


@dataclass(frozen=True)
class CheckpointFile:
    """A checkpoint file as :func:`read_checkpoint_file` read it."""

    path: str
    format: str  # "torch" (a torch.save file) or "pickle" (a pickle of numpy arrays)
    # name -> Tensor (numpy arrays as tensors; other entries kept as they are), "module." stripped
    state: dict
    # where the state was: "model" (detectron2's own layout), "state_dict" (a training script's
    # {"state_dict": ..., "epoch": ...}), "blobs" (a caffe2 detection model), None (top level)
    wrapper: str | None
    author: str | None  # "__author__" of a file in detectron2's .pkl layout
    # detectron2 matches the names by suffix (caffe2 .pkl files; files that ask for it)
    matching_heuristics: bool

    @property
    def detectron2_loads_it(self):
        """Whether detectron2 finds ``state`` as the model: it looks at a file's ``"model"``
        (or, in a .pkl, ``"blobs"``) or takes the whole file, never ``"state_dict"``."""
        wrappers = (None, "model", "blobs") if self.format == "pickle" else (None, "model")
        return self.wrapper in wrappers


def _unwrap(obj, file_format):
    """(state, wrapper, author, matching heuristics), as DetectionCheckpointer._load_file unwraps
    it, and beyond that the wrappers of training scripts."""
    if not isinstance(obj, dict):
        return obj, None, None, False
    # detectron2 takes a .pkl's "model" only with an "__author__", a torch.save file's always
    if "model" in obj and ("__author__" in obj or file_format == "torch"):
        author = obj.get("__author__")
        return obj["model"], "model", author, bool(obj.get("matching_heuristics", False))
    caffe2 = file_format == "pickle"  # any other .pkl is a caffe2 model for detectron2
    for key in ("state_dict", "blobs"):
        if isinstance(obj.get(key), dict):
            return obj[key], key, None, caffe2
    return obj, None, None, caffe2


def read_checkpoint_file(path, *, by_extension=False, refuse_detectron2=False):
    """Read the checkpoint file ``path`` (see the module docstring). Raises
    :class:`CheckpointError` unless it holds a dict with at least one tensor or array.

    Args:
        by_extension (bool): the format must be the one detectron2 opens a file of that name
            with: ``.pkl`` a pickle, anything else a torch.save file.
        refuse_detectron2 (bool): a file in detectron2's ``.pkl`` layout (what the converters
            write) is an error, for whoever expects a file still to convert.

    Returns:
        CheckpointFile.
    """
    path = os.fspath(path)
    obj, file_format = load_checkpoint_file(path)
    if by_extension and path.endswith(".pkl") and file_format == "torch":
        raise CheckpointError(
            f"{path}: a torch.save file named .pkl; detectron2 reads .pkl files with pickle, "
            "which cannot read it: rename it to .pth"
        )
    if by_extension and not path.endswith(".pkl") and file_format == "pickle":
        raise CheckpointError(
            f"{path}: a pickle of arrays (detectron2's .pkl format) under another extension; "
            "detectron2 reads it only as .pkl: rename it"
        )
    state, wrapper, author, heuristics = _unwrap(obj, file_format)
    if refuse_detectron2 and author is not None:
        resnet = detectron2_resnet(map(str, state)) if isinstance(state, dict) else None
        raise Detectron2CheckpointError(path, author, resnet if resnet and resnet[0] else None)
    if not isinstance(state, dict) or not any(
        isinstance(v, (torch.Tensor, np.ndarray)) for v in state.values()
    ):
        found = "a dict without tensors" if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{path}: not a model checkpoint: it holds {found}, expected a dict of tensors"
        )
    state = {
        str(k): torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in state.items()
    }
    if all(k.startswith("module.") for k in state):  # saved from a (Distributed)DataParallel
        state = {k[len("module.") :]: v for k, v in state.items()}  # (detectron2 strips it too)
    return CheckpointFile(path, file_format, state, wrapper, author, heuristics)


def read_checkpoint(path):
    """The state dict in a checkpoint file to convert: name -> Tensor (non-tensor entries kept
    as they are).

    Reads torch.save files (zip and legacy formats, ``weights_only=True``) and pickles of numpy
    arrays (caffe2 / Detectron ``.pkl``); unwraps ``{"state_dict": ...}``, ``{"model": ...}`` and
    ``{"blobs": ...}`` and strips DataParallel's ``module.`` prefix. A file in detectron2's
    ``.pkl`` layout and anything else raise :class:`CheckpointError`.
    """
    return read_checkpoint_file(path, refuse_detectron2=True).state
