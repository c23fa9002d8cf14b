"""MemoryBankAttention: banks, routing reads only the chosen chapters, quantised banks, step."""

import pytest
import torch

from src.layers.memory_bank import MemoryBankAttention, memory_cross_attention


def weights(layer):
    return layer.W_q.weight, layer.W_k.weight, layer.W_v.weight, layer.W_o.weight


@pytest.mark.parametrize("bank, rank", [("standard", None), ("factorized", 4), ("reduced", 8)])
def test_unrouted_bank_is_cross_attention_over_the_whole_bank(bank, rank):
    torch.manual_seed(0)
    layer = MemoryBankAttention(16, 2, 12, bank=bank, rank=rank).double()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    M = layer.A @ layer.B.T if bank == "factorized" else layer.M
    assert M.shape == (12, 8 if bank == "reduced" else 16)
    torch.testing.assert_close(layer(x), memory_cross_attention(x, M, *weights(layer), 2), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("routing", ["token", "sequence"])
@pytest.mark.parametrize("bank, rank", [("standard", None), ("factorized", 4)])
def test_chapters_not_chosen_get_exactly_zero_gradient(routing, bank, rank):
    torch.manual_seed(1)
    layer = MemoryBankAttention(8, 2, 40, bank=bank, rank=rank, chapters=10, top_k=2, routing=routing).double()
    x = torch.randn(1, 3, 8, dtype=torch.float64)
    probs = torch.softmax(layer.router(x if routing == "token" else x.mean(1, keepdim=True)), dim=-1)
    chosen = set(probs.topk(2, dim=-1).indices.flatten().tolist())
    rows = layer.A if bank == "factorized" else layer.M
    (grad,) = torch.autograd.grad(layer(x).square().sum(), rows)
    for chapter in range(10):
        block = grad[chapter * 4 : (chapter + 1) * 4]
        if chapter in chosen:
            assert block.abs().sum() > 0
        else:
            assert torch.equal(block, torch.zeros_like(block))
    assert set(layer.aux_losses) == {"load_balancing", "router_z"}


def test_token_routing_is_the_gated_sum_of_chapter_reads():
    torch.manual_seed(2)
    layer = MemoryBankAttention(8, 2, 12, chapters=3, top_k=2).double()
    x = torch.randn(1, 2, 8, dtype=torch.float64)
    probs = torch.softmax(layer.router(x), dim=-1)
    expected = torch.zeros(1, 2, 8, dtype=torch.float64)
    for t in range(2):
        top, idx = probs[0, t].topk(2)
        for p, c in zip(top / top.sum(), idx.tolist()):
            chapter = layer.M[4 * c : 4 * c + 4]
            expected[0, t] += p * memory_cross_attention(x[:, t : t + 1], chapter, *weights(layer), 2)[0, 0]
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("routing", ["token", None])
def test_step_equals_forward(routing):
    torch.manual_seed(3)
    kwargs = {"chapters": 4, "top_k": 1, "routing": routing} if routing else {}
    layer = MemoryBankAttention(8, 2, 16, **kwargs).double()
    x = torch.randn(2, 6, 8, dtype=torch.float64)
    state, outputs = None, []
    for t in range(6):
        y, state = layer.step(x[:, t : t + 1], state)
        outputs.append(y)
    torch.testing.assert_close(torch.cat(outputs, dim=1), layer(x), rtol=1e-12, atol=1e-12)


def test_sequence_routing_keeps_the_first_calls_chapters():
    torch.manual_seed(4)
    layer = MemoryBankAttention(8, 2, 16, chapters=4, top_k=2, routing="sequence").double()
    x = torch.randn(2, 6, 8, dtype=torch.float64)
    y_prompt, state = layer.step(x[:, :4], None)
    y_next, state_after = layer.step(x[:, 4:], state)
    torch.testing.assert_close(torch.cat((y_prompt, y_next), dim=1)[:, :4], layer(x[:, :4]), rtol=1e-12, atol=1e-12)
    assert torch.equal(state_after["chosen"], state["chosen"])


@pytest.mark.parametrize("bits, tolerance", [(8, 0.02), (4, 0.2)])
def test_quantised_bank_reads_close_to_the_float_bank(bits, tolerance):
    torch.manual_seed(5)
    layer = MemoryBankAttention(64, 4, 128, chapters=4, top_k=2)
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        reference = layer(x)
        layer.quantize(bits)
        quantised = layer(x)
    assert (quantised - reference).abs().max() < tolerance * reference.abs().max()
    codes = layer.quantized["codes"]
    assert codes.dtype == (torch.int8 if bits == 8 else torch.uint8)


def test_bad_configurations_are_named():
    with pytest.raises(ValueError, match="bank='factorized' needs rank"):
        MemoryBankAttention(8, 2, 16, bank="factorized")
    with pytest.raises(ValueError, match="chapters=3 must divide n_memory=16"):
        MemoryBankAttention(8, 2, 16, chapters=3)
    with pytest.raises(ValueError, match=r"top_k must lie in \[1, chapters=4\]"):
        MemoryBankAttention(8, 2, 16, chapters=4, top_k=5)
