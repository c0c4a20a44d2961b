"""Checkpoint files: reading them, writing them atomically, checking that they fit a model, and
converting ImageNet classification weights into detectron2 checkpoints.

- :mod:`.files`: the one reader of checkpoint files (the MODEL.WEIGHTS check and the converters).
- :mod:`.checkpointer`: the one atomic writer (fsync + rename), for the training checkpointer and
  the converters' ``.pkl``.
- :mod:`.weights`: whether MODEL.WEIGHTS fits the model, before anything is built.
- :mod:`.convert` (``tools/convert_lip_to_d2.py``), :mod:`.conversion` (what every converter
  shares) and :mod:`.convert_resnet` (the ResNet layouts).
"""

from .checkpointer import AtomicCheckpointer, atomic_open, atomic_write, make_atomic
from .convert import (
    DEFAULT_PREFIX,
    SOURCES,
    ConversionError,
    convert_file,
    convert_state_dict,
)
from .files import (
    CheckpointError,
    CheckpointFile,
    UnsafeCheckpointError,
    read_checkpoint,
    read_checkpoint_file,
)
from .weights import WeightsError, check_weights_file, model_tensor_shapes

__all__ = [
    "DEFAULT_PREFIX",
    "SOURCES",
    "AtomicCheckpointer",
    "CheckpointError",
    "CheckpointFile",
    "ConversionError",
    "UnsafeCheckpointError",
    "WeightsError",
    "atomic_open",
    "atomic_write",
    "check_weights_file",
    "convert_file",
    "convert_state_dict",
    "make_atomic",
    "model_tensor_shapes",
    "read_checkpoint",
    "read_checkpoint_file",
]
