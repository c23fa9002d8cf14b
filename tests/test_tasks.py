"""Task generators: deterministic for a seed, answers checked by an independent solver."""

import pytest
import torch

from src.tasks import IGNORE
from src.tasks.associative_recall import AssociativeRecall


def solve_mqar(inputs: torch.Tensor, num_pairs: int) -> list[list[int]]:
    """Dictionary lookup: read the pairs, answer every later key."""
    answers = []
    for row in inputs.tolist():
        table = dict(zip(row[0 : 2 * num_pairs : 2], row[1 : 2 * num_pairs : 2]))
        answers.append([table[key] for key in row[2 * num_pairs :: 2]])
    return answers


def test_mqar_answers_match_a_dictionary_lookup():
    task = AssociativeRecall(vocab_size=64, num_pairs=8, num_queries=4)
    inputs, targets = task.sample(50, seed=3)
    assert inputs.shape == targets.shape == (50, 24)
    scored = targets[:, 16::2]
    assert scored.tolist() == solve_mqar(inputs, 8)
    assert (targets[:, :16] == IGNORE).all() and (targets[:, 17::2] == IGNORE).all()


def test_mqar_keys_are_distinct_and_vocabularies_disjoint():
    task = AssociativeRecall(vocab_size=32, num_pairs=15, num_queries=15)
    inputs, _ = task.sample(20, seed=0)
    keys, values = inputs[:, 0:30:2], inputs[:, 1:30:2]
    assert all(len(set(row)) == 15 for row in keys.tolist())
    assert keys.min() >= 1 and keys.max() < 16 and values.min() >= 16 and values.max() < 32


def test_mqar_is_deterministic_for_a_seed():
    task = AssociativeRecall(vocab_size=64, num_pairs=8, num_queries=4)
    assert torch.equal(task.sample(8, seed=5)[0], task.sample(8, seed=5)[0])
    assert not torch.equal(task.sample(8, seed=5)[0], task.sample(8, seed=6)[0])


def test_mqar_rejects_impossible_settings():
    with pytest.raises(ValueError, match="num_pairs=40 exceeds the 31 distinct keys"):
        AssociativeRecall(vocab_size=64, num_pairs=40, num_queries=1)
    with pytest.raises(ValueError, match="num_queries=5 must be <= num_pairs=4"):
        AssociativeRecall(vocab_size=64, num_pairs=4, num_queries=5)
