from torch import nn

from .dispatch import lip2d

__all__ = ["LIP"]


class LIP(nn.Module):
    """A LIP layer: ``lip2d(x, logit_module(features))``.

    ``features`` defaults to ``x`` itself (the "simplified" and "projection" modules). In LIP
    bottleneck blocks they are the output of the block's shared :class:`BottleneckTrunk`, and the
    logit module is that branch's head.
    """

    def __init__(self, logit_module, *, kernel_size=3, stride=2, padding=1, impl="auto"):
        super().__init__()
        self.logit = logit_module
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.impl = impl

    def forward(self, x, features=None):
        """x: (N, C, H, W) -> (N, C, H_out, W_out), the shape ``avg_pool2d`` gives."""
        logit = self.logit(x if features is None else features)
        return lip2d(x, logit, self.kernel_size, self.stride, self.padding, impl=self.impl)

    def extra_repr(self):
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"impl={self.impl!r}"
        )
