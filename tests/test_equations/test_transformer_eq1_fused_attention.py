"""Eq. (1) through torch's fused attention: equal to the literal equation function for every mask convention."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from src.layers.attention import fused_attention, scaled_dot_product_attention


def _qkv(L_q, L_k, d=8, batch=(2, 3), seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*batch, L, d, generator=g, dtype=dtype) for L in (L_q, L_k, L_k))


@given(L_k=st.integers(1, 40), data=st.data(), causal=st.booleans())
def test_equals_the_reference_for_any_query_count(L_k, data, causal):
    L_q = data.draw(st.integers(1, L_k))
    q, k, v = _qkv(L_q, L_k)
    expected = scaled_dot_product_attention(q, k, v, causal=causal)
    torch.testing.assert_close(fused_attention(q, k, v, causal=causal), expected, rtol=1e-10, atol=1e-12)


@given(L_k=st.integers(1, 30), data=st.data(), causal=st.booleans(), seed=st.integers(0, 1000))
def test_equals_the_reference_with_an_allowed_mask(L_k, data, causal, seed):
    L_q = data.draw(st.integers(1, L_k))
    allowed = torch.rand(L_q, L_k, generator=torch.Generator().manual_seed(seed)) < 0.6
    allowed[:, : L_k - L_q + 1] = True  # every query keeps the first key, which the causal mask allows
    q, k, v = _qkv(L_q, L_k, seed=seed)
    expected = scaled_dot_product_attention(q, k, v, causal=causal, allowed=allowed)
    torch.testing.assert_close(fused_attention(q, k, v, causal=causal, allowed=allowed), expected)


def test_hand_worked_single_query():
    # one query, two keys: scores q.k / sqrt(2) = (0, 2 / sqrt(2)), softmax weights (1, e^sqrt2) / (1 + e^sqrt2)
    q = torch.tensor([[[1.0, 1.0]]], dtype=torch.float64)
    k = torch.tensor([[[1.0, -1.0], [1.0, 1.0]]], dtype=torch.float64)
    v = torch.tensor([[[10.0], [20.0]]], dtype=torch.float64)
    w = math.exp(math.sqrt(2))
    expected = (10.0 + 20.0 * w) / (1 + w)
    assert fused_attention(q, k, v).item() == pytest.approx(expected, rel=1e-12)


def test_gradients_equal_the_reference():
    q, k, v = (t.requires_grad_() for t in _qkv(5, 9))
    grads = torch.autograd.grad(fused_attention(q, k, v).square().sum(), (q, k, v))
    expected = torch.autograd.grad(scaled_dot_product_attention(q, k, v).square().sum(), (q, k, v))
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want)


def test_float32_matches_float64_reference():
    q, k, v = _qkv(64, 64, d=16)
    expected = scaled_dot_product_attention(q, k, v)
    got = fused_attention(q.float(), k.float(), v.float())
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


def test_bad_arguments_are_named():
    q, k, v = _qkv(4, 3)
    with pytest.raises(ValueError, match="causal attention needs L_k >= L_q"):
        fused_attention(q, k, v)
    q, k, v = _qkv(3, 3)
    with pytest.raises(ValueError, match="allowed must be a bool tensor"):
        fused_attention(q, k, v, allowed=torch.ones(3, 3))
    with pytest.raises(TypeError, match="k has dtype"):
        fused_attention(q, k.float(), v)
