"""LIP-ResNet: the bottom-up backbone, its cfg-free stage factory and its registered builder.

The config keys are detectron2's own (MODEL.RESNETS.*, MODEL.FPN.*, MODEL.BACKBONE.FREEZE_AT)
plus MODEL.LIP.* (see config.py). Strides, channels and spatial sizes of res2..res5 equal those
of detectron2's plain ResNet of the same depth, so FPN and every head work unchanged.
"""

from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import ResNet
from detectron2.modeling.backbone.resnet import (
    BasicBlock,
    BasicStem,
    BottleneckBlock,
    DeformBottleneckBlock,
)

from ..choices import check_choice
from ..config import LIP_PLACES, validate_lip_config
from ..layers import LIP, BottleneckTrunk
from .blocks import LIPBasicBlock, LIPBottleneckBlock, LIPStem

__all__ = ["NUM_BLOCKS_PER_STAGE", "LIPResNet", "build_lip_resnet_backbone"]

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

    @staticmethod
    def make_lip_stages(
        depth,
        *,
        places=LIP_PLACES,
        norm="BN",
        in_channels=64,
        out_channels=256,
        num_groups=1,
        width_per_group=64,
        stride_in_1x1=False,
        res5_dilation=1,
        deform_on_per_stage=(False, False, False, False),
        deform_modulated=False,
        deform_num_groups=1,
        logit="bottleneck",
        bottleneck_width=128,
        gate_coeff=12.0,
        impl="auto",
        recompute=False,
    ):
        """res2..res5 of a LIP-ResNet as lists of blocks, the way ``ResNet.make_default_stages``
        gives them for a plain ResNet: what the yacs builder and the LazyConfigs both use.

        The first block of res3/res4/res5 pools with LIP where ``places`` has that stage's
        ``.main``/``.shortcut`` (``"stem"`` is the stem's business, :class:`LIPStem`); every other
        block is detectron2's own (``BottleneckBlock``, ``DeformBottleneckBlock`` or, for depths
        18/34, ``BasicBlock``). The other arguments mean what MODEL.RESNETS.* / MODEL.LIP.* mean.
        """
        check_choice(depth, tuple(NUM_BLOCKS_PER_STAGE), "depth")
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
        places = set(places)
        lip_kwargs = {
            "logit": logit,
            "bottleneck_width": bottleneck_width,
            "gate_coeff": gate_coeff,
            "impl": impl,
            "recompute": recompute,
        }
        bottleneck_channels = num_groups * width_per_group
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
                    stage_kwargs["deform_modulated"] = deform_modulated
                    stage_kwargs["deform_num_groups"] = deform_num_groups

            blocks = []
            if use_lip:
                if basic:
                    first = LIPBasicBlock(
                        in_channels, out_channels, stride=2, norm=norm, lip_main=lip_main,
                        lip_shortcut=lip_shortcut, **lip_kwargs,
                    )  # fmt: skip
                else:
                    first = LIPBottleneckBlock(
                        in_channels, out_channels, bottleneck_channels=bottleneck_channels,
                        stride=2, num_groups=num_groups, norm=norm, stride_in_1x1=stride_in_1x1,
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
        return stages


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
    resnets = cfg.MODEL.RESNETS
    if "stem" in lip.PLACES:
        stem = LIPStem(
            input_shape.channels, resnets.STEM_OUT_CHANNELS, norm=resnets.NORM,
            logit=lip.STEM_LOGIT, gate_coeff=lip.GATE_COEFF, impl=lip.IMPL,
            recompute=lip.RECOMPUTE,
        )  # fmt: skip
    else:
        stem = BasicStem(input_shape.channels, resnets.STEM_OUT_CHANNELS, norm=resnets.NORM)
    stages = LIPResNet.make_lip_stages(
        resnets.DEPTH,
        places=lip.PLACES,
        norm=resnets.NORM,
        in_channels=resnets.STEM_OUT_CHANNELS,
        out_channels=resnets.RES2_OUT_CHANNELS,
        num_groups=resnets.NUM_GROUPS,
        width_per_group=resnets.WIDTH_PER_GROUP,
        stride_in_1x1=resnets.STRIDE_IN_1X1,
        res5_dilation=resnets.RES5_DILATION,
        deform_on_per_stage=resnets.DEFORM_ON_PER_STAGE,
        deform_modulated=resnets.DEFORM_MODULATED,
        deform_num_groups=resnets.DEFORM_NUM_GROUPS,
        logit=lip.BLOCK_LOGIT,
        bottleneck_width=lip.BOTTLENECK_WIDTH,
        gate_coeff=lip.GATE_COEFF,
        impl=lip.IMPL,
        recompute=lip.RECOMPUTE,
    )
    return LIPResNet(
        stem,
        stages,
        out_features=resnets.OUT_FEATURES,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
        train_frozen_lip=lip.TRAIN_FROZEN_LIP,
    )
