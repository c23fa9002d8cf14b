"""CausalSelfAttention: built from Eq. (1) and RoPE; the KV cache reproduces the full pass."""

import pytest
import torch

from src.layers.attention import CausalSelfAttention, rotary_embedding, scaled_dot_product_attention


def test_forward_equals_equations_composed_by_hand():
    torch.manual_seed(0)
    layer = CausalSelfAttention(d_model=8, n_heads=2).double()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    heads = lambda t: t.view(2, 5, 2, 4).transpose(1, 2)  # noqa: E731
    q = rotary_embedding(heads(x @ layer.W_q.weight.T))
    k = rotary_embedding(heads(x @ layer.W_k.weight.T))
    v = heads(x @ layer.W_v.weight.T)
    y = scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 5, 8) @ layer.W_o.weight.T
    torch.testing.assert_close(layer(x), y, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("chunks", [[1] * 7, [3, 1, 3], [7]])
def test_step_with_kv_cache_equals_full_forward(chunks):
    torch.manual_seed(1)
    layer = CausalSelfAttention(d_model=16, n_heads=4)
    x = torch.randn(3, 7, 16)
    state, outputs, start = None, [], 0
    for size in chunks:
        y, state = layer.step(x[:, start : start + size], state)
        outputs.append(y)
        start += size
    torch.testing.assert_close(torch.cat(outputs, dim=1), layer(x), rtol=1e-5, atol=1e-6)
    assert state["k"].shape == (3, 4, 7, 4)


def test_constructor_errors_name_the_argument():
    with pytest.raises(ValueError, match="n_heads=3 must divide d_model=8"):
        CausalSelfAttention(d_model=8, n_heads=3)
    with pytest.raises(ValueError, match="must be even"):
        CausalSelfAttention(d_model=6, n_heads=2)
