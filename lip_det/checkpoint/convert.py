"""Convert ImageNet classification checkpoints into detectron2 checkpoints for lip_det's
backbones: what ``tools/convert_lip_to_d2.py`` runs, and where the converting names live.

    conversion = convert_file("lip_resnet-50.pth", "weights/LIP-R-50.pkl", source="lip")
    print("\\n".join(conversion.report()))

The pieces: :mod:`.files` reads the source file (:func:`read_checkpoint`), an architecture's
module maps its state dict onto lip_det's backbone (:mod:`.convert_resnet`:
:func:`convert_state_dict` for the published LIP-ResNets, torchvision and MSRA ResNets;
:mod:`.convert_densenet` for the published LIP-DenseNet-121 and torchvision DenseNets, picked by
:func:`convert_file` from the tensor names or its ``arch``), and :mod:`.conversion` writes the
result (:func:`save_d2_checkpoint`) and reports it.
"""

import os

from . import convert_densenet
from .conversion import (
    DEFAULT_PREFIX,
    MSRA_INPUT,
    TORCHVISION_INPUT,
    Conversion,
    ConversionError,
    InputConvention,
    check_output,
    save_d2_checkpoint,
)
from .convert_resnet import (
    BASIC_BLOCK_NOTE,
    SOURCE_TITLES,
    SOURCES,
    TAP_SUM,
    convert_state_dict,
    detect_source,
)
from .files import UnsafeCheckpointError, load_checkpoint_file, read_checkpoint

ARCHITECTURES = ("auto", "resnet", "densenet")

__all__ = [
    "ARCHITECTURES",
    "SOURCES",
    "SOURCE_TITLES",
    "DEFAULT_PREFIX",
    "TORCHVISION_INPUT",
    "MSRA_INPUT",
    "TAP_SUM",
    "BASIC_BLOCK_NOTE",
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


def _converter(state, arch):
    """The ``convert_state_dict`` of the architecture ``arch`` ("auto": read from the names)."""
    if arch not in ARCHITECTURES:
        raise ConversionError(f"arch {arch!r} is not valid; choose one of {list(ARCHITECTURES)}")
    if arch == "auto":
        arch = "densenet" if convert_densenet.detect_source(state) else "resnet"
    return convert_densenet.convert_state_dict if arch == "densenet" else convert_state_dict


def convert_file(src, dst, *, prefix=DEFAULT_PREFIX, arch="auto", **kwargs):
    """Read ``src``, convert it (``kwargs`` as for :func:`convert_state_dict`), write ``dst``.
    ``arch`` ("auto", "resnet" or "densenet") picks the converter; "auto" reads it from the
    names. Returns the :class:`Conversion`; raises :class:`ConversionError` with one line naming
    the file, before anything is written."""
    check_output(dst, prefix)  # before the (slow) reading and converting
    src = os.fspath(src)
    state = read_checkpoint(src)
    conversion = _converter(state, arch)(state, origin=src, **kwargs)
    author = (
        f"lip_det convert: {conversion.source} {os.path.basename(src)} -> {conversion.target}, "
        f"{conversion.input.describe()}"
    )
    save_d2_checkpoint(conversion, dst, prefix=prefix, author=author)
    return conversion
