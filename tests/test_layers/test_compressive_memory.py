"""TensorMemory and InfiniAttention: the equations composed (step == forward, causality: test_mixer_contract.py)."""

import pytest
import torch

from src.layers.attention import rotary_embedding, scaled_dot_product_attention
from src.layers.compressive_memory import (
    HeadMemory,
    InfiniAttention,
    TensorMemory,
    clip_memory,
    clip_memory_norm,
    clip_update,
    compressive_memory_recurrent,
    elu_plus_one,
    l2_normalize,
    memory_gate,
    memory_retrieve,
    memory_update_delta,
    memory_update_linear,
)


def heads_of(layer, x):
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
    q, k, v = heads_of(layer, x)
    A, _, _ = compressive_memory_recurrent(elu_plus_one(q), elu_plus_one(k), v, update, segment_size)
    expected = A.transpose(1, 2).flatten(-2) @ layer.W_o.weight.T
    torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("update", ["linear", "delta"])
@pytest.mark.parametrize("segment_size", [1, 4])
def test_short_convolution_is_deltanets_conv_then_silu_on_each_projection(update, segment_size):
    """conv_kernel 3: Q, K, V = SiLU(causal depthwise conv of x W), then the same recurrence; and the
    step state carries the convolution's last inputs, so any split of the sequence gives the same output."""
    torch.manual_seed(2)
    layer = TensorMemory(12, n_heads=3, update=update, segment_size=segment_size, conv_kernel=3).double()
    x = torch.randn(2, 11, 12, dtype=torch.float64)
    b, n, d = x.shape
    projected = torch.cat([W(x) for W in (layer.W_q, layer.W_k, layer.W_v)], dim=-1)  # (b, n, 3 d)
    filtered = torch.zeros_like(projected)
    for t in range(n):  # the causal depthwise filter as a loop over the kernel, zeros before the first token
        for i in range(3):
            if t - 2 + i >= 0:
                filtered[:, t] += layer.conv[:, i] * projected[:, t - 2 + i]
    q, k, v = (
        part.view(b, n, 3, d // 3).transpose(1, 2) for part in torch.nn.functional.silu(filtered).chunk(3, dim=-1)
    )
    A, _, _ = compressive_memory_recurrent(elu_plus_one(q), elu_plus_one(k), v, update, segment_size)
    torch.testing.assert_close(layer(x), A.transpose(1, 2).flatten(-2) @ layer.W_o.weight.T, rtol=1e-10, atol=1e-12)
    first, state = layer.step(x[:, :5], None)
    second, _ = layer.step(x[:, 5:], state)
    torch.testing.assert_close(torch.cat((first, second), dim=1), layer(x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("update", ["linear", "delta"])
def test_infini_attention_is_eq2_to_eq7_composed_by_hand(update):
    torch.manual_seed(1)
    layer = InfiniAttention(d_model=8, n_heads=2, segment_size=3, update=update).double()
    with torch.no_grad():
        layer.beta.copy_(torch.tensor([-0.7, 1.3]))
    x = torch.randn(2, 8, 8, dtype=torch.float64)
    q, k, v = heads_of(layer, x)
    M = torch.zeros(2, 2, 4, 4, dtype=torch.float64)
    z = torch.zeros(2, 2, 4, dtype=torch.float64)
    outputs = []
    for s in range(0, 8, 3):
        seg = slice(s, s + 3)
        # RoPE on the local attention only, positions within the segment (the paper's Position Embeddings)
        q_rope, k_rope = rotary_embedding(q[..., seg, :]), rotary_embedding(k[..., seg, :])
        A_dot = scaled_dot_product_attention(q_rope, k_rope, v[..., seg, :], causal=True)
        A_mem = memory_retrieve(elu_plus_one(q[..., seg, :]), M, z)  # unrotated q: no PE on the memory
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


def test_defaults_are_the_papers_form_and_a_default_head_memory_clips_nothing():
    layer = TensorMemory(8, 2)
    assert layer.heads == [HeadMemory("linear", None, None, None)] * 2
    assert not layer.normalize_qkv and layer.W_q.bias is None and layer.W_v.bias is None
    M, M_next = torch.randn(2, 3), torch.randn(2, 3)
    assert HeadMemory().clip(M, M_next) is M_next  # no clamp touches the write


def test_per_head_memories_are_each_heads_recurrence_composed_by_hand():
    torch.manual_seed(2)
    heads = [{"update": "delta"}, {"update": "linear"}, {"update": "delta"}]
    layer = TensorMemory(d_model=12, n_heads=3, chunk_size=4, heads=heads).double()
    x = torch.randn(2, 11, 12, dtype=torch.float64)
    q, k, v = heads_of(layer, x)
    per_head = [
        compressive_memory_recurrent(elu_plus_one(q[:, h]), elu_plus_one(k[:, h]), v[:, h], spec["update"], 1)[0]
        for h, spec in enumerate(heads)
    ]
    expected = torch.stack(per_head, dim=1).transpose(1, 2).flatten(-2) @ layer.W_o.weight.T
    torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-12)


def test_clamped_normalised_memory_with_bias_is_the_loop_composed_by_hand():
    torch.manual_seed(3)
    clamps = {"max_delta": 0.2, "max_memory": 0.3, "max_norm": 0.5}
    layer = TensorMemory(8, 2, update="delta", **clamps, normalize_qkv=True, bias=True).double()
    with torch.no_grad():
        for W in (layer.W_q, layer.W_k, layer.W_v):
            W.bias.normal_()
    x = torch.randn(2, 9, 8, dtype=torch.float64)
    q, k, v = heads_of(layer, x)  # heads_of applies each projection's bias
    # normalised after the feature map, as DeltaNet does
    sigma_q, sigma_k, v = l2_normalize(elu_plus_one(q)), l2_normalize(elu_plus_one(k)), l2_normalize(v)
    M, z, outputs = torch.zeros(2, 2, 4, 4, dtype=torch.float64), torch.zeros(2, 2, 4, dtype=torch.float64), []
    for t in range(9):
        outputs.append(memory_retrieve(sigma_q[..., t : t + 1, :], M, z))
        M_next, z = memory_update_delta(M, z, sigma_k[..., t : t + 1, :], v[..., t : t + 1, :])
        M = clip_memory_norm(clip_memory(M + clip_update(M_next - M, 0.2), 0.3), 0.5)
    expected = torch.cat(outputs, dim=2).transpose(1, 2).flatten(-2) @ layer.W_o.weight.T
    torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-12)
    assert torch.linalg.matrix_norm(layer.step(x, None)[1].M).max() <= 0.5 + 1e-12


@pytest.mark.parametrize("update", ["linear", "delta"])
def test_normalised_token_level_memory_writes_unit_features_after_elu_plus_one(update):
    """Unclamped, token level (the chunked form): σ(k) = ELU(k) + 1 is normalised after the feature map."""
    torch.manual_seed(5)
    layer = TensorMemory(8, 2, update=update, normalize_qkv=True, chunk_size=4).double()
    x = torch.randn(2, 11, 8, dtype=torch.float64)
    q, k, v = heads_of(layer, x)
    sigma_q, sigma_k, v = l2_normalize(elu_plus_one(q)), l2_normalize(elu_plus_one(k)), l2_normalize(v)
    A_mem, M, _ = compressive_memory_recurrent(sigma_q, sigma_k, v, update, 1)
    torch.testing.assert_close(layer(x), A_mem.transpose(1, 2).flatten(-2) @ layer.W_o.weight.T, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(layer.step(x, None)[1].M, M, rtol=1e-10, atol=1e-12)


def test_clamps_change_the_output_once_they_act():
    torch.manual_seed(4)
    x = 3 * torch.randn(1, 20, 8, dtype=torch.float64)
    free = TensorMemory(8, 2).double()
    clamped = TensorMemory(8, 2, max_norm=0.1).double()
    clamped.load_state_dict(free.state_dict())
    with torch.no_grad():
        assert (free(x) - clamped(x))[:, 2:].abs().max() > 1e-3


def test_head_memories_are_validated():
    with pytest.raises(ValueError, match=r"heads must list one memory per head \(2\), got 1"):
        TensorMemory(8, 2, heads=[{"update": "delta"}])
    with pytest.raises(ValueError, match="give update, max_delta, max_memory and max_norm per head"):
        TensorMemory(8, 2, max_norm=1.0, heads=[{}, {}])
