"""MemoryBankAttention: banks, routing reads only the chosen chapters, causal sequence routing,
quantised banks stored in buffers (step == forward and causality: tests/test_mixer_contract.py)."""

import pytest
import torch

from src.layers.memory_bank import MemoryBankAttention, memory_cross_attention
from src.layers.mixer import MIXERS


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


def router_input(x, routing):
    """What the router reads per routing rule: the token, the mean of tokens <= t, or of all tokens."""
    if routing == "token":
        return x
    if routing == "sequence":
        return torch.cumsum(x, dim=1) / torch.arange(1, x.shape[1] + 1, dtype=x.dtype)[:, None]
    return x.mean(1, keepdim=True)


@pytest.mark.parametrize("routing", ["token", "sequence", "sequence_noncausal"])
@pytest.mark.parametrize("bank, rank", [("standard", None), ("factorized", 4)])
def test_chapters_not_chosen_get_exactly_zero_gradient(routing, bank, rank):
    torch.manual_seed(1)
    layer = MemoryBankAttention(8, 2, 40, bank=bank, rank=rank, chapters=10, top_k=2, routing=routing).double()
    x = torch.randn(1, 3, 8, dtype=torch.float64)
    probs = torch.softmax(layer.router(router_input(x, routing)), dim=-1)
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


def test_causal_sequence_routing_reads_the_chapters_of_the_prefix_mean():
    torch.manual_seed(3)
    layer = MemoryBankAttention(8, 2, 12, chapters=3, top_k=1, routing="sequence").double()
    x = torch.randn(1, 4, 8, dtype=torch.float64)
    y = layer(x)
    for t in range(4):
        chapter = layer.router(x[:, : t + 1].mean(1)).argmax().item()  # the mean of tokens 0..t
        rows = layer.M[4 * chapter : 4 * chapter + 4]
        expected = memory_cross_attention(x[:, t : t + 1], rows, *weights(layer), 2)[0, 0]
        torch.testing.assert_close(y[0, t], expected, rtol=1e-12, atol=1e-12)


def test_noncausal_sequence_routing_keeps_the_first_calls_chapters():
    torch.manual_seed(4)
    layer = MemoryBankAttention(8, 2, 16, chapters=4, top_k=2, routing="sequence_noncausal").double()
    x = torch.randn(2, 6, 8, dtype=torch.float64)
    y_prompt, state = layer.step(x[:, :4], None)
    _, state_after = layer.step(x[:, 4:], state)
    torch.testing.assert_close(y_prompt, layer(x[:, :4]), rtol=1e-12, atol=1e-12)
    assert torch.equal(state_after.chosen, state.chosen)
    # it reads the future: pushing the last token towards an unchosen chapter changes the first output
    unchosen = next(c for c in range(4) if c not in state.chosen[0].tolist())
    changed = x.clone()
    with torch.no_grad():
        changed[0, 5] += 100.0 * layer.router.weight[unchosen]
        assert not torch.allclose(layer(changed)[0, 0], layer(x)[0, 0])


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
    assert layer.quantized_codes.dtype == (torch.int8 if bits == 8 else torch.uint8)


@pytest.mark.parametrize("bits", [8, 4])
def test_quantised_bank_survives_a_checkpoint_round_trip(bits, tmp_path):
    torch.manual_seed(6)
    layer = MemoryBankAttention(16, 2, 32, chapters=4, top_k=1)
    layer.quantize(bits)
    with torch.no_grad():
        layer.M.zero_()  # reads must come from the quantised buffers, not the float bank
    x = torch.randn(2, 5, 16)
    torch.save(layer.state_dict(), tmp_path / "bank.pt")
    assert {"quantized_codes", "quantized_scale", "quantized_bits"} <= set(layer.state_dict())
    torch.manual_seed(7)
    fresh = MemoryBankAttention(16, 2, 32, chapters=4, top_k=1)  # not quantised: loading fills the buffers
    fresh.load_state_dict(torch.load(tmp_path / "bank.pt", weights_only=True))
    assert int(fresh.quantized_bits) == bits
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), layer(x), rtol=0, atol=0)
    moved = fresh.to(torch.float64)
    assert moved.quantized_codes.dtype == layer.quantized_codes.dtype  # integer codes keep their dtype
    assert moved(x.double()).dtype == torch.float64


def test_memory_bank_is_registered():
    assert MIXERS["memory_bank"] is MemoryBankAttention


def test_bad_configurations_are_named():
    with pytest.raises(ValueError, match="bank='factorized' needs rank"):
        MemoryBankAttention(8, 2, 16, bank="factorized")
    with pytest.raises(ValueError, match="chapters=3 must divide n_memory=16"):
        MemoryBankAttention(8, 2, 16, chapters=3)
    with pytest.raises(ValueError, match=r"top_k must lie in \[1, chapters=4\]"):
        MemoryBankAttention(8, 2, 16, chapters=4, top_k=5)
    with pytest.raises(ValueError, match="bits must be 4 or 8"):
        MemoryBankAttention(8, 2, 16).quantize(2)
