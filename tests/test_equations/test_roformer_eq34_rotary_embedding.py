"""RoPE, Eq. (34): the efficient form equals the block-diagonal rotation of Eq. (15)."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from src.layers.attention import rotary_embedding


def rotation_matrix(m: int, d: int, base: float) -> torch.Tensor:
    """R^d_{Theta,m} of Eq. (15): 2x2 rotations by m * theta_i on the diagonal."""
    R = torch.zeros(d, d, dtype=torch.float64)
    for i in range(d // 2):
        theta = base ** (-2 * i / d)
        c, s = math.cos(m * theta), math.sin(m * theta)
        R[2 * i : 2 * i + 2, 2 * i : 2 * i + 2] = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    return R


def test_matches_rotation_matrix():
    torch.manual_seed(0)
    x = torch.randn(6, 8, dtype=torch.float64)
    expected = torch.stack([rotation_matrix(3 + m, 8, 10000.0) @ x[m] for m in range(6)])
    torch.testing.assert_close(rotary_embedding(x, offset=3), expected, rtol=1e-12, atol=1e-12)


def test_hand_worked_position_one():
    # d = 2, theta_1 = 1: position 1 rotates (1, 0) by one radian to (cos 1, sin 1).
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    out = rotary_embedding(x)
    torch.testing.assert_close(out[1], torch.tensor([math.cos(1), math.sin(1)], dtype=torch.float64))
    torch.testing.assert_close(out[0], x[0])


@given(m=st.integers(0, 500), n=st.integers(0, 500), shift=st.integers(0, 500))
def test_scores_depend_only_on_relative_position(m, n, shift):
    # Sec. 3.4.1: <R_m q, R_n k> = q^T R_{n-m} k, so shifting both positions changes nothing.
    torch.manual_seed(m * 1000 + n)
    q, k = torch.randn(1, 16, dtype=torch.float64), torch.randn(1, 16, dtype=torch.float64)
    score = (rotary_embedding(q, m) * rotary_embedding(k, n)).sum()
    shifted = (rotary_embedding(q, m + shift) * rotary_embedding(k, n + shift)).sum()
    torch.testing.assert_close(score, shifted, rtol=1e-9, atol=1e-9)


def test_offset_equals_slice_of_longer_sequence():
    torch.manual_seed(1)
    x = torch.randn(2, 3, 10, 8)
    torch.testing.assert_close(rotary_embedding(x)[..., 4:, :], rotary_embedding(x[..., 4:, :], offset=4))


def test_preserves_norm():
    x = torch.randn(5, 32, dtype=torch.float64)
    torch.testing.assert_close(rotary_embedding(x, 1000).norm(dim=-1), x.norm(dim=-1))


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="even last dimension"):
        rotary_embedding(torch.randn(3, 5))
    with pytest.raises(ValueError, match="offset must be >= 0"):
        rotary_embedding(torch.randn(3, 4), offset=-1)
    with pytest.raises(ValueError, match="base must be positive"):
        rotary_embedding(torch.randn(3, 4), base=0.0)
