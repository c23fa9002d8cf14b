"""Induction heads.

Mamba (Gu & Dao 2023, arXiv:2312.00752), Sec. 4.1.2 (after Olsson et al. 2022): a random sequence
contains a special trigger token once, followed by some token; the sequence ends with the trigger
again and the model must predict the token that followed it the first time. Trained at one
length and evaluated at longer ones (the paper's extrapolation test). Tokens: 0 unused, 1 the
trigger, others [2, vocab_size).

    r r r 1 a r r ... r 1      -> target at the last position: a
"""

import torch

from src.schema import PositiveInt
from src.tasks.common import IGNORE, generator

TRIGGER = 1


class InductionHeads:
    """Sequences of `length` tokens with one trigger-answer pair; the last position is scored."""

    def __init__(self, vocab_size: PositiveInt, length: PositiveInt):
        if vocab_size < 3:
            raise ValueError(f"vocab_size must be >= 3 (unused, trigger, tokens), got {vocab_size}")
        if length < 4:
            raise ValueError(f"length must be >= 4 (trigger, answer, one token, trigger), got {length}")
        self.vocab_size, self.length = vocab_size, length

    def sample(self, batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (inputs, targets), each (batch_size, length) int64."""
        g = generator(seed)
        inputs = torch.randint(2, self.vocab_size, (batch_size, self.length), generator=g)
        position = torch.randint(0, self.length - 3, (batch_size,), generator=g)  # leaves a gap before the end
        rows = torch.arange(batch_size)
        inputs[rows, position] = TRIGGER
        inputs[:, -1] = TRIGGER
        targets = torch.full_like(inputs, IGNORE)
        targets[:, -1] = inputs[rows, position + 1]
        return inputs, targets
