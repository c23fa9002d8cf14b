"""Retrieval from an episodic memory stream: the Generative Agents score (Park et al. 2023, arXiv:2304.03442).

Generative Agents: Interactive Simulacra of Human Behavior, Sec. 4.1. Every memory object has a
last-retrieval time, an importance (a poignancy score assigned when it was stored) and an
embedding; a query has an embedding. Recency decays exponentially with the hours since the memory
was last retrieved (decay factor 0.995 per hour in the paper), relevance is the cosine similarity of
the two embeddings, and each of the three is min-max normalised to [0, 1] over the candidate
memories before their weighted sum (all weights 1 in the paper). The official code's recency
exponent is a memory's rank by last access, not hours; we follow the paper's text.
`manager.MemoryManager` ranks the episodic memories of a recall with it.
"""

import torch

from src.layers._checks import check_shapes

# Sec. 4.1 does not say what min-max scaling gives when every candidate has the same value; the
# official code (normalize_dict_floats) sets each to half the target range, so we do too.
_CONSTANT_NORMALISED = 0.5


def _min_max(x: torch.Tensor) -> torch.Tensor:
    """Scale (n,) values to [0, 1]: (x - min) / (max - min); all `_CONSTANT_NORMALISED` when max = min."""
    low, high = x.min(), x.max()
    if high == low:
        return torch.full_like(x, _CONSTANT_NORMALISED)
    return (x - low) / (high - low)


def retrieval_score(
    query: torch.Tensor,
    keys: torch.Tensor,
    hours_since_retrieval: torch.Tensor,
    importance: torch.Tensor,
    decay: float = 0.995,
    alpha_recency: float = 1.0,
    alpha_importance: float = 1.0,
    alpha_relevance: float = 1.0,
) -> torch.Tensor:
    r"""The retrieval score of every candidate memory for one query.

    Paper: Generative Agents (Park et al. 2023, arXiv:2304.03442), Sec. 4.1, retrieval score

    .. math::
        \mathrm{score}_i = \alpha_{\mathrm{recency}}\,\widehat{\gamma^{h_i}}
            + \alpha_{\mathrm{importance}}\,\widehat{m_i}
            + \alpha_{\mathrm{relevance}}\,\widehat{\cos(q, k_i)},
        \qquad \hat{x}_i = \frac{x_i - \min_j x_j}{\max_j x_j - \min_j x_j}

    γ is the per-hour decay factor (0.995 in the paper), h_i the hours since memory i was last
    retrieved, m_i its importance, q the query embedding and k_i the memory's embedding; the hat is
    min-max normalisation over the n candidates (0.5 for every candidate when all values are equal,
    as in the official code). The score lies in [0, α_recency + α_importance + α_relevance].

    Args:
        query: (d,) query embedding.
        keys: (n, d) memory embeddings, n >= 1 (need not be normalised).
        hours_since_retrieval: (n,) hours since each memory was last retrieved, >= 0.
        importance: (n,) importance of each memory (any scale: min-max normalisation removes it).
        decay: γ in (0, 1], the recency decay per hour.
        alpha_recency, alpha_importance, alpha_relevance: the non-negative weights α.

    Returns:
        (n,) scores, same dtype as the inputs.
    """
    check_shapes(
        query=(query, "d"), keys=(keys, "n d"), hours_since_retrieval=(hours_since_retrieval, "n"),
        importance=(importance, "n"),
    )  # fmt: skip
    if keys.shape[0] == 0:
        raise ValueError("keys must hold at least one memory (n >= 1), got n = 0")
    if not 0 < decay <= 1:
        raise ValueError(f"decay must lie in (0, 1], got {decay}")
    for name, alpha in (
        ("alpha_recency", alpha_recency),
        ("alpha_importance", alpha_importance),
        ("alpha_relevance", alpha_relevance),
    ):
        if not alpha >= 0:
            raise ValueError(f"{name} must be >= 0, got {alpha}")
    if (hours_since_retrieval < 0).any():
        raise ValueError("hours_since_retrieval must be >= 0 (a memory cannot be retrieved in the future)")
    recency = decay**hours_since_retrieval
    norms = keys.norm(dim=-1) * query.norm()
    relevance = (keys @ query) / norms.clamp_min(torch.finfo(keys.dtype).tiny)
    return (
        alpha_recency * _min_max(recency)
        + alpha_importance * _min_max(importance)
        + alpha_relevance * _min_max(relevance)
    )
