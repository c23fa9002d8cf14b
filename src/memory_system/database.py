"""The SQLite file behind the long-term and episodic stores: one table, vectors as BLOBs.

Every memory is one row of `memories` (its level is `long_term` or `episodic`), so a write that
touches both levels is one transaction. A chat session carried by the model's state
(`src.serve.session_state`) has one row of `session_states` (the state's bytes, the tokens it has
read) and one row of `session_reads` per exchange (the token ids it read), written in the
exchange's transaction and dropped in the transaction of any delete of the session's memories.
The file runs in WAL mode with `synchronous=FULL`: a transaction whose COMMIT returned is on disk and
survives a killed process (SQLite's own guarantee), which is what "acknowledged" means for the service.
All SQL is parameterised; no text a client sends is ever part of a statement. One connection, used
under the caller's lock.

One process per file: an exclusive `flock` on `<database>.lock` (which names the holder's pid) is
taken before the file is opened and held until `close`, so a second server on the same file stops
at start. A write checks, before and after its transaction, that the path still names the file
that was opened (device and inode): a file removed or replaced under the running process fails
every write from then on with `DatabaseUnavailable`, instead of acknowledging rows into an unlinked
file; a write SQLite cannot make (a full disk) fails with it too, and is rolled back.
"""

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO, cast

import numpy as np

LEVELS = ("long_term", "episodic")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS memories (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session TEXT NOT NULL,
    level TEXT NOT NULL CHECK (level IN ('long_term', 'episodic')),
    role TEXT NOT NULL,
    text TEXT NOT NULL,
    importance REAL NOT NULL,
    created REAL NOT NULL,
    last_access REAL NOT NULL,
    embedding BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS memories_by_session ON memories (session, level, id);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS session_states (
    session TEXT PRIMARY KEY,
    state BLOB NOT NULL,
    tokens INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS session_reads (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session TEXT NOT NULL,
    exchange INTEGER NOT NULL,
    ids BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS session_reads_by_session ON session_reads (session, id);
"""
_TOKEN_ID = np.int32


class DatabaseError(ValueError):
    """The memory database cannot be used (unreadable, in use, written for another embedding size); names the file."""


class DatabaseUnavailable(DatabaseError):
    """A write the database cannot take now (file removed or replaced, disk full); nothing of it was kept."""


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file at `path`, None when there is none."""
    try:
        status = path.stat()
    except FileNotFoundError:
        return None
    return status.st_dev, status.st_ino


def _lock(path: Path) -> TextIO:
    """The open `<path>.lock`, exclusively locked for this process (DatabaseError when another holds it)."""
    lock_path = path.with_name(path.name + ".lock")
    handle = lock_path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise DatabaseError(
            f"{path}: in use by another server (process {holder} holds {lock_path}); one server per database: "
            "stop that one or give this one another database"
        ) from None
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


@dataclass(frozen=True)
class Row:
    """One memory as stored: the vector is a (d,) float32 unit vector."""

    id: int
    session: str
    level: str
    role: str
    text: str
    importance: float
    created: float
    last_access: float
    embedding: np.ndarray


@dataclass(frozen=True)
class NewRow:
    """A memory to insert (the database assigns its id)."""

    session: str
    level: str
    role: str
    text: str
    importance: float
    created: float
    embedding: np.ndarray


@dataclass(frozen=True)
class CarriedState:
    """A session's model state after an exchange (`ModelState.to_bytes`), written with the exchange.

    `read` holds the token ids the model read in the exchange, `tokens_before` the count it had read
    before it: the write keeps the state only while the stored count is still `tokens_before` (a
    forget in between resets the session, and the state is then dropped, not written).
    """

    session: str
    state: bytes
    read: list[int]
    tokens_before: int


class MemoryDatabase:
    """The `memories` table of one SQLite file, for embeddings of size `dim`."""

    def __init__(self, path: str | Path, dim: int):
        self.path, self.dim = Path(path), dim
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock = _lock(self.path)
        except OSError as error:
            raise DatabaseError(f"{self.path}: cannot lock the memory database: {error}") from error
        try:
            self._connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._connection.execute("PRAGMA journal_mode=WAL")
            self._connection.execute("PRAGMA synchronous=FULL")
            self._connection.executescript(_SCHEMA)
            stored = self._connection.execute("SELECT value FROM settings WHERE key = 'embedding_dim'").fetchone()
            if stored is None:
                self._connection.execute("INSERT INTO settings VALUES ('embedding_dim', ?)", (str(dim),))
        except (sqlite3.Error, OSError) as error:
            self._lock.close()
            raise DatabaseError(f"{self.path}: cannot open the memory database: {error}") from error
        self._identity, self._failure = _identity(self.path), None
        if stored is not None and int(stored[0]) != dim:
            self.close()
            raise DatabaseError(
                f"{self.path}: holds embeddings of size {stored[0]}, but the model's d_model is {dim} "
                "(a database belongs to the model that wrote it)"
            )

    def insert(self, rows: list[NewRow], carried: CarriedState | None = None) -> list[int]:
        """Insert `rows` in one transaction, with a session's carried state when given (its read ids
        recorded against the first row, the exchange's user turn); return the ids once committed."""
        ids: list[int] = []
        with self._transaction() as cursor:
            for row in rows:
                cursor.execute(
                    "INSERT INTO memories (session, level, role, text, importance, created, last_access, embedding)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (row.session, row.level, row.role, row.text, row.importance, row.created, row.created,
                     row.embedding.astype(np.float32).tobytes()),
                )  # fmt: skip
                ids.append(cast(int, cursor.lastrowid))  # set by the INSERT just run
            if carried is not None:
                self._carry(cursor, carried, ids[0])
        return ids

    def _carry(self, cursor: sqlite3.Cursor, carried: CarriedState, exchange: int) -> None:
        stored = cursor.execute("SELECT tokens FROM session_states WHERE session = ?", (carried.session,)).fetchone()
        if (0 if stored is None else stored[0]) != carried.tokens_before:
            self._reset_sessions(cursor, [carried.session])
            return
        cursor.execute(
            "INSERT INTO session_states (session, state, tokens) VALUES (?, ?, ?) "
            "ON CONFLICT (session) DO UPDATE SET state = excluded.state, tokens = excluded.tokens",
            (carried.session, carried.state, carried.tokens_before + len(carried.read)),
        )
        cursor.execute(
            "INSERT INTO session_reads (session, exchange, ids) VALUES (?, ?, ?)",
            (carried.session, exchange, np.array(carried.read, dtype=_TOKEN_ID).tobytes()),
        )

    def _reset_sessions(self, cursor: sqlite3.Cursor, sessions: list[str]) -> None:
        for session in sessions:
            cursor.execute("DELETE FROM session_states WHERE session = ?", (session,))
            cursor.execute("DELETE FROM session_reads WHERE session = ?", (session,))

    def session_state(self, session: str) -> tuple[bytes, int] | None:
        """A session's carried model state and the number of tokens it has read (None: nothing carried)."""
        return self._connection.execute(
            "SELECT state, tokens FROM session_states WHERE session = ?", (session,)
        ).fetchone()

    def delete(self, where: str, parameters: tuple) -> list[tuple[int, str, str]]:
        """Delete the rows matching `where` (a fixed clause with ? placeholders); return their (id, session, level).

        The carried state of every session that loses a row is dropped in the same transaction: a state
        cannot unread a memory, so the session starts again from what is left (`src.serve.session_state`).
        """
        with self._transaction() as cursor:
            doomed = cursor.execute(f"SELECT id, session, level FROM memories WHERE {where}", parameters).fetchall()
            cursor.execute(f"DELETE FROM memories WHERE {where}", parameters)
            self._reset_sessions(cursor, sorted({session for _, session, _ in doomed}))
        return doomed

    def touch(self, ids: list[int], when: float) -> None:
        """Set the last-retrieval time of memories `ids` (the recency of the retrieval score)."""
        with self._transaction() as cursor:
            cursor.executemany("UPDATE memories SET last_access = ? WHERE id = ?", [(when, i) for i in ids])

    def texts(self, ids: list[int]) -> dict[int, tuple[str, str, float, float]]:
        """id -> (role, text, importance, created) for the given ids."""
        marks = ",".join("?" * len(ids))
        query = f"SELECT id, role, text, importance, created FROM memories WHERE id IN ({marks})"
        return {row[0]: row[1:] for row in self._connection.execute(query, ids)}

    def session_of(self, memory_id: int) -> str | None:
        row = self._connection.execute("SELECT session FROM memories WHERE id = ?", (memory_id,)).fetchone()
        return row[0] if row else None

    def history(self, session: str, roles: tuple[str, ...], limit: int) -> list[tuple[int, str, str, float]]:
        """The last `limit` episodic (id, role, text, created) of `session` with a role in `roles`, oldest first."""
        marks = ",".join("?" * len(roles))
        rows = self._connection.execute(
            f"SELECT id, role, text, created FROM memories WHERE session = ? AND level = 'episodic' "
            f"AND role IN ({marks}) ORDER BY id DESC LIMIT ?",
            (session, *roles, limit),
        ).fetchall()
        return rows[::-1]

    def rows(self) -> Iterator[Row]:
        """Every stored memory, in id order."""
        columns = "id, session, level, role, text, importance, created, last_access, embedding"
        for values in self._connection.execute(f"SELECT {columns} FROM memories ORDER BY id"):
            vector = np.frombuffer(values[8], dtype=np.float32)
            if vector.shape != (self.dim,):
                raise DatabaseError(f"{self.path}: memory {values[0]} has an embedding of {vector.size} values")
            yield Row(*values[:8], vector)

    def size_bytes(self) -> int:
        """Bytes on disk of the database and its write-ahead log."""
        wal = self.path.with_name(self.path.name + "-wal")
        return self.path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)

    def integrity_check(self) -> str:
        """`PRAGMA integrity_check`: 'ok' for a sound file."""
        return self._connection.execute("PRAGMA integrity_check").fetchone()[0]

    def failure(self) -> str | None:
        """Why writes are refused (the file was removed or replaced since it was opened), None while it is there."""
        if self._failure is None and _identity(self.path) != self._identity:
            self._failure = (
                f"{self.path} was removed or replaced while the service ran: writes are refused from then on "
                "(none is acknowledged into a file that is gone); restart the service to use the file there now"
            )
        return self._failure

    def close(self) -> None:
        self._connection.close()
        self._lock.close()  # releases the flock

    def _check_file(self) -> None:
        if reason := self.failure():
            raise DatabaseUnavailable(reason)

    @contextlib.contextmanager
    def _transaction(self) -> Generator[sqlite3.Cursor]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back when the body raises; the file is checked before and after."""
        self._check_file()
        cursor = self._connection.cursor()
        try:
            cursor.execute("BEGIN IMMEDIATE")
            try:
                yield cursor
            except BaseException:
                cursor.execute("ROLLBACK")
                raise
            cursor.execute("COMMIT")
        except sqlite3.OperationalError as error:  # e.g. "database or disk is full": the transaction is rolled back
            if self._connection.in_transaction:
                self._connection.rollback()
            reason = f"{self.path}: cannot write: {error}; nothing of this request was kept"
            raise DatabaseUnavailable(reason) from error
        self._check_file()
