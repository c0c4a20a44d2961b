"""LIP-ResNet building blocks: the stem and the stride-2 residual blocks that use LIP.

All other blocks of a LIP-ResNet are detectron2's own ``BottleneckBlock`` / ``BasicBlock``.

``recompute=True`` (or :func:`set_lip_recompute` on a built model) recomputes each block's LIP
part -- the shared logit trunk, the logit heads and the pooling -- in the backward pass instead
of keeping its activations (``torch.utils.checkpoint``, non-reentrant): autograd then keeps
nothing for LIP beyond the tensors the block keeps anyway, for one more forward pass of the logit
modules per training step.
"""

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.layers import CNNBlockBase, Conv2d, get_norm
from torch.utils.checkpoint import checkpoint

from ..layers import LIP, BottleneckTrunk, build_logit_module

__all__ = ["LIPBasicBlock", "LIPBottleneckBlock", "LIPStem", "recomputing", "set_lip_recompute"]


def set_lip_recompute(module, enabled=True):
    """Turn recomputation of the LIP parts on (or off) in every LIP block and stem of
    ``module``; returns the number of blocks changed."""
    blocks = [m for m in module.modules() if getattr(m, "RECOMPUTES_LIP", False)]
    for block in blocks:
        block.recompute = bool(enabled)
    return len(blocks)


def recomputing(block):
    """Whether ``block`` (one with ``RECOMPUTES_LIP``) recomputes its LIP part in this call: not
    in a frozen block (MODEL.BACKBONE.FREEZE_AT), which keeps nothing for backward anyway."""
    return (
        block.recompute
        and block.training
        and torch.is_grad_enabled()
        and any(p.requires_grad for p in block.parameters())
    )


class LIPStem(CNNBlockBase):
    """conv 7x7/2 -> norm -> ReLU -> LIP 3x3/2 (instead of detectron2 BasicStem's max-pool).

    Parameter names of ``conv1`` match ``BasicStem``, so plain-ResNet stem weights load as is.
    """

    RECOMPUTES_LIP = True  # set_lip_recompute's mark

    def __init__(
        self, in_channels=3, out_channels=64, *, norm="BN", logit="simplified", gate_coeff=12.0,
        impl="auto", recompute=False,
    ):  # fmt: skip
        super().__init__(in_channels, out_channels, 4)
        self.recompute = recompute
        self.conv1 = Conv2d(
            in_channels,
            out_channels,
            kernel_size=7,
            stride=2,
            padding=3,
            bias=False,
            norm=get_norm(norm, out_channels),
        )
        weight_init.c2_msra_fill(self.conv1)
        self.lip = LIP(
            build_logit_module(logit, out_channels, out_channels, gate_coeff=gate_coeff), impl=impl
        )

    def forward(self, x):
        x = F.relu_(self.conv1(x))
        if recomputing(self):
            return checkpoint(self.lip, x, use_reentrant=False)
        return self.lip(x)


class _LIPBlockMixin:
    """Builds the LIPs of a stride-2 residual block.

    ``pooled_channels`` are the channels each branch pools: (main, shortcut). ``main_features``
    are the channels the main branch's own logit module would read when it has no shared trunk.
    """

    RECOMPUTES_LIP = True

    def _build_lips(
        self, *, in_channels, main_channels, main_features, lip_main, lip_shortcut, logit,
        bottleneck_width, gate_coeff, impl, recompute,
    ):  # fmt: skip
        self.recompute = recompute
        self.logit_trunk = None
        if logit == "bottleneck" and (lip_main or lip_shortcut):
            self.logit_trunk = BottleneckTrunk(in_channels, bottleneck_width)
        head_in = bottleneck_width if self.logit_trunk is not None else None

        def make(features, channels):
            module = build_logit_module(logit, head_in or features, channels, gate_coeff=gate_coeff)
            return LIP(module, stride=self.stride, impl=impl)

        self.main_lip = make(main_features, main_channels) if lip_main else None
        self.shortcut_lip = make(in_channels, in_channels) if lip_shortcut else None

    def _lip_outputs(self, x, main_input):
        """The pooled (main, shortcut) of the LIPs this block has, as a tuple."""
        shared = self.logit_trunk(x) if self.logit_trunk is not None else None
        pooled = []
        if self.main_lip is not None:
            pooled.append(self.main_lip(main_input, shared))
        if self.shortcut_lip is not None:
            pooled.append(self.shortcut_lip(x, shared))
        return tuple(pooled)

    def _pool(self, x, main_input):
        """(main branch input, shortcut branch input) after LIP, where the block has one."""
        if recomputing(self):
            pooled = checkpoint(self._lip_outputs, x, main_input, use_reentrant=False)
        else:
            pooled = self._lip_outputs(x, main_input)
        pooled = list(pooled)
        main = pooled.pop(0) if self.main_lip is not None else main_input
        shortcut = pooled.pop(0) if self.shortcut_lip is not None else x
        return main, shortcut


class LIPBottleneckBlock(_LIPBlockMixin, CNNBlockBase):
    """The paper's stride-2 LIP bottleneck (first block of res3, res4, res5).

    main:     conv1 1x1 -> norm -> ReLU -> LIP -> conv2 **1x1** -> norm -> ReLU -> conv3 1x1 -> norm
    shortcut: LIP -> conv 1x1 -> norm
    out = ReLU(main + shortcut)

    With the "bottleneck" logit module, one shared trunk reads the block input and each LIP has
    its own head. ``lip_main=False`` / ``lip_shortcut=False`` put the plain strided conv back in
    that branch (as in detectron2's ``BottleneckBlock``), for ablations.
    """

    def __init__(
        self, in_channels, out_channels, *, bottleneck_channels, stride=2, num_groups=1,
        norm="BN", stride_in_1x1=False, lip_main=True, lip_shortcut=True,
        logit="bottleneck", bottleneck_width=128, gate_coeff=12.0, impl="auto", recompute=False,
    ):  # fmt: skip
        super().__init__(in_channels, out_channels, stride)
        if not (lip_main or lip_shortcut):
            raise ValueError(
                "LIPBottleneckBlock needs lip_main or lip_shortcut; use BottleneckBlock"
            )

        self.shortcut = Conv2d(
            in_channels,
            out_channels,
            kernel_size=1,
            stride=1 if lip_shortcut else stride,
            bias=False,
            norm=get_norm(norm, out_channels),
        )
        # Without LIP in the main path this is detectron2's BottleneckBlock main path.
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = Conv2d(
            in_channels,
            bottleneck_channels,
            kernel_size=1,
            stride=1 if lip_main else stride_1x1,
            bias=False,
            norm=get_norm(norm, bottleneck_channels),
        )
        # LIP does the downsampling, so the 3x3 conv2 becomes a 1x1 (why LIP-ResNet-50 has fewer
        # parameters than ResNet-50).
        self.conv2 = Conv2d(
            bottleneck_channels,
            bottleneck_channels,
            kernel_size=1 if lip_main else 3,
            stride=1 if lip_main else stride_3x3,
            padding=0 if lip_main else 1,
            groups=num_groups,
            bias=False,
            norm=get_norm(norm, bottleneck_channels),
        )
        self.conv3 = Conv2d(
            bottleneck_channels,
            out_channels,
            kernel_size=1,
            bias=False,
            norm=get_norm(norm, out_channels),
        )
        for layer in (self.conv1, self.conv2, self.conv3, self.shortcut):
            weight_init.c2_msra_fill(layer)

        self._build_lips(
            in_channels=in_channels,
            main_channels=bottleneck_channels,
            main_features=bottleneck_channels,
            lip_main=lip_main,
            lip_shortcut=lip_shortcut,
            logit=logit,
            bottleneck_width=bottleneck_width,
            gate_coeff=gate_coeff,
            impl=impl,
            recompute=recompute,
        )

    def forward(self, x):
        out, shortcut = self._pool(x, F.relu_(self.conv1(x)))
        out = F.relu_(self.conv2(out))
        out = self.conv3(out)
        return F.relu_(out + self.shortcut(shortcut))


class LIPBasicBlock(_LIPBlockMixin, CNNBlockBase):
    """A stride-2 LIP version of ResNet-18/34's BasicBlock (the paper covers only bottlenecks).

    main:     LIP -> conv1 3x3 (stride 1) -> norm -> ReLU -> conv2 3x3 -> norm
    shortcut: LIP -> conv 1x1 -> norm

    Following the bottleneck design, LIP replaces the stride of the strided convs and the convs
    keep their kernel. Pooling *before* conv1 keeps conv1 at the output resolution, so the convs
    cost exactly what the plain block's do and the conv parameters are identical to
    ``BasicBlock``'s (plain weights load one-to-one); only the logit modules are added. Both LIPs
    pool the block input with their own logits (one head each on the shared trunk).
    """

    def __init__(
        self, in_channels, out_channels, *, stride=2, norm="BN", lip_main=True, lip_shortcut=True,
        logit="bottleneck", bottleneck_width=128, gate_coeff=12.0, impl="auto", recompute=False,
    ):  # fmt: skip
        super().__init__(in_channels, out_channels, stride)
        if not (lip_main or lip_shortcut):
            raise ValueError("LIPBasicBlock needs lip_main or lip_shortcut; use BasicBlock")
        self.shortcut = Conv2d(
            in_channels,
            out_channels,
            kernel_size=1,
            stride=1 if lip_shortcut else stride,
            bias=False,
            norm=get_norm(norm, out_channels),
        )
        self.conv1 = Conv2d(
            in_channels,
            out_channels,
            kernel_size=3,
            stride=1 if lip_main else stride,
            padding=1,
            bias=False,
            norm=get_norm(norm, out_channels),
        )
        self.conv2 = Conv2d(
            out_channels,
            out_channels,
            kernel_size=3,
            padding=1,
            bias=False,
            norm=get_norm(norm, out_channels),
        )
        for layer in (self.shortcut, self.conv1, self.conv2):
            weight_init.c2_msra_fill(layer)

        self._build_lips(
            in_channels=in_channels,
            main_channels=in_channels,
            main_features=in_channels,
            lip_main=lip_main,
            lip_shortcut=lip_shortcut,
            logit=logit,
            bottleneck_width=bottleneck_width,
            gate_coeff=gate_coeff,
            impl=impl,
            recompute=recompute,
        )

    def forward(self, x):
        out, shortcut = self._pool(x, x)
        out = F.relu_(self.conv1(out))
        out = self.conv2(out)
        return F.relu_(out + self.shortcut(shortcut))
