"""Multi-query associative recall (MQAR).

Zoology (Arora et al. 2023, arXiv:2312.04927), Sec. 3.1: a sequence first lists key-value pairs,
then asks several of the keys again; the model must emit each key's value. Keys are tokens
[1, vocab_size / 2), values [vocab_size / 2, vocab_size); token 0 is unused. Layout (teacher
forcing, so the answer to query j is the next token after it):

    k_1 v_1 k_2 v_2 ... k_n v_n   q_1 a_1 q_2 a_2 ... q_m a_m

Only the query positions are scored (their target is the answer). Zoology scatters the queries
over a longer gap with power-law spacing; we place them back to back, which keeps every example
the same length and leaves the recall problem unchanged.
"""

import torch

from src.schema import PositiveInt
from src.tasks.common import IGNORE, generator


class AssociativeRecall:
    """MQAR examples: `num_pairs` key-value pairs, then `num_queries` queries of distinct keys."""

    def __init__(self, vocab_size: PositiveInt, num_pairs: PositiveInt, num_queries: PositiveInt):
        if vocab_size < 4:
            raise ValueError(f"vocab_size must be >= 4, got {vocab_size}")
        self.vocab_size = vocab_size
        self.first_value = vocab_size // 2
        num_keys = self.first_value - 1
        if num_pairs > num_keys:
            raise ValueError(f"num_pairs={num_pairs} exceeds the {num_keys} distinct keys of vocab_size={vocab_size}")
        if num_queries > num_pairs:
            raise ValueError(f"num_queries={num_queries} must be <= num_pairs={num_pairs}")
        self.num_pairs = num_pairs
        self.num_queries = num_queries
        self.length = 2 * num_pairs + 2 * num_queries

    def sample(self, batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (inputs, targets), each (batch_size, 2 * num_pairs + 2 * num_queries) int64."""
        g = generator(seed)
        num_keys = self.first_value - 1
        num_values = self.vocab_size - self.first_value
        keys = 1 + torch.argsort(torch.rand(batch_size, num_keys, generator=g), dim=1)[:, : self.num_pairs]
        values = self.first_value + torch.randint(num_values, (batch_size, self.num_pairs), generator=g)
        asked = torch.argsort(torch.rand(batch_size, self.num_pairs, generator=g), dim=1)[:, : self.num_queries]
        queries, answers = keys.gather(1, asked), values.gather(1, asked)
        context = torch.stack((keys, values), dim=2).flatten(1)
        question = torch.stack((queries, answers), dim=2).flatten(1)
        inputs = torch.cat((context, question), dim=1)
        targets = torch.full_like(inputs, IGNORE)
        targets[:, 2 * self.num_pairs :: 2] = answers
        return inputs, targets
