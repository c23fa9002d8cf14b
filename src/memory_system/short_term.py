"""The short-term level: the recent turns of each session, first in first out, within a token budget."""

from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Turn:
    """One turn of a conversation; `tokens` is its length in the model's tokens (UTF-8 bytes)."""

    id: int
    role: str
    text: str
    created: float
    embedding: np.ndarray

    @property
    def tokens(self) -> int:
        return len(self.text.encode("utf-8"))


class ShortTermBuffer:
    """Per session, the most recent turns whose tokens sum to at most `token_budget`.

    Adding a turn drops the oldest ones until the budget holds; the newest turn is always kept,
    even alone over the budget (the prompt builder cuts the context to its own limit).
    """

    def __init__(self, token_budget: int):
        if token_budget < 1:
            raise ValueError(f"token_budget must be >= 1, got {token_budget}")
        self.token_budget = token_budget
        self._turns: dict[str, deque[Turn]] = {}
        self._tokens: dict[str, int] = {}

    def __contains__(self, session: str) -> bool:
        return session in self._turns

    def push(self, session: str, turn: Turn) -> None:
        turns = self._turns.setdefault(session, deque())
        turns.append(turn)
        self._tokens[session] = self._tokens.get(session, 0) + turn.tokens
        while self._tokens[session] > self.token_budget and len(turns) > 1:
            self._tokens[session] -= turns.popleft().tokens

    def load(self, session: str, turns: list[Turn]) -> None:
        """Start a session's buffer from stored turns (oldest first), as if pushed in order."""
        self._turns[session], self._tokens[session] = deque(), 0
        for turn in turns:
            self.push(session, turn)

    def turns(self, session: str) -> list[Turn]:
        """The session's buffered turns, oldest first."""
        return list(self._turns.get(session, ()))

    def forget(self, session: str, ids: set[int] | None = None) -> None:
        """Drop turns `ids` of a session (all of them when None)."""
        if ids is None:
            self._turns.pop(session, None)
            self._tokens.pop(session, None)
        elif session in self._turns:
            self.load(session, [turn for turn in self._turns[session] if turn.id not in ids])

    def __len__(self) -> int:
        return sum(len(turns) for turns in self._turns.values())
