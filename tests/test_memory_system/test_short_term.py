"""The short-term buffer: FIFO within a token budget (tokens are UTF-8 bytes)."""

import numpy as np
import pytest

from src.memory_system.short_term import ShortTermBuffer, Turn


def turn(i: int, text: str) -> Turn:
    return Turn(i, "user", text, float(i), np.zeros(2, dtype=np.float32))


def test_oldest_turns_leave_first_within_the_budget():
    buffer = ShortTermBuffer(token_budget=10)
    buffer.push("a", turn(1, "abcd"))  # 4
    buffer.push("a", turn(2, "efg"))  # 7
    buffer.push("a", turn(3, "hij"))  # 10: fits exactly
    assert [t.id for t in buffer.turns("a")] == [1, 2, 3]
    buffer.push("a", turn(4, "é"))  # 2 bytes: 12 > 10, turn 1 leaves (8)
    assert [t.id for t in buffer.turns("a")] == [2, 3, 4]
    buffer.push("a", turn(5, "x" * 25))  # alone over the budget: kept alone
    assert [t.id for t in buffer.turns("a")] == [5]


def test_sessions_are_separate_and_forget_drops_turns():
    buffer = ShortTermBuffer(token_budget=100)
    for i in range(3):
        buffer.push("a", turn(i, "aa"))
        buffer.push("b", turn(10 + i, "bb"))
    assert [t.id for t in buffer.turns("b")] == [10, 11, 12] and len(buffer) == 6
    buffer.forget("a", {1})
    assert [t.id for t in buffer.turns("a")] == [0, 2]
    buffer.forget("b")
    assert buffer.turns("b") == [] and "b" not in buffer and "a" in buffer


def test_budget_must_be_positive():
    with pytest.raises(ValueError, match="token_budget must be >= 1"):
        ShortTermBuffer(0)
