"""FPN backbones on a LIP bottom-up, registered like detectron2's ``build_resnet_fpn_backbone``
and ``build_retinanet_resnet_fpn_backbone`` (the same MODEL.FPN.* keys)."""

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN
from detectron2.modeling.backbone.fpn import LastLevelMaxPool, LastLevelP6P7

from .lip_resnet import build_lip_resnet_backbone

__all__ = ["build_lip_resnet_fpn_backbone", "build_retinanet_lip_resnet_fpn_backbone"]


@BACKBONE_REGISTRY.register()
def build_lip_resnet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """LIP-ResNet + FPN (P2-P6), as detectron2's ``build_resnet_fpn_backbone``."""
    return FPN(
        bottom_up=build_lip_resnet_backbone(cfg, input_shape),
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


@BACKBONE_REGISTRY.register()
def build_retinanet_lip_resnet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """LIP-ResNet + FPN (P3-P7), as detectron2's ``build_retinanet_resnet_fpn_backbone``."""
    bottom_up = build_lip_resnet_backbone(cfg, input_shape)
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    in_channels_p6p7 = bottom_up.output_shape()["res5"].channels
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelP6P7(in_channels_p6p7, out_channels),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
