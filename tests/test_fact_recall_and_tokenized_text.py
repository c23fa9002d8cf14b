"""The fact-recall task and tokenized text: answers checked by a solver that reads the statements back."""

import re

import pytest
import torch

from src.tasks import IGNORE
from src.tasks.fact_recall import FactRecall
from src.tasks.text_corpus import TextCorpus
from tests.conftest import CORPUS

STATEMENT = re.compile(r"The code of ([A-Z][a-z]+) is (\d+)\.\n")


def test_facts_are_fixed_by_their_seed_and_examples_by_theirs():
    task = FactRecall(length=64, n_facts=40)
    assert (
        task.facts == FactRecall(length=64, n_facts=40).facts != FactRecall(length=64, n_facts=40, facts_seed=1).facts
    )
    assert len({name for name, _ in task.facts}) == 40 and all(len(number) == 4 for _, number in task.facts)
    first = task.sample(4, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(first, task.sample(4, seed=3)))
    assert not torch.equal(first[0], task.sample(4, seed=4)[0])


def test_only_the_numbers_are_scored_and_each_fact_appears_once_per_example():
    task = FactRecall(length=120, n_facts=30, num_digits=3)
    facts = dict(task.facts)
    inputs, targets = task.sample(8, seed=0)
    assert inputs.shape == targets.shape == (8, 120)
    for row, target in zip(inputs.tolist(), targets.tolist()):
        text = bytes(row).decode()
        statements = STATEMENT.findall(text)
        assert len(statements) >= 4 and len({name for name, _ in statements}) == len(statements)  # distinct facts
        assert all(facts[name] == number for name, number in statements)
        scored = [(t, y) for t, y in enumerate(target) if y != IGNORE]
        # each scored target is a digit of a number, the next byte of the input
        assert all(chr(y).isdigit() and (t + 1 == len(row) or row[t + 1] == y) for t, y in scored)
        expected = sum(len(number) for _, number in statements)
        assert expected <= len(scored) <= expected + 3  # the last statement may be cut after its digits


def test_facts_are_tokenized_piece_by_piece_with_a_tokenizer(tiny_bases):
    task = FactRecall(length=64, n_facts=20, tokenizer=str(tiny_bases["llama"]))
    inputs, targets = task.sample(3, seed=1)
    assert task.vocab_size == 512 and inputs.max() < 512
    from src.tasks.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_bases["llama"]))
    for target in targets.tolist():
        digits = tokenizer.decode([y for y in target if y != IGNORE])
        assert digits.isdigit() and len(digits) >= 4


def test_impossible_fact_settings_are_named():
    with pytest.raises(ValueError, match="length=500 needs more than"):
        FactRecall(length=500, n_facts=3)
    with pytest.raises(ValueError, match="exceeds the"):
        FactRecall(length=8, n_facts=10**7)


def test_tokenized_text_scores_bits_per_byte_of_the_same_split(tiny_bases):
    byte_level = TextCorpus(path=str(CORPUS), length=32)
    tokenized = TextCorpus(path=str(CORPUS), length=32, tokenizer=str(tiny_bases["qwen2"]))
    assert tokenized.vocab_size == 512 and byte_level.vocab_size == 256
    for split in (tokenized, tokenized.held_out()):
        assert 1.5 < split.bytes_per_token < 4  # a 512-entry BPE merges a few bytes per token
    # the split is cut at the same byte: the held-out tokens decode to the held-out bytes
    from src.tasks.tokenizer import load_tokenizer

    held = load_tokenizer(str(tiny_bases["qwen2"])).decode(tokenized.held_out().data.tolist())
    assert held.encode() == bytes(byte_level.held_out().data.tolist())
    inputs, targets = tokenized.sample(4, seed=0)
    assert torch.equal(inputs[:, 1:], targets[:, :-1])


def test_a_tokenizer_directory_without_tokenizer_json_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"has no tokenizer\.json"):
        TextCorpus(path=str(CORPUS), length=32, tokenizer=str(tmp_path))
