"""RMSNorm, Eq. (4): values against a float64 loop and a hand-worked vector."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from src.layers.normalization import rms_norm


def reference(a: torch.Tensor, g: torch.Tensor, eps: float) -> torch.Tensor:
    out = torch.empty_like(a)
    for row in range(a.shape[0]):
        n = a.shape[1]
        rms = math.sqrt(sum(float(a[row, i]) ** 2 for i in range(n)) / n + eps)
        for i in range(n):
            out[row, i] = float(a[row, i]) / rms * float(g[i])
    return out


def test_matches_float64_loop():
    torch.manual_seed(0)
    a, g = torch.randn(5, 7, dtype=torch.float64), torch.randn(7, dtype=torch.float64)
    torch.testing.assert_close(rms_norm(a, g, 1e-6), reference(a, g, 1e-6), rtol=1e-12, atol=1e-12)


def test_hand_worked_example():
    # a = (3, 4): RMS = sqrt((9 + 16) / 2) = sqrt(12.5); with g = (1, 2): (3, 8) / sqrt(12.5).
    a = torch.tensor([3.0, 4.0], dtype=torch.float64)
    g = torch.tensor([1.0, 2.0], dtype=torch.float64)
    expected = torch.tensor([3.0, 8.0], dtype=torch.float64) / math.sqrt(12.5)
    torch.testing.assert_close(rms_norm(a, g, 1e-300), expected, rtol=1e-14, atol=0)


@given(scale=st.floats(1e-3, 1e3))
def test_invariant_to_input_scale(scale):
    # Sec. 3: RMSNorm is invariant to re-scaling its input (for eps -> 0).
    torch.manual_seed(1)
    a, g = torch.randn(3, 16, dtype=torch.float64), torch.randn(16, dtype=torch.float64)
    torch.testing.assert_close(rms_norm(scale * a, g, 1e-30), rms_norm(a, g, 1e-30), rtol=1e-10, atol=1e-12)


def test_zero_input_is_finite_and_zero():
    out = rms_norm(torch.zeros(2, 4), torch.ones(4))
    assert torch.equal(out, torch.zeros(2, 4))


def test_large_inputs_do_not_overflow_in_float32():
    a = torch.full((1, 8), 1e18)
    torch.testing.assert_close(rms_norm(a, torch.ones(8)), torch.ones(1, 8))


def test_gradcheck():
    a = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    g = torch.randn(5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, g: rms_norm(a, g, 1e-5), (a, g))


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="g has n=3"):
        rms_norm(torch.randn(2, 4), torch.ones(3))
    with pytest.raises(TypeError, match="a must be a floating-point tensor"):
        rms_norm(torch.ones(2, 4, dtype=torch.int64), torch.ones(4))
    with pytest.raises(ValueError, match="eps must be positive"):
        rms_norm(torch.randn(2, 4), torch.ones(4), eps=0.0)
