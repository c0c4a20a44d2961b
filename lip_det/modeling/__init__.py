"""LIP backbones: blocks, the LIP-ResNet and (LIP-)DenseNet bottom-ups and their FPN variants.
Importing this package registers the builders in detectron2's BACKBONE_REGISTRY."""

from .blocks import LIPBasicBlock, LIPBottleneckBlock, LIPStem
from .fpn import (
    build_densenet_fpn_backbone,
    build_lip_densenet_fpn_backbone,
    build_lip_resnet_fpn_backbone,
    build_retinanet_densenet_fpn_backbone,
    build_retinanet_lip_densenet_fpn_backbone,
    build_retinanet_lip_resnet_fpn_backbone,
)
from .lip_densenet import (
    NUM_LAYERS_PER_BLOCK,
    DenseNet,
    build_densenet_backbone,
    build_lip_densenet_backbone,
)
from .lip_resnet import NUM_BLOCKS_PER_STAGE, LIPResNet, build_lip_resnet_backbone

__all__ = [
    "NUM_BLOCKS_PER_STAGE",
    "NUM_LAYERS_PER_BLOCK",
    "DenseNet",
    "LIPBasicBlock",
    "LIPBottleneckBlock",
    "LIPResNet",
    "LIPStem",
    "build_lip_resnet_backbone",
    "build_lip_resnet_fpn_backbone",
    "build_retinanet_lip_resnet_fpn_backbone",
    "build_densenet_backbone",
    "build_densenet_fpn_backbone",
    "build_lip_densenet_backbone",
    "build_lip_densenet_fpn_backbone",
    "build_retinanet_densenet_fpn_backbone",
    "build_retinanet_lip_densenet_fpn_backbone",
]
