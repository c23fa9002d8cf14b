"""Selective copying.

Mamba (Gu & Dao 2023, arXiv:2312.00752), Sec. 3.1 and 4.1.1 (Fig. 2): data tokens are scattered
at random positions among noise tokens, and after the sequence the model must output the data
tokens in order. Unlike plain copying, the spacing varies, so a time-invariant (LTI) model cannot
solve it with a fixed kernel; content-aware selection can. Tokens: 0 noise, 1 the "output now"
marker, data [2, vocab_size). Layout:

    x_1 ... x_L   m m ... m        (L context positions, then num_data markers)

Target at the j-th marker: the j-th data token of the context; nothing else is scored.
"""

import torch

from src.schema import PositiveInt
from src.tasks.common import IGNORE, generator

NOISE, MARKER = 0, 1


class SelectiveCopying:
    """`num_data` data tokens at random positions of a `length`-token context, then copied."""

    def __init__(self, vocab_size: PositiveInt, length: PositiveInt, num_data: PositiveInt):
        if vocab_size < 3:
            raise ValueError(f"vocab_size must be >= 3 (noise, marker, data), got {vocab_size}")
        if num_data > length:
            raise ValueError(f"num_data={num_data} must be <= length={length}")
        self.vocab_size, self.length, self.num_data = vocab_size, length, num_data

    def sample(self, batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (inputs, targets), each (batch_size, length + num_data) int64."""
        g = generator(seed)
        positions = torch.argsort(torch.rand(batch_size, self.length, generator=g), dim=1)[:, : self.num_data]
        positions = positions.sort(dim=1).values
        data = torch.randint(2, self.vocab_size, (batch_size, self.num_data), generator=g)
        context = torch.full((batch_size, self.length), NOISE).scatter(1, positions, data)
        inputs = torch.cat((context, torch.full((batch_size, self.num_data), MARKER)), dim=1)
        targets = torch.full_like(inputs, IGNORE)
        targets[:, self.length :] = data
        return inputs, targets
