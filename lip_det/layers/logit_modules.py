"""Logit modules: small networks that predict LIP's importance logits from features.

They use InstanceNorm (affine), as in the paper, so detection-time frozen BatchNorm and
small-batch BN statistics never touch them.
"""

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.layers import Conv2d
from torch import nn
from torch.nn import functional as F

from ..choices import check_choice

__all__ = [
    "LOGIT_MODULES",
    "STEM_LOGIT_MODULES",
    "BottleneckTrunk",
    "ConvLogit",
    "SoftGate",
    "build_logit_module",
]

LOGIT_MODULES = ("simplified", "projection", "bottleneck")
STEM_LOGIT_MODULES = ("simplified", "projection")


def instance_norm(channels):
    return nn.InstanceNorm2d(channels, affine=True)


def _in_float32_if_half(z):
    # The logits feed a softmax (LIP's exp): under autocast keep them in float32, as autocast
    # does for softmax, rather than rounding them to float16/bfloat16 (an error of up to 0.06 at
    # 12 in bfloat16, i.e. 6% on exp(logit)). lip2d then pools in float32.
    return z.float() if z.dtype in (torch.float16, torch.bfloat16) else z


class SoftGate(nn.Module):
    """``coeff * sigmoid(x)``: bounds the logits to (0, coeff), which bounds exp(logit)."""

    def __init__(self, coeff=12.0):
        super().__init__()
        self.coeff = float(coeff)

    def forward(self, x):
        return self.coeff * torch.sigmoid(_in_float32_if_half(x))

    def extra_repr(self):
        return f"coeff={self.coeff}"


class ConvLogit(nn.Module):
    """conv (k x k, no bias) -> InstanceNorm(affine) -> SoftGate.

    kernel_size 3 is the paper's "simplified" module (the stem), 1 its "projection" module and
    the per-branch head of the "bottleneck" module. The conv is zero-filled, so a fresh module
    outputs the constant coeff/2 and LIP starts as average pooling.
    """

    def __init__(self, in_channels, out_channels, *, kernel_size, gate_coeff=12.0):
        super().__init__()
        self.conv = Conv2d(
            in_channels,
            out_channels,
            kernel_size=kernel_size,
            padding=kernel_size // 2,
            bias=False,
            norm=instance_norm(out_channels),
        )
        self.gate = SoftGate(gate_coeff)
        nn.init.zeros_(self.conv.weight)

    def fusable(self):
        """True when the norm is one :func:`lip2d_norm_gate` can fuse: affine InstanceNorm
        without running statistics (this module's own), after a conv without activation."""
        norm = self.conv.norm
        return (
            isinstance(norm, nn.InstanceNorm2d)
            and norm.affine
            and not norm.track_running_stats
            and self.conv.activation is None
        )

    def conv_output(self, x):
        """The conv before its norm (the input of the fused norm and gate)."""
        return self.conv._conv_forward(x, self.conv.weight, self.conv.bias)

    def forward(self, x):
        z = self.conv(x)
        if torch.is_grad_enabled() and z.requires_grad:
            return self.gate(z)
        # Inference: z is this module's own temporary, so gate it in place (two fewer full-size
        # tensors to allocate and write per LIP).
        return torch.sigmoid_(_in_float32_if_half(z)).mul_(self.gate.coeff)


class BottleneckTrunk(nn.Module):
    """The shared part of the paper's "bottleneck" logit module, computed once per block:
    1x1 conv C_in->W -> IN -> ReLU -> 3x3 conv W->W -> IN -> ReLU. Each LIP branch then has its
    own ``ConvLogit(W, C_branch, kernel_size=1)`` head."""

    def __init__(self, in_channels, width=128):
        super().__init__()
        self.conv1 = Conv2d(in_channels, width, 1, bias=False, norm=instance_norm(width))
        self.conv2 = Conv2d(width, width, 3, padding=1, bias=False, norm=instance_norm(width))
        for conv in (self.conv1, self.conv2):
            weight_init.c2_msra_fill(conv)

    def forward(self, x):
        return F.relu_(self.conv2(F.relu_(self.conv1(x))))  # in place on the norms' outputs


def build_logit_module(kind, in_channels, out_channels, *, gate_coeff=12.0):
    """A per-LIP logit module of the given kind reading ``in_channels`` features.

    For ``kind == "bottleneck"`` this is the head (``in_channels`` = trunk width); the caller owns
    the shared :class:`BottleneckTrunk`.
    """
    check_choice(kind, LOGIT_MODULES, "logit module")
    kernel_size = 3 if kind == "simplified" else 1
    return ConvLogit(in_channels, out_channels, kernel_size=kernel_size, gate_coeff=gate_coeff)
