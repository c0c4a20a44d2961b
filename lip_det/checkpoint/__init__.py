"""Checkpoint files: reading them, writing them atomically, checking that they fit a model, and
converting ImageNet classification weights into detectron2 checkpoints."""

from .checkpointer import AtomicCheckpointer, atomic_open, atomic_write, make_atomic
from .convert import (
    DEFAULT_PREFIX,
    SOURCES,
    ConversionError,
    UnsafeCheckpointError,
    convert_file,
    convert_state_dict,
    read_checkpoint,
)
from .weights import WeightsError, check_weights_file, model_tensor_shapes

__all__ = [
    "DEFAULT_PREFIX",
    "SOURCES",
    "AtomicCheckpointer",
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
]
