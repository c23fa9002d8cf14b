"""TitansMAC and TitansMAL composed by hand from the literal equations, the layers' bounded states
(step == forward and causality: test_mixer_contract.py)."""

import pytest
import torch

from src.layers.attention import concat_heads, rotary_embedding, scaled_dot_product_attention
from src.layers.neural_memory import (
    NeuralMemoryOptions,
    data_dependent_gates,
    linear_memory_read,
    memory_projections,
    neural_memory_recurrent,
)
from src.layers.titans import TitansMAC, TitansMAG, TitansMAL, memory_context_allowed, sliding_window_allowed

ONE_TOKEN_CHUNKS = NeuralMemoryOptions(chunk_size=1)  # the literal recurrence


def perturbed(layer):
    torch.manual_seed(0)
    layer = layer.double()
    with torch.no_grad():  # move the zero-initialised memory weights so every path carries signal
        for parameter in layer.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return layer


def heads(layer, x):
    b, n, d = x.shape
    return [
        W(x).view(b, n, layer.n_heads, d // layer.n_heads).transpose(1, 2) for W in (layer.W_q, layer.W_k, layer.W_v)
    ]


def rms(x, weight):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * weight


def memory_reads(memory, y, M, S, earlier=None):
    """The linear memory over tokens y with the literal recurrence (chunk size 1): M*_t(q(y_t)) and the state.

    `earlier`: the tokens before y that the Sec. 4.4 convolution reads (None: y starts the sequence)."""
    window = y if earlier is None else torch.cat((earlier, y), dim=1)
    k, v, q = (p[:, -y.shape[1] :] for p in memory_projections(window, *projections(memory), memory.conv))
    alpha, eta, theta = data_dependent_gates(y, memory.gates.weight, memory.gates.bias, memory.options.step_size_bound)
    read, M, S = neural_memory_recurrent(q, k, v, alpha, eta, theta, M, S)
    return memory.W_O(read), M, S


def projections(memory):
    return memory.W_K.weight, memory.W_V.weight, memory.W_Q.weight


@pytest.mark.parametrize("conv_kernel", [1, 3])
def test_mac_is_eq21_to_eq25_composed_by_hand(conv_kernel):
    """With conv_kernel 3 the retrieval queries of Eq. (21) pass Sec. 4.4's convolution over the
    layer's input across segment boundaries, as the memory's own projections do over its input."""
    options = NeuralMemoryOptions(chunk_size=1, conv_kernel=conv_kernel)
    layer = perturbed(TitansMAC(8, n_heads=2, segment_size=3, n_persistent=2, memory=options))
    x = torch.randn(2, 7, 8, dtype=torch.float64)
    memory, C, n_p = layer.neural_memory, 3, 2
    M, S = memory.initial["M"].expand(2, -1, -1), torch.zeros(2, 8, 8, dtype=torch.float64)
    queries = memory_projections(x, *projections(memory), memory.conv)[2]  # causal: each token sees only earlier ones
    outputs, ys = [], x[:, :0]
    for start in range(0, 7, C):
        segment = x[:, start : start + C]
        n = segment.shape[1]
        q_mem = queries[:, start : start + n]
        h = linear_memory_read(M[:, None].expand(-1, n, -1, -1), q_mem)  # Eq. (21): M*_{t-1}(q_t)
        context = torch.cat((layer.persistent.expand(2, -1, -1), h, segment), dim=1)  # Eq. (22)
        q, k, v = heads(layer, context)
        positions = torch.cat((torch.arange(n_p), n_p + torch.arange(n), n_p + C + torch.arange(n)))
        rotated_q = torch.cat([rotary_embedding(q[..., i : i + 1, :], int(p)) for i, p in enumerate(positions)], -2)
        rotated_k = torch.cat([rotary_embedding(k[..., i : i + 1, :], int(p)) for i, p in enumerate(positions)], -2)
        allowed = memory_context_allowed(n_p, n, n)
        attended = scaled_dot_product_attention(rotated_q[..., -n:, :], rotated_k, v, allowed=allowed)  # Eq. (23)
        y = concat_heads(attended, layer.W_o.weight)
        read, M, S = memory_reads(memory, y, M, S, ys)  # Eq. (24): M_t = M_{t-1}(y_t), then M*_t(y_t)
        ys = torch.cat((ys, y), dim=1)
        outputs.append(rms(y, layer.attention_norm.weight) * torch.sigmoid(rms(read, layer.memory_norm.weight)))
    torch.testing.assert_close(layer(x), torch.cat(outputs, dim=1), rtol=1e-10, atol=1e-12)


def test_mal_is_eq29_to_eq31_composed_by_hand():
    layer = perturbed(TitansMAL(8, n_heads=2, window=3, n_persistent=2, memory=ONE_TOKEN_CHUNKS))
    x = torch.randn(2, 6, 8, dtype=torch.float64)
    memory = layer.neural_memory
    x_tilde = torch.cat((memory.persistent.expand(2, -1, -1), x), dim=1)  # Eq. (29)
    M0 = memory.initial["M"].expand(2, -1, -1)
    y = memory_reads(memory, x_tilde, M0, torch.zeros_like(M0))[0][:, 2:]  # Eq. (30), at the positions of x
    q, k, v = heads(layer, y)
    q, k = rotary_embedding(q), rotary_embedding(k)
    attended = scaled_dot_product_attention(q, k, v, causal=True, allowed=sliding_window_allowed(6, 6, 3, 0))
    torch.testing.assert_close(layer(x), concat_heads(attended, layer.W_o.weight), rtol=1e-10, atol=1e-12)


def test_mac_state_is_bounded_by_the_segment():
    layer = perturbed(TitansMAC(8, n_heads=2, segment_size=4, n_persistent=1, memory=NeuralMemoryOptions(chunk_size=2)))
    state, sizes = None, []
    for _ in range(11):
        _, state = layer.step(torch.randn(1, 1, 8, dtype=torch.float64), state)
        sizes.append(state.k_s.shape[-2])
    assert sizes == [1, 2, 3, 0] * 2 + [1, 2, 3]
    assert state.k_h.shape == state.k_s.shape


def test_mag_state_keeps_only_the_persistent_and_window_keys():
    layer = perturbed(TitansMAG(8, 2, window=4, n_persistent=2, memory=NeuralMemoryOptions(chunk_size=4)))
    state = None
    for _ in range(9):
        _, state = layer.step(torch.randn(1, 1, 8, dtype=torch.float64), state)
    assert state.k.shape[-2] == 2 + 4 - 1  # persistent + window - 1
