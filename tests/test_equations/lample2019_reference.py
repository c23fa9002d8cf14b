"""The product-key memory read done the slow way (Lample et al. 2019, Sec. 3.1): every one of the |C| |C'|
keys (c_a, c'_b) built as a concatenated vector, scored, ranked, in float64 Python loops."""

import math

import torch


def random_memory(n_keys: int = 6, key_dim: int = 8, value_dim: int = 5, items: int = 7, seed: int = 0):
    """Queries (items, key_dim), sub-keys C, C' (n_keys, key_dim / 2) and a value table (n_keys^2, value_dim)."""
    g = torch.Generator().manual_seed(seed)
    draw = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    return draw(items, key_dim), draw(n_keys, key_dim // 2), draw(n_keys, key_dim // 2), draw(n_keys**2, value_dim)


def brute_force_read(q: torch.Tensor, C: torch.Tensor, C2: torch.Tensor, values: torch.Tensor, k: int):
    """Per query: the k best keys of all |C| |C'| (indices, scores, best first), their softmax weights and m(x)."""
    keys = [(a * len(C2) + b, torch.cat([C[a], C2[b]]).tolist()) for a in range(len(C)) for b in range(len(C2))]
    results = []
    for query in q.tolist():
        scored = sorted(((sum(x * y for x, y in zip(query, key)), index) for index, key in keys), reverse=True)[:k]
        scores, indices = [s for s, _ in scored], [i for _, i in scored]
        exps = [math.exp(s - scores[0]) for s in scores]
        weights = [e / sum(exps) for e in exps]
        read = [sum(w * values[i, j].item() for w, i in zip(weights, indices)) for j in range(values.shape[1])]
        results.append((indices, scores, weights, read))
    return results
