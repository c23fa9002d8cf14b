"""Multi-query associative recall (MQAR), as Zoology's generator builds it.

Zoology (Arora et al. 2023, arXiv:2312.04927), Sec. 3.1 and its `multiquery_ar` generator: a
sequence first lists `num_pairs` key-value pairs, then asks `num_queries` of the keys again at
scattered positions; the model must emit each asked key's value at the query. Keys are distinct
tokens of [1, vocab_size // 2), values distinct tokens of [vocab_size // 2, vocab_size). After the
context the sequence is split into two-token slots; a query takes the first token of a slot and
the rest is filler (token 0, or a random token with `random_non_queries`):

    k_1 v_1 k_2 v_2 ... k_n v_n   f f  q_1 f  f f  f f  q_2 f  ...

Only the query positions are scored (target: the key's value). The answer never enters the
input, so a model must recall every answer from the context: without recall the best a model can
do is a value of the context at random, 1 / num_pairs (`chance`). Slot g = 1 .. (length - 2n) / 2
is drawn with probability proportional to g^(power_a - 1) without replacement (Zoology's power law:
power_a = 1 is uniform, small power_a puts the queries near the context).

Where we depart from Zoology's generator, and why:
- Zoology asks every key (its `num_kv_pairs` queries); `num_queries < num_pairs` asks a random
  subset of them, as Zoology's single- and few-query generator `associative_recall` does.
- Zoology gives the i-th key of the context the i-th slot drawn; draws come out small slots first,
  so query order follows context order and a rule answering the j-th query with the j-th value of
  the context scores above chance without reading a key. The asked keys are shuffled first here.
- Zoology's random filler is any token, an example's own values included; ours excludes them, so
  no value of the example, hence no answer, appears after the context.
"""

from typing import Annotated

import torch

from src.schema import PositiveInt, Range
from src.tasks.common import IGNORE, generator

PowerLaw = Annotated[float, Range(low=0, low_open=True, high=1)]


class AssociativeRecall:
    """MQAR examples: `num_pairs` key-value pairs, then `num_queries` of the keys at power-law gaps.

    `length` is the whole sequence (default: 2 * num_pairs + 2 * num_queries, the shortest that
    holds the context and one slot per query, so the queries come back to back in random order).
    """

    def __init__(
        self,
        vocab_size: PositiveInt,
        num_pairs: PositiveInt,
        num_queries: PositiveInt,
        length: PositiveInt | None = None,
        power_a: PowerLaw = 0.01,
        random_non_queries: bool = True,
    ):
        if vocab_size < 4:
            raise ValueError(f"vocab_size must be >= 4, got {vocab_size}")
        self.vocab_size = vocab_size
        self.first_value = vocab_size // 2
        num_keys = self.first_value - 1
        if num_pairs > num_keys:
            raise ValueError(f"num_pairs={num_pairs} exceeds the {num_keys} distinct keys of vocab_size={vocab_size}")
        if num_queries > num_pairs:
            raise ValueError(f"num_queries={num_queries} must be <= num_pairs={num_pairs}")
        shortest = 2 * num_pairs + 2 * num_queries
        if length is not None and length < shortest:
            raise ValueError(
                f"length={length} must be >= 2 * num_pairs + 2 * num_queries = {shortest} "
                "(the context and a two-token slot per query)"
            )
        self.num_pairs, self.num_queries = num_pairs, num_queries
        self.length = shortest if length is None else length
        self.power_a, self.random_non_queries = power_a, random_non_queries
        slots = torch.arange(1, (self.length - 2 * num_pairs) // 2 + 1, dtype=torch.float64)
        self.slot_probabilities = power_a * slots ** (power_a - 1)

    @property
    def chance(self) -> float:
        """The accuracy of a model that knows the context's values but not which key holds which."""
        return 1 / self.num_pairs

    def sample(self, batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (inputs, targets), each (batch_size, length) int64."""
        g = generator(seed)
        n, m = self.num_pairs, self.num_queries
        num_values = self.vocab_size - self.first_value
        keys = 1 + torch.argsort(torch.rand(batch_size, self.first_value - 1, generator=g), dim=1)[:, :n]
        value_order = torch.argsort(torch.rand(batch_size, num_values, generator=g), dim=1)
        values = self.first_value + value_order[:, :n]
        asked = torch.argsort(torch.rand(batch_size, n, generator=g), dim=1)[:, :m]
        weights = self.slot_probabilities.expand(batch_size, -1)
        slots = torch.multinomial(weights, m, replacement=False, generator=g)
        if self.random_non_queries:  # any token but this example's values: a key-range token or an unused value
            drawn = torch.randint(self.vocab_size - n, (batch_size, self.length), generator=g)
            unused = self.first_value + value_order[:, n:].gather(1, (drawn - self.first_value).clamp(min=0))
            inputs = torch.where(drawn < self.first_value, drawn, unused)
        else:
            inputs = torch.zeros(batch_size, self.length, dtype=torch.int64)
        inputs[:, : 2 * n] = torch.stack((keys, values), dim=2).flatten(1)
        positions = 2 * n + 2 * slots
        inputs.scatter_(1, positions, keys.gather(1, asked))
        targets = torch.full_like(inputs, IGNORE).scatter_(1, positions, values.gather(1, asked))
        return inputs, targets

    def accuracy_splits(self, inputs: torch.Tensor, predictions: torch.Tensor, targets: torch.Tensor) -> dict:
        """Accuracy by query position and by key-query distance, from a model's predicted tokens.

        `inputs` and `targets` are a `sample`'s, `predictions` the model's token at every position,
        all (batch, length). Returns `accuracy_by_position` (one accuracy per query, first to last
        in the sequence), and `accuracy_by_distance` / `queries_by_distance` keyed "lo-hi": the
        accuracy and number of queries whose key stands lo..hi tokens before them (powers of two).
        """
        if not inputs.shape == predictions.shape == targets.shape == (inputs.shape[0], self.length):
            raise ValueError(
                f"inputs, predictions and targets must be (batch, {self.length}), got "
                f"{tuple(inputs.shape)}, {tuple(predictions.shape)} and {tuple(targets.shape)}"
            )
        scored = targets != IGNORE
        if not (scored.sum(1) == self.num_queries).all():
            raise ValueError(f"every example's targets must score its {self.num_queries} queries")
        positions = scored.nonzero()[:, 1].view(-1, self.num_queries)  # row-major: each row's queries in order
        correct = (predictions.gather(1, positions) == targets.gather(1, positions)).double()
        queried = inputs.gather(1, positions)
        key_index = (inputs[:, 0 : 2 * self.num_pairs : 2, None] == queried[:, None, :]).double().argmax(1)
        distance = positions - 2 * key_index
        bucket = distance.log2().floor().long()
        by_distance, counts = {}, {}
        for b in bucket.unique().tolist():
            chosen = bucket == b
            label = f"{2**b}-{2 ** (b + 1) - 1}"
            by_distance[label] = correct[chosen].mean().item()
            counts[label] = int(chosen.sum())
        return {
            "accuracy_by_position": correct.mean(0).tolist(),
            "accuracy_by_distance": by_distance,
            "queries_by_distance": counts,
        }
