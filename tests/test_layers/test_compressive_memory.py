"""TensorMemory and InfiniAttention: the equations composed (step == forward, causality: test_mixer_contract.py)."""

import pytest
import torch

from src.layers.attention import scaled_dot_product_attention
from src.layers.compressive_memory import (
    InfiniAttention,
    TensorMemory,
    compressive_memory_recurrent,
    elu_plus_one,
    memory_gate,
    memory_retrieve,
    memory_update_delta,
    memory_update_linear,
)


def heads(layer, x):
    b, n, d = x.shape
    return [
        W(x).view(b, n, layer.n_heads, d // layer.n_heads).transpose(1, 2) for W in (layer.W_q, layer.W_k, layer.W_v)
    ]


@pytest.mark.parametrize("update", ["linear", "delta"])
@pytest.mark.parametrize("segment_size", [1, 4])
def test_tensor_memory_is_the_recurrence_composed_by_hand(update, segment_size):
    torch.manual_seed(0)
    layer = TensorMemory(d_model=12, n_heads=3, update=update, segment_size=segment_size, chunk_size=5).double()
    x = torch.randn(2, 11, 12, dtype=torch.float64)
    q, k, v = heads(layer, x)
    A, _, _ = compressive_memory_recurrent(elu_plus_one(q), elu_plus_one(k), v, update, segment_size)
    expected = A.transpose(1, 2).flatten(-2) @ layer.W_o.weight.T
    torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("update", ["linear", "delta"])
def test_infini_attention_is_eq2_to_eq7_composed_by_hand(update):
    torch.manual_seed(1)
    layer = InfiniAttention(d_model=8, n_heads=2, segment_size=3, update=update).double()
    with torch.no_grad():
        layer.beta.copy_(torch.tensor([-0.7, 1.3]))
    x = torch.randn(2, 8, 8, dtype=torch.float64)
    q, k, v = heads(layer, x)
    M = torch.zeros(2, 2, 4, 4, dtype=torch.float64)
    z = torch.zeros(2, 2, 4, dtype=torch.float64)
    outputs = []
    for s in range(0, 8, 3):
        seg = slice(s, s + 3)
        A_dot = scaled_dot_product_attention(q[..., seg, :], k[..., seg, :], v[..., seg, :], causal=True)
        A_mem = memory_retrieve(elu_plus_one(q[..., seg, :]), M, z)
        outputs.append(memory_gate(A_mem, A_dot, layer.beta))
        rule = memory_update_linear if update == "linear" else memory_update_delta
        M, z = rule(M, z, elu_plus_one(k[..., seg, :]), v[..., seg, :])
    expected = torch.cat(outputs, dim=2).transpose(1, 2).flatten(-2) @ layer.W_o.weight.T
    torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-12)


def test_token_level_memory_gives_the_first_token_nothing():
    layer = TensorMemory(8, 2).double()
    assert torch.equal(layer(torch.randn(3, 5, 8, dtype=torch.float64))[:, 0], torch.zeros(3, 8, dtype=torch.float64))


def test_heads_must_divide_the_width():
    with pytest.raises(ValueError, match="n_heads=3 must divide d_model=8"):
        TensorMemory(8, 3)
