"""FPN backbones on a LIP bottom-up, registered like detectron2's ``build_resnet_fpn_backbone``
and ``build_retinanet_resnet_fpn_backbone`` (the same MODEL.FPN.* keys), and on (LIP-)DenseNet
bottom-ups (MODEL.FPN.IN_FEATURES from dense2..dense5; RetinaNet's P6 reads dense5)."""

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN
from detectron2.modeling.backbone.fpn import LastLevelMaxPool, LastLevelP6P7

from .lip_densenet import build_densenet_backbone, build_lip_densenet_backbone
from .lip_resnet import build_lip_resnet_backbone

__all__ = [
    "build_lip_resnet_fpn_backbone",
    "build_retinanet_lip_resnet_fpn_backbone",
    "build_lip_densenet_fpn_backbone",
    "build_retinanet_lip_densenet_fpn_backbone",
    "build_densenet_fpn_backbone",
    "build_retinanet_densenet_fpn_backbone",
]


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


def _densenet_fpn(cfg, bottom_up, retinanet):
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    if retinanet:  # P6/P7 from dense5, as detectron2's RetinaNet takes them from res5
        in_channels_p6p7 = bottom_up.output_shape()["dense5"].channels
        top_block = LastLevelP6P7(in_channels_p6p7, out_channels, in_feature="dense5")
    else:
        top_block = LastLevelMaxPool()
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=top_block,
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


@BACKBONE_REGISTRY.register()
def build_lip_densenet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """LIP-DenseNet + FPN (P2-P6), as detectron2's ``build_resnet_fpn_backbone``."""
    return _densenet_fpn(cfg, build_lip_densenet_backbone(cfg, input_shape), retinanet=False)


@BACKBONE_REGISTRY.register()
def build_retinanet_lip_densenet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """LIP-DenseNet + FPN (P3-P7), as detectron2's ``build_retinanet_resnet_fpn_backbone``."""
    return _densenet_fpn(cfg, build_lip_densenet_backbone(cfg, input_shape), retinanet=True)


@BACKBONE_REGISTRY.register()
def build_densenet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """The plain DenseNet + FPN (P2-P6) twin of :func:`build_lip_densenet_fpn_backbone`."""
    return _densenet_fpn(cfg, build_densenet_backbone(cfg, input_shape), retinanet=False)


@BACKBONE_REGISTRY.register()
def build_retinanet_densenet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """The plain DenseNet + FPN (P3-P7) twin of
    :func:`build_retinanet_lip_densenet_fpn_backbone`."""
    return _densenet_fpn(cfg, build_densenet_backbone(cfg, input_shape), retinanet=True)
