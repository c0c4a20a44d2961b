import torch
from torch import nn
from torch.nn.modules import module as module_hooks

from . import backend_cpu
from .dispatch import check_arguments, lip2d
from .fused import lip2d_norm_gate
from .logit_modules import ConvLogit

__all__ = ["LIP"]


class LIP(nn.Module):
    """A LIP layer: ``lip2d(x, logit_module(features))``.

    ``features`` defaults to ``x`` itself (the "simplified" and "projection" modules). In LIP
    bottleneck blocks they are the output of the block's shared :class:`BottleneckTrunk`, and the
    logit module is that branch's head.

    In training, with a :class:`ConvLogit` logit module, the head's InstanceNorm and SoftGate run
    fused into the pooling (:func:`lip2d_norm_gate`): autograd then keeps only the head's conv
    output instead of three input-sized tensors (the same values; ``fuse_norm_gate=False``
    turns it off). Inference without autograd fuses them too on CPU, where the operator has C++
    kernels (no normalised, gated or logit tensors to write at all), unless a hook watches the
    logit module (:func:`lip_det.visualize.importance_maps` reads its output); torch.compile
    then sees the operator (its fake kernel) as eager runs it. Tracing and export take the
    unfused route.
    """

    def __init__(self, logit_module, *, kernel_size=3, stride=2, padding=1, impl="auto",
                 fuse_norm_gate=True):  # fmt: skip
        super().__init__()
        self.logit = logit_module
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.impl = impl
        self.fuse_norm_gate = fuse_norm_gate

    def _fused(self, x, features):
        if not (self.fuse_norm_gate and self.impl != "reference"):
            return False
        if not (isinstance(self.logit, ConvLogit) and self.logit.fusable()):
            return False
        if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export():
            return False
        trainable = any(p.requires_grad for p in self.logit.parameters())
        if torch.is_grad_enabled() and (trainable or x.requires_grad or features.requires_grad):
            return self.training
        return self._fused_inference(x)

    def _fused_inference(self, x):
        if x.device.type != "cpu" or not backend_cpu.is_available():
            return False
        if self.impl not in ("auto", "cpu"):
            return False
        if module_hooks._global_forward_hooks or module_hooks._global_forward_pre_hooks:
            return False
        return not any(m._forward_hooks or m._forward_pre_hooks for m in self.logit.modules())

    def forward(self, x, features=None):
        """x: (N, C, H, W) -> (N, C, H_out, W_out), the shape ``avg_pool2d`` gives."""
        features = x if features is None else features
        if self._fused(x, features):
            y = self.logit.conv_output(features)
            geometry = check_arguments(x, y, self.kernel_size, self.stride, self.padding, self.impl)
            norm = self.logit.conv.norm
            return lip2d_norm_gate(
                x, y, norm.weight, norm.bias, norm.eps, self.logit.gate.coeff, *geometry, self.impl
            )
        logit = self.logit(features)
        return lip2d(x, logit, self.kernel_size, self.stride, self.padding, impl=self.impl)

    def extra_repr(self):
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"impl={self.impl!r}"
        )
