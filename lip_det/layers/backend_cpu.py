"""The C++ CPU backend of lip2d: fused kernels in ``lip_det._C`` (``csrc/lip2d_cpu.cpp``), built
by setup.py with OpenMP; the CPU kernels of ``torch.ops.lip_det.lip2d`` and of
``lip2d_norm_gate`` (:mod:`lip_det.layers.fused`) when present."""

__all__ = [
    "cpu_backward",
    "cpu_forward",
    "cpu_norm_gate_backward",
    "cpu_norm_gate_forward",
    "is_available",
]

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


def cpu_norm_gate_forward(x, y, weight, bias, eps, coeff, kernel_size, stride, padding):
    """x, y: one dtype; weight, bias: its accumulation dtype."""
    return _cpu_ext.lip2d_norm_gate_forward(
        x, y, weight, bias, eps, coeff, kernel_size, stride, padding
    )


def cpu_norm_gate_backward(grad_out, x, y, weight, bias, out, eps, coeff, kernel_size, stride,
                           padding):  # fmt: skip
    """-> (grad_x, grad_y, grad_weight, grad_bias); the last two in float64."""
    grad_x, grad_y, grad_weight, grad_bias = _cpu_ext.lip2d_norm_gate_backward(
        grad_out, x, y, weight, bias, out, eps, coeff, kernel_size, stride, padding
    )
    return grad_x, grad_y, grad_weight, grad_bias
