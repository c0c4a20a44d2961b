"""lip_det: LIP (Local Importance-based Pooling, Gao et al. ICCV 2019) for detectron2.

Importing the package registers the LIP-ResNet backbones in detectron2's BACKBONE_REGISTRY.
"""

from . import compat

compat.apply()  # before anything imports detectron2.layers

__version__ = "0.1.0"
