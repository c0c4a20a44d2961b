"""add_lip_config(cfg): lip_det's config keys, and validate_lip_config(cfg), their checks."""

import logging
import math

from detectron2.config import CfgNode as CN

from .choices import check_choice
from .layers.dispatch import LIP_IMPLEMENTATIONS
from .layers.logit_modules import LOGIT_MODULES, STEM_LOGIT_MODULES

# The seven places LIP can replace a stride-2 operation in a ResNet (paper: all seven).
LIP_PLACES = (
    "stem",  # the stem's 3x3/2 max-pool
    "res3.main",  # the main path of the first (stride-2) block of res3
    "res3.shortcut",  # its projection shortcut
    "res4.main",
    "res4.shortcut",
    "res5.main",
    "res5.shortcut",
)
# The four places LIP replaces a pooling in a DenseNet (paper, LIP-DenseNet-121: all four).
DENSENET_LIP_PLACES = (
    "stem",  # the stem's 3x3/2 max-pool
    "transition1",  # the 2x2/2 average pooling of the transition before denseblock2 (-> dense3)
    "transition2",  # ... before denseblock3 (-> dense4)
    "transition3",  # ... before denseblock4 (-> dense5)
)
# Above this SoftGate coefficient the weights exp(logit) of a window differ by more than e^30:
# one-hot for any logits that are not all within ~1e-13 of each other.
SATURATING_GATE_COEFF = 30.0
# LIP-ResNet builders and the plain builders with the same outputs (for the empty-PLACES advice)
_PLAIN_BUILDERS = {
    "build_lip_resnet_backbone": "build_resnet_backbone",
    "build_lip_resnet_fpn_backbone": "build_resnet_fpn_backbone",
    "build_retinanet_lip_resnet_fpn_backbone": "build_retinanet_resnet_fpn_backbone",
}
_LIP_RESNET_BUILDERS = tuple(_PLAIN_BUILDERS)
AMP_PRECISIONS = ("auto", "float16", "bfloat16")


logger = logging.getLogger(__name__)


def add_lip_config(cfg):
    """Add the config keys of lip_det (``MODEL.LIP``, ``MODEL.DENSENET``, ``MODEL.COMPILE``,
    ``TEST.SMALL_OBJECT``, ``DATALOADER.*`` and ``SOLVER.AMP.PRECISION``) to ``cfg``."""
    _C = cfg

    _C.MODEL.LIP = CN()
    # Where LIP replaces a stride-2 op; any subset of LIP_PLACES (paper: all seven).
    _C.MODEL.LIP.PLACES = list(LIP_PLACES)
    # Logit module of the stem LIP: "simplified" (3x3 conv, paper) or "projection" (1x1 conv).
    _C.MODEL.LIP.STEM_LOGIT = "simplified"
    # Logit module of the LIPs in res3-res5: "bottleneck" (paper), "projection" or "simplified".
    _C.MODEL.LIP.BLOCK_LOGIT = "bottleneck"
    # Width W of the shared trunk of "bottleneck" logit modules (paper: 128).
    _C.MODEL.LIP.BOTTLENECK_WIDTH = 128
    # SoftGate coefficient: logit = COEFF * sigmoid(.), importance in (1, e^COEFF) (paper: 12).
    _C.MODEL.LIP.GATE_COEFF = 12.0
    # Keep LIP logit modules trainable inside stages frozen by MODEL.BACKBONE.FREEZE_AT. False
    # (default) freezes them with their stage, like the convs they sit between; True lets them
    # adapt, e.g. when starting from plain-ResNet weights, where every LIP starts as avg pooling.
    _C.MODEL.LIP.TRAIN_FROZEN_LIP = False
    # lip2d implementation: "auto" picks the best available for the tensor's device.
    _C.MODEL.LIP.IMPL = "auto"
    # Where LIP replaces a pooling in a LIP-DenseNet; any subset of DENSENET_LIP_PLACES (paper:
    # all four). STEM_LOGIT, BLOCK_LOGIT (here: the transitions'), BOTTLENECK_WIDTH, GATE_COEFF,
    # TRAIN_FROZEN_LIP and IMPL apply to LIP-DenseNet as to LIP-ResNet.
    _C.MODEL.LIP.DENSENET_PLACES = list(DENSENET_LIP_PLACES)
    # Recompute each LIP-ResNet block's LIP part (logit trunk, heads, pooling) in the backward
    # pass instead of keeping its activations: less training memory for one more forward pass of
    # the logit modules per step (lip_det.modeling.blocks). No effect on inference.
    _C.MODEL.LIP.RECOMPUTE = False

    # torch.compile the backbone (in place, so checkpoint keys do not change) for training and
    # evaluation. Only the backbone: detectron2's proposal and RoI heads have data-dependent
    # shapes that recompile or break the graph. FULLGRAPH: fail on a graph break rather than run
    # it in pieces; BACKEND: torch.compile's backend ("inductor", "aot_eager", ...).
    _C.MODEL.COMPILE = CN()
    _C.MODEL.COMPILE.ENABLED = False
    _C.MODEL.COMPILE.FULLGRAPH = True
    _C.MODEL.COMPILE.BACKEND = "inductor"

    # (LIP-)DenseNet-BC bottom-ups (lip_det.modeling.lip_densenet).
    _C.MODEL.DENSENET = CN()
    # 121, 169 or 201: dense layers per block (6, 12, 24, 16), (6, 12, 32, 32), (6, 12, 48, 32).
    _C.MODEL.DENSENET.DEPTH = 121
    # Outputs: "stem", "dense2" (denseblock1, stride 4) ... "dense5" (denseblock4 + final norm +
    # ReLU, stride 32); a stage's output is its dense block's concatenated features.
    _C.MODEL.DENSENET.OUT_FEATURES = ["dense2", "dense3", "dense4", "dense5"]
    # Norm of the stem, dense layers, transitions and final norm: "FrozenBN", "BN", "SyncBN", "GN".
    _C.MODEL.DENSENET.NORM = "FrozenBN"
    # Channels each dense layer adds, k (DenseNet-121/169/201: 32).
    _C.MODEL.DENSENET.GROWTH_RATE = 32
    # Width of a dense layer's 1x1 bottleneck conv, in multiples of GROWTH_RATE (DenseNet-BC: 4).
    _C.MODEL.DENSENET.BN_SIZE = 4
    # Channels of the stem's 7x7 conv (DenseNet-121/169/201: 64).
    _C.MODEL.DENSENET.STEM_OUT_CHANNELS = 64

    _C.TEST.SMALL_OBJECT = CN()
    # Size-bucket edges in sqrt(area) pixels of the original image; the last bucket is open-ended.
    # [0, 8, 16, 32, 96] gives [0,8), [8,16), [16,32), [32,96), [96,inf).
    _C.TEST.SMALL_OBJECT.BUCKET_EDGES = [0, 8, 16, 32, 96]
    # maxDets of COCOeval; AP/AR per bucket use the last one (COCO: [1, 10, 100]).
    _C.TEST.SMALL_OBJECT.MAX_DETS = [1, 10, 100]
    # "official" (pycocotools, paper-comparable) or "fast" (faster-coco-eval / detectron2 _C).
    _C.TEST.SMALL_OBJECT.ENGINE = "official"

    # Training skips an image file that cannot be decoded, with a warning, and stops once more
    # than this fraction of the images a data-loader process read were unreadable (0: stop at
    # the first). Evaluation always stops at an unreadable image. See lip_det.data.mapper.
    _C.DATALOADER.MAX_UNREADABLE_FRACTION = 0.01
    # Exact resume (lip_det.data.samplers, lip_det.engine.resume): batch k is a function of
    # (SEED, k), each image's augmentation of (SEED, k, place), the model's RNG seeded per
    # iteration; checkpoints hold the stream position. False: detectron2's loader and RNG use.
    _C.DATALOADER.RESUMABLE = True

    # Autocast dtype of SOLVER.AMP.ENABLED (d2go's key): "float16" (CUDA only: detectron2's
    # AMPTrainer with a GradScaler), "bfloat16" (CPU or CUDA), "auto" = float16 on CUDA, bfloat16
    # on the CPU.
    _C.SOLVER.AMP.PRECISION = "auto"


# lip_det's keys whose values are floats: an integer given for one (`MODEL.LIP.GATE_COEFF 6`) is
# taken as that float, where yacs would refuse it as a "Type mismatch".
FLOAT_KEYS = ("MODEL.LIP.GATE_COEFF", "DATALOADER.MAX_UNREADABLE_FRACTION")


def ints_as_floats(opts):
    """``KEY VALUE`` overrides with an integer VALUE of a FLOAT_KEYS key written as a float."""
    opts = list(opts)
    for i in range(0, len(opts) - 1, 2):
        if opts[i] in FLOAT_KEYS and isinstance(opts[i + 1], str):
            try:
                opts[i + 1] = repr(float(int(opts[i + 1])))
            except ValueError:
                pass  # not an integer: yacs checks it
    return opts


def ints_as_floats_in(loaded):
    """Turn, in place, integers at FLOAT_KEYS of a loaded yaml (nested dicts) into floats;
    returns whether any was."""
    changed = False
    for key in FLOAT_KEYS:
        *parents, leaf = key.split(".")
        node = loaded
        for parent in parents:
            node = node.get(parent) if isinstance(node, dict) else None
        if isinstance(node, dict) and type(node.get(leaf)) is int:
            node[leaf] = float(node[leaf])
            changed = True
    return changed


def validate_lip_config(cfg):
    """
    Check the values of ``MODEL.LIP``: a ValueError naming the key, the value and the valid
    choices. The LIP backbone builders call it, and ``tools/train_net.py`` before anything is
    built, so that a typo fails in one line instead of when the model is constructed.
    """
    lip = cfg.MODEL.LIP
    for key in ("PLACES", "DENSENET_PLACES"):
        repeated = sorted({p for p in lip[key] if list(lip[key]).count(p) > 1}, key=str)
        if repeated:
            raise ValueError(
                f"MODEL.LIP.{key} = {list(lip[key])!r} repeats {repeated!r}; list each place once"
            )
    if not lip.PLACES and cfg.MODEL.BACKBONE.NAME in _LIP_RESNET_BUILDERS:
        raise ValueError(
            "MODEL.LIP.PLACES is empty: a LIP-ResNet without LIP is detectron2's plain ResNet; "
            f"use MODEL.BACKBONE.NAME {_PLAIN_BUILDERS[cfg.MODEL.BACKBONE.NAME]!r} (e.g. "
            "configs/COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml), or list the places to pool "
            "with LIP"
        )
    for place in lip.PLACES:
        check_choice(place, LIP_PLACES, "MODEL.LIP.PLACES entry")
    for place in lip.DENSENET_PLACES:
        check_choice(place, DENSENET_LIP_PLACES, "MODEL.LIP.DENSENET_PLACES entry")
    check_choice(lip.STEM_LOGIT, STEM_LOGIT_MODULES, "MODEL.LIP.STEM_LOGIT")
    check_choice(lip.BLOCK_LOGIT, LOGIT_MODULES, "MODEL.LIP.BLOCK_LOGIT")
    check_choice(lip.IMPL, ("auto", *LIP_IMPLEMENTATIONS), "MODEL.LIP.IMPL")
    if lip.BOTTLENECK_WIDTH < 1:
        raise ValueError(f"MODEL.LIP.BOTTLENECK_WIDTH = {lip.BOTTLENECK_WIDTH} must be >= 1")
    # (the importance weights are exp(logit) with logits in (0, GATE_COEFF))
    if not (math.isfinite(lip.GATE_COEFF) and lip.GATE_COEFF > 0):
        raise ValueError(f"MODEL.LIP.GATE_COEFF = {lip.GATE_COEFF!r} must be > 0 and finite")
    if lip.GATE_COEFF > SATURATING_GATE_COEFF:
        logger.warning(
            f"MODEL.LIP.GATE_COEFF = {lip.GATE_COEFF!r}: importance weights span up to "
            f"e^{lip.GATE_COEFF:g}, so each window's weights are one-hot and LIP is max pooling "
            "whose logit modules get almost no gradient (the paper uses 12)"
        )
