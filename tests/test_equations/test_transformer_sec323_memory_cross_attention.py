"""Memory cross-attention: equal to torch's scaled_dot_product_attention on the same projections (1e-6)."""

import math

import pytest
import torch
import torch.nn.functional as F

from src.layers.memory_bank import memory_cross_attention


def weights(d_model, d_mem, d_attn, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(d_attn, d_model, generator=g, dtype=dtype) / math.sqrt(d_model),
        torch.randn(d_attn, d_mem, generator=g, dtype=dtype) / math.sqrt(d_mem),
        torch.randn(d_attn, d_mem, generator=g, dtype=dtype) / math.sqrt(d_mem),
        torch.randn(d_model, d_attn, generator=g, dtype=dtype) / math.sqrt(d_attn),
    ]


def test_equals_torch_sdpa_on_the_same_projections():
    torch.manual_seed(0)
    H, M = torch.randn(2, 7, 16), torch.randn(40, 12)
    W_q, W_k, W_v, W_o = weights(16, 12, 8, seed=1)
    heads = 2

    def split(y):
        return y.view(*y.shape[:-1], heads, 4).transpose(-3, -2)

    expected = F.scaled_dot_product_attention(split(H @ W_q.T), split(M @ W_k.T), split(M @ W_v.T))
    expected = expected.transpose(1, 2).flatten(-2) @ W_o.T
    torch.testing.assert_close(memory_cross_attention(H, M, W_q, W_k, W_v, W_o, heads), expected, rtol=1e-6, atol=1e-6)


def test_matches_float64_loop_single_head():
    g = torch.Generator().manual_seed(2)
    H = torch.randn(3, 4, generator=g, dtype=torch.float64)
    M = torch.randn(5, 4, generator=g, dtype=torch.float64)
    W_q, W_k, W_v, W_o = weights(4, 4, 4, seed=3, dtype=torch.float64)
    Q, K, V = H @ W_q.T, M @ W_k.T, M @ W_v.T
    out = torch.zeros(3, 4, dtype=torch.float64)
    for i in range(3):
        scores = [sum(float(Q[i, c]) * float(K[j, c]) for c in range(4)) / 2.0 for j in range(5)]
        weights_ = [math.exp(s) / sum(math.exp(t) for t in scores) for s in scores]
        out[i] = sum(w * V[j] for j, w in enumerate(weights_))
    torch.testing.assert_close(memory_cross_attention(H, M, W_q, W_k, W_v, W_o, 1), out @ W_o.T, rtol=1e-12, atol=1e-12)


def test_per_sequence_memories_equal_one_shared_bank_each():
    torch.manual_seed(4)
    H, M = torch.randn(3, 5, 8), torch.randn(3, 6, 8)
    W = weights(8, 8, 8, seed=5)
    together = memory_cross_attention(H, M, *W, 2)
    for b in range(3):
        torch.testing.assert_close(together[b], memory_cross_attention(H[b], M[b], *W, 2), rtol=1e-6, atol=1e-6)


def test_heads_must_divide_the_width():
    with pytest.raises(ValueError, match="n_heads=3 must divide the attention width 8"):
        memory_cross_attention(torch.randn(1, 2, 8), torch.randn(4, 8), *weights(8, 8, 8, seed=0), 3)
