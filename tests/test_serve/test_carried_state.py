"""A session carried by the model's own state (`chat.session_state: carry`) on a tiny byte-level Mamba, against
a real server (uvicorn subprocess, SQLite file): replies after a restart equal those without one, the stored
state equals one forward pass over what the session read, forget resets it, and a SIGKILL during chats never
leaves a state that does not match the stored exchanges."""

import dataclasses
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

from src.serve.chat import load_model
from src.serve.server import build_service
from src.validation import ConfigError
from tests.test_serve.conftest import Server, words, write_config
from tests.test_serve.test_api import events

MESSAGES = ["Who art thou?", "Whence comest thou?", "What news from Verona?", "Speak, good nurse.", "Farewell."]
CARRY = {"session_state": "carry", "max_new_tokens": 16}
MAMBA_LEARNING = {"targets": ["in_proj", "out_proj"]}


@pytest.fixture(scope="module")
def mamba(mamba_checkpoint):
    return load_model(str(mamba_checkpoint), "cpu")


def carry_server(directory, checkpoint) -> Server:
    directory.mkdir(exist_ok=True)
    return Server(write_config(directory, checkpoint, chat=CARRY, learning=MAMBA_LEARNING))


def chat(server: Server, session: str, messages: list[str]) -> list[dict]:
    with server.client() as client:
        return [client.post("/chat/message", json={"session": session, "text": text}).json() for text in messages]


def stored_state(database, session: str) -> tuple[bytes, int, list[tuple[int, list[int]]]] | None:
    """The session's carried state, its token count and its reads (exchange id, token ids), from the file."""
    with sqlite3.connect(database) as connection:
        row = connection.execute("SELECT state, tokens FROM session_states WHERE session = ?", (session,)).fetchone()
        reads = connection.execute("SELECT exchange, ids FROM session_reads WHERE session = ? ORDER BY id", (session,))
        reads = [(exchange, torch.frombuffer(bytearray(ids), dtype=torch.int32).tolist()) for exchange, ids in reads]
    return None if row is None else (row[0], row[1], reads)


def assert_state_is_one_forward_pass(model, data: bytes, reads: list[list[int]]) -> None:
    everything = torch.tensor([[token for read in reads for token in read]])
    with torch.no_grad():
        _, expected = model.step(everything, None)
    carried = model.state_from_bytes(data)
    torch.testing.assert_close(dataclasses.astuple(carried), dataclasses.astuple(expected), atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def carrying(mamba_checkpoint, tmp_path_factory):
    running = carry_server(tmp_path_factory.mktemp("carry"), mamba_checkpoint).start()
    yield running
    running.stop()


def test_replies_after_a_restart_equal_replies_without_one(carrying):
    straight = chat(carrying, "straight", MESSAGES)
    before = chat(carrying, "restarted", MESSAGES[:3])
    carrying.stop()
    carrying.start()  # the same config and database
    after = chat(carrying, "restarted", MESSAGES[3:])
    assert [reply["tokens"] for reply in before + after] == [reply["tokens"] for reply in straight]


def test_the_carried_state_is_one_forward_pass_over_the_conversation(carrying, mamba):
    replies = chat(carrying, "forward", MESSAGES)
    data, tokens, reads = stored_state(carrying.config.with_name("memory.sqlite"), "forward")
    assert [exchange for exchange, _ in reads] == [reply["stored"][0] for reply in replies]
    assert tokens == sum(len(ids) for _, ids in reads)
    assert_state_is_one_forward_pass(mamba, data, [ids for _, ids in reads])
    transcript = mamba.tokenizer.decode([token for _, ids in reads for token in ids])
    position = 0
    for text, reply in zip(MESSAGES, replies):
        position = transcript.index(f"USER:\n{text}\n\nMODEL:\n{reply['reply']}\n\n", position) + 1
    first = mamba.tokenizer.decode(reads[1][1])
    assert first.endswith(f"USER:\n{MESSAGES[1]}\n\nMODEL:\n{replies[1]['reply']}\n\n")
    assert "USER:\nWho art thou?" not in first  # the second turn continues the state: no replayed turn


def test_the_stream_carries_the_state_as_the_reply_does(carrying):
    with carrying.client() as client:
        streamed = client.post("/chat/stream", json={"session": "stream", "text": MESSAGES[0]})
        assert streamed.status_code == 200
        tokens = [data["token"] for kind, data in events(streamed) if kind == "token"]
    assert tokens == chat(carrying, "message", MESSAGES[:1])[0]["tokens"]
    database = carrying.config.with_name("memory.sqlite")
    assert stored_state(database, "stream")[0] == stored_state(database, "message")[0]


def test_forget_resets_the_state(carrying):
    chat(carrying, "forgetful", MESSAGES[:2])
    database = carrying.config.with_name("memory.sqlite")
    assert stored_state(database, "forgetful") is not None
    with carrying.client() as client:
        assert client.post("/memory/forget", json={"session": "forgetful"}).status_code == 200
    assert stored_state(database, "forgetful") is None
    again, fresh = chat(carrying, "forgetful", MESSAGES[:1]), chat(carrying, "fresh", MESSAGES[:1])
    assert again[0]["tokens"] == fresh[0]["tokens"]


def test_forgetting_one_memory_restarts_from_what_is_left(carrying, mamba):
    replies = chat(carrying, "partial", MESSAGES[:3])
    database = carrying.config.with_name("memory.sqlite")
    with carrying.client() as client:
        first_turn = replies[0]["stored"][0]
        assert client.delete(f"/memory/{first_turn}", params={"session": "partial"}).status_code == 200
    assert stored_state(database, "partial") is None
    chat(carrying, "partial", MESSAGES[3:4])
    data, _, reads = stored_state(database, "partial")
    replayed = mamba.tokenizer.decode(reads[0][1])
    assert MESSAGES[0] not in replayed.split("USER:\n")[1:] and f"USER:\n{MESSAGES[1]}\n\n" in replayed
    assert_state_is_one_forward_pass(mamba, data, [ids for _, ids in reads])


def test_carry_needs_a_state_that_does_not_grow(checkpoint, tmp_path):
    with pytest.raises(ConfigError, match=r"key 'chat\.session_state' is 'carry'"):
        build_service(str(write_config(tmp_path, checkpoint, chat=CARRY)))


WRITERS = 4
KILL_AFTER = 40  # acknowledged exchanges before the SIGKILL


@pytest.mark.slow
def test_a_sigkill_during_chats_leaves_states_that_match_the_stored_exchanges(carrying, mamba):
    """The module's last test: its server is killed, restarted on the same database and stopped."""
    server = carrying
    acknowledged, lock, enough = [], threading.Lock(), threading.Event()

    def writer(index: int) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for n in range(200):
                body = {"session": f"kill-{index}", "text": words(index * 1000 + n), "max_new_tokens": 4}
                try:
                    response = client.post("/chat/message", json=body)
                except httpx.TransportError:
                    return
                assert response.status_code == 200, response.text
                with lock:
                    acknowledged.append((body["session"], response.json()["stored"][0]))
                    if len(acknowledged) >= KILL_AFTER:
                        enough.set()

    try:
        with ThreadPoolExecutor(WRITERS) as pool:
            futures = [pool.submit(writer, i) for i in range(WRITERS)]
            assert enough.wait(timeout=240), "too few exchanges were acknowledged before the deadline"
            server.kill()
            for future in futures:
                future.result()
        database = server.config.with_name("memory.sqlite")
        with sqlite3.connect(database) as connection:
            assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            user_turns = connection.execute("SELECT session, id FROM memories WHERE role = 'user'").fetchall()
        assert set(acknowledged) <= set(user_turns)
        for index in range(WRITERS):
            session = f"kill-{index}"
            data, tokens, reads = stored_state(database, session)
            assert [exchange for exchange, _ in reads] == sorted(i for s, i in user_turns if s == session)
            assert tokens == sum(len(ids) for _, ids in reads)
            assert_state_is_one_forward_pass(mamba, data, [ids for _, ids in reads])
        server.start()
        assert len(chat(server, "kill-0", MESSAGES[:1])[0]["stored"]) >= 2
    finally:
        server.stop()
