"""Product-key memory: a table of |C|^2 values, each token reading only the k whose keys score best.

Papers: Large Memory Layers with Product Keys (Lample et al. 2019, arXiv:1907.05242), Sec. 3;
Memory Layers at Scale (Berges et al. 2024, arXiv:2412.09764), which trains such memories at scale
(and the values at a higher learning rate than the rest of the model, Sec. 3).

The keys are never stored: the key set is the product K = {(c, c') | c in C, c' in C'} of two
sets of |C| sub-keys of width d_q / 2, key (i, j) scoring q_1^T c_i + q_2^T c'_j for the query's
halves q = [q_1; q_2]. The k best keys of all |C|^2 lie among the k x k pairs of each half's k
best sub-keys (Sec. 3.2), so a read costs O((|C| + k^2) d_q) and touches k rows of the value table.

Glossary (code -> paper):
    q            the query q(x), (..., d_q); q_1, q_2 its two halves
    sub_keys_1   C, (|C|, d_q / 2); sub_keys_2 C', (|C'|, d_q / 2)
    k            the number of keys kept, k in T_k
    scores       q(x)^T k_i of kept keys; indices i = a |C'| + b for the pair (c_a, c'_b)
    values       the value table V, (|C| |C'|, d_v)
"""

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from src.layers._checks import check_shapes
from src.layers.mixer import Mixer, register_mixer
from src.schema import PositiveFloat, PositiveInt


def sub_key_top_k(
    q: torch.Tensor, sub_keys_1: torch.Tensor, sub_keys_2: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Split the query in halves and keep each half's k best sub-keys.

    Paper: Large Memory Layers with Product Keys (Lample et al. 2019, arXiv:1907.05242), Sec. 3.2, Eq. (4)

    .. math::
        q(x) = [q_1(x); q_2(x)], \qquad
        \mathcal I_{\mathcal C} = \mathcal T_k\big((q_1(x)^\top c_i)_{i \in \{1..|\mathcal C|\}}\big), \qquad
        \mathcal I_{\mathcal C'} = \mathcal T_k\big((q_2(x)^\top c'_j)_{j \in \{1..|\mathcal C'|\}}\big)

    Args:
        q: (..., d_q) queries, d_q even.
        sub_keys_1: C, (|C|, d_q / 2), or (..., |C|, d_q / 2) broadcasting with q's leading dims
            (one set per head).
        sub_keys_2: C', (|C'|, d_q / 2) likewise.
        k: sub-keys kept per half, 1 <= k <= min(|C|, |C'|).

    Returns:
        scores_1 (..., k), indices_1 (..., k) int64, scores_2 (..., k), indices_2 (..., k), each
        half's kept scores q_1^T c_i in decreasing order and the sub-keys' indices.
    """
    sizes = check_shapes(q=(q, "... d"))  # the sub-keys' leading dims broadcast with q's, so are checked apart
    sizes |= check_shapes(sub_keys_1=(sub_keys_1, "... n h"))
    sizes |= check_shapes(sub_keys_2=(sub_keys_2, "... m h"))
    if sizes["d"] != 2 * sizes["h"]:
        raise ValueError(f"sub-keys must have half the query's width {sizes['d']}, got {sizes['h']}")
    if not 1 <= k <= min(sizes["n"], sizes["m"]):
        raise ValueError(f"k must lie in [1, {min(sizes['n'], sizes['m'])}] (the sub-keys per half), got {k}")
    q_1, q_2 = q.chunk(2, dim=-1)
    scores_1 = (q_1.unsqueeze(-2) @ sub_keys_1.transpose(-1, -2)).squeeze(-2)  # (..., |C|)
    scores_2 = (q_2.unsqueeze(-2) @ sub_keys_2.transpose(-1, -2)).squeeze(-2)
    top_1, top_2 = scores_1.topk(k, dim=-1), scores_2.topk(k, dim=-1)
    return top_1.values, top_1.indices, top_2.values, top_2.indices


def product_key_candidates(
    scores_1: torch.Tensor, indices_1: torch.Tensor, scores_2: torch.Tensor, indices_2: torch.Tensor, n_sub_keys_2: int
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The k x k candidate product keys of the two halves' kept sub-keys, with their scores.

    Paper: Large Memory Layers with Product Keys (Lample et al. 2019, arXiv:1907.05242), Sec. 3.2, Eq. (4) set

    .. math::
        \mathcal K' = \{(c_a, c'_b) \mid a \in \mathcal I_{\mathcal C}, b \in \mathcal I_{\mathcal C'}\}, \qquad
        q(x)^\top (c_a, c'_b) = q_1(x)^\top c_a + q_2(x)^\top c'_b

    The k keys of K scoring best are in this set (Sec. 3.2), so Eq. (1) over it gives K's top k.
    Key (c_a, c'_b) is row a |C'| + b of the value table.

    Args:
        scores_1, indices_1: (..., k) the first half's kept scores and sub-key indices (`sub_key_top_k`).
        scores_2, indices_2: (..., k) the second half's.
        n_sub_keys_2: |C'|, the second set's size.

    Returns:
        scores (..., k^2) and indices (..., k^2) int64 of the candidates, a-major.
    """
    check_shapes(scores_1=(scores_1, "... k"), scores_2=(scores_2, "... k"))
    _check_indices(indices_1=(indices_1, scores_1), indices_2=(indices_2, scores_2))
    scores = scores_1.unsqueeze(-1) + scores_2.unsqueeze(-2)  # (..., k, k)
    indices = indices_1.unsqueeze(-1) * n_sub_keys_2 + indices_2.unsqueeze(-2)
    return scores.flatten(-2), indices.flatten(-2)


def top_k_keys(scores: torch.Tensor, indices: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Keep the k best-scoring keys: the top-k operator T_k.

    Paper: Large Memory Layers with Product Keys (Lample et al. 2019, arXiv:1907.05242), Sec. 3.1, Eq. (1)

    .. math::
        \mathcal I = \mathcal T_k\big(q(x)^\top k_i\big)

    Here over the k x k candidates of `product_key_candidates`. Among equal scores `torch.topk`
    picks in an unspecified order.

    Args:
        scores: (..., n) candidate scores q(x)^T k_i.
        indices: (..., n) their keys' indices (rows of the value table).
        k: keys kept, 1 <= k <= n.

    Returns:
        scores (..., k) in decreasing order and indices (..., k) int64 of the kept keys.
    """
    sizes = check_shapes(scores=(scores, "... n"))
    _check_indices(indices=(indices, scores))
    if not 1 <= k <= sizes["n"]:
        raise ValueError(f"k must lie in [1, {sizes['n']}] (the candidates), got {k}")
    top = scores.topk(k, dim=-1)
    return top.values, indices.gather(-1, top.indices)


def key_weights(scores: torch.Tensor) -> torch.Tensor:
    r"""The kept keys' weights: a softmax over their scores only.

    Paper: Large Memory Layers with Product Keys (Lample et al. 2019, arXiv:1907.05242), Sec. 3.1, Eq. (2)

    .. math::
        w = \mathrm{Softmax}\big((q(x)^\top k_i)_{i \in \mathcal I}\big)

    Args:
        scores: (..., k) the kept keys' scores.

    Returns:
        (..., k) weights summing to 1.
    """
    check_shapes(scores=(scores, "... k"))
    return torch.softmax(scores, dim=-1)


def weighted_value_sum(weights: torch.Tensor, indices: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    r"""The memory's output: the kept keys' values summed with their weights, read sparsely.

    Paper: Large Memory Layers with Product Keys (Lample et al. 2019, arXiv:1907.05242), Sec. 3.1, Eq. (3)

    .. math::
        m(x) = \sum_{i \in \mathcal I} w_i v_i

    The rows are read by `F.embedding_bag` (a gather and a weighted sum in one, as the paper's
    code reads its table), so the table's gradient is zero outside the k rows each item reads.
    With several heads (Sec. 3.3) the heads' weights and indices are concatenated along the last
    axis: the heads' reads are summed.

    Args:
        weights: (..., k) w.
        indices: (..., k) int64 rows of the table.
        values: V, (N, d_v).

    Returns:
        (..., d_v).
    """
    check_shapes(weights=(weights, "... k"), values=(values, "N v"))
    _check_indices(indices=(indices, weights))
    read = F.embedding_bag(
        indices.reshape(-1, indices.shape[-1]),
        values,
        per_sample_weights=weights.reshape(-1, weights.shape[-1]).to(values.dtype),
        mode="sum",
    )
    return read.reshape(*weights.shape[:-1], values.shape[-1])


def _check_indices(**arguments: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Each `name=(indices, scores)`: int64 indices of the scores' shape."""
    for name, (indices, scores) in arguments.items():
        if not isinstance(indices, torch.Tensor) or indices.dtype != torch.int64 or indices.shape != scores.shape:
            found = f"{indices.dtype} {tuple(indices.shape)}" if isinstance(indices, torch.Tensor) else type(indices)
            raise ValueError(f"{name} must be an int64 tensor of shape {tuple(scores.shape)}, got {found}")


@dataclass(frozen=True)
class ProductKeyMemoryState:
    """The tokens seen: a product-key read depends on the current token alone."""

    position: int


@register_mixer("product_key_memory")
class ProductKeyMemory(Mixer):
    """A product-key memory layer (Lample et al. 2019, Sec. 3): each token reads k of n_keys^2 values.

    Per head, a linear query q(x) of width `key_dim` picks its `top_k` keys among the product of two
    sets of `n_keys` sub-keys (`sub_key_top_k`, `product_key_candidates`, `top_k_keys`), weighs them
    by a softmax (`key_weights`) and sums their values (`weighted_value_sum`); the heads' reads are
    summed (Sec. 3.3). With `value_dim` below d_model the values are that narrow and a linear map
    widens the read to d_model (so a table of thousands of slots stays small); without it the
    values are d_model wide. `value_lr_scale` multiplies the learning rate of the value table
    (`lr_scale`, read by `src.optimizer.parameter_groups`): Berges et al. train the values faster.
    `query_batchnorm` adds the batch normalisation of the paper's query network (Sec. 3.2, "Query
    network", which it finds to spread the queries over the keys and raise the share of keys used);
    in training mode a token's query then depends on the statistics of the batch's tokens (all
    positions, as the paper's layer), in eval mode on the running statistics only, so evaluation
    and stepping stay causal and batch-independent. Without it the query is linear and a token's
    read depends on that token alone in both modes.
    """

    State = ProductKeyMemoryState

    def __init__(
        self,
        d_model: int,
        n_keys: PositiveInt,
        top_k: PositiveInt = 8,
        heads: PositiveInt = 1,
        key_dim: PositiveInt = 32,
        value_dim: PositiveInt | None = None,
        value_lr_scale: PositiveFloat = 1.0,
        query_batchnorm: bool = False,
    ):
        super().__init__(d_model)
        if key_dim % 2:
            raise ValueError(f"key_dim={key_dim} must be even: the query is split into two halves")
        if top_k > n_keys:
            raise ValueError(f"top_k={top_k} must be at most n_keys={n_keys} (the sub-keys per half)")
        self.n_keys, self.top_k, self.heads, self.key_dim = n_keys, top_k, heads, key_dim
        value_dim = d_model if value_dim is None else value_dim
        self.W_q = nn.Linear(d_model, heads * key_dim, bias=False)
        self.query_norm = nn.BatchNorm1d(heads * key_dim) if query_batchnorm else None
        # sub-keys C and C' of each head, unit-norm in expectation (the paper's uniform keys have a fixed scale)
        self.sub_keys = nn.Parameter(torch.randn(heads, 2, n_keys, key_dim // 2) / (key_dim // 2) ** 0.5)
        self.values = nn.Parameter(torch.randn(n_keys * n_keys, value_dim) / value_dim**0.5)  # the paper's code's init
        self.W_o = nn.Linear(value_dim, d_model, bias=False) if value_dim != d_model else None
        if value_lr_scale != 1.0:
            self.lr_scale["values"] = value_lr_scale

    def _step(self, x: torch.Tensor, state: ProductKeyMemoryState | None) -> tuple[torch.Tensor, ProductKeyMemoryState]:
        position = (0 if state is None else state.position) + x.shape[1]
        q = self.W_q(x)
        if self.query_norm is not None:
            q = self.query_norm(q.flatten(0, 1)).view_as(q)
        q = q.unflatten(-1, (self.heads, self.key_dim))  # (b, T, h, d_q)
        halves = sub_key_top_k(q, self.sub_keys[:, 0], self.sub_keys[:, 1], self.top_k)
        scores, indices = top_k_keys(*product_key_candidates(*halves, self.n_keys), self.top_k)
        read = weighted_value_sum(key_weights(scores).flatten(-2), indices.flatten(-2), self.values)
        return (read if self.W_o is None else self.W_o(read)), ProductKeyMemoryState(position)
