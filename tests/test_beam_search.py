"""Beam search with GNMT's length penalty, and streamed generation, against independent references:
greedy decoding (width 1), exhaustive search over every sequence (a wide beam on a tiny vocabulary)
and `generate` (the stream)."""

import itertools

import pytest
import torch

from src.config import resolve_model_section
from src.generation import beam_search, generate, generate_stream
from src.model import PaperModel

VOCAB = 4
MIXERS = {
    "attention": {"type": "attention", "n_heads": 2},
    "selective_ssm": {"type": "selective_ssm", "d_state": 4, "d_conv": 3, "expand": 2},
}


def tiny_model(mixer: str, seed: int = 0, vocab_size: int = VOCAB) -> PaperModel:
    """Two blocks of `mixer`, weights drawn large so next-token distributions are far from uniform."""
    raw = {"vocab_size": vocab_size, "d_model": 16, "tie_embeddings": False}
    raw["blocks"] = [{"mixer": MIXERS[mixer], "mlp": {"type": "swiglu", "d_hidden": 32}, "repeat": 2}]
    torch.manual_seed(seed)
    model = PaperModel(resolve_model_section(raw, "<test>"))
    with torch.no_grad():
        model.embedding.weight.normal_(0, 1.0)
        model.head.weight.normal_(0, 1.5)
    return model.double().eval()  # float64: step and full forward agree to ~1e-15


def token_log_probs(model: PaperModel, prompt: torch.Tensor, length: int) -> dict[tuple, list[float]]:
    """log p(y_i | prompt, y_<i) of every sequence of `length` tokens, by one batched full forward pass
    (no state stepping), in float64. A shorter sequence's terms are those of any sequence it begins."""
    sequences = list(itertools.product(range(VOCAB), repeat=length))
    ids = torch.cat([prompt.expand(len(sequences), -1), torch.tensor(sequences)], dim=1)
    with torch.no_grad():
        log_probs = torch.log_softmax(model(ids).double(), dim=-1)
    start = prompt.shape[1] - 1
    picked = log_probs[:, start : start + length].gather(-1, ids[:, start + 1 :, None])[..., 0]
    return dict(zip(sequences, picked.tolist()))


def exhaustive_best(model, prompt, max_new_tokens, alpha, end_id):
    """The best s(Y) over every finished sequence: ending at its first `end_id`, or reaching
    max_new_tokens without one."""
    terms = token_log_probs(model, prompt, max_new_tokens)
    best = None
    for full, log_probs in terms.items():
        stop = full.index(end_id) + 1 if end_id in full else max_new_tokens
        log_p, sequence = sum(log_probs[:stop]), list(full[:stop])
        score = log_p / (((5 + stop) / 6) ** alpha)
        if best is None or score > best[0]:
            best = (score, sequence, log_p)
    return best


@pytest.mark.parametrize("mixer", sorted(MIXERS))
@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
def test_a_wide_beam_finds_the_exhaustive_optimum(mixer, alpha):
    model = tiny_model(mixer, seed=1)
    prompt = torch.tensor([[1, 2, 3]])
    # Live hypotheses at step t are at most 3^t (the end token finishes one), so width 64 never prunes.
    result = beam_search(model, prompt, max_new_tokens=4, beam_width=64, alpha=alpha, end_id=0)
    score, sequence, log_p = exhaustive_best(model, prompt, 4, alpha, end_id=0)
    assert result.tokens == sequence
    assert result.score == pytest.approx(score, abs=1e-9)
    assert result.log_prob == pytest.approx(log_p, abs=1e-9)


@pytest.mark.parametrize("mixer", sorted(MIXERS))
def test_width_one_is_greedy(mixer):
    model = tiny_model(mixer, seed=2, vocab_size=12)
    prompt = torch.tensor([[3, 1, 4, 1, 5]])
    greedy = generate(model, prompt, 10, temperature=0.0)[0, 5:].tolist()
    assert beam_search(model, prompt, 10, beam_width=1).tokens == greedy
    end_id = greedy[3]  # greedy decoding stopped at the first end token
    stopped = greedy[: greedy.index(end_id) + 1]
    assert beam_search(model, prompt, 10, beam_width=1, alpha=0.6, end_id=end_id).tokens == stopped


def test_length_penalty_changes_which_finished_hypothesis_wins():
    # With alpha = 0 short hypotheses win more often; a large alpha prefers longer ones: across
    # prompts the mean length of the best hypothesis must not shrink as alpha grows.
    model = tiny_model("attention", seed=3)
    lengths = {}
    for alpha in (0.0, 3.0):
        lengths[alpha] = [
            len(beam_search(model, torch.tensor([[a, b]]), 5, beam_width=16, alpha=alpha, end_id=0).tokens)
            for a in range(VOCAB)
            for b in range(VOCAB)
        ]
    assert sum(lengths[3.0]) > sum(lengths[0.0])


@pytest.mark.parametrize("mixer", sorted(MIXERS))
def test_stream_equals_generate(mixer):
    model = tiny_model(mixer, seed=4, vocab_size=12)
    prompt = torch.tensor([[2, 7, 1]])
    for temperature, seed in ((0.0, 0), (0.9, 5)):
        expected = generate(model, prompt, 12, temperature=temperature, seed=seed)[0, 3:].tolist()
        assert list(generate_stream(model, prompt, 12, temperature=temperature, seed=seed)) == expected
    greedy = generate(model, prompt, 12)[0, 3:].tolist()
    end_id = greedy[4]
    assert list(generate_stream(model, prompt, 12, end_id=end_id)) == greedy[: greedy.index(end_id) + 1]


def test_bad_arguments_are_named_before_any_token():
    model = tiny_model("attention")
    prompt = torch.tensor([[1, 2]])
    for kwargs, message in (
        ({"beam_width": 0}, "beam_width must be >= 1"),
        ({"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
        ({"alpha": -1.0}, "alpha must be"),
        ({"end_id": VOCAB}, "end_id must lie in"),
    ):
        with pytest.raises(ValueError, match=message):
            beam_search(model, prompt, **{"max_new_tokens": 3, "beam_width": 2, **kwargs})
    with pytest.raises(ValueError, match="prompt must have shape"):
        beam_search(model, torch.tensor([[1], [2]]), 3, 2)
    with pytest.raises(ValueError, match="top_k must lie"):
        generate_stream(model, prompt, 3, temperature=1.0, top_k=99)
