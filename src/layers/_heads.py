"""The Q, K, V and output projections of multi-head attention, shared by every mixer that has heads.

Vaswani et al. 2017 (arXiv:1706.03762), Sec. 3.2.2: head_i uses Q W_i^Q, K W_i^K, V W_i^V; the
h heads are one d_model x d_model projection each, split into h slices of d_model / h.
"""

import torch
from torch import nn

from src.layers.mixer import Mixer


class HeadProjections(Mixer):
    """A mixer with W_q, W_k, W_v (bias optional), W_o (no bias) and the split of a projection into heads."""

    def __init__(self, d_model: int, n_heads: int, bias: bool = False):
        super().__init__(d_model)
        if d_model % n_heads:
            raise ValueError(f"n_heads={n_heads} must divide d_model={d_model}")
        self.n_heads = n_heads
        self.W_q = nn.Linear(d_model, d_model, bias=bias)
        self.W_k = nn.Linear(d_model, d_model, bias=bias)
        self.W_v = nn.Linear(d_model, d_model, bias=bias)
        self.W_o = nn.Linear(d_model, d_model, bias=False)

    def _heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(batch, T, d_model) -> Q, K, V, each (batch, heads, T, d_model / heads)."""
        return self._split(self.W_q(x)), self._split(self.W_k(x)), self._split(self.W_v(x))

    def _split(self, y: torch.Tensor) -> torch.Tensor:
        """(batch, T, d_model) -> (batch, heads, T, d_model / heads)."""
        batch, length, d_model = y.shape
        return y.view(batch, length, self.n_heads, d_model // self.n_heads).transpose(1, 2)
