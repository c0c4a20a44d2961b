"""The C++ CPU backend of lip2d: fused kernels in ``lip_det._C`` (``csrc/lip2d_cpu.cpp``), built
by setup.py with OpenMP; the CPU default when present."""

from .function import LeanLIP2d

__all__ = ["is_available", "lip2d_cpu"]

try:
    from lip_det import _C as _cpu_ext
except ImportError:  # built by setup.py; without it lip2d falls back to "aten"
    _cpu_ext = None


def is_available():
    return _cpu_ext is not None


def lip2d_cpu(x, logit, kernel_size, stride, padding):
    kernels = (_cpu_ext.lip2d_forward, _cpu_ext.lip2d_backward)
    return LeanLIP2d.apply(kernels, x, logit, kernel_size, stride, padding)
