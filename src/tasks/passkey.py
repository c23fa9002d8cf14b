"""Passkey retrieval.

Mohtashami & Jaggi 2023 (Landmark Attention, arXiv:2305.16300), Sec. 4.2: a pass key is hidden
at some depth in long, repetitive filler text, and the text ends by asking for it. A token-level
version: the filler is a fixed cycle of filler tokens, the key is `num_digits` digit tokens after
a KEY token, and the question is a QUERY token; the digits are then teacher-forced, so target j
is digit j. Tokens: 0 KEY, 1 QUERY, digits [2, 12), filler [12, vocab_size).

    f f f ... KEY d_1 .. d_n f f ... f QUERY d_1 .. d_{n-1}
"""

import torch

from src.schema import PositiveInt, UnitFloat
from src.tasks.common import IGNORE, generator

KEY, QUERY, FIRST_DIGIT, FIRST_FILLER = 0, 1, 2, 12


class Passkey:
    """A `num_digits`-digit key at relative `depth` (0 start .. 1 end) of `length` filler tokens."""

    def __init__(self, vocab_size: PositiveInt, length: PositiveInt, depth: UnitFloat, num_digits: PositiveInt = 5):
        if vocab_size <= FIRST_FILLER:
            raise ValueError(f"vocab_size must be > {FIRST_FILLER} (KEY, QUERY, 10 digits, filler), got {vocab_size}")
        if length < num_digits + 1:
            raise ValueError(f"length={length} must hold the KEY token and {num_digits} digits")
        self.vocab_size, self.length, self.depth, self.num_digits = vocab_size, length, depth, num_digits

    def sample(self, batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (inputs, targets), each (batch_size, length + num_digits) int64."""
        g = generator(seed)
        n_filler = self.vocab_size - FIRST_FILLER
        filler = FIRST_FILLER + torch.arange(self.length) % n_filler
        digits = FIRST_DIGIT + torch.randint(10, (batch_size, self.num_digits), generator=g)
        start = round(self.depth * (self.length - self.num_digits - 1))
        context = filler.repeat(batch_size, 1)
        context[:, start] = KEY
        context[:, start + 1 : start + 1 + self.num_digits] = digits
        question = torch.cat((torch.full((batch_size, 1), QUERY), digits[:, :-1]), dim=1)
        inputs = torch.cat((context, question), dim=1)
        targets = torch.full_like(inputs, IGNORE)
        targets[:, self.length :] = digits
        return inputs, targets
