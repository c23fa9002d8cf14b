"""In-memory vector indexes: exact search against brute force through adds and removals, and the
approximate HNSW index (usearch, the `ann` extra) against exact search: recall@10 >= 0.95."""

import numpy as np
import pytest

from src.memory_system.vector_index import USearchIndex, VectorRows


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def test_exact_search_equals_brute_force_through_adds_and_removes():
    rng = np.random.default_rng(0)
    index, kept = VectorRows(8), {}
    for step in range(300):
        if kept and rng.random() < 0.3:
            victim = int(rng.choice(list(kept)))
            index.remove(victim)
            del kept[victim]
        else:
            vector = unit(rng.normal(size=(1, 8)))
            index.add(np.array([step]), vector, importance=step, last_access=2.0 * step)
            kept[step] = vector[0]
    assert len(index) == len(kept) and set(index.ids.tolist()) == set(kept)
    for memory_id, vector in kept.items():  # rows keep their own metadata after swaps
        np.testing.assert_array_equal(index.vector_of(memory_id), vector)
        position = index.ids.tolist().index(memory_id)
        assert index.importance[position] == memory_id and index.last_access[position] == 2.0 * memory_id
    query = unit(rng.normal(size=(1, 8)))[0]
    ids, similarities = index.search(query, 10)
    brute = sorted(kept, key=lambda i: -float(kept[i] @ query))[:10]
    assert ids.tolist() == brute
    np.testing.assert_allclose(similarities, [kept[i] @ query for i in brute], rtol=1e-6)


def test_search_asks_for_more_than_there_is():
    index = VectorRows(3)
    index.add(np.array([5, 6]), unit(np.array([[1.0, 0, 0], [0, 1.0, 0]])))
    ids, similarities = index.search(np.array([0, 1.0, 0], dtype=np.float32), 10)
    assert ids.tolist() == [6, 5] and similarities.tolist() == [1.0, 0.0]


def test_usearch_recall_at_10_against_exact_search():
    rng = np.random.default_rng(1)
    vectors = unit(rng.normal(size=(20_000, 32)))
    ids = np.arange(1, 20_001)
    exact, approximate = VectorRows(32), USearchIndex(32)
    exact.add(ids, vectors)
    approximate.add(ids, vectors)
    removed = ids[::10]  # deletions must leave the index too
    for memory_id in removed:
        exact.remove(int(memory_id))
        approximate.remove(int(memory_id))
    assert len(approximate) == len(exact) == 18_000
    queries = unit(rng.normal(size=(200, 32)))
    hits = 0
    for query in queries:
        truth = set(exact.search(query, 10)[0].tolist())
        found, similarities = approximate.search(query, 10)
        assert not set(found.tolist()) & set(removed.tolist())
        np.testing.assert_allclose(similarities, vectors[found - 1] @ query, atol=1e-5)
        hits += len(truth & set(found.tolist()))
    recall = hits / (10 * len(queries))
    assert recall >= 0.95, f"recall@10 = {recall:.3f}"


def test_usearch_on_an_empty_index():
    ids, similarities = USearchIndex(4).search(np.ones(4, dtype=np.float32) / 2, 3)
    assert ids.size == 0 and similarities.size == 0


@pytest.mark.parametrize("k", [1, 5])
def test_top_k_order_is_by_similarity(k):
    index = VectorRows(2)
    angles = np.linspace(0, np.pi, 9)
    index.add(np.arange(9), np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32))
    ids, _ = index.search(np.array([1.0, 0.0], dtype=np.float32), k)
    assert ids.tolist() == list(range(k))
