import itertools

import pytest
import torch
import torch.nn.functional as F

import lip_det
from lip_det.lip2d import LIP_IMPLEMENTATIONS


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def lip_by_windows(x, logit, kernel_size, stride, padding):
    """Independent float64 evaluation: walk every window explicitly, skipping padded cells."""
    (kh, kw), (sh, sw), (ph, pw) = map(_pair, (kernel_size, stride, padding))
    n, c, h, w = x.shape
    out_h = (h + 2 * ph - kh) // sh + 1
    out_w = (w + 2 * pw - kw) // sw + 1
    x, logit = x.double(), logit.double()
    out = torch.zeros(n, c, out_h, out_w, dtype=torch.float64)
    for i, j in itertools.product(range(out_h), range(out_w)):
        rows = [r for r in range(i * sh - ph, i * sh - ph + kh) if 0 <= r < h]
        cols = [q for q in range(j * sw - pw, j * sw - pw + kw) if 0 <= q < w]
        xs = x[:, :, rows][:, :, :, cols].reshape(n, c, -1)
        weights = torch.softmax(logit[:, :, rows][:, :, :, cols].reshape(n, c, -1), dim=-1)
        out[:, :, i, j] = (weights * xs).sum(-1)
    return out


GEOMETRIES = [
    (3, 2, 1),  # LIP-ResNet
    (2, 2, 0),  # LIP-DenseNet transitions
    (3, 1, 1),
    ((3, 2), (2, 1), (1, 0)),
    (5, 3, 2),
]


@pytest.mark.parametrize("impl", ["auto", *LIP_IMPLEMENTATIONS])
@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("size", [(7, 9), (8, 6)])
def test_matches_explicit_windows_in_float64(impl, geometry, size):
    torch.manual_seed(0)
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    logit = 3 * torch.randn(2, 3, *size, dtype=torch.float64)
    out = lip_det.lip2d(x, logit, *geometry, impl=impl)
    expected = lip_by_windows(x, logit, *geometry)
    assert out.shape == F.avg_pool2d(x, *geometry).shape == expected.shape
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("impl", list(LIP_IMPLEMENTATIONS))
@pytest.mark.parametrize("geometry", [(3, 2, 1), (2, 2, 0), ((3, 2), (2, 1), (1, 0))])
def test_gradcheck_float64(impl, geometry):
    torch.manual_seed(1)
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    logit = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b: lip_det.lip2d(a, b, *geometry, impl=impl), (x, logit)
    )


def test_zero_logit_is_average_pooling_over_valid_cells():
    x = torch.randn(2, 4, 11, 10, dtype=torch.float64)
    out = lip_det.lip2d(x, torch.zeros_like(x))
    # zero padding cancels, so borders average only the cells inside the image
    expected = F.avg_pool2d(x, 3, 2, 1, count_include_pad=False)
    torch.testing.assert_close(out, expected)


def test_constant_logit_shift_changes_nothing():
    x = torch.randn(1, 3, 9, 9, dtype=torch.float64)
    logit = torch.randn(1, 3, 9, 9, dtype=torch.float64)
    torch.testing.assert_close(lip_det.lip2d(x, logit), lip_det.lip2d(x, logit + 37.5))


def test_large_beta_times_input_is_max_pooling():
    torch.manual_seed(2)
    # distinct values, 0.15 apart, so no window has a near-tie for its maximum
    x = torch.stack([0.15 * torch.randperm(42, dtype=torch.float64) for _ in range(6)])
    x = x.reshape(2, 3, 6, 7)
    out = lip_det.lip2d(x, 100.0 * x)
    expected = F.max_pool2d(x, 3, 2, 1)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    # and beta = 1 is SoftPool: strictly between average and max
    soft = lip_det.lip2d(x, x)
    assert (soft <= expected + 1e-12).all() and (soft >= lip_det.lip2d(x, 0 * x) - 1e-12).all()


def test_large_logits_do_not_overflow_in_float32():
    x = torch.randn(1, 2, 8, 8)
    logit = torch.full_like(x, 500.0) + torch.randn_like(x)  # exp(500) overflows float32
    out = lip_det.lip2d(x, logit)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(
        out.double(), lip_by_windows(x, logit, 3, 2, 1), rtol=1e-4, atol=1e-5
    )


def test_output_size_is_ceil_half_for_odd_and_even_sizes():
    for h, w in [(1, 1), (2, 3), (33, 64), (65, 17)]:
        out = lip_det.lip2d(torch.randn(1, 1, h, w), torch.randn(1, 1, h, w))
        assert out.shape[-2:] == (-(-h // 2), -(-w // 2))


def test_bad_input_errors():
    x = torch.randn(1, 2, 8, 8)
    with pytest.raises(ValueError, match=r"same shape, got \(1, 2, 8, 8\) and \(1, 1, 8, 8\)"):
        lip_det.lip2d(x, x[:, :1])
    with pytest.raises(ValueError, match=r"4-D"):
        lip_det.lip2d(x[0], x[0])
    with pytest.raises(ValueError, match=r"impl='cuda_magic' is not valid; choose one of \['auto'"):
        lip_det.lip2d(x, x, impl="cuda_magic")
