"""The residual block every model is a list of: a sequence mixer, then an optional MLP.

Pre-norm residual pairs (Vaswani et al. 2017, arXiv:1706.03762, Sec. 3.1, with the pre-norm placement
of GPT-2 and Mamba): x <- x + mixer(norm(x)), then x <- x + mlp(norm(x)) when the block has an MLP.
"""

from typing import Any

import torch
from torch import nn

from src.layers.mixer import Mixer
from src.layers.normalization import RMSNorm


class Block(nn.Module):
    """Pre-norm residual block: a `Mixer`, then an optional MLP."""

    def __init__(self, d_model: int, mixer: Mixer, mlp: nn.Module | None, norm_eps: float):
        super().__init__()
        self.mixer_norm = RMSNorm(d_model, norm_eps)
        self.mixer = mixer
        self.mlp_norm = RMSNorm(d_model, norm_eps) if mlp is not None else None
        self.mlp = mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mixer(self.mixer_norm(x))
        if self.mlp is not None and self.mlp_norm is not None:
            x = x + self.mlp(self.mlp_norm(x))
        return x

    def step(self, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, object]:
        """x: (batch, T, d_model) next tokens; state: the mixer's state or None -> (x, new state)."""
        y, state = self.mixer.step(self.mixer_norm(x), state)
        x = x + y
        if self.mlp is not None and self.mlp_norm is not None:
            x = x + self.mlp(self.mlp_norm(x))
        return x, state
