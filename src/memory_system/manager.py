"""The memory manager: store, recall (the three levels with their scores), forget and count.

Writes go to the SQLite table first and to the in-memory indexes after their transaction has
committed, under one lock, so the indexes always hold what the table holds. Every request names
a session, and nothing of one session is ever searched for another: each session has its own
indexes and its own short-term buffer. Input is checked before anything is written, so a rejected
request changes nothing.
"""

import math
import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch

from src.memory_system.database import LEVELS, CarriedState, MemoryDatabase, NewRow, Row
from src.memory_system.episodic_retrieval import retrieval_score
from src.memory_system.short_term import ShortTermBuffer, Turn
from src.memory_system.vector_index import INDEXES, USearchIndex, VectorRows
from src.schema import NonNegativeFloat, PositiveInt, Range

SESSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
CONVERSATION = ("user", "assistant")  # the roles of chat turns: only `record_exchange` writes them
ROLES = ("note", "observation", "reflection", "plan")  # what a stored memory is (Park et al. 2023, Sec. 4)
_FORBIDDEN_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # control characters but \t \n \r
Importance = Annotated[float, Range(low=1, high=10)]  # the paper's 1-10 poignancy scale


class MemoryInputError(ValueError):
    """A request the memory cannot take; the message names the field and the limit."""


class UnknownSession(LookupError):
    """Nothing was ever stored or said in this session."""


class UnknownMemory(LookupError):
    """No memory with this id in this session."""


@dataclass(frozen=True)
class MemoryConfig:
    """The memory budgets and the retrieval weights (the `memory` section of a serve config)."""

    short_term_tokens: PositiveInt = 1024
    long_term_top_k: PositiveInt = 4
    episodic_top_k: PositiveInt = 4
    max_top_k: PositiveInt = 100
    chunk_bytes: PositiveInt = 256
    max_text_bytes: PositiveInt = 2048
    index: Literal["exact", "usearch"] = "exact"
    recency_decay: Annotated[float, Range(low=0, high=1, low_open=True)] = 0.995
    alpha_recency: NonNegativeFloat = 1.0
    alpha_importance: NonNegativeFloat = 1.0
    alpha_relevance: NonNegativeFloat = 1.0
    default_importance: Importance = 5.0


@dataclass(frozen=True)
class Recalled:
    """One recalled memory; `score` is cosine similarity (short-term, long-term) or the retrieval score (episodic)."""

    level: str
    id: int
    role: str
    text: str
    score: float
    importance: float | None  # None for short-term turns
    created: float


def chunk_text(text: str, chunk_bytes: int) -> list[str]:
    """Split text into pieces of at most `chunk_bytes` UTF-8 bytes, at whitespace where one is near the limit."""
    chunks, rest = [], text
    while len(rest.encode("utf-8")) > chunk_bytes:
        cut = len(rest.encode("utf-8")[:chunk_bytes].decode("utf-8", errors="ignore"))  # whole characters
        space = rest.rfind(" ", 0, cut)
        cut = space + 1 if space > cut // 2 else cut
        chunks.append(rest[:cut])
        rest = rest[cut:]
    return [*chunks, rest] if rest else chunks


class MemoryManager:
    """The three memory levels of every session over one SQLite file (see the module docstring).

    `embed` maps texts to (n, dim) float32 unit vectors (`embedding.embed_texts` of the serving
    model); `clock` gives the time in seconds (recency is measured in hours of it).
    """

    def __init__(
        self,
        path: str | Path,
        dim: int,
        embed: Callable[[list[str]], np.ndarray],
        config: MemoryConfig = MemoryConfig(),
        clock: Callable[[], float] = time.time,
    ):
        self.config, self.dim, self._embed, self._clock = config, dim, embed, clock
        self._lock = threading.Lock()
        self.database = MemoryDatabase(path, dim)
        self._long_term: dict[str, VectorRows | USearchIndex] = {}
        self._episodic: dict[str, VectorRows] = {}
        self._short_term = ShortTermBuffer(config.short_term_tokens)
        self._load()

    def _new_long_term_index(self) -> VectorRows | USearchIndex:
        return INDEXES[self.config.index](self.dim)

    def _load(self) -> None:
        """Fill the indexes from the table (at start)."""
        grouped: dict[tuple[str, str], list[Row]] = defaultdict(list)
        for row in self.database.rows():
            grouped[row.session, row.level].append(row)
        for (session, level), rows in grouped.items():
            ids = np.array([row.id for row in rows], dtype=np.int64)
            vectors = np.stack([row.embedding for row in rows])
            if level == "long_term":
                self._long_term.setdefault(session, self._new_long_term_index()).add(ids, vectors)
            else:
                importance = np.array([row.importance for row in rows])
                last_access = np.array([row.last_access for row in rows])
                self._episodic.setdefault(session, VectorRows(self.dim)).add(ids, vectors, importance, last_access)

    @property
    def sessions(self) -> set[str]:
        return set(self._long_term) | set(self._episodic)

    # ---- input checks: everything is checked before anything is written ----

    def check_session(self, session: object) -> str:
        if not isinstance(session, str) or not SESSION.fullmatch(session):
            raise MemoryInputError(
                f"session must be 1-64 characters of letters, digits, '_', '.', ':' or '-' starting with a letter "
                f"or digit, got {str(session)[:80]!r}"
            )
        return session

    def check_text(self, text: object, field: str = "text") -> str:
        if not isinstance(text, str):
            raise MemoryInputError(f"{field} must be a string")
        if not text.strip():
            raise MemoryInputError(f"{field} is empty")
        if match := _FORBIDDEN_CHARACTERS.search(text):
            raise MemoryInputError(f"{field} contains the control character {match.group()!r} (NUL and C0 controls)")
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError as error:
            raise MemoryInputError(f"{field} is not valid Unicode (a lone surrogate)") from error
        if size > self.config.max_text_bytes:
            raise MemoryInputError(
                f"{field} is {size} UTF-8 bytes, more than the limit of {self.config.max_text_bytes}"
            )
        return text

    def _check_choice(self, value: object, field: str, allowed: tuple[str, ...]) -> str:
        if not isinstance(value, str) or value not in allowed:
            raise MemoryInputError(f"{field} must be one of {list(allowed)}, got {str(value)[:40]!r}")
        return value

    def _check_importance(self, importance: float | None) -> float:
        if importance is None:
            return self.config.default_importance
        if not (isinstance(importance, int | float) and math.isfinite(importance) and 1 <= importance <= 10):
            raise MemoryInputError(f"importance must be a number in [1, 10], got {importance!r}")
        return float(importance)

    def _check_k(self, k: int | None, default: int, field: str) -> int:
        if k is None:
            return default
        if not (isinstance(k, int) and 0 <= k <= self.config.max_top_k):
            raise MemoryInputError(f"{field} must be an integer in [0, {self.config.max_top_k}], got {k!r}")
        return k

    def _known(self, session: str) -> None:
        if session not in self._long_term and session not in self._episodic:
            raise UnknownSession(f"unknown session {session!r}: nothing was stored or said in it")

    # ---- writes ----

    def store(
        self,
        session: str,
        text: str,
        level: str = "long_term",
        role: str = "note",
        importance: float | None = None,
    ) -> list[int]:
        """Store a text: long-term as chunks of `chunk_bytes` (one id each), episodic as one experience."""
        return self.store_many(session, [text], level, role, importance)

    def store_many(
        self,
        session: str,
        texts: list[str],
        level: str = "long_term",
        role: str = "note",
        importance: float | None = None,
    ) -> list[int]:
        """Store several texts of one session in one transaction; return the ids of their rows."""
        self.check_session(session)
        for text in texts:
            self.check_text(text)
        self._check_choice(level, "level", LEVELS)
        self._check_choice(role, "role", ROLES)
        importance = self._check_importance(importance)
        pieces = [chunk for text in texts for chunk in chunk_text(text, self.config.chunk_bytes)]
        if level == "episodic":
            pieces = list(texts)
        vectors = self._embed(pieces)
        now = self._clock()
        rows = [NewRow(session, level, role, piece, importance, now, vector) for piece, vector in zip(pieces, vectors)]
        return self._commit(rows)

    def record_exchange(
        self,
        session: str,
        user_text: str,
        reply: str,
        importance: float | None = None,
        carried: CarriedState | None = None,
    ) -> list[int]:
        """One chat exchange, in one transaction: the user turn and the reply as episodes (both enter the
        short-term buffer), the exchange as long-term chunks and, when given, the session's model state
        after it (`CarriedState`). Returns the ids, episodes first."""
        self.check_session(session)
        self.check_text(user_text, "text")
        importance = self._check_importance(importance)
        turns = [("user", user_text)] + ([("assistant", reply)] if reply.strip() else [])
        exchange = "\n".join(text for _, text in turns)
        chunks = chunk_text(exchange, self.config.chunk_bytes)
        vectors = self._embed([text for _, text in turns] + chunks)
        now = self._clock()
        rows = [NewRow(session, "episodic", role, text, importance, now, v) for (role, text), v in zip(turns, vectors)]
        rows += [
            NewRow(session, "long_term", "note", chunk, importance, now, v)
            for chunk, v in zip(chunks, vectors[len(turns) :])
        ]
        return self._commit(rows, carried)

    def _commit(self, rows: list[NewRow], carried: CarriedState | None = None) -> list[int]:
        with self._lock:
            for session in {row.session for row in rows if row.role in CONVERSATION and row.level == "episodic"}:
                self._buffer(session)  # a session seen before this start resumes from its stored turns
            ids = self.database.insert(rows, carried)
            for memory_id, row in zip(ids, rows):
                self._index(memory_id, row)
        return ids

    def _index(self, memory_id: int, row: NewRow) -> None:
        """Add a committed row to its session's in-memory index (and a chat turn to the short-term buffer)."""
        ids, vectors = np.array([memory_id]), row.embedding[None]
        if row.level == "long_term":
            self._long_term.setdefault(row.session, self._new_long_term_index()).add(ids, vectors)
            return
        self._episodic.setdefault(row.session, VectorRows(self.dim)).add(ids, vectors, row.importance, row.created)
        if row.role in CONVERSATION:
            self._short_term.push(row.session, Turn(memory_id, row.role, row.text, row.created, row.embedding))

    def forget(self, session: str, memory_id: int | None = None, older_than_hours: float | None = None) -> list[int]:
        """Delete one memory of the session, its memories older than `older_than_hours`, or (neither
        given) all of it. Returns the deleted ids."""
        self.check_session(session)
        if memory_id is not None and older_than_hours is not None:
            raise MemoryInputError("give memory_id or older_than_hours, not both")
        if older_than_hours is not None and not (
            isinstance(older_than_hours, int | float) and math.isfinite(older_than_hours) and older_than_hours >= 0
        ):
            raise MemoryInputError(f"older_than_hours must be a number >= 0, got {older_than_hours!r}")
        with self._lock:
            self._known(session)
            if memory_id is not None:
                row_id = 0 < memory_id < 2**63  # SQLite's row ids: no other number names a memory
                deleted = self.database.delete("id = ? AND session = ?", (memory_id, session)) if row_id else []
                if not deleted:
                    raise UnknownMemory(f"no memory {memory_id} in session {session!r}")
            elif older_than_hours is not None:
                cutoff = self._clock() - older_than_hours * 3600
                deleted = self.database.delete("session = ? AND created < ?", (session, cutoff))
            else:
                deleted = self.database.delete("session = ?", (session,))
            for deleted_id, _, level in deleted:
                index = (self._long_term if level == "long_term" else self._episodic)[session]
                index.remove(deleted_id)
            for indexes in (self._long_term, self._episodic):
                if session in indexes and len(indexes[session]) == 0:
                    del indexes[session]
            gone = {deleted_id for deleted_id, _, _ in deleted}
            self._short_term.forget(session, None if session not in self.sessions else gone)
        return sorted(gone)

    # ---- reads ----

    def _buffer(self, session: str) -> list[Turn]:
        """The session's short-term turns, loaded from its stored turns the first time after a start."""
        if session not in self._short_term and session in self._episodic:
            rows = self.database.history(session, CONVERSATION, self.config.short_term_tokens)
            episodic = self._episodic[session]
            self._short_term.load(
                session, [Turn(i, role, text, created, episodic.vector_of(i)) for i, role, text, created in rows]
            )
        return self._short_term.turns(session)

    def recall(
        self, session: str, query: str, long_term_k: int | None = None, episodic_k: int | None = None
    ) -> list[Recalled]:
        """The three levels for a query: the short-term turns (newest first), the long-term chunks by
        cosine similarity and the episodic memories by the retrieval score (Park et al. 2023, Sec. 4.1),
        each level best first. Recalled episodic memories count as retrieved now (their recency)."""
        self.check_session(session)
        self.check_text(query, "query")
        long_term_k = self._check_k(long_term_k, self.config.long_term_top_k, "long_term_k")
        episodic_k = self._check_k(episodic_k, self.config.episodic_top_k, "episodic_k")
        query_vector = self._embed([query])[0]
        with self._lock:
            self._known(session)
            now = self._clock()
            turns = self._buffer(session)
            results = [
                Recalled("short_term", t.id, t.role, t.text, float(t.embedding @ query_vector), None, t.created)
                for t in reversed(turns)
            ]
            scored: list[tuple[str, int, float]] = []
            if long_term_k and session in self._long_term:
                ids, similarities = self._long_term[session].search(query_vector, long_term_k)
                scored += [("long_term", int(i), float(s)) for i, s in zip(ids, similarities)]
            episodic_ids = self._episodic_top_k(session, query_vector, episodic_k, {t.id for t in turns}, now)
            scored += episodic_ids
            details = self.database.texts([memory_id for _, memory_id, _ in scored])
            results += [Recalled(level, i, *details[i][:2], score, *details[i][2:]) for level, i, score in scored]
            touched = [memory_id for _, memory_id, _ in episodic_ids]
            if touched:
                self.database.touch(touched, now)
                self._episodic[session].touch(touched, now)
        return results

    def _episodic_top_k(
        self, session: str, query: np.ndarray, k: int, exclude: set[int], now: float
    ) -> list[tuple[str, int, float]]:
        """The k episodic memories of highest retrieval score (those in the short-term buffer excluded)."""
        rows = self._episodic.get(session)
        if not k or rows is None:
            return []
        ids, vectors, importance, last_access = rows.ids, rows.vectors, rows.importance, rows.last_access
        if any(memory_id in rows for memory_id in exclude):  # views of the arrays unless something is left out
            keep = ~np.isin(ids, list(exclude))
            ids, vectors, importance, last_access = ids[keep], vectors[keep], importance[keep], last_access[keep]
        if len(ids) == 0:
            return []
        hours = (np.maximum(now - last_access, 0.0) / 3600).astype(np.float32)
        scores = retrieval_score(
            torch.from_numpy(query),
            torch.from_numpy(vectors),
            torch.from_numpy(hours),
            torch.from_numpy(importance),
            self.config.recency_decay,
            self.config.alpha_recency,
            self.config.alpha_importance,
            self.config.alpha_relevance,
        )
        best = scores.topk(min(k, len(scores)))
        return [("episodic", int(ids[i]), float(s)) for s, i in zip(best.values, best.indices)]

    def carried_state(self, session: str) -> tuple[bytes, int] | None:
        """The session's carried model state and the tokens it has read, None when it carries none."""
        self.check_session(session)
        with self._lock:
            return self.database.session_state(session)

    def conversation(self, session: str) -> list[Turn]:
        """The short-term buffer of a session (empty for a new session)."""
        self.check_session(session)
        with self._lock:
            return self._buffer(session)

    def history(self, session: str, limit: int) -> list[dict]:
        """The last `limit` chat turns of a session, oldest first."""
        self.check_session(session)
        with self._lock:
            self._known(session)
            rows = self.database.history(session, CONVERSATION, limit)
        return [{"id": i, "role": role, "text": text, "created": created} for i, role, text, created in rows]

    def stats(self, session: str | None = None) -> dict:
        """Counts per level (of one session, or of all), the index kind and the database size."""
        with self._lock:
            if session is not None:
                self.check_session(session)
                self._known(session)
                return {
                    "session": session,
                    "short_term_turns": len(self._buffer(session)),
                    "long_term": len(self._long_term.get(session, ())),
                    "episodic": len(self._episodic.get(session, ())),
                }
            return {
                "sessions": len(self.sessions),
                "short_term_turns": len(self._short_term),
                "long_term": sum(len(index) for index in self._long_term.values()),
                "episodic": sum(len(rows) for rows in self._episodic.values()),
                "index": self.config.index,
                "database_bytes": self.database.size_bytes(),
            }

    def close(self) -> None:
        with self._lock:
            self.database.close()
