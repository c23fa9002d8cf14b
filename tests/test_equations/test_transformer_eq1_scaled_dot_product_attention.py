"""Scaled dot-product attention, Eq. (1), with the causal mask of Sec. 3.2.3."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from src.layers.attention import scaled_dot_product_attention


def reference(q, k, v, causal, allowed=None):
    """Literal Eq. (1) for one head, (L_q, d) x (L_k, d), in float64 Python arithmetic."""
    L_q, L_k, d_k = q.shape[0], k.shape[0], q.shape[1]
    out = torch.zeros(L_q, v.shape[1], dtype=torch.float64)
    for i in range(L_q):
        visible = range(L_k - L_q + i + 1) if causal else range(L_k)
        visible = [j for j in visible if allowed is None or allowed[i][j]]
        scores = [sum(float(q[i, c]) * float(k[j, c]) for c in range(d_k)) / math.sqrt(d_k) for j in visible]
        top = max(scores)
        weights = [math.exp(s - top) for s in scores]
        for j, w in zip(visible, weights):
            out[i] += w / sum(weights) * v[j]
    return out


@pytest.mark.parametrize("causal", [True, False])
def test_matches_float64_loop(causal):
    torch.manual_seed(0)
    q, k, v = (
        torch.randn(5, 4, dtype=torch.float64),
        torch.randn(5, 4, dtype=torch.float64),
        torch.randn(5, 3, dtype=torch.float64),
    )
    torch.testing.assert_close(
        scaled_dot_product_attention(q, k, v, causal), reference(q, k, v, causal), rtol=1e-12, atol=1e-12
    )


def test_queries_are_the_last_positions_of_a_kv_cache():
    torch.manual_seed(1)
    q, k, v = (
        torch.randn(2, 4, dtype=torch.float64),
        torch.randn(6, 4, dtype=torch.float64),
        torch.randn(6, 3, dtype=torch.float64),
    )
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v), reference(q, k, v, True), rtol=1e-12, atol=1e-12)


def test_hand_worked_two_tokens():
    # d_k = 1, q = k = (1, 2), v = (10, 20). Row 0 sees only key 0 -> 10. Row 1 sees scores
    # (2, 4): weights e^2, e^4 -> (10 e^2 + 20 e^4) / (e^2 + e^4).
    q = k = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    v = torch.tensor([[10.0], [20.0]], dtype=torch.float64)
    expected = torch.tensor(
        [[10.0], [(10 * math.e**2 + 20 * math.e**4) / (math.e**2 + math.e**4)]], dtype=torch.float64
    )
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v), expected, rtol=1e-14, atol=0)


def test_equals_pytorch_sdpa():
    torch.manual_seed(2)
    q, k, v = (torch.randn(2, 3, 9, 8, dtype=torch.float64) for _ in range(3))
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v), expected, rtol=1e-12, atol=1e-12)


@given(t=st.integers(0, 7), seed=st.integers(0, 2**16))
def test_causality(t, seed):
    torch.manual_seed(seed)
    q, k, v = (torch.randn(8, 4, dtype=torch.float64) for _ in range(3))
    k2, v2 = k.clone(), v.clone()
    k2[t:], v2[t:] = torch.randn(8 - t, 4, dtype=torch.float64), torch.randn(8 - t, 4, dtype=torch.float64)
    before = scaled_dot_product_attention(q, k, v)[:t]
    after = scaled_dot_product_attention(q, k2, v2)[:t]
    torch.testing.assert_close(before, after, rtol=0, atol=0)


def test_large_scores_are_stable_in_float32():
    q = k = torch.full((4, 2), 1e3)
    v = torch.arange(8.0).view(4, 2)
    out = scaled_dot_product_attention(q, k, v)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[-1], v.mean(0))  # equal scores -> uniform weights


def test_gradcheck():
    q, k, v = (torch.randn(3, 2, dtype=torch.float64, requires_grad=True) for _ in range(3))
    assert torch.autograd.gradcheck(scaled_dot_product_attention, (q, k, v))


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="v has L_k=4"):
        scaled_dot_product_attention(torch.randn(3, 2), torch.randn(3, 2), torch.randn(4, 2))
    with pytest.raises(ValueError, match="causal attention needs L_k >= L_q"):
        scaled_dot_product_attention(torch.randn(3, 2), torch.randn(2, 2), torch.randn(2, 2))


def test_allowed_mask_restricts_keys_like_a_sliding_window():
    torch.manual_seed(1)
    q, k, v = (torch.randn(6, 4, dtype=torch.float64) for _ in range(3))
    allowed = torch.tensor([[i - j < 3 for j in range(6)] for i in range(6)])  # window of 3 keys
    expected = reference(q, k, v, True, allowed.tolist())
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, True, allowed), expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="allowed must be a bool tensor of shape"):
        scaled_dot_product_attention(q, k, v, True, allowed[:5])
