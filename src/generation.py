"""Generation: greedy, temperature, top-k and nucleus sampling, stepping the model's state.

`generate` feeds the prompt once through `PaperModel.step` and then one token at a time with the
returned state (KV cache, SSM state, memories), so the prefix is never recomputed. Each sampling
rule is one function on a (batch, vocab) logits tensor. Every argument is checked before the
first token, whatever the temperature.
"""

import itertools
import math

import torch

from src.model import PaperModel


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


def decode_bytes(ids: list[int]) -> str:
    """Byte-level token ids as UTF-8 text; an id >= 256 is no byte and shows as `<id>`.

    (A text model whose vocab_size exceeds 256 has such ids: they never occur in its training data
    but can still be sampled.)
    """
    pieces = []
    for is_byte, group in itertools.groupby(ids, key=lambda i: i < 256):
        run = list(group)
        pieces.append(bytes(run).decode("utf-8", errors="replace") if is_byte else "".join(f"<{i}>" for i in run))
    return "".join(pieces)


@torch.no_grad()
def generate(
    model: PaperModel,
    prompt: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Continue (batch, T >= 1) prompt ids by `max_new_tokens`; returns (batch, T + max_new_tokens)."""
    check_sampling(max_new_tokens, temperature, top_k, top_p, seed, model.config["vocab_size"])
    if prompt.dim() != 2 or prompt.shape[1] == 0:
        raise ValueError(f"prompt must have shape (batch, T) with T >= 1, got {tuple(prompt.shape)}")
    generator = torch.Generator(device=prompt.device).manual_seed(seed)
    was_training = model.training
    model.eval()
    tokens = [prompt]
    logits, state = model.step(prompt, None)
    for _ in range(max_new_tokens):
        next_token = sample_next(logits[:, -1], temperature, top_k, top_p, generator)[:, None]
        tokens.append(next_token)
        logits, state = model.step(next_token, state)
    model.train(was_training)
    return torch.cat(tokens, dim=1)
