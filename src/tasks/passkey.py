"""Passkey retrieval.

Mohtashami & Jaggi 2023 (Landmark Attention, arXiv:2305.16300), Sec. 4.2: a pass key is hidden
at some depth in long, repetitive filler text, and the text ends by asking for it. A token-level
version: the filler is a fixed cycle of filler tokens, the key is `num_digits` digit tokens after
a KEY token, and the question is a QUERY token; the digits are then teacher-forced, so target j
is digit j. Tokens: 0 KEY, 1 QUERY, digits [2, 12), filler [12, vocab_size).

`depth` places the key at one relative depth (0 start .. 1 end), as a needle table's cell does;
`depth: null` draws each example's depth uniformly (training over every depth). Evaluation
settings name both, e.g. `- {length: 4096, depth: 0.25}` (see `src.needle`).

    f f f ... KEY d_1 .. d_n f f ... f QUERY d_1 .. d_{n-1}
"""

import torch

from src.schema import PositiveInt, UnitFloat
from src.tasks.common import IGNORE, generator

KEY, QUERY, FIRST_DIGIT, FIRST_FILLER = 0, 1, 2, 12


class Passkey:
    """A `num_digits`-digit key at relative `depth` (0 start .. 1 end; None: uniform per example) of `length` tokens."""

    def __init__(
        self, vocab_size: PositiveInt, length: PositiveInt, depth: UnitFloat | None, num_digits: PositiveInt = 5
    ):
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
        last = self.length - self.num_digits - 1  # the last position the KEY token can take
        if self.depth is None:
            start = torch.randint(last + 1, (batch_size, 1), generator=g)
        else:
            start = torch.full((batch_size, 1), round(self.depth * last))
        context = filler.repeat(batch_size, 1)
        rows = torch.arange(batch_size)[:, None]
        context[rows, start] = KEY
        context[rows, start + 1 + torch.arange(self.num_digits)] = digits
        question = torch.cat((torch.full((batch_size, 1), QUERY), digits[:, :-1]), dim=1)
        inputs = torch.cat((context, question), dim=1)
        targets = torch.full_like(inputs, IGNORE)
        targets[:, self.length :] = digits
        return inputs, targets
