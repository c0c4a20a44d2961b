"""LIP backbones: blocks, the LIP-ResNet bottom-up and its FPN variants. Importing this package
registers the builders in detectron2's BACKBONE_REGISTRY."""

from .blocks import LIPBasicBlock, LIPBottleneckBlock, LIPStem
from .fpn import build_lip_resnet_fpn_backbone, build_retinanet_lip_resnet_fpn_backbone
from .lip_resnet import NUM_BLOCKS_PER_STAGE, LIPResNet, build_lip_resnet_backbone

__all__ = [
    "NUM_BLOCKS_PER_STAGE",
    "LIPBasicBlock",
    "LIPBottleneckBlock",
    "LIPResNet",
    "LIPStem",
    "build_lip_resnet_backbone",
    "build_lip_resnet_fpn_backbone",
    "build_retinanet_lip_resnet_fpn_backbone",
]
