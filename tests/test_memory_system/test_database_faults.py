"""The memory database's guards on a real SQLite file: one process per file (an exclusive lock
beside it, released by `close`), and a file removed or replaced under the open database refuses
every later write instead of acknowledging it into a file that is gone."""

import os
import sqlite3
import time

import numpy as np
import pytest

from src.memory_system.database import DatabaseError, DatabaseUnavailable, MemoryDatabase, NewRow


def row(text: str) -> NewRow:
    return NewRow("s", "long_term", "note", text, 5.0, time.time(), np.ones(4, dtype=np.float32) / 2)


def test_one_database_per_file(tmp_path):
    path = tmp_path / "memory.sqlite"
    first = MemoryDatabase(path, 4)
    with pytest.raises(DatabaseError, match=rf"in use by another server \(process {os.getpid()} holds .*\.lock\)"):
        MemoryDatabase(path, 4)
    first.close()
    MemoryDatabase(path, 4).close()  # closing released the lock
    with pytest.raises(DatabaseError, match="embeddings of size 4"):
        MemoryDatabase(path, 8)
    MemoryDatabase(path, 4).close()  # a refused open releases it too


@pytest.mark.parametrize("change", ["removed", "replaced"])
def test_a_changed_file_refuses_every_later_write(tmp_path, change):
    path = tmp_path / "memory.sqlite"
    database = MemoryDatabase(path, 4)
    (kept,) = database.insert([row("kept")])
    if change == "removed":
        path.unlink()
    else:  # a copy renamed over the file, as a restore from a backup would
        with sqlite3.connect(path) as source, sqlite3.connect(tmp_path / "copy.sqlite") as target:
            source.backup(target)
        os.replace(tmp_path / "copy.sqlite", path)
    for write in (lambda: database.insert([row("lost")]), lambda: database.delete("id = ?", (kept,))):
        with pytest.raises(DatabaseUnavailable, match=f"{path} was removed or replaced while the service ran"):
            write()
    assert "restart the service" in database.failure()
    database.close()
    if change == "replaced":
        with sqlite3.connect(path) as connection:
            assert connection.execute("SELECT id, text FROM memories").fetchall() == [(kept, "kept")]
