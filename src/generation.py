"""Generation: greedy, temperature, top-k and nucleus sampling, stepping the model's state.

`generate` feeds the prompt once through `LanguageModel.step` and then one token at a time with the
returned state (KV cache, SSM state, memories), so the prefix is never recomputed. Each sampling
rule is one function on a (batch, vocab) logits tensor. Every argument is checked before the
first token, whatever the temperature. A prompt longer than the model can take (`prompt_limit`:
a limit of the caller's, and an adapted base's positions) is refused by `fit_prompt`, or cut to its
last tokens when the caller asks for truncation.
"""

import dataclasses
import math
from collections.abc import Iterator

import torch

from src.generation_graphs import Step, decoding_step
from src.generation_scoring import length_penalty
from src.language_model import LanguageModel, ModelState


def greedy(logits: torch.Tensor) -> torch.Tensor:
    """The most probable token of each row: (batch, vocab) -> (batch,)."""
    return logits.argmax(dim=-1)


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Divide the logits by T > 0: T < 1 sharpens the distribution, T > 1 flattens it."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 here (0 means greedy), got {temperature}")
    return logits / temperature


def _check_top_k(k: int, vocab_size: int) -> None:
    if not 1 <= k <= vocab_size:
        raise ValueError(f"top_k must lie in [1, {vocab_size}] (the vocabulary), got {k}")


def _check_top_p(p: float) -> None:
    if not 0 < p <= 1:
        raise ValueError(f"top_p must lie in (0, 1], got {p}")


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits of each row, set the others to -inf (Fan et al. 2018)."""
    _check_top_k(k, logits.shape[-1])
    threshold = logits.topk(k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < threshold, float("-inf"))


def nucleus_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    r"""Nucleus (top-p) filtering (Holtzman et al. 2019, arXiv:1904.09751, Sec. 3.1, Eq. 2-3).

    Keep the smallest set V^(p) of the most probable tokens with
    \sum_{x \in V^{(p)}} P(x) >= p and set the other logits to -inf (the kept probabilities are
    renormalised by the softmax that follows).
    """
    _check_top_p(p)
    probs, order = torch.softmax(logits, dim=-1).sort(dim=-1, descending=True)
    before = probs.cumsum(dim=-1) - probs  # mass of the more probable tokens
    drop_sorted = before >= p  # a token is kept while the mass before it is still below p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token per row: greedy when temperature is 0, else sampled after temperature, top-k, top-p."""
    if temperature == 0:
        return greedy(logits)
    logits = apply_temperature(logits, temperature)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = nucleus_filter(logits, top_p)
    return torch.multinomial(torch.softmax(logits.float(), dim=-1), 1, generator=generator)[:, 0]


def check_sampling(
    max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None, seed: int, vocab_size: int
) -> None:
    """Raise ValueError naming the first invalid generation argument (also those greedy decoding ignores)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0 (0 means greedy), got {temperature}")
    if top_k is not None:
        _check_top_k(top_k, vocab_size)
    if top_p is not None:
        _check_top_p(top_p)
    if not 0 <= seed < 2**63:
        raise ValueError(f"seed must lie in [0, 2**63), got {seed}")


class PromptTooLong(ValueError):
    """A prompt longer than the model can take; the message names the limit and where it comes from."""


def prompt_limit(model: LanguageModel, max_new_tokens: int, limit: int, limit_name: str) -> tuple[int, str]:
    """The most prompt tokens: `limit` (named `limit_name`), less where the model's positions must also hold
    the `max_new_tokens` to come. Returns the bound and what sets it (PromptTooLong when nothing fits)."""
    positions = model.max_positions
    if positions is None or positions - max_new_tokens >= limit:
        return limit, limit_name
    if positions - max_new_tokens < 1:
        raise PromptTooLong(
            f"{max_new_tokens} new tokens leave no room for a prompt in the model's {positions} positions"
        )
    return positions - max_new_tokens, f"the model's {positions} positions less {max_new_tokens} new tokens"


def fit_prompt(ids: list[int], bound: int, reason: str, truncate: bool, truncation: str) -> list[int]:
    """`ids` when at most `bound` tokens; else their last `bound` when `truncate`, or PromptTooLong naming
    the bound, its `reason`, and `truncation` (how the caller asks to truncate)."""
    if len(ids) <= bound:
        return ids
    if truncate:
        return ids[-bound:]
    raise PromptTooLong(
        f"the prompt is {len(ids):,} tokens, more than the limit of {bound:,} ({reason}): "
        f"shorten it, or give {truncation} to keep its last {bound:,} tokens"
    )


@torch.no_grad()
def generate(
    model: LanguageModel,
    prompt: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    cuda_graphs: bool = True,
) -> torch.Tensor:
    """Continue (batch, T >= 1) prompt ids by `max_new_tokens`; returns (batch, T + max_new_tokens).

    With `cuda_graphs`, a prompt on a CUDA device and a model whose state keeps its structure from token
    to token (`src.generation_graphs`: Mamba, S4D), the tokens after the prompt are stepped by replaying
    one captured CUDA graph, with the same result as stepping; elsewhere `model.step` runs each token.
    """
    check_sampling(max_new_tokens, temperature, top_k, top_p, seed, model.vocab_size)
    if prompt.dim() != 2 or prompt.shape[1] == 0:
        raise ValueError(f"prompt must have shape (batch, T) with T >= 1, got {tuple(prompt.shape)}")
    generator = torch.Generator(device=prompt.device).manual_seed(seed)
    was_training = model.training
    model.eval()
    tokens = [prompt]
    logits, state = model.step(prompt, None)
    step = None
    for _ in range(max_new_tokens):
        next_token = sample_next(logits[:, -1], temperature, top_k, top_p, generator)[:, None]
        tokens.append(next_token)
        step = step or decoding_step(model, state, next_token, cuda_graphs)
        logits, state = step(next_token, state)
    model.train(was_training)
    return torch.cat(tokens, dim=1)


def generate_stream(
    model: LanguageModel,
    prompt: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    end_id: int | None = None,
    state: ModelState | None = None,
    cuda_graphs: bool = True,
) -> Iterator[int]:
    """The tokens `generate` appends to a (1, T) prompt, yielded one at a time as they are chosen.

    Same rules, same seed, same state stepping (CUDA graphs as `generate`'s), so the tokens equal
    `generate`'s; with `end_id` the stream stops after yielding that token; with `state` the prompt
    continues the sequence that state has read (a chat session's carried state). Arguments are checked
    here, before the first token.
    """
    check_sampling(max_new_tokens, temperature, top_k, top_p, seed, model.vocab_size)
    if prompt.dim() != 2 or prompt.shape[0] != 1 or prompt.shape[1] == 0:
        raise ValueError(f"prompt must have shape (1, T) with T >= 1, got {tuple(prompt.shape)}")
    _check_end_id(end_id, model.vocab_size)
    return _stream(model, prompt, max_new_tokens, temperature, top_k, top_p, seed, end_id, state, cuda_graphs)


@torch.no_grad()
def _stream(
    model: LanguageModel,
    prompt: torch.Tensor,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    seed: int,
    end_id: int | None,
    state: ModelState | None,
    cuda_graphs: bool,
) -> Iterator[int]:
    generator = torch.Generator(device=prompt.device).manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        logits, state = model.step(prompt, state)
        step: Step | None = None
        for _ in range(max_new_tokens):
            next_token = sample_next(logits[:, -1], temperature, top_k, top_p, generator)[:, None]
            token = int(next_token.item())  # a token id: sample_next gives int64 indices
            yield token
            if token == end_id:
                return
            step = step or decoding_step(model, state, next_token, cuda_graphs)
            logits, state = step(next_token, state)
    finally:
        model.train(was_training)


def _check_end_id(end_id: int | None, vocab_size: int) -> None:
    if end_id is not None and not 0 <= end_id < vocab_size:
        raise ValueError(f"end_id must lie in [0, {vocab_size}) (the vocabulary), got {end_id}")


@dataclasses.dataclass(frozen=True)
class BeamHypothesis:
    """A finished hypothesis: its new tokens, log P(Y | prompt) and the normalised score s = log P / lp(Y)."""

    tokens: list[int]
    log_prob: float
    score: float


@torch.no_grad()
def beam_search(
    model: LanguageModel,
    prompt: torch.Tensor,
    max_new_tokens: int,
    beam_width: int,
    alpha: float = 0.0,
    end_id: int | None = None,
    state: ModelState | None = None,
) -> BeamHypothesis:
    """The continuation of a (1, T) prompt with the best length-normalised log-probability found by beam search.

    GNMT's decoder (Wu et al. 2016, arXiv:1609.08144, Sec. 7) without the coverage penalty: at each
    step every live hypothesis is extended by every token and the `beam_width` most probable
    extensions are kept (all of one length, so log P ranks them as s does); an extension ending in
    `end_id` is finished and leaves the beam. After `max_new_tokens` steps the live hypotheses finish
    too, and the finished one with the highest s(Y) = log P(Y | prompt) / lp(Y) is returned
    (`src.generation_scoring`, |Y| counting the end token). Width 1 is greedy decoding; a width
    of at least the number of live hypotheses at every step is exhaustive search. The beams share
    one batch of `LanguageModel.step`, their states reordered as beams are kept. With `state`, the
    prompt continues the sequence that state has read.
    """
    vocab_size = model.vocab_size
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if beam_width < 1:
        raise ValueError(f"beam_width must be >= 1, got {beam_width}")
    if not (math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha}")
    if prompt.dim() != 2 or prompt.shape[0] != 1 or prompt.shape[1] == 0:
        raise ValueError(f"prompt must have shape (1, T) with T >= 1, got {tuple(prompt.shape)}")
    _check_end_id(end_id, vocab_size)
    was_training = model.training
    model.eval()
    logits, state = model.step(prompt, state)
    live_tokens = torch.zeros(1, 0, dtype=torch.long, device=prompt.device)
    live_log_probs = torch.zeros(1, dtype=torch.float64, device=prompt.device)
    finished: list[BeamHypothesis] = []

    def finish(tokens: torch.Tensor, log_probs: torch.Tensor) -> None:
        lengths = torch.full_like(log_probs, float(tokens.shape[1]))
        scores = log_probs / length_penalty(lengths, alpha)
        finished.extend(
            BeamHypothesis(row.tolist(), log_p.item(), score.item())
            for row, log_p, score in zip(tokens, log_probs, scores)
        )

    for step in range(max_new_tokens):
        candidates = live_log_probs[:, None] + torch.log_softmax(logits[:, -1].double(), dim=-1)
        best = candidates.flatten().topk(min(beam_width, candidates.numel()))
        beam, token = best.indices // vocab_size, best.indices % vocab_size
        tokens = torch.cat([live_tokens[beam], token[:, None]], dim=1)
        ended = token == end_id if end_id is not None else torch.zeros_like(token, dtype=torch.bool)
        finish(tokens[ended], best.values[ended])
        keep = ~ended
        if not keep.any():
            break
        live_tokens, live_log_probs = tokens[keep], best.values[keep]
        if step + 1 == max_new_tokens:
            finish(live_tokens, live_log_probs)
            break
        logits, state = model.step(live_tokens[:, -1:], state.select(beam[keep]))
    model.train(was_training)
    return max(finished, key=lambda hypothesis: hypothesis.score)
