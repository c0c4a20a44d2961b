"""LIP-DenseNet: the paper's second architecture, and its plain DenseNet-BC twin, as detectron2
bottom-ups.

The published LIP-DenseNet-121 (sebgao/LIP, ``imagenet/lip_densenet.py``) is torchvision's
DenseNet-121 (growth 32, blocks 6-12-24-16, bn_size 4, 64 initial features) with LIP in four
places (``MODEL.LIP.DENSENET_PLACES``):

- stem: conv 7x7/2 -> norm -> ReLU -> LIP 3x3/2, padding 1 (the "simplified" logit module), in
  place of the max pooling; this is :class:`~.blocks.LIPStem`, and the plain stem detectron2's
  ``BasicStem``;
- transition1..3: norm -> ReLU -> conv 1x1 (halving the channels) -> LIP 2x2/2, padding 0, in
  place of the average pooling. Its logit module reads the transition's output: the "bottleneck"
  module, a shared :class:`BottleneckTrunk` (1x1 -> IN -> ReLU -> 3x3 -> IN -> ReLU, width 128)
  and a :class:`ConvLogit` head (1x1 back to the channels -> IN -> SoftGate), which is exactly
  the authors' ``BottleneckLIP`` (conv1, bn1, conv2, bn2, conv3, bn3, gate).

Every 2x2 window is pooled exactly where ``avg_pool2d(2, 2)`` pools it (lip2d's windows start at
``stride * i - padding``; the authors' CUDA kernel centres even kernels one pixel off, their
PyTorch ``lip2d``, which the published model uses, does not).

Outputs are named by stride as detectron2's ResNet names them: ``dense2`` (denseblock1, stride 4),
``dense3`` (transition1 + denseblock2, stride 8), ``dense4`` (transition2 + denseblock3, 16) and
``dense5`` (transition3 + denseblock4 + the final norm and ReLU, 32). With no LIP places the same
module tree, with max pooling in the stem and average pooling in the transitions, is the plain
DenseNet: plain and LIP weights load into it name by name.
"""

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.layers import CNNBlockBase, Conv2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.resnet import BasicStem
from torch.utils.checkpoint import checkpoint

from ..choices import check_choice
from ..config import DENSENET_LIP_PLACES, validate_lip_config
from ..layers import LIP, BottleneckTrunk, build_logit_module
from .blocks import LIPStem, recomputing, set_lip_recompute

__all__ = [
    "NUM_LAYERS_PER_BLOCK",
    "DenseLayer",
    "DenseTransition",
    "DenseStage",
    "DenseNet",
    "build_densenet_backbone",
    "build_lip_densenet_backbone",
]

# DenseNet-BC depth -> dense layers per block (torchvision's densenet121/169/201).
NUM_LAYERS_PER_BLOCK = {
    121: (6, 12, 24, 16),
    169: (6, 12, 32, 32),
    201: (6, 12, 48, 32),
}
STAGE_NAMES = ("dense2", "dense3", "dense4", "dense5")


def _norm_relu(norm, x):
    """DenseNet's pre-activation: ReLU(norm(x)). In place only on the norm's own output: ``x`` is
    also part of the dense block's concatenation."""
    return F.relu(x) if norm is None else F.relu_(norm(x))


class DenseLayer(CNNBlockBase):
    """norm -> ReLU -> conv 1x1 (bn_size * growth) -> norm -> ReLU -> conv 3x3 (growth), and the
    result concatenated to the input: ``in_channels`` -> ``in_channels + growth_rate``."""

    def __init__(self, in_channels, *, growth_rate=32, bn_size=4, norm="BN"):
        width = bn_size * growth_rate
        super().__init__(in_channels, in_channels + growth_rate, 1)
        self.norm1 = get_norm(norm, in_channels)
        self.conv1 = Conv2d(in_channels, width, kernel_size=1, bias=False)
        self.norm2 = get_norm(norm, width)
        self.conv2 = Conv2d(width, growth_rate, kernel_size=3, padding=1, bias=False)
        for conv in (self.conv1, self.conv2):
            weight_init.c2_msra_fill(conv)

    def forward(self, x):
        new = self.conv1(_norm_relu(self.norm1, x))
        new = self.conv2(_norm_relu(self.norm2, new))
        return torch.cat([x, new], dim=1)


class DenseTransition(CNNBlockBase):
    """norm -> ReLU -> conv 1x1 -> 2x2/2 pooling: LIP (``lip=True``) or average pooling.

    The LIP's logits are computed from the conv's output, with the paper's "bottleneck" module
    (``logit_trunk`` + ``lip.logit``) or a "projection"/"simplified" one (``lip.logit`` alone).
    A fresh LIP pools as an average (its logit head is zero-filled), i.e. as the plain transition.
    ``recompute``: as for the LIP-ResNet blocks (:func:`lip_det.modeling.set_lip_recompute`).
    """

    RECOMPUTES_LIP = True

    def __init__(
        self, in_channels, out_channels, *, norm="BN", lip=True, logit="bottleneck",
        bottleneck_width=128, gate_coeff=12.0, impl="auto", recompute=False,
    ):  # fmt: skip
        super().__init__(in_channels, out_channels, 2)
        self.recompute = recompute
        self.norm = get_norm(norm, in_channels)
        self.conv = Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        weight_init.c2_msra_fill(self.conv)
        self.logit_trunk = None
        self.lip = None
        if lip:
            head_in = out_channels
            if logit == "bottleneck":
                self.logit_trunk = BottleneckTrunk(out_channels, bottleneck_width)
                head_in = bottleneck_width
            head = build_logit_module(logit, head_in, out_channels, gate_coeff=gate_coeff)
            self.lip = LIP(head, kernel_size=2, stride=2, padding=0, impl=impl)

    def forward(self, x):
        x = self.conv(_norm_relu(self.norm, x))
        if self.lip is None:
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        if recomputing(self):
            return checkpoint(self._pool, x, use_reentrant=False)
        return self._pool(x)

    def _pool(self, x):
        return self.lip(x, None if self.logit_trunk is None else self.logit_trunk(x))


class DenseStage(CNNBlockBase):
    """One output stage: [``transition`` ->] ``denselayer1`` ... ``denselayerN`` [-> ``norm`` ->
    ReLU]. The final norm and ReLU (``final=True``) close the last stage, as torchvision's
    ``features.norm5`` and the ReLU of its classifier do."""

    def __init__(self, layers, *, transition=None, final=False, norm="BN"):
        first = transition if transition is not None else layers[0]
        stride = 1 if transition is None else transition.stride
        super().__init__(first.in_channels, layers[-1].out_channels, stride)
        self.transition = transition
        self.num_layers = len(layers)
        for index, layer in enumerate(layers, start=1):
            self.add_module(f"denselayer{index}", layer)
        self.final = final
        self.norm = get_norm(norm, self.out_channels) if final else None

    def forward(self, x):
        if self.transition is not None:
            x = self.transition(x)
        for index in range(1, self.num_layers + 1):
            x = getattr(self, f"denselayer{index}")(x)
        return _norm_relu(self.norm, x) if self.final else x


class DenseNet(Backbone):
    """A DenseNet-BC bottom-up: ``stem`` (stride 4) and the stages ``dense2`` ... ``dense5``.

    LIP or not is the blocks' business (:class:`~.blocks.LIPStem` or ``BasicStem``,
    :class:`DenseTransition` with or without LIP). ``freeze(freeze_at)`` means what it means for
    detectron2's ResNet and :class:`~.lip_resnet.LIPResNet`: 1 freezes the stem, ``k`` also
    ``dense2`` ... ``dense{k}``, LIP logit modules included (BatchNorm becomes FrozenBN); with
    ``train_frozen_lip`` the logit modules inside frozen stages stay trainable.
    """

    def __init__(self, stem, stages, *, out_features=None, freeze_at=0, train_frozen_lip=False):
        super().__init__()
        self.stem = stem
        names = ("stem", *STAGE_NAMES[: len(stages)])
        if out_features is None:
            out_features = [names[-1]]
        for name in out_features:
            check_choice(name, names, "MODEL.DENSENET.OUT_FEATURES entry")
        # like detectron2's ResNet, stop after the last stage that is asked for
        num_stages = max(names.index(name) for name in out_features)
        self._out_features = list(out_features)
        self._out_feature_strides = {"stem": stem.stride}
        self._out_feature_channels = {"stem": stem.out_channels}
        stride, self.stage_names = stem.stride, []
        for name, stage in zip(STAGE_NAMES, stages[:num_stages]):
            self.add_module(name, stage)
            self.stage_names.append(name)
            stride *= stage.stride
            self._out_feature_strides[name] = stride
            self._out_feature_channels[name] = stage.out_channels
        self.train_frozen_lip = train_frozen_lip
        self.freeze(freeze_at)

    def forward(self, x):
        if x.dim() != 4:
            raise ValueError(f"DenseNet takes (N, C, H, W) inputs, got shape {tuple(x.shape)}")
        outputs = {}
        x = self.stem(x)
        if "stem" in self._out_features:
            outputs["stem"] = x
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name in self._out_features:
                outputs[name] = x
        return outputs

    def output_shape(self):
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }

    @property
    def stages(self):
        return [getattr(self, name) for name in self.stage_names]

    def freeze(self, freeze_at=0):
        if freeze_at >= 1:
            self.stem.freeze()
        for index, stage in enumerate(self.stages, start=2):
            if freeze_at >= index:
                stage.freeze()
        if freeze_at > 0 and self.train_frozen_lip:
            for module in self.modules():
                if isinstance(module, (LIP, BottleneckTrunk)):
                    module.requires_grad_(True)
        return self

    @staticmethod
    def make_stages(
        depth=121,
        *,
        places=DENSENET_LIP_PLACES,
        norm="BN",
        in_channels=64,
        growth_rate=32,
        bn_size=4,
        logit="bottleneck",
        bottleneck_width=128,
        gate_coeff=12.0,
        impl="auto",
    ):
        """dense2 ... dense5 of a (LIP-)DenseNet-BC of ``depth`` as :class:`DenseStage` modules:
        what the yacs builders and a LazyConfig use. Transition ``i`` (before dense{i+2}) pools
        with LIP where ``places`` has ``"transition{i}"`` (``"stem"`` is the stem's business);
        ``places=()`` gives the plain DenseNet. The other arguments mean what MODEL.DENSENET.* /
        MODEL.LIP.* mean."""
        check_choice(depth, tuple(NUM_LAYERS_PER_BLOCK), "MODEL.DENSENET.DEPTH")
        for place in places:
            check_choice(place, DENSENET_LIP_PLACES, "LIP place")
        for key, value in (("GROWTH_RATE", growth_rate), ("BN_SIZE", bn_size)):
            if value < 1:
                raise ValueError(f"MODEL.DENSENET.{key} = {value} must be >= 1")
        lip_kwargs = {
            "logit": logit,
            "bottleneck_width": bottleneck_width,
            "gate_coeff": gate_coeff,
            "impl": impl,
        }
        stages, channels = [], in_channels
        blocks = NUM_LAYERS_PER_BLOCK[depth]
        for index, num_layers in enumerate(blocks):
            transition = None
            if index > 0:
                lip = f"transition{index}" in places
                transition = DenseTransition(
                    channels, channels // 2, norm=norm, lip=lip, **lip_kwargs
                )
                channels //= 2
            layers = []
            for _ in range(num_layers):
                layers.append(
                    DenseLayer(channels, growth_rate=growth_rate, bn_size=bn_size, norm=norm)
                )
                channels += growth_rate
            final = index == len(blocks) - 1
            stages.append(DenseStage(layers, transition=transition, final=final, norm=norm))
        return stages


def _build(cfg, input_shape, places):
    dense = cfg.MODEL.DENSENET
    lip = cfg.MODEL.LIP
    if "stem" in places:
        stem = LIPStem(
            input_shape.channels, dense.STEM_OUT_CHANNELS, norm=dense.NORM,
            logit=lip.STEM_LOGIT, gate_coeff=lip.GATE_COEFF, impl=lip.IMPL,
        )  # fmt: skip
    else:
        stem = BasicStem(input_shape.channels, dense.STEM_OUT_CHANNELS, norm=dense.NORM)
    stages = DenseNet.make_stages(
        dense.DEPTH,
        places=places,
        norm=dense.NORM,
        in_channels=dense.STEM_OUT_CHANNELS,
        growth_rate=dense.GROWTH_RATE,
        bn_size=dense.BN_SIZE,
        logit=lip.BLOCK_LOGIT,
        bottleneck_width=lip.BOTTLENECK_WIDTH,
        gate_coeff=lip.GATE_COEFF,
        impl=lip.IMPL,
    )
    backbone = DenseNet(
        stem,
        stages,
        out_features=dense.OUT_FEATURES,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
        train_frozen_lip=lip.TRAIN_FROZEN_LIP,
    )
    set_lip_recompute(backbone, lip.RECOMPUTE)
    return backbone


@BACKBONE_REGISTRY.register()
def build_lip_densenet_backbone(cfg, input_shape):
    """A LIP-DenseNet from config: MODEL.DENSENET.* and MODEL.LIP.* (DENSENET_PLACES, STEM_LOGIT,
    BLOCK_LOGIT for the transitions, BOTTLENECK_WIDTH, GATE_COEFF, TRAIN_FROZEN_LIP, IMPL,
    RECOMPUTE);
    the defaults are the published LIP-DenseNet-121.

    Returns:
        DenseNet
    """
    validate_lip_config(cfg)
    return _build(cfg, input_shape, tuple(cfg.MODEL.LIP.DENSENET_PLACES))


@BACKBONE_REGISTRY.register()
def build_densenet_backbone(cfg, input_shape):
    """The plain DenseNet-BC twin of :func:`build_lip_densenet_backbone` (max pooling in the stem,
    average pooling in the transitions; MODEL.LIP is ignored): torchvision's densenet121/169/201
    with detectron2's names and norms.

    Returns:
        DenseNet
    """
    return _build(cfg, input_shape, ())
