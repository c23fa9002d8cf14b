"""MQAR as Zoology builds it: solvable by reading the context, at chance for any rule that does not.

A rule that never recalls (it may read the context's values and the queries, but not which key
holds which value) is right with probability 1 / num_pairs at every query, because the values are
distinct and assigned to the keys at random, and no answer enters the input. Over N scored queries
its accuracy then lies within 5 sigma = 5 sqrt(p (1 - p) / N) of p = 1 / num_pairs, except with
probability below 1e-6: for rules right at most once per example (a constant, the first value)
the true spread is smaller than the binomial one, so the bound holds a fortiori.
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from src.config import resolve_task_section
from src.tasks import IGNORE
from src.tasks.associative_recall import AssociativeRecall
from src.validation import ConfigError


def solve(inputs: torch.Tensor, num_pairs: int) -> torch.Tensor:
    """Dictionary lookup: read the pairs of the context, answer every later token that is a key."""
    predictions = torch.full_like(inputs, IGNORE)
    for b, row in enumerate(inputs.tolist()):
        table = dict(zip(row[0 : 2 * num_pairs : 2], row[1 : 2 * num_pairs : 2]))
        for t in range(2 * num_pairs, len(row)):
            predictions[b, t] = table.get(row[t], IGNORE)
    return predictions


def accuracy(predictions: torch.Tensor, targets: torch.Tensor) -> float:
    scored = targets != IGNORE
    return (predictions[scored] == targets[scored]).double().mean().item()


def queries(targets: torch.Tensor) -> list[list[int]]:
    """Each example's scored positions, in order."""
    return [[t for t, target in enumerate(row) if target != IGNORE] for row in targets.tolist()]


@pytest.mark.parametrize(
    "settings_", [dict(num_pairs=8, num_queries=8), dict(num_pairs=8, num_queries=3, length=64, power_a=1.0)]
)
def test_a_solver_that_reads_the_context_is_always_right(settings_):
    task = AssociativeRecall(vocab_size=64, **settings_)
    inputs, targets = task.sample(200, seed=3)
    predictions = solve(inputs, task.num_pairs)
    assert accuracy(predictions, targets) == 1.0
    splits = task.accuracy_splits(inputs, predictions, targets)
    assert splits["accuracy_by_position"] == [1.0] * task.num_queries
    assert set(splits["accuracy_by_distance"].values()) == {1.0}


def elimination(inputs: torch.Tensor, targets: torch.Tensor, num_pairs: int) -> torch.Tensor:
    """The old layout's shortcut: answer the first context value not yet seen after the context."""
    predictions = torch.full_like(inputs, IGNORE)
    for b, (row, positions) in enumerate(zip(inputs.tolist(), queries(targets))):
        values = row[1 : 2 * num_pairs : 2]
        for t in positions:
            seen = set(row[2 * num_pairs : t])
            predictions[b, t] = next((v for v in values if v not in seen), values[-1])
    return predictions


def in_order(inputs: torch.Tensor, targets: torch.Tensor, num_pairs: int) -> torch.Tensor:
    """The j-th query answered with the j-th value of the context (query order = context order)."""
    predictions = torch.full_like(inputs, IGNORE)
    for b, positions in enumerate(queries(targets)):
        for j, t in enumerate(positions):
            predictions[b, t] = inputs[b, 2 * j + 1]
    return predictions


def random_value(inputs: torch.Tensor, num_pairs: int) -> torch.Tensor:
    """A value of the context drawn uniformly at every position."""
    pick = torch.randint(num_pairs, inputs.shape, generator=torch.Generator().manual_seed(0))
    return inputs[:, 1 : 2 * num_pairs : 2].gather(1, pick)


@pytest.mark.parametrize(
    "settings_",
    [
        dict(num_pairs=4, num_queries=4),
        dict(num_pairs=4, num_queries=4, length=32, random_non_queries=False),
        dict(num_pairs=8, num_queries=2, length=64),
    ],
)
def test_rules_that_never_recall_score_at_chance_and_not_higher(settings_):
    task = AssociativeRecall(vocab_size=64, **settings_)
    inputs, targets = task.sample(20_000 // task.num_queries, seed=11)
    train_targets = task.sample(5_000, seed=12)[1]
    best_constant = train_targets[train_targets != IGNORE].mode().values.item()  # most frequent answer in training
    n_scored = (targets != IGNORE).sum().item()
    bound = 5 * math.sqrt(task.chance * (1 - task.chance) / n_scored)
    unbiased = {  # right with probability exactly 1 / num_pairs
        "elimination": elimination(inputs, targets, task.num_pairs),
        "j-th query -> j-th value": in_order(inputs, targets, task.num_pairs),
        "uniform context value": random_value(inputs, task.num_pairs),
    }
    below = {  # right less often: a constant is a context value with probability 2 num_pairs / vocab_size
        "best constant": torch.full_like(inputs, best_constant),
        "copy the last token": inputs,
    }
    for name, predictions in unbiased.items():
        assert abs(accuracy(predictions, targets) - task.chance) <= bound, name
    for name, predictions in below.items():
        assert accuracy(predictions, targets) <= task.chance + bound, name
    assert accuracy(inputs, targets) == 0.0  # a query is a key, its answer a value


@settings(max_examples=40, deadline=None)
@given(
    vocab_size=st.integers(8, 80),
    pairs=st.floats(0.0, 1.0),
    queries_=st.floats(0.0, 1.0),
    extra=st.integers(0, 20),
    power_a=st.floats(0.01, 1.0),
    random_non_queries=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_invariants(vocab_size, pairs, queries_, extra, power_a, random_non_queries, seed):
    num_pairs = 1 + int(pairs * (vocab_size // 2 - 2))
    num_queries = 1 + int(queries_ * (num_pairs - 1))
    length = 2 * num_pairs + 2 * num_queries + extra
    task = AssociativeRecall(vocab_size, num_pairs, num_queries, length, power_a, random_non_queries)
    inputs, targets = task.sample(6, seed)
    assert inputs.shape == targets.shape == (6, length)
    assert inputs.min() >= 0 and inputs.max() < vocab_size
    for row, target in zip(inputs.tolist(), targets.tolist()):
        keys, values = row[0 : 2 * num_pairs : 2], row[1 : 2 * num_pairs : 2]
        assert len(set(keys)) == num_pairs and all(1 <= k < vocab_size // 2 for k in keys)
        assert len(set(values)) == num_pairs and all(vocab_size // 2 <= v < vocab_size for v in values)
        assert not set(row[2 * num_pairs :]) & set(values)  # no value, so no answer, after the context
        scored = [t for t, y in enumerate(target) if y != IGNORE]
        assert len(scored) == num_queries and len({row[t] for t in scored}) == num_queries  # distinct keys asked
        for t in scored:
            assert t >= 2 * num_pairs and (t - 2 * num_pairs) % 2 == 0  # a query opens a slot after the context
            assert row[t] in keys and target[t] == values[keys.index(row[t])]  # its key came before it
            assert t + 1 == length or target[t + 1] == IGNORE
        if not random_non_queries:
            assert all(row[t] == 0 for t in range(2 * num_pairs, length) if t not in scored)


def test_query_slots_follow_the_power_law():
    """One query in 8 slots: slot g is drawn with probability proportional to g^(power_a - 1)."""
    for power_a in (0.01, 0.5, 1.0):
        task = AssociativeRecall(vocab_size=64, num_pairs=2, num_queries=1, length=20, power_a=power_a)
        _, targets = task.sample(40_000, seed=5)
        slot = ((targets != IGNORE).nonzero()[:, 1] - 4) // 2
        frequency = torch.bincount(slot, minlength=8).double() / slot.numel()
        g = torch.arange(1, 9, dtype=torch.float64)
        expected = g ** (power_a - 1) / (g ** (power_a - 1)).sum()
        assert (frequency - expected).abs().max() < 5 * math.sqrt(0.25 / slot.numel())


def test_accuracy_splits_by_position_and_distance():
    task = AssociativeRecall(vocab_size=32, num_pairs=3, num_queries=2, length=16, random_non_queries=False)
    #          k  v   k  v   k  v   q  f  f  f  q  f  f  f  f  f
    inputs = [[1, 20, 2, 21, 3, 22, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0]]
    targets = torch.full((2, 16), IGNORE)
    targets[0, 6], targets[0, 10] = 21, 20
    inputs.append([4, 16, 5, 17, 6, 18, 0, 0, 6, 0, 0, 0, 0, 0, 4, 0])
    targets[1, 8], targets[1, 14] = 18, 16
    inputs = torch.tensor(inputs)
    predictions = targets.clone()
    predictions[0, 10] = 21  # wrong: key 1, distance 10 (second query of the first example)
    predictions[1, 8] = 17  # wrong: key 6, distance 4 (first query of the second example)
    splits = task.accuracy_splits(inputs, predictions, targets)
    assert splits["accuracy_by_position"] == [0.5, 0.5]
    # distances: 6 - 2 = 4, 10 - 0 = 10, 8 - 4 = 4, 14 - 0 = 14
    assert splits["accuracy_by_distance"] == {"4-7": 0.5, "8-15": 0.5}
    assert splits["queries_by_distance"] == {"4-7": 2, "8-15": 2}
    with pytest.raises(ValueError, match=r"must be \(batch, 16\)"):
        task.accuracy_splits(inputs[:, :8], predictions, targets)


def test_is_deterministic_for_a_seed():
    task = AssociativeRecall(vocab_size=64, num_pairs=8, num_queries=4, length=48)
    assert torch.equal(task.sample(8, seed=5)[0], task.sample(8, seed=5)[0])
    assert not torch.equal(task.sample(8, seed=5)[0], task.sample(8, seed=6)[0])


def test_rejects_impossible_settings():
    with pytest.raises(ValueError, match="num_pairs=40 exceeds the 31 distinct keys"):
        AssociativeRecall(vocab_size=64, num_pairs=40, num_queries=1)
    with pytest.raises(ValueError, match="num_queries=5 must be <= num_pairs=4"):
        AssociativeRecall(vocab_size=64, num_pairs=4, num_queries=5)
    with pytest.raises(ValueError, match=r"length=15 must be >= 2 \* num_pairs \+ 2 \* num_queries = 16"):
        AssociativeRecall(vocab_size=64, num_pairs=4, num_queries=4, length=15)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"length": 11}, "length=11 must be >= 2 \\* num_pairs"),
        ({"power_a": 0.0}, "key 'task.power_a' must be > 0"),
        ({"power_a": 1.5}, "key 'task.power_a' must be <= 1"),
        ({"random_non_queries": 1}, "key 'task.random_non_queries' must be of type bool"),
    ],
)
def test_config_keys_are_validated(change, message):
    section = {"type": "associative_recall", "vocab_size": 64, "num_pairs": 4, "num_queries": 2, **change}
    with pytest.raises(ConfigError, match=message):
        resolve_task_section(section, "task.yaml")


def test_config_defaults_are_zoologys():
    section = {"type": "associative_recall", "vocab_size": 64, "num_pairs": 4, "num_queries": 2}
    resolved = resolve_task_section(section, "task.yaml")
    assert resolved == {**section, "length": None, "power_a": 0.01, "random_non_queries": True}
