"""Task generators: deterministic for a seed, answers checked by an independent solver."""

import pytest
import torch

from src.tasks import IGNORE
from src.tasks.induction_heads import InductionHeads
from src.tasks.passkey import Passkey
from src.tasks.selective_copying import SelectiveCopying
from src.tasks.text_corpus import TextCorpus


def test_selective_copying_answers_are_the_data_tokens_in_order():
    task = SelectiveCopying(vocab_size=12, length=30, num_data=6)
    inputs, targets = task.sample(40, seed=1)
    assert inputs.shape == targets.shape == (40, 36)
    for row, target in zip(inputs.tolist(), targets.tolist()):
        data = [token for token in row[:30] if token != 0]  # independent solver: read the non-noise tokens
        assert target[30:] == data and set(target[:30]) == {IGNORE}
        assert row[30:] == [1] * 6
    assert torch.equal(task.sample(4, seed=2)[0], task.sample(4, seed=2)[0])


def test_induction_heads_answer_follows_the_first_trigger():
    task = InductionHeads(vocab_size=16, length=40)
    inputs, targets = task.sample(50, seed=3)
    for row, target in zip(inputs.tolist(), targets.tolist()):
        first = row.index(1)  # independent solver: find the trigger, read the next token
        assert first < 39 and row[-1] == 1 and row.count(1) == 2
        assert target[-1] == row[first + 1] and set(target[:-1]) == {IGNORE}
    assert torch.equal(task.sample(4, seed=2)[0], task.sample(4, seed=2)[0])


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_passkey_answer_is_the_key_after_the_key_token(depth):
    task = Passkey(vocab_size=20, length=60, depth=depth, num_digits=5)
    inputs, targets = task.sample(10, seed=4)
    assert inputs.shape == (10, 65)
    for row, target in zip(inputs.tolist(), targets.tolist()):
        start = row.index(0)  # independent solver: the five tokens after KEY
        assert row[60] == 1 and target[60:] == row[start + 1 : start + 6]
        assert row[61:] == target[60:64]  # teacher forcing: inputs are the digits shifted by one
    assert inputs[0].tolist().index(0) == round(depth * (60 - 6))


def test_passkey_without_a_depth_draws_one_per_example():
    task = Passkey(vocab_size=20, length=60, depth=None, num_digits=5)
    inputs, targets = task.sample(200, seed=5)
    starts = []
    for row, target in zip(inputs.tolist(), targets.tolist()):
        start = row.index(0)  # independent solver, as above
        assert row.count(0) == 1 and row[60] == 1 and target[60:] == row[start + 1 : start + 6]
        starts.append(start)
    assert min(starts) == 0 and max(starts) == 54 and len(set(starts)) > 40  # every depth, start to end
    assert torch.equal(task.sample(200, seed=5)[0], inputs)  # the seed alone fixes the batch


def test_text_corpus_windows_and_held_out_split(tmp_path):
    path = tmp_path / "text.txt"
    path.write_bytes(bytes(range(256)) * 4)
    task = TextCorpus(path=str(path), length=16, eval_fraction=0.25)
    inputs, targets = task.sample(5, seed=0)
    assert inputs.shape == targets.shape == (5, 16)
    assert torch.equal(inputs[:, 1:], targets[:, :-1])
    assert torch.equal((inputs + 1) % 256, targets)  # the file counts up byte by byte
    held = task.held_out()
    assert len(task.data) == 768 and len(held.data) == 256 and held.split == "eval"


def test_new_tasks_reject_impossible_settings(tmp_path):
    with pytest.raises(ValueError, match="num_data=9 must be <= length=8"):
        SelectiveCopying(12, 8, 9)
    with pytest.raises(ValueError, match="length must be >= 4"):
        InductionHeads(16, 3)
    with pytest.raises(ValueError, match="vocab_size must be > 12"):
        Passkey(12, 50, 0.5)
    with pytest.raises(ValueError, match="is not a file"):
        TextCorpus(path=str(tmp_path / "missing.txt"), length=8)
