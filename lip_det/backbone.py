"""LIP-ResNet backbones, registered in detectron2's BACKBONE_REGISTRY when lip_det is imported.

The config keys are detectron2's own (MODEL.RESNETS.*, MODEL.FPN.*, MODEL.BACKBONE.FREEZE_AT)
plus MODEL.LIP.* (see config.py). Strides, channels and spatial sizes of res2..res5 equal those
of detectron2's plain ResNet of the same depth, so FPN and every head work unchanged.
"""

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN, ResNet
from detectron2.modeling.backbone.fpn import LastLevelMaxPool, LastLevelP6P7
from detectron2.modeling.backbone.resnet import (
    BasicBlock,
    BasicStem,
    BottleneckBlock,
    DeformBottleneckBlock,
)

from .blocks import LIPBasicBlock, LIPBottleneckBlock, LIPStem
from .config import check_choice, validate_lip_config
from .lip_layer import LIP
from .logit_modules import BottleneckTrunk

__all__ = [
    "LIPResNet",
    "build_lip_resnet_backbone",
    "build_lip_resnet_fpn_backbone",
    "build_retinanet_lip_resnet_fpn_backbone",
]

NUM_BLOCKS_PER_STAGE = {
    18: [2, 2, 2, 2],
    34: [3, 4, 6, 3],
    50: [3, 4, 6, 3],
    101: [3, 4, 23, 3],
    152: [3, 8, 36, 3],
}


class LIPResNet(ResNet):
    """detectron2's ``ResNet`` whose ``freeze`` knows about LIP logit modules.

    ``freeze(freeze_at)`` freezes the stem and the first ``freeze_at - 1`` stages exactly as for a
    plain ResNet, LIP logit modules included (they are part of the frozen function). With
    ``train_frozen_lip=True`` the logit modules inside frozen stages stay trainable; they have no
    BatchNorm, so nothing else about them changes.
    """

    def __init__(self, stem, stages, *, out_features=None, freeze_at=0, train_frozen_lip=False):
        super().__init__(stem, stages, out_features=out_features, freeze_at=0)
        self.train_frozen_lip = train_frozen_lip
        self.freeze(freeze_at)

    def freeze(self, freeze_at=0):
        super().freeze(freeze_at)
        if freeze_at > 0 and self.train_frozen_lip:  # (ResNet.__init__ calls freeze(0))
            for module in self.modules():
                if isinstance(module, (LIP, BottleneckTrunk)):
                    module.requires_grad_(True)
        return self


def _check_lip_config(cfg):
    validate_lip_config(cfg)
    lip = cfg.MODEL.LIP
    check_choice(cfg.MODEL.RESNETS.DEPTH, tuple(NUM_BLOCKS_PER_STAGE), "MODEL.RESNETS.DEPTH")
    if cfg.MODEL.RESNETS.RES5_DILATION != 1 and any(p.startswith("res5.") for p in lip.PLACES):
        raise ValueError(
            "MODEL.LIP.PLACES has res5 entries but MODEL.RESNETS.RES5_DILATION = "
            f"{cfg.MODEL.RESNETS.RES5_DILATION} makes res5 stride 1, so there is nothing to pool; "
            "drop res5.main/res5.shortcut from MODEL.LIP.PLACES"
        )


@BACKBONE_REGISTRY.register()
def build_lip_resnet_backbone(cfg, input_shape):
    """A LIP-ResNet from config; the same keys as detectron2's ``build_resnet_backbone`` plus
    MODEL.LIP. Depths 18/34 use :class:`LIPBasicBlock`, 50/101/152 :class:`LIPBottleneckBlock`.

    Returns:
        LIPResNet
    """
    _check_lip_config(cfg)
    lip = cfg.MODEL.LIP
    places = set(lip.PLACES)
    lip_kwargs = {
        "logit": lip.BLOCK_LOGIT,
        "bottleneck_width": lip.BOTTLENECK_WIDTH,
        "gate_coeff": lip.GATE_COEFF,
        "impl": lip.IMPL,
    }

    # fmt: off
    norm                = cfg.MODEL.RESNETS.NORM
    depth               = cfg.MODEL.RESNETS.DEPTH
    num_groups          = cfg.MODEL.RESNETS.NUM_GROUPS
    width_per_group     = cfg.MODEL.RESNETS.WIDTH_PER_GROUP
    bottleneck_channels = num_groups * width_per_group
    in_channels         = cfg.MODEL.RESNETS.STEM_OUT_CHANNELS
    out_channels        = cfg.MODEL.RESNETS.RES2_OUT_CHANNELS
    stride_in_1x1       = cfg.MODEL.RESNETS.STRIDE_IN_1X1
    res5_dilation       = cfg.MODEL.RESNETS.RES5_DILATION
    deform_on_per_stage = cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE
    # fmt: on

    if "stem" in places:
        stem = LIPStem(
            input_shape.channels, in_channels, norm=norm, logit=lip.STEM_LOGIT,
            gate_coeff=lip.GATE_COEFF, impl=lip.IMPL,
        )  # fmt: skip
    else:
        stem = BasicStem(input_shape.channels, in_channels, norm=norm)

    basic = depth in (18, 34)
    if basic:
        # the same constraints as detectron2's build_resnet_backbone
        if out_channels != 64:
            raise ValueError("MODEL.RESNETS.RES2_OUT_CHANNELS must be 64 for R18/R34")
        if any(deform_on_per_stage) or res5_dilation != 1 or num_groups != 1:
            raise ValueError(
                "R18/R34 support neither MODEL.RESNETS.DEFORM_ON_PER_STAGE, RES5_DILATION != 1 "
                "nor NUM_GROUPS != 1"
            )

    stages = []
    for idx, stage_idx in enumerate(range(2, 6)):
        dilation = res5_dilation if stage_idx == 5 else 1
        first_stride = 1 if idx == 0 or (stage_idx == 5 and dilation == 2) else 2
        num_blocks = NUM_BLOCKS_PER_STAGE[depth][idx]
        lip_main = f"res{stage_idx}.main" in places
        lip_shortcut = f"res{stage_idx}.shortcut" in places
        use_lip = first_stride == 2 and (lip_main or lip_shortcut)

        if basic:
            stage_kwargs = {"block_class": BasicBlock, "norm": norm}
        else:
            stage_kwargs = {
                "block_class": BottleneckBlock,
                "bottleneck_channels": bottleneck_channels,
                "stride_in_1x1": stride_in_1x1,
                "dilation": dilation,
                "num_groups": num_groups,
                "norm": norm,
            }
            if deform_on_per_stage[idx]:
                stage_kwargs["block_class"] = DeformBottleneckBlock
                stage_kwargs["deform_modulated"] = cfg.MODEL.RESNETS.DEFORM_MODULATED
                stage_kwargs["deform_num_groups"] = cfg.MODEL.RESNETS.DEFORM_NUM_GROUPS

        blocks = []
        if use_lip:
            if basic:
                first = LIPBasicBlock(
                    in_channels, out_channels, stride=2, norm=norm, lip_main=lip_main,
                    lip_shortcut=lip_shortcut, **lip_kwargs,
                )  # fmt: skip
            else:
                first = LIPBottleneckBlock(
                    in_channels, out_channels, bottleneck_channels=bottleneck_channels, stride=2,
                    num_groups=num_groups, norm=norm, stride_in_1x1=stride_in_1x1,
                    lip_main=lip_main, lip_shortcut=lip_shortcut, **lip_kwargs,
                )  # fmt: skip
            blocks.append(first)
        blocks += ResNet.make_stage(
            num_blocks=num_blocks - len(blocks),
            stride_per_block=[first_stride] * (not blocks) + [1] * (num_blocks - 1),
            in_channels=out_channels if blocks else in_channels,
            out_channels=out_channels,
            **stage_kwargs,
        )
        stages.append(blocks)
        in_channels = out_channels
        out_channels *= 2
        bottleneck_channels *= 2

    return LIPResNet(
        stem,
        stages,
        out_features=cfg.MODEL.RESNETS.OUT_FEATURES,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
        train_frozen_lip=lip.TRAIN_FROZEN_LIP,
    )


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
