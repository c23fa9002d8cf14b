"""The memory manager on a real SQLite file and a real model's embeddings: store, recall, forget,
stats, session isolation, one transaction per write, rejected input changes nothing, restart."""

import sqlite3

import numpy as np
import pytest
import torch

from src.memory_system.database import NewRow
from src.memory_system.episodic_retrieval import retrieval_score
from src.memory_system.manager import (
    MemoryConfig,
    MemoryInputError,
    MemoryManager,
    UnknownMemory,
    UnknownSession,
    chunk_text,
)


class Clock:
    """A settable clock (seconds), so recency is exact."""

    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def table(path) -> list[tuple]:
    with sqlite3.connect(path) as connection:
        return connection.execute("SELECT * FROM memories ORDER BY id").fetchall()


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def manager(tmp_path, embed, clock):
    memory = MemoryManager(tmp_path / "memory.sqlite", 32, embed, MemoryConfig(chunk_bytes=64), clock)
    yield memory
    memory.close()


def test_store_then_recall_finds_the_text(manager):
    ids = [manager.store("alice", f"fact number {i}: the key is {i * 7}")[0] for i in range(20)]
    recalled = manager.recall("alice", "fact number 13: the key is 91", long_term_k=3, episodic_k=0)
    assert [r.level for r in recalled] == ["long_term"] * 3
    assert recalled[0].id == ids[13] and recalled[0].text == "fact number 13: the key is 91"
    assert recalled[0].score == pytest.approx(1.0, abs=1e-5)
    assert recalled[0].score >= recalled[1].score >= recalled[2].score


def test_long_text_is_stored_as_chunks(manager):
    text = "word " * 60 + "é" * 40  # 300 + 80 bytes
    ids = manager.store("alice", text)
    rows = table(manager.database.path)
    chunks = [row[4] for row in rows]
    assert len(ids) == len(chunks) > 1 and "".join(chunks) == text
    assert all(len(chunk.encode("utf-8")) <= 64 for chunk in chunks)
    assert chunk_text("abc", 64) == ["abc"]


def test_sessions_are_isolated(manager):
    manager.store("alice", "alice's secret is 1234")
    manager.store("bob", "bob likes tea", level="episodic")
    for query in ("alice's secret is 1234", "bob likes tea"):
        for recalled in manager.recall("bob", query, long_term_k=50, episodic_k=50):
            assert "alice" not in recalled.text
    with pytest.raises(UnknownMemory):  # an id of another session cannot be deleted from this one
        manager.forget("bob", table(manager.database.path)[0][0])
    with pytest.raises(UnknownSession, match="carol"):
        manager.recall("carol", "anything")


def test_episodic_recall_ranks_by_the_retrieval_score(manager, clock, embed):
    texts = ["breakfast with Klaus", "the fire in the kitchen", "a walk in the park", "reading about memory"]
    ids = []
    for hours_ago, (text, importance) in zip((30, 20, 10, 0), zip(texts, (2.0, 9.0, 3.0, 5.0))):
        clock.now = 1_000_000.0 - hours_ago * 3600
        ids += manager.store("ada", text, level="episodic", role="note", importance=importance)
    clock.now = 1_000_000.0
    recalled = manager.recall("ada", "kitchen fire", long_term_k=0, episodic_k=4)
    expected = retrieval_score(
        torch.from_numpy(embed(["kitchen fire"])[0]).double(),
        torch.from_numpy(embed(texts)).double(),
        torch.tensor([30.0, 20.0, 10.0, 0.0], dtype=torch.float64),
        torch.tensor([2.0, 9.0, 3.0, 5.0], dtype=torch.float64),
    )
    order = expected.argsort(descending=True).tolist()
    assert [r.id for r in recalled] == [ids[i] for i in order]
    np.testing.assert_allclose([r.score for r in recalled], expected[order].numpy(), rtol=1e-5)
    # Recalled memories count as retrieved now: their recency is reset in the table too.
    assert {row[7] for row in table(manager.database.path)} == {1_000_000.0}


def test_an_exchange_is_one_transaction_over_both_levels_and_fills_the_short_term_buffer(manager):
    ids = manager.record_exchange("alice", "What is the key?", "The key is under the mat.")
    rows = table(manager.database.path)
    assert [(row[0], row[2], row[3]) for row in rows] == [
        (ids[0], "episodic", "user"), (ids[1], "episodic", "assistant"), (ids[2], "long_term", "note"),
    ]  # fmt: skip
    assert rows[2][4] == "What is the key?\nThe key is under the mat."
    assert [(t.role, t.text) for t in manager.conversation("alice")] == [
        ("user", "What is the key?"), ("assistant", "The key is under the mat."),
    ]  # fmt: skip
    recalled = manager.recall("alice", "key")
    assert [r.level for r in recalled[:2]] == ["short_term", "short_term"]
    assert all(r.level != "episodic" for r in recalled)  # turns in the buffer are not recalled twice
    assert manager.history("alice", 10)[1]["text"] == "The key is under the mat."


def test_a_failing_transaction_writes_nothing(manager):
    manager.store("alice", "kept")
    before = table(manager.database.path)
    good = NewRow("alice", "episodic", "user", "fine", 5.0, 0.0, np.zeros(32, dtype=np.float32))
    bad = NewRow("alice", "no_such_level", "user", "broken", 5.0, 0.0, np.zeros(32, dtype=np.float32))
    with pytest.raises(sqlite3.IntegrityError):
        manager.database.insert([good, bad])
    assert table(manager.database.path) == before


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m: m.store("alice", ""), "text is empty"),
        (lambda m: m.store("alice", "a\x00b"), "control character"),
        (lambda m: m.store("alice", "x" * 2049), "2049 UTF-8 bytes, more than the limit of 2048"),
        (lambda m: m.store("alice", "\ud800"), "lone surrogate"),
        (lambda m: m.store("alice'; DROP TABLE memories; --", "x"), "session must be"),
        (lambda m: m.store("alice", "x", level="semantic"), "level must be one of"),
        (lambda m: m.store("alice", "x", importance=11), "importance must be a number in"),
        (lambda m: m.recall("alice", "x", long_term_k=1000), "long_term_k must be an integer"),
        (lambda m: m.forget("alice", older_than_hours=-1), "older_than_hours must be"),
    ],
)
def test_rejected_input_names_the_field_and_changes_nothing(manager, call, message):
    manager.store("alice", "already here")
    before = table(manager.database.path)
    with pytest.raises(MemoryInputError, match=message):
        call(manager)
    assert table(manager.database.path) == before


def test_sql_metacharacters_in_text_are_stored_verbatim(manager):
    hostile = "Robert'); DROP TABLE memories;-- \" % _ \\ ;"
    (memory_id,) = manager.store("alice", hostile)
    assert manager.recall("alice", hostile, long_term_k=1, episodic_k=0)[0].text == hostile
    assert manager.database.integrity_check() == "ok" and table(manager.database.path)[0][0] == memory_id


def test_forget_by_id_by_age_and_by_session(manager, clock):
    old = manager.store("alice", "old news", level="episodic")
    clock.now += 48 * 3600
    new = manager.store("alice", "fresh news")
    keep = manager.store("alice", "keep me")
    assert manager.forget("alice", older_than_hours=24) == old
    assert manager.forget("alice", memory_id=new[0]) == new
    assert manager.stats("alice") == {"session": "alice", "short_term_turns": 0, "long_term": 1, "episodic": 0}
    assert [r.id for r in manager.recall("alice", "keep me")] == keep
    assert manager.forget("alice") == keep
    with pytest.raises(UnknownSession):
        manager.stats("alice")
    assert manager.stats()["sessions"] == 0 and table(manager.database.path) == []


def test_restart_restores_indexes_and_the_short_term_buffer(tmp_path, embed, clock):
    path = tmp_path / "memory.sqlite"
    first = MemoryManager(path, 32, embed, MemoryConfig(), clock)
    stored = first.store("alice", "the password is swordfish")
    first.record_exchange("alice", "hello", "hi there")
    before = first.recall("alice", "password")
    first.close()
    second = MemoryManager(path, 32, embed, MemoryConfig(), clock)
    assert second.recall("alice", "password") == before
    assert stored[0] in [r.id for r in before]
    assert [t.text for t in second.conversation("alice")] == ["hello", "hi there"]
    second.record_exchange("alice", "again", "yes")
    assert [t.text for t in second.conversation("alice")] == ["hello", "hi there", "again", "yes"]
    assert second.stats()["long_term"] == 3 and second.stats()["episodic"] == 4
    second.close()
    with pytest.raises(ValueError, match="embeddings of size 32, but the model's d_model is 16"):
        MemoryManager(path, 16, embed)


def test_usearch_index_behind_the_manager(tmp_path, embed):
    memory = MemoryManager(tmp_path / "m.sqlite", 32, embed, MemoryConfig(index="usearch"))
    ids = memory.store_many("alice", [f"note {i}" for i in range(50)])
    assert memory.recall("alice", "note 17", long_term_k=1, episodic_k=0)[0].id == ids[17]
    memory.forget("alice", memory_id=ids[17])
    assert ids[17] not in [r.id for r in memory.recall("alice", "note 17", long_term_k=5)]
    assert memory.stats()["index"] == "usearch"
    memory.close()
