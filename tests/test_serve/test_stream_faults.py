"""Faults of a streamed reply, against real servers: a client that drops `/chat/stream` after three
events does not block another client's `/chat/message` or `/train/interaction`, and SIGTERM during
a stream ends the server within `SHUTDOWN_SECONDS` (plus the step in flight and the database close).

The servers here generate long replies (a stop token the model never writes, thousands of tokens),
so a stream is still running when the client goes away or the signal comes."""

import json
import signal
import sqlite3
import subprocess

import pytest

from src.serve.server import SHUTDOWN_SECONDS
from tests.test_serve.conftest import Server, write_config

LONG_REPLY = {"max_new_tokens": 20000, "stop": "\x7f"}  # DEL: a byte the tinyshakespeare model never writes
EXIT_SLACK = 20  # seconds beyond SHUTDOWN_SECONDS for the step in flight and the interpreter's exit on 2 busy cores


def long_server(directory, checkpoint) -> Server:
    return Server(write_config(directory, checkpoint, chat=LONG_REPLY)).start()


def read_events(lines, count: int) -> list[dict]:
    """The next `count` events of a server-sent-events stream's lines (`response.iter_lines()`), read as they arrive."""
    found = []
    while len(found) < count:
        line = next(lines)
        if line.startswith("data: "):
            found.append(json.loads(line[len("data: ") :]))
    return found


@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory):
    running = long_server(tmp_path_factory.mktemp("long_replies"), checkpoint)
    yield running
    running.stop()


def test_a_dropped_stream_does_not_block_other_clients(server):
    with server.client(timeout=30) as dropping, server.client(timeout=30) as other:
        for attempt in range(3):  # the same, three times: nothing held by one dropped stream is left for the next
            with dropping.stream("POST", "/chat/stream", json={"session": f"drop-{attempt}", "text": "Speak."}) as s:
                assert [event["index"] for event in read_events(s.iter_lines(), 3)] == [0, 1, 2]
            # the connection is closed here, mid-reply; the other client is answered (timeout: a hang fails)
            reply = other.post("/chat/message", json={"session": "other", "text": "Hark.", "max_new_tokens": 4})
            assert reply.status_code == 200 and len(reply.json()["tokens"]) == 4
            learned = other.post("/train/interaction", json={"text": "Hark.", "reply": "Peace.", "steps": 1})
            assert learned.status_code == 200, learned.text


def test_two_streams_interleave(server):
    """Two clients reading streams at once both advance: neither holds the model between its tokens."""
    with (
        server.client(timeout=30) as first,
        server.client(timeout=30) as second,
        first.stream("POST", "/chat/stream", json={"session": "one", "text": "Speak."}) as a,
    ):
        lines = a.iter_lines()
        read_events(lines, 3)
        with second.stream("POST", "/chat/stream", json={"session": "two", "text": "Speak."}) as b:
            assert [event["index"] for event in read_events(b.iter_lines(), 3)] == [0, 1, 2]
        assert [event["index"] for event in read_events(lines, 3)] == [3, 4, 5]


def test_sigterm_during_a_stream_exits_within_the_bound(server):
    """The module's last test: it ends the module's server."""
    logged = len(server.log.read_text())  # what the earlier tests left in the log
    try:
        with (
            server.client(timeout=30) as client,
            client.stream("POST", "/chat/stream", json={"session": "term", "text": "Speak."}) as stream,
        ):
            read_events(stream.iter_lines(), 3)
            server.process.send_signal(signal.SIGTERM)
            try:
                server.process.wait(timeout=SHUTDOWN_SECONDS + EXIT_SLACK)
            except subprocess.TimeoutExpired:
                pytest.fail(f"the server was still running {SHUTDOWN_SECONDS + EXIT_SLACK} s after SIGTERM")
        # uvicorn raises the signal again once it has shut down, so the status is the signal's
        assert server.process.returncode == -signal.SIGTERM, server.log.read_text()
        assert "Traceback" not in server.log.read_text()[logged:]
        with sqlite3.connect(server.config.with_name("memory.sqlite")) as connection:
            assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        server.stop()
