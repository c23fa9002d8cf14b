"""Position-wise feed-forward layer with the SwiGLU gate (Shazeer 2020, arXiv:2002.05202).

Glossary: W, V (d_model x d_ff) are the gate and value projections, W2 (d_ff x d_model) the output
projection; Swish_1(x) = x * sigmoid(x) = SiLU(x).
"""

import torch
import torch.nn.functional as F
from torch import nn

from src.layers._checks import check_shapes
from src.schema import PositiveInt


def swiglu(x: torch.Tensor, W: torch.Tensor, V: torch.Tensor, W2: torch.Tensor) -> torch.Tensor:
    r"""Feed-forward network with the Swish-gated linear unit, no biases.

    Paper: GLU Variants Improve Transformer (Shazeer 2020, arXiv:2002.05202), Sec. 2, Eq. (6)

    .. math::
        \mathrm{FFN}_{\mathrm{SwiGLU}}(x, W, V, W_2) = (\mathrm{Swish}_1(xW) \otimes xV) W_2

    Args:
        x: (..., d_model) input.
        W: (d_model, d_ff) gate projection.
        V: (d_model, d_ff) value projection.
        W2: (d_ff, d_model) output projection.

    Returns:
        (..., d_model) tensor.
    """
    check_shapes(x=(x, "... d_model"), W=(W, "d_model d_ff"), V=(V, "d_model d_ff"), W2=(W2, "d_ff d_model"))
    return (F.silu(x @ W) * (x @ V)) @ W2


class SwiGLU(nn.Module):
    """The MLP of a block: `swiglu` with learned W, V, W2 (stored as nn.Linear, weight = W^T)."""

    def __init__(self, d_model: int, d_hidden: PositiveInt):
        super().__init__()
        self.W = nn.Linear(d_model, d_hidden, bias=False)
        self.V = nn.Linear(d_model, d_hidden, bias=False)
        self.W2 = nn.Linear(d_hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return swiglu(x, self.W.weight.T, self.V.weight.T, self.W2.weight.T)
