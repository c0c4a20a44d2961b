"""
Is ``MODEL.WEIGHTS`` a checkpoint this model can start from? Checked before anything is built.

detectron2 loads whatever the file holds by name and only logs what did not fit: the authors'
ImageNet LIP-ResNet or a torchvision ResNet given as they are (not converted) load nothing and
the run trains from random weights; a text file fails deep inside ``torch.load``. Read the way
detectron2's ``DetectionCheckpointer`` reads it (``.pkl``: a pickle, detectron2 or caffe2
format; anything else: ``torch.load``), the file must be

- a checkpoint at all (not text, not truncated), in the format its extension promises;
- not an ImageNet classification checkpoint in torchvision or LIP layout: those need
  ``tools/convert_lip_to_d2.py``;
- a match for part of the model: at least one tensor of its backbone, by exact name and shape.
  A partial match is legitimate (LIP modules start fresh from plain-ResNet weights, heads from
  backbone-only weights; detectron2 lists what it did not find). Caffe2 ``.pkl`` files, which
  detectron2 matches by name heuristics, are not checked this way;
- with ``--eval-only``, a match for every tensor of the model: anything missing or of another
  shape would be evaluated with untrained weights.

Files that hold Python objects besides tensors are not unpickled (that could run code from the
file); they are left to detectron2.
"""

import logging
import os

import torch
from detectron2.config import instantiate
from detectron2.modeling import META_ARCH_REGISTRY

from .convert import (
    SOURCE_TITLES,
    ConversionError,
    UnsafeCheckpointError,
    detect_source,
    load_checkpoint_file,
)

__all__ = ["WeightsError", "check_weights_file", "model_tensor_shapes"]

logger = logging.getLogger(__name__)

CONVERT_HINT = (
    'convert it first (README.md, section "Pretrained weights"): '
    "python tools/convert_lip_to_d2.py {path} weights/NAME.pkl"
)


class WeightsError(ValueError):
    """Weights that the model cannot start from. The message names the key and the file."""


def model_tensor_shapes(cfg):
    """{name: shape} of the state dict of the model of ``cfg`` (yacs or LazyConfig), built on the
    meta device: no memory, no initialisation cost. Raises ValueError with the builders' own
    message when the config describes no model that can be built (ValueError: an invalid value;
    KeyError: a name no registry knows). Returns None when building fails otherwise, which may be
    the meta device's doing: the real build will tell."""
    try:
        with torch.device("meta"):
            if hasattr(cfg, "MODEL"):
                model = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)
            else:
                model = instantiate(cfg.model)
    except (KeyError, ValueError) as e:
        message = e.args[0] if e.args else repr(e)  # (str() of a KeyError adds quotes)
        raise ValueError(f"cannot build the model: {message}") from e
    except Exception as e:
        logger.info(f"Not checking the weights before the model is built: {e!r}")
        return None
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def _state_of(obj, file_format):
    """(state dict, detectron2 matches names by heuristics) as DetectionCheckpointer reads it."""
    if file_format == "pickle":
        if isinstance(obj, dict) and "model" in obj and "__author__" in obj:
            return obj["model"], bool(obj.get("matching_heuristics", False))
        if isinstance(obj, dict) and "blobs" in obj:  # a caffe2 detection model
            obj = obj["blobs"]
        return obj, True
    if isinstance(obj, dict) and "model" in obj:
        return obj["model"], bool(obj.get("matching_heuristics", False))
    return obj, False


def _read(path):
    """The state dict in ``path`` and whether detectron2 matches it by heuristics, or None when
    it is left to detectron2."""
    if path.endswith(".pyth"):  # pycls; detectron2 reads it its own way
        return None
    try:
        obj, file_format = load_checkpoint_file(path)
    except UnsafeCheckpointError as e:
        logger.info(f"Not checking {path} before loading it: {e}")
        return None
    if path.endswith(".pkl") and file_format == "torch":
        raise ConversionError(
            f"{path}: a torch.save file named .pkl; detectron2 reads .pkl files with pickle, "
            "which cannot read it: rename it to .pth"
        )
    if not path.endswith(".pkl") and file_format == "pickle":
        raise ConversionError(
            f"{path}: a pickle of arrays (detectron2's .pkl format) under another extension; "
            "detectron2 reads it only as .pkl: rename it"
        )
    state, heuristics = _state_of(obj, file_format)
    if not isinstance(state, dict) or not any(
        hasattr(v, "shape") and hasattr(v, "dtype") for v in state.values()
    ):
        found = "a dict without tensors" if isinstance(state, dict) else type(state).__name__
        raise ConversionError(f"{path}: not a model checkpoint: it holds {found}")
    state = {str(k): v for k, v in state.items() if hasattr(v, "shape")}
    if all(k.startswith("module.") for k in state):  # detectron2 strips it too
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state, heuristics


def _example(names):
    return f"e.g. {sorted(names)[0]!r}" if names else "none"


def check_weights_file(path, expected, *, key="MODEL.WEIGHTS", eval_only=False):
    """
    Raise :class:`WeightsError` unless the local file ``path`` is a checkpoint detectron2 can
    load into a model whose state dict has the shapes ``expected`` ({name: shape}, see
    :func:`model_tensor_shapes`); see the module docstring for what is checked.
    """
    path = os.fspath(path)
    try:
        found = _read(path)
    except ConversionError as e:
        raise WeightsError(f"{key}: {e}") from e
    if found is None:
        return
    state, heuristics = found

    source = detect_source(state)
    if source in ("lip", "torchvision") or (source == "msra" and not heuristics):
        raise WeightsError(
            f"{key}: {path} is an ImageNet classification checkpoint ({SOURCE_TITLES[source]}), "
            "not a detectron2 one, so detectron2 would load none of it; "
            + CONVERT_HINT.format(path=path)
        )
    if heuristics:
        return  # detectron2 renames caffe2 names and matches them by suffix

    fits = {name for name, v in state.items() if expected.get(name) == tuple(v.shape)}
    backbone = {name for name in expected if name.startswith("backbone.")} or set(expected)
    if not fits & backbone:
        wrong_shape = sorted(name for name in state.keys() & backbone if name not in fits)
        detail = (
            f"{len(wrong_shape)} of them have other shapes, {_example(wrong_shape)}"
            if wrong_shape
            else f"the file has {_example(state)}, the model {_example(backbone)}"
        )
        raise WeightsError(
            f"{key}: none of the {len(state)} tensors in {path} fits the model's backbone by "
            f"name and shape ({detail}); it was written for another model. Backbone weights "
            "converted by tools/convert_lip_to_d2.py must have the --prefix of the model "
            "(backbone.bottom_up. under a FPN)"
        )
    if eval_only:
        missing = sorted(expected.keys() - state.keys())
        other_shape = sorted(name for name in expected.keys() & state.keys() if name not in fits)
        if missing or other_shape:
            problems = []
            if missing:
                problems.append(
                    f"lacks {len(missing)} of the model's tensors ({missing[0]!r}, ...)"
                )
            if other_shape:
                name = other_shape[0]
                shapes = f"{tuple(state[name].shape)} in the file, {expected[name]} in the model"
                problems.append(f"has other shapes for {len(other_shape)} ({name!r}: {shapes})")
            raise WeightsError(
                f"{key}: {path} {' and '.join(problems)}; --eval-only would evaluate untrained "
                "weights. Evaluate the checkpoint of a training run of this config"
            )
