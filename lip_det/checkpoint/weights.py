"""
Is ``MODEL.WEIGHTS`` a checkpoint this model can start from? Checked before anything is built.

detectron2 loads whatever the file holds by name and only logs what did not fit: the authors'
ImageNet LIP-ResNet or a torchvision ResNet given as they are (not converted) load nothing and
the run trains from random weights; a text file fails deep inside ``torch.load``. Read the way
detectron2's ``DetectionCheckpointer`` reads it (``.pkl``: a pickle, detectron2 or caffe2
format; anything else: ``torch.load``), the file must be

- a checkpoint at all (not text, not truncated), in the format its extension promises, with
  its tensors where detectron2 looks (a ``"model"`` entry or the whole file, not ``"state_dict"``);
- not an ImageNet classification checkpoint in torchvision or LIP layout: those need
  ``tools/convert_lip_to_d2.py``;
- a match for part of the model: at least one tensor of its backbone, by exact name and shape,
  and a ResNet of the model's depth where both are ResNets (else detectron2 would load the blocks
  the two depths share). A partial match is legitimate (LIP modules start fresh from
  plain-ResNet weights, heads from backbone-only weights; detectron2 lists what it did not
  find). Caffe2 ``.pkl`` files, which detectron2 matches by name heuristics, are not checked
  this way;
- with ``--eval-only``, a match for every tensor of the model: anything missing or of another
  shape would be evaluated with untrained weights; and LIP in the same places
  (``MODEL.LIP.PLACES`` / ``MODEL.LIP.DENSENET_PLACES``, read from the LIP layers' tensor names
  of the file and of the model): trained LIP layers would be dropped, or fresh ones evaluated.

Files that hold Python objects besides tensors are not unpickled (that could run code from the
file); they are left to detectron2.
"""

import logging
import os
import re

import torch
from detectron2.config import instantiate
from detectron2.modeling import META_ARCH_REGISTRY

from ..config import DENSENET_LIP_PLACES, LIP_PLACES
from .convert_resnet import SOURCE_TITLES, detect_source
from .files import CheckpointError, UnsafeCheckpointError, detectron2_resnet, read_checkpoint_file

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


def _read(path):
    """The file ``path`` as detectron2 would open it (:class:`~.files.CheckpointFile`), or None
    when it is left to detectron2."""
    if path.endswith(".pyth"):  # pycls; detectron2 reads it its own way
        return None
    try:
        return read_checkpoint_file(path, by_extension=True)
    except UnsafeCheckpointError as e:
        logger.info(f"Not checking {path} before loading it: {e}")
        return None


# The tensors of a LIP layer, by name, and the place it stands for: LIP-ResNet's stem LIP and the
# main/shortcut LIPs of the first blocks of res3-res5; LIP-DenseNet's stem LIP and the LIPs of the
# transitions that start dense3-dense5 (transition1-3).
_RESNET_LIP = re.compile(r"(?:^|\.)(?:(stem)\.lip|(res[3-5])\.0\.(main|shortcut)_lip)\.")
_DENSENET_LIP = re.compile(r"(?:^|\.)(?:(stem)\.lip|dense([3-5])\.transition\.lip)\.")
_DENSENET = re.compile(r"(?:^|\.)dense[2-5]\.")


def _lip_places(names):
    """(config key, the LIP places the tensor names ``names`` hold, in the key's order) of a
    (LIP-)ResNet or (LIP-)DenseNet: ``("MODEL.LIP.PLACES", ["stem", "res3.main", ...])``."""
    names = list(names)
    if any(_DENSENET.search(name) for name in names):
        key, order, pattern = "MODEL.LIP.DENSENET_PLACES", DENSENET_LIP_PLACES, _DENSENET_LIP
    else:
        key, order, pattern = "MODEL.LIP.PLACES", LIP_PLACES, _RESNET_LIP
    found = set()
    for name in names:
        match = pattern.search(name)
        if match and match[1]:
            found.add("stem")
        elif match and pattern is _RESNET_LIP:
            found.add(f"{match[2]}.{match[3]}")
        elif match:
            found.add(f"transition{int(match[2]) - 2}")
    return key, [place for place in order if place in found]


def _check_places(path, state, expected, key):
    """At --eval-only: the file's LIP layers must be the model's (see the module docstring)."""
    places_key, trained = _lip_places(state)
    model_key, configured = _lip_places(expected)
    if not trained or places_key != model_key or trained == configured:
        return  # no LIP layers in the file (plain weights: "lacks" tells), or the same ones
    dropped = [place for place in trained if place not in configured]
    fresh = [place for place in configured if place not in trained]
    effects = []
    if dropped:
        effects.append(f"drop the trained LIP layers of {dropped!r}")
    if fresh:
        effects.append(f"evaluate untrained LIP layers in {fresh!r}")
    has = f" has {configured!r}" if configured else "'s model has no LIP layers"
    raise WeightsError(
        f"{key}: {path} was trained with {places_key} {trained!r} but the config{has}; "
        f"--eval-only would {' and '.join(effects)}. Evaluate it with the {places_key} it was "
        "trained with"
    )


def _check_depth(path, state, expected, key):
    """Both ResNets of known depths: the same depth (see the module docstring)."""
    found, model = detectron2_resnet(state), detectron2_resnet(expected)
    if not found or not model or None in (found[0], model[0]) or found[0] == model[0]:
        return
    raise WeightsError(
        f"{key}: {path} holds the weights of a ResNet-{found[0]} (blocks per stage {found[1]}), "
        f"but the model's backbone is a ResNet-{model[0]} ({model[1]}): the depth differs, so "
        "detectron2 would load only the tensors the two share by name and shape. Use weights of "
        f"a ResNet-{model[0]} (tools/convert_lip_to_d2.py converts ImageNet ones; --depth "
        f"{model[0]} checks the depth) or a config of depth {found[0]}"
    )


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
        checkpoint = _read(path)
    except CheckpointError as e:
        raise WeightsError(f"{key}: {e}") from e
    if checkpoint is None:
        return
    state = {name: v for name, v in checkpoint.state.items() if hasattr(v, "shape")}
    heuristics = checkpoint.matching_heuristics

    source = detect_source(state)
    if source in ("lip", "torchvision") or (source == "msra" and not heuristics):
        raise WeightsError(
            f"{key}: {path} is an ImageNet classification checkpoint ({SOURCE_TITLES[source]}), "
            "not a detectron2 one, so detectron2 would load none of it; "
            + CONVERT_HINT.format(path=path)
        )
    if not checkpoint.detectron2_loads_it:
        raise WeightsError(
            f"{key}: {path} holds its tensors under {checkpoint.wrapper!r}, where detectron2 does "
            "not look (it loads a file's 'model', or the whole file), so it would load none of "
            "them; save them as {'model': state_dict}"
        )
    if heuristics:
        return  # detectron2 renames caffe2 names and matches them by suffix
    _check_depth(path, state, expected, key)

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
        _check_places(path, state, expected, key)
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
