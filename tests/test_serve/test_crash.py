"""Crash: SIGKILL the server during concurrent writes, restart it on the same database: every
acknowledged write is there and `PRAGMA integrity_check` passes. Also: without the token variable
set, the routes are open."""

import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.test_serve.conftest import Server, words, write_config

WRITERS = 8
MAX_WRITES = 400  # per writer: the loop is bounded even if the kill came late
KILL_AFTER = 150  # acknowledged writes before the SIGKILL


@pytest.mark.slow
def test_acknowledged_writes_survive_sigkill(checkpoint, tmp_path):
    # no token variable: open routes
    assert_acknowledged_writes_survive_sigkill(Server(write_config(tmp_path, checkpoint)).start())


def assert_acknowledged_writes_survive_sigkill(server: Server) -> None:
    """Writers store and chat until KILL_AFTER writes are acknowledged, the running `server` is SIGKILLed, and
    every acknowledged write is in its database and recalled after a restart (the server is stopped at the end)."""
    acknowledged: dict[str, list[int]] = {}
    lock = threading.Lock()
    enough = threading.Event()
    interrupted = []  # writers whose request met the dead server

    def writer(index: int) -> None:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for n in range(MAX_WRITES):
                text = f"writer {index} write {n}: {words(index * MAX_WRITES + n)}"
                kind = ("/memory/store", {"session": f"crash-{index}", "text": text})
                if n % 5 == 4:  # chat exchanges write two levels in one transaction
                    kind = ("/chat/message", {"session": f"crash-{index}", "text": text, "max_new_tokens": 4})
                try:
                    response = client.post(kind[0], json=kind[1])
                except httpx.TransportError:
                    interrupted.append(index)
                    return  # the server is gone: this write was never acknowledged
                assert response.status_code == 200, response.text
                with lock:
                    body = response.json()
                    acknowledged[text] = body["ids"] if "ids" in body else body["stored"]
                    if len(acknowledged) >= KILL_AFTER:
                        enough.set()

    try:
        with ThreadPoolExecutor(WRITERS) as pool:
            futures = [pool.submit(writer, i) for i in range(WRITERS)]
            assert enough.wait(timeout=240), "too few writes were acknowledged before the deadline"
            server.kill()
            killed_at = len(acknowledged)
            for future in futures:
                future.result()
        assert killed_at >= KILL_AFTER and interrupted  # the kill came during the writes
        database = server.config.with_name("memory.sqlite")
        with sqlite3.connect(database) as connection:  # opening replays the write-ahead log
            assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            stored = dict(connection.execute("SELECT id, text FROM memories").fetchall())
        for text, ids in acknowledged.items():
            assert ids and all(i in stored for i in ids), f"acknowledged write lost: {text!r}"
            assert stored[ids[0]] == text
        server.start()  # the same config and database
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for text, ids in acknowledged.items():
                _, index, _, n = text.split(":")[0].split()
                if int(n) % 5 != 4:  # a plain store (every fifth write was a chat exchange)
                    session = f"crash-{index}"
                    body = {"session": session, "query": text, "long_term_k": 1, "episodic_k": 0}
                    top = client.post("/memory/recall", json=body).json()["memories"][-1]  # after the chat turns
                    assert (top["level"], top["id"], top["text"]) == ("long_term", ids[0], text)
    finally:
        server.stop()
