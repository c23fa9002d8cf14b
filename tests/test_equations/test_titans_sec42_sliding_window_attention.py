"""SW-Attn* in banded form equals the literal masked attention, for any block size and cache layout."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from src.layers.attention import scaled_dot_product_attention
from src.layers.titans import sliding_window_allowed, sliding_window_attention


def _reference(q, k, v, window, n_persistent):
    allowed = sliding_window_allowed(q.shape[-2], k.shape[-2], window, n_persistent)
    return scaled_dot_product_attention(q, k, v, causal=True, allowed=allowed)


@given(
    L_q=st.integers(1, 40),
    extra=st.integers(0, 10),
    n_persistent=st.integers(0, 4),
    window=st.integers(1, 12),
    block=st.integers(1, 17),
)
def test_equals_the_literal_masked_attention(L_q, extra, n_persistent, window, block):
    L_k = L_q + n_persistent + extra  # queries are the last L_q positions, after the persistent ones
    g = torch.Generator().manual_seed(L_q * 1000 + extra)
    q = torch.randn(2, 3, L_q, 4, generator=g, dtype=torch.float64)
    k, v = (torch.randn(2, 3, L_k, 4, generator=g, dtype=torch.float64) for _ in range(2))
    got = sliding_window_attention(q, k, v, window, n_persistent, block=block)
    torch.testing.assert_close(got, _reference(q, k, v, window, n_persistent), rtol=1e-10, atol=1e-12)


def test_hand_worked_window_of_one_returns_own_value_without_persistent_tokens():
    # window 1 and no persistent tokens: each query sees only its own key, so y_i = v_i
    v = torch.arange(12.0, dtype=torch.float64).reshape(1, 1, 6, 2)
    q, k = torch.randn(1, 1, 6, 2, dtype=torch.float64), torch.randn(1, 1, 6, 2, dtype=torch.float64)
    torch.testing.assert_close(sliding_window_attention(q, k, v, window=1, n_persistent=0, block=4), v)


def test_output_ignores_keys_outside_the_window():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 18, 4, generator=g, dtype=torch.float64)  # positions 2..19, after 2 persistent
    k, v = (torch.randn(1, 2, 20, 4, generator=g, dtype=torch.float64) for _ in range(2))
    y = sliding_window_attention(q, k, v, window=3, n_persistent=2, block=5)
    v2 = v.clone()
    v2[..., 2:10, :] += 100.0  # positions 2..9 are outside the windows of positions 12..19 (queries 10..17)
    y2 = sliding_window_attention(q, k, v2, 3, 2, block=5)
    torch.testing.assert_close(y2[..., 10:, :], y[..., 10:, :])
    assert not torch.allclose(y2[..., :8, :], y[..., :8, :])


def test_long_sequence_runs_banded_and_finite():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 1, 8192, 8, generator=g) for _ in range(3))
    y = sliding_window_attention(q, k, v, window=64, n_persistent=0)
    assert y.shape == (1, 1, 8192, 8) and bool(y.isfinite().all())
    tail = _reference(q[..., -50:, :], k[..., -113:, :], v[..., -113:, :], 64, 0)  # the last 50 see 113 keys
    torch.testing.assert_close(y[..., -50:, :], tail)


def test_bad_arguments_are_named():
    q = torch.randn(1, 1, 5, 4)
    with pytest.raises(ValueError, match="window must be positive"):
        sliding_window_attention(q, q, q, window=0, n_persistent=0)
    with pytest.raises(ValueError, match="n_persistent"):
        sliding_window_attention(q, q, q, window=2, n_persistent=1)
