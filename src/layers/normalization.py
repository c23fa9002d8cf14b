"""RMSNorm (Zhang & Sennrich 2019, arXiv:1910.07467).

Glossary: `a` is the summed input vector of a layer (the paper's a, size n = d_model), `g` the
learned gain.
"""

import torch
from torch import nn

from src.layers._checks import check_positive, check_shapes


def rms_norm(a: torch.Tensor, g: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    r"""Root-mean-square layer normalisation.

    Paper: RMSNorm (Zhang & Sennrich 2019, arXiv:1910.07467), Sec. 3, Eq. (4)

    .. math::
        \bar a_i = \frac{a_i}{\mathrm{RMS}(a)} g_i, \qquad
        \mathrm{RMS}(a) = \sqrt{\tfrac{1}{n} \sum_{i=1}^{n} a_i^2 + \epsilon}

    The paper has no epsilon; we add it under the square root (as Mamba's and Llama's code do)
    so an all-zero input maps to zero instead of NaN.

    Args:
        a: (..., n) float tensor, the vectors to normalise over the last dimension.
        g: (n,) gain, same dtype as `a`.
        eps: positive constant under the square root.

    Returns:
        (..., n) tensor, same dtype as `a`.
    """
    check_shapes(a=(a, "... n"), g=(g, "n"))
    check_positive("eps", eps)
    rms = torch.sqrt(a.pow(2).mean(dim=-1, keepdim=True) + eps)
    return a / rms * g


class RMSNorm(nn.Module):
    """`rms_norm` with a learned gain initialised to ones."""

    def __init__(self, d_model: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return rms_norm(a, self.weight, self.eps)
