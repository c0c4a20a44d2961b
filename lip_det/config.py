from detectron2.config import CfgNode as CN

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
LOGIT_MODULES = ("simplified", "projection", "bottleneck")
STEM_LOGIT_MODULES = ("simplified", "projection")
EVAL_ENGINES = ("official", "fast")


def add_lip_config(cfg):
    """Add the config keys of lip_det (``MODEL.LIP`` and ``TEST.SMALL_OBJECT``) to ``cfg``."""
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

    _C.TEST.SMALL_OBJECT = CN()
    # Size-bucket edges in sqrt(area) pixels of the original image; the last bucket is open-ended.
    # [0, 8, 16, 32, 96] gives [0,8), [8,16), [16,32), [32,96), [96,inf).
    _C.TEST.SMALL_OBJECT.BUCKET_EDGES = [0, 8, 16, 32, 96]
    # maxDets of COCOeval; AP/AR per bucket use the last one (COCO: [1, 10, 100]).
    _C.TEST.SMALL_OBJECT.MAX_DETS = [1, 10, 100]
    # "official" (pycocotools, paper-comparable) or "fast" (faster-coco-eval / detectron2 _C).
    _C.TEST.SMALL_OBJECT.ENGINE = "official"


def check_choice(value, valid, key):
    """Raise ValueError naming ``key``, ``value`` and the valid choices if value is not valid."""
    if value not in valid:
        raise ValueError(f"{key} = {value!r} is not valid; choose one of {list(valid)}")
