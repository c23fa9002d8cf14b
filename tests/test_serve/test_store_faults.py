"""Faults of the memory database under one real server, in this order: a second server on the same
database exits at start with one line; a full disk (the server's file size limit) answers 503 and
keeps every acknowledged write; the database removed under the server fails the next write with 503
and /health says why (a file replaced is `tests/test_memory_system/test_database_faults.py`)."""

import sqlite3
import subprocess

import pytest

from tests.conftest import ROOT
from tests.test_serve.conftest import Server, free_port, serve_command, words, write_config

STORE = "/memory/store"
FILE_SIZE_LIMIT = 256 * 1024  # bytes any file of the server may reach: the write-ahead log reaches it first


def rows(database) -> dict[int, str]:
    with sqlite3.connect(database) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return dict(connection.execute("SELECT id, text FROM memories").fetchall())


@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory):
    running = Server(write_config(tmp_path_factory.mktemp("store"), checkpoint), file_size_limit=FILE_SIZE_LIMIT)
    yield running.start()
    running.stop()


@pytest.mark.slow  # a second server loads its model before it finds the lock
def test_a_second_server_on_the_same_database_exits_at_start(server):
    second = subprocess.run(
        serve_command(server.config, free_port()), cwd=ROOT, capture_output=True, text=True, timeout=180
    )
    assert second.returncode == 2
    assert second.stderr.count("\n") == 1 and "Traceback" not in second.stderr
    assert f"process {server.process.pid} holds" in second.stderr and "one server per database" in second.stderr
    with server.client() as client:  # the first is untouched
        assert client.post(STORE, json={"session": "first", "text": "still here"}).status_code == 200


def test_a_full_disk_answers_503_and_keeps_every_acknowledged_write(server):
    acknowledged, refused = {}, None
    with server.client() as client:
        for n in range(400):
            text = f"note {n}: {words(n) * 20}"
            response = client.post(STORE, json={"session": "full", "text": text})
            if response.status_code != 200:
                refused = response
                break
            acknowledged[text] = response.json()["ids"]
        assert refused is not None, "the file size limit was never reached"
        assert refused.status_code == 503 and "cannot write" in refused.json()["detail"], refused.text
        assert client.get("/health").status_code == 200  # a full disk is not a lost file
    stored = rows(server.config.with_name("memory.sqlite"))  # read by another process, the server running
    for text, ids in acknowledged.items():
        assert all(i in stored for i in ids) and text.startswith(stored[ids[0]])


def test_a_database_removed_under_the_server_refuses_the_next_write(server):
    database = server.config.with_name("memory.sqlite")
    with server.client() as client:
        assert client.get("/health").json()["status"] == "ok"
        for suffix in ("", "-wal", "-shm"):
            database.with_name(database.name + suffix).unlink()
        refused = client.post(STORE, json={"session": "s", "text": "after"})
        assert refused.status_code == 503 and f"{database} was removed or replaced" in refused.json()["detail"]
        chat = client.post("/chat/message", json={"session": "s", "text": "Hark.", "max_new_tokens": 2})
        assert chat.status_code == 503
        with client.stream("POST", "/chat/stream", json={"session": "s", "text": "Hark.", "max_new_tokens": 2}) as s:
            assert "event: error" in s.read().decode()  # the reply was streamed, then could not be stored
        health = client.get("/health")
        assert health.status_code == 503 and "restart the service" in health.json()["detail"]
