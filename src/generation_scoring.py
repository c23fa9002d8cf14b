"""GNMT's length normalisation of beam-search scores (Wu et al. 2016, arXiv:1609.08144, Sec. 7).

Google's Neural Machine Translation System: Bridging the Gap between Human and Machine Translation.

Glossary: a hypothesis Y has |Y| tokens and log-probability log P(Y|X); beam search ranks finished
hypotheses of different lengths by s(Y, X) = log P(Y|X) / lp(Y), so that longer hypotheses, whose
log-probability is a sum of more negative terms, are not always beaten by shorter ones. α = 0 is
plain log-probability. GNMT adds a coverage penalty cp(X; Y) over the attention to the source
sentence; a decoder-only language model has no source sentence, so it is left out here.
`src.generation.beam_search` ranks its finished hypotheses with it.
"""

import torch

from src.layers._checks import check_shapes


def length_penalty(lengths: torch.Tensor, alpha: float) -> torch.Tensor:
    r"""The length penalty lp(Y) that divides a hypothesis' log-probability.

    Paper: Google's Neural Machine Translation System (Wu et al. 2016, arXiv:1609.08144), Sec. 7, Eq. (14)

    .. math::
        lp(Y) = \frac{(5 + |Y|)^\alpha}{(5 + 1)^\alpha},
        \qquad s(Y, X) = \frac{\log P(Y \mid X)}{lp(Y)}

    lp(Y) = 1 for a one-token hypothesis and for α = 0, and grows with |Y| for α > 0.

    Args:
        lengths: (...) hypothesis lengths |Y| >= 1 as a floating-point tensor.
        alpha: α >= 0, the strength of the length normalisation.

    Returns:
        (...) lp(Y), same shape and dtype as `lengths`.
    """
    check_shapes(lengths=(lengths, "..."))
    if not alpha >= 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    if (lengths < 1).any():
        raise ValueError("lengths must be >= 1 (a hypothesis has at least one token)")
    return ((5 + lengths) / (5 + 1)) ** alpha
