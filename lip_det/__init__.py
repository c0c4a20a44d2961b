"""lip_det: LIP (Local Importance-based Pooling, Gao et al. ICCV 2019) for detectron2.

``import lip_det`` registers the LIP-ResNet backbones in detectron2's BACKBONE_REGISTRY:
``build_lip_resnet_backbone``, ``build_lip_resnet_fpn_backbone`` and
``build_retinanet_lip_resnet_fpn_backbone``, and the synthetic datasets ``lip_synthetic_train``
and ``lip_synthetic_val`` in DatasetCatalog (generated on first use). Import it before other
detectron2 modules: it first applies the detectron2 compatibility fixes of ``lip_det.compat``
(no-ops on upstream detectron2).
"""

import warnings

# The one start-up warning that every run prints and no user can act on: detectron2 (v0.6 and
# HEAD) decorates functions with torch.jit.script when it is imported, which torch >= 2.10 calls
# deprecated. (Our configs carry VERSION: 2, so detectron2's "Config has no VERSION" stays away.)
warnings.filterwarnings(
    "ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning
)

from . import compat  # noqa: E402

compat.apply()

from .config import add_lip_config  # noqa: E402  (registration needs the fixes above)
from .data import builtin as _builtin_datasets  # noqa: E402,F401  (registers lip_synthetic_*)
from .layers import LIP, lip2d  # noqa: E402
from .modeling import (  # noqa: E402
    LIPResNet,
    build_lip_resnet_backbone,
    build_lip_resnet_fpn_backbone,
    build_retinanet_lip_resnet_fpn_backbone,
)

__version__ = "0.1.0"

__all__ = [
    "LIP",
    "LIPResNet",
    "add_lip_config",
    "build_lip_resnet_backbone",
    "build_lip_resnet_fpn_backbone",
    "build_retinanet_lip_resnet_fpn_backbone",
    "lip2d",
]
