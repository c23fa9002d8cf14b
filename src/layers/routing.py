"""Mixture-of-experts routing, used to pick the "chapters" of a memory bank a token reads.

Papers: Outrageously Large Neural Networks: The Sparsely-Gated Mixture-of-Experts Layer (Shazeer et
al. 2017, arXiv:1701.06538); Switch Transformers (Fedus, Zoph, Shazeer 2021, arXiv:2101.03961);
ST-MoE (Zoph et al. 2022, arXiv:2202.08906).

Glossary (code -> paper):
    logits     router logits h(x) = x W_r, (T, N) for T routed items and N chapters (experts)
    probs      p_i(x), the softmax of the logits
    chosen     the indices of the k chapters each item is sent to, (T, k)
    gates      the chosen probabilities renormalised over the k, (T, k)
"""

import torch

from src.layers._checks import check_shapes


def router_probs(logits: torch.Tensor) -> torch.Tensor:
    r"""Router probabilities: a softmax over the chapters.

    Paper: Switch Transformers (Fedus et al. 2021, arXiv:2101.03961), Sec. 2.1, Eq. (1)

    .. math::
        p_i(x) = \frac{e^{h(x)_i}}{\sum_{j=1}^{N} e^{h(x)_j}}

    Args:
        logits: (..., N) router logits h(x).

    Returns:
        (..., N) probabilities.
    """
    check_shapes(logits=(logits, "... N"))
    return torch.softmax(logits, dim=-1)


def top_k_chapters(probs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Keep the k most probable chapters and renormalise their probabilities into gates.

    Paper: Sparsely-Gated Mixture-of-Experts (Shazeer et al. 2017, arXiv:1701.06538), Sec. 2.1, Eq. (3) and (5)

    .. math::
        \mathcal T = \mathrm{TopK}(p(x), k), \qquad
        G(x)_i = \frac{p_i(x)}{\sum_{j \in \mathcal T} p_j(x)} \text{ for } i \in \mathcal T

    (Shazeer et al. apply the softmax after KeepTopK on the logits; renormalising the softmax over
    the kept entries is the same gate.) The logits here are H(x) = x W_g without the tunable
    Gaussian noise of Shazeer et al.'s Eq. (4) (StandardNormal() · Softplus(x W_noise)): noisy
    top-k gating is not implemented. Among equal probabilities `torch.topk` picks in an unspecified
    order, so tied chapters may be chosen either way.

    Args:
        probs: (..., N) router probabilities.
        k: chapters per item, 1 <= k <= N.

    Returns:
        chosen (..., k) int64 indices in decreasing probability, and gates (..., k) summing to 1.
    """
    sizes = check_shapes(probs=(probs, "... N"))
    if not 1 <= k <= sizes["N"]:
        raise ValueError(f"k must lie in [1, {sizes['N']}] (the number of chapters), got {k}")
    top, chosen = probs.topk(k, dim=-1)
    return chosen, top / top.sum(dim=-1, keepdim=True)


def load_balancing_loss(probs: torch.Tensor, chosen: torch.Tensor, num_chapters: int, alpha: float) -> torch.Tensor:
    r"""Auxiliary load-balancing loss: smallest when items and probability spread evenly.

    Paper: Switch Transformers (Fedus et al. 2021, arXiv:2101.03961), Sec. 2.2, Eq. (4)-(6)

    .. math::
        \mathrm{loss} = \alpha \cdot N \cdot \sum_{i=1}^{N} f_i \cdot P_i, \qquad
        f_i = \frac{1}{T k} \sum_{x} \sum_{s=1}^{k} \mathbb 1\{\mathrm{chosen}(x)_s = i\}, \qquad
        P_i = \frac{1}{T} \sum_{x} p_i(x)

    With k = 1 this is the Switch formula; for k > 1, f_i counts the k assignments of each item, so
    f sums to 1 as before. Uniform routing gives α; everything in one chapter gives α N.

    Args:
        probs: (T, N) router probabilities of the T routed items (tokens or sequences).
        chosen: (T, k) the chosen chapter indices.
        num_chapters: N.
        alpha: the coefficient α.

    Returns:
        scalar loss (differentiable through P only, as in the paper).
    """
    check_shapes(probs=(probs, "T N"))
    if chosen.dim() != 2 or chosen.shape[0] != probs.shape[0] or chosen.dtype != torch.int64:
        found = f"{chosen.dtype} {tuple(chosen.shape)}"
        raise ValueError(f"chosen must be an int64 (T, k) tensor with T = {probs.shape[0]}, got {found}")
    if probs.shape[1] != num_chapters:
        raise ValueError(f"probs has {probs.shape[1]} chapters, num_chapters is {num_chapters}")
    counts = probs.new_zeros(num_chapters).index_add_(0, chosen.flatten(), probs.new_ones(chosen.numel()))
    f = counts / chosen.numel()  # f_i: the fraction of routed items sent to chapter i
    P = probs.mean(dim=0)
    return alpha * num_chapters * (f * P).sum()


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    r"""Router z-loss: penalises large router logits (numerical stability of the softmax).

    Paper: ST-MoE (Zoph et al. 2022, arXiv:2202.08906), Sec. 3.3, Eq. (5)

    .. math::
        L_z(x) = \frac{1}{B} \sum_{i=1}^{B} \Big(\log \sum_{j=1}^{N} e^{x_j^{(i)}}\Big)^2

    Args:
        logits: (B, N) router logits of B items.

    Returns:
        scalar loss.
    """
    check_shapes(logits=(logits, "B N"))
    return torch.logsumexp(logits, dim=-1).pow(2).mean()
