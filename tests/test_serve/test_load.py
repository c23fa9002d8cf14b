"""Load: 32 concurrent clients x 25 stores each; afterwards every acknowledged store is recalled,
nothing is lost and nothing is duplicated."""

import sqlite3
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.test_serve.conftest import Server, words

CLIENTS, STORES = 32, 25


@pytest.mark.slow
def test_concurrent_stores_are_all_kept_once(server):
    assert_stores_are_all_kept_once(server, CLIENTS, STORES)


def assert_stores_are_all_kept_once(server: Server, clients: int, stores: int) -> None:
    """`clients` concurrent clients (a multiple of 4, in 4 sessions) store `stores` texts each, then recall
    each of their texts: every acknowledged store is found first, once, and is in the file."""

    def client_run(client_index: int) -> dict[str, int]:
        acknowledged = {}
        with server.client() as client:
            for n in range(stores):
                text = f"client {client_index:02d} store {n:02d}: {words(client_index * stores + n)}"
                response = client.post("/memory/store", json={"session": f"load-{client_index % 4}", "text": text})
                assert response.status_code == 200, response.text
                (acknowledged[text],) = response.json()["ids"]
        return acknowledged

    with ThreadPoolExecutor(clients) as pool:
        runs = list(pool.map(client_run, range(clients)))
    acknowledged = {text: memory_id for run in runs for text, memory_id in run.items()}
    assert len(acknowledged) == clients * stores and len(set(acknowledged.values())) == clients * stores

    with server.client() as client:
        for session in range(4):
            stats = client.get("/memory/stats", params={"session": f"load-{session}"}).json()
            assert stats["long_term"] == clients // 4 * stores

    def recall_own(run: dict[str, int]) -> None:  # each text recalls itself first (cosine 1)
        with server.client() as client:
            for text, memory_id in run.items():
                session = f"load-{int(text.split()[1]) % 4}"
                body = {"session": session, "query": text, "long_term_k": 1, "episodic_k": 0}
                (top,) = client.post("/memory/recall", json=body).json()["memories"]
                assert (top["id"], top["text"]) == (memory_id, text)

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(recall_own, runs))
    with sqlite3.connect(server.config.with_name("memory.sqlite")) as connection:
        rows = connection.execute("SELECT id, text FROM memories WHERE session LIKE 'load-%'").fetchall()
    assert sorted(rows) == sorted((memory_id, text) for text, memory_id in acknowledged.items())
