"""Generative Agents retrieval score (Sec. 4.1): values against a float64 loop, a hand-worked case
and the invariants min-max normalisation gives."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from src.memory_system.episodic_retrieval import retrieval_score


def reference(query, keys, hours, importance, decay, alphas):
    """The paper's text, literally: each component per memory, min-max over the candidates, weighted sum."""
    n = keys.shape[0]
    recency = [decay ** float(hours[i]) for i in range(n)]
    relevance = []
    for i in range(n):
        dot = sum(float(query[j]) * float(keys[i, j]) for j in range(len(query)))
        norm_q = math.sqrt(sum(float(v) ** 2 for v in query))
        norm_k = math.sqrt(sum(float(v) ** 2 for v in keys[i]))
        relevance.append(dot / (norm_q * norm_k))
    weights = [float(v) for v in importance]

    def min_max(values):
        low, high = min(values), max(values)
        return [0.5] * len(values) if high == low else [(v - low) / (high - low) for v in values]

    parts = [min_max(recency), min_max(weights), min_max(relevance)]
    return torch.tensor([sum(a * part[i] for a, part in zip(alphas, parts)) for i in range(n)], dtype=torch.float64)


def test_matches_float64_loop():
    torch.manual_seed(0)
    query, keys = torch.randn(6, dtype=torch.float64), torch.randn(9, 6, dtype=torch.float64)
    hours = torch.rand(9, dtype=torch.float64) * 500
    importance = torch.randint(1, 11, (9,)).double()
    for decay, alphas in ((0.995, (1.0, 1.0, 1.0)), (0.9, (0.5, 3.0, 2.0))):
        got = retrieval_score(query, keys, hours, importance, decay, *alphas)
        expected = reference(query, keys, hours, importance, decay, alphas)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_hand_worked_case():
    # Two memories, query (1, 0). Memory 0: retrieved now, importance 2, key (0, 1) (cosine 0).
    # Memory 1: retrieved 10 hours ago, importance 8, key (3, 0) (cosine 1).
    # Recency 1 vs 0.995^10: min-max gives (1, 0); importance (0, 1); relevance (0, 1).
    # With alphas (1, 2, 3): scores 1*1 + 0 + 0 = 1 and 0 + 2*1 + 3*1 = 5.
    query = torch.tensor([1.0, 0.0], dtype=torch.float64)
    keys = torch.tensor([[0.0, 1.0], [3.0, 0.0]], dtype=torch.float64)
    scores = retrieval_score(
        query, keys, torch.tensor([0.0, 10.0], dtype=torch.float64), torch.tensor([2.0, 8.0], dtype=torch.float64),
        0.995, 1.0, 2.0, 3.0,
    )  # fmt: skip
    torch.testing.assert_close(scores, torch.tensor([1.0, 5.0], dtype=torch.float64), rtol=0, atol=1e-15)


def test_equal_values_normalise_to_one_half():
    # One candidate: every component is constant, so each normalises to 0.5 (the official code's choice).
    score = retrieval_score(torch.ones(3), torch.ones(1, 3), torch.zeros(1), torch.full((1,), 7.0))
    torch.testing.assert_close(score, torch.tensor([1.5]))


@given(
    scale=st.floats(1e-3, 1e3), shift=st.floats(-100, 100), key_scale=st.floats(1e-2, 1e2), seed=st.integers(0, 2**16)
)
def test_invariant_to_importance_scale_and_embedding_norms(scale, shift, key_scale, seed):
    # Min-max normalisation removes any positive affine change of the importance scale (1-10 or 0-1),
    # and cosine similarity removes the norms of query and keys.
    generator = torch.Generator().manual_seed(seed)
    query, keys = torch.randn(5, generator=generator).double(), torch.randn(7, 5, generator=generator).double()
    hours = torch.rand(7, generator=generator).double() * 100
    importance = torch.rand(7, generator=generator).double() * 9 + 1
    base = retrieval_score(query, keys, hours, importance)
    moved = retrieval_score(key_scale * query, keys * key_scale, hours, importance * scale + shift)
    torch.testing.assert_close(moved, base, rtol=1e-9, atol=1e-9)


@given(seed=st.integers(0, 2**16), extra_hours=st.floats(0.5, 1000))
def test_bounded_and_monotone_in_recency(seed, extra_hours):
    generator = torch.Generator().manual_seed(seed)
    query, keys = torch.randn(4, generator=generator).double(), torch.randn(6, 4, generator=generator).double()
    hours = torch.rand(6, generator=generator).double() * 50
    importance = torch.rand(6, generator=generator).double()
    scores = retrieval_score(query, keys, hours, importance)
    assert ((scores >= 0) & (scores <= 3 + 1e-12)).all()
    # A memory not retrieved for longer never scores higher (everything else equal); the others keep
    # their relevance and importance terms and can only gain recency rank.
    older = hours.clone()
    older[0] += extra_hours
    assert retrieval_score(query, keys, older, importance)[0] <= scores[0] + 1e-12


def test_the_most_relevant_memory_wins_when_only_relevance_counts():
    torch.manual_seed(3)
    keys = torch.randn(20, 8, dtype=torch.float64)
    query = keys[11] * 2.5
    scores = retrieval_score(query, keys, torch.rand(20).double(), torch.rand(20).double(), 0.995, 0.0, 0.0, 1.0)
    assert scores.argmax() == 11 and scores[11] == 1.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"query": torch.ones(2, 3)}, "query must have shape"),
        ({"keys": torch.ones(4, 2)}, "keys has d=2"),
        ({"importance": torch.ones(5)}, "importance has n=5"),
        ({"hours_since_retrieval": -torch.ones(4)}, "hours_since_retrieval must be >= 0"),
        ({"keys": torch.ones(0, 3), "hours_since_retrieval": torch.ones(0), "importance": torch.ones(0)}, "n >= 1"),
        ({"decay": 1.5}, "decay must lie in"),
        ({"alpha_importance": -1.0}, "alpha_importance must be >= 0"),
    ],
)
def test_bad_arguments_are_named(change, message):
    arguments = {"query": torch.ones(3), "keys": torch.ones(4, 3), "hours_since_retrieval": torch.ones(4)}
    arguments |= {"importance": torch.ones(4)} | change
    with pytest.raises(ValueError, match=message):
        retrieval_score(**arguments)
