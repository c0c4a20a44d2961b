"""The C++ CPU backend of lip2d: fused kernels in ``lip_det._C`` (``csrc/lip2d_cpu.cpp``), built
by setup.py with OpenMP; the CPU kernels of ``torch.ops.lip_det.lip2d`` when present."""

__all__ = ["cpu_backward", "cpu_forward", "is_available"]

try:
    from lip_det import _C as _cpu_ext
except ImportError:  # built by setup.py; without it lip2d falls back to "aten"
    _cpu_ext = None


def is_available():
    return _cpu_ext is not None


def cpu_forward(x, logit, kernel_size, stride, padding):
    return _cpu_ext.lip2d_forward(x, logit, kernel_size, stride, padding)


def cpu_backward(grad_out, x, logit, out, kernel_size, stride, padding):
    grad_x, grad_logit = _cpu_ext.lip2d_backward(
        grad_out, x, logit, out, kernel_size, stride, padding
    )
    return grad_x, grad_logit
