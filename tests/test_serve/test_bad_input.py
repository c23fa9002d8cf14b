"""Bad input over HTTP: every rejected request gets a 4xx with its reason, and the database is left
exactly as it was (all rows and the id sequence compared before and after)."""

import json
import sqlite3

import pytest

BAD = [
    # (name, method, path, body: dict (JSON) or bytes (raw), status, reason)
    (
        "malformed JSON",
        "POST",
        "/memory/store",
        b'{"session": "known", "text": ',
        422,
        "JSON decode error (Expecting value)",
    ),
    ("not an object", "POST", "/memory/store", b"[1, 2]", 422, "valid dictionary"),
    ("missing field", "POST", "/memory/store", {"session": "known"}, 422, "body.text: Field required"),
    ("missing session", "POST", "/chat/message", {"text": "hi"}, 422, "body.session: Field required"),
    (
        "wrong type",
        "POST",
        "/memory/store",
        {"session": "known", "text": 5},
        422,
        "body.text: Input should be a valid string",
    ),
    (
        "string for a number",
        "POST",
        "/memory/store",
        {"session": "known", "text": "x", "importance": "high"},
        422,
        "body.importance",
    ),
    (
        "bool for an int",
        "POST",
        "/memory/recall",
        {"session": "known", "query": "x", "long_term_k": True},
        422,
        "body.long_term_k",
    ),
    (
        "unknown field",
        "POST",
        "/memory/store",
        {"session": "known", "text": "x", "admin": True},
        422,
        "Extra inputs are not permitted",
    ),
    ("empty text", "POST", "/memory/store", {"session": "known", "text": ""}, 422, "text is empty"),
    ("blank text", "POST", "/chat/message", {"session": "known", "text": " \n\t "}, 422, "text is empty"),
    (
        "oversized text",
        "POST",
        "/memory/store",
        {"session": "known", "text": "x" * 2049},
        422,
        "2049 UTF-8 bytes, more than the limit of 2048",
    ),
    ("oversized in bytes", "POST", "/chat/message", {"session": "known", "text": "é" * 1025}, 422, "2050 UTF-8 bytes"),
    (
        "oversized query",
        "POST",
        "/memory/recall",
        {"session": "known", "query": "q" * 3000},
        422,
        "query is 3000 UTF-8 bytes",
    ),
    (
        "NUL byte in text",
        "POST",
        "/memory/store",
        {"session": "known", "text": "a\x00b"},
        422,
        "control character '\\x00'",
    ),
    ("NUL byte in session", "POST", "/memory/store", {"session": "kno\x00wn", "text": "x"}, 422, "session must be"),
    ("lone surrogate", "POST", "/memory/store", b'{"session": "known", "text": "\\ud800"}', 422, "lone surrogate"),
    (
        "SQL in session",
        "POST",
        "/memory/store",
        {"session": "x'; DROP TABLE memories;--", "text": "x"},
        422,
        "session must be",
    ),
    ("SQL in a path", "GET", "/chat/history/x';DELETE FROM memories;--", None, 422, "session must be"),
    (
        "1 MB payload",
        "POST",
        "/memory/store",
        {"session": "known", "text": "x" * 1_000_000},
        413,
        "over the limit of 65536 bytes",
    ),
    (
        "unknown session recall",
        "POST",
        "/memory/recall",
        {"session": "nobody", "query": "x"},
        404,
        "unknown session 'nobody'",
    ),
    ("unknown session history", "GET", "/chat/history/nobody", None, 404, "unknown session"),
    ("unknown session stats", "GET", "/memory/stats?session=nobody", None, 404, "unknown session"),
    ("unknown session forget", "POST", "/memory/forget", {"session": "nobody"}, 404, "unknown session"),
    ("unknown memory", "DELETE", "/memory/987654?session=known", None, 404, "no memory 987654"),
    ("delete without session", "DELETE", "/memory/1", None, 422, "query.session: Field required"),
    ("id beyond SQLite's integers", "DELETE", f"/memory/{2**70}?session=known", None, 404, f"no memory {2**70}"),
    ("negative id", "DELETE", f"/memory/{-(2**70)}?session=known", None, 404, "no memory"),
    ("invalid UTF-8", "POST", "/memory/store", b'{"session": "known", "text": "\xff\xfe"}', 422, "not valid UTF-8"),
    ("deep nesting", "POST", "/memory/store", b"[" * 20000 + b"]" * 20000, 422, "more than 32 levels deep"),
    (
        "nested in a field",
        "POST",
        "/memory/store",
        b'{"session": "known", "text": ' + b"[" * 40 + b"]" * 40 + b"}",
        422,
        "levels deep",
    ),
    (
        "brackets in a string",
        "POST",
        "/memory/store",
        b'{"session": "known", "text": "' + b"[" * 40 + b'", "x": 1}',
        422,
        "Extra inputs",
    ),
    (
        "message over the prompt limit",
        "POST",
        "/chat/stream",
        {"session": "known", "text": "x" * 1500},
        422,
        "text: the prompt is 1,515 tokens, more than the limit of 1,024 (chat.context_bytes)",
    ),
    ("huge seed", "POST", "/chat/message", {"session": "known", "text": "hi", "seed": 2**70}, 422, "seed must lie"),
    (
        "NaN temperature",
        "POST",
        "/chat/message",
        b'{"session": "known", "text": "hi", "temperature": NaN}',
        422,
        "temperature must be a finite number",
    ),
    (
        "infinite importance",
        "POST",
        "/memory/store",
        b'{"session": "known", "text": "x", "importance": Infinity}',
        422,
        "importance must be a number in [1, 10]",
    ),
    ("huge k", "POST", "/memory/recall", {"session": "known", "query": "x", "long_term_k": 2**64}, 422, "long_term_k"),
    ("huge history limit", "GET", f"/chat/history/known?limit={2**70}", None, 422, "limit must lie in [1, 1000]"),
    ("huge steps", "POST", "/train/interaction", {"text": "hi", "reply": "ho", "steps": 2**70}, 422, "steps must lie"),
    ("bad level", "POST", "/memory/store", {"session": "known", "text": "x", "level": "semantic"}, 422, "body.level"),
    (
        "importance out of range",
        "POST",
        "/memory/store",
        {"session": "known", "text": "x", "importance": 11.0},
        422,
        "importance must be a number in [1, 10]",
    ),
    (
        "k out of range",
        "POST",
        "/memory/recall",
        {"session": "known", "query": "x", "episodic_k": 1000},
        422,
        "episodic_k must be an integer in [0, 100]",
    ),
    (
        "negative temperature",
        "POST",
        "/chat/message",
        {"session": "known", "text": "hi", "temperature": -1.0},
        422,
        "temperature must be",
    ),
    (
        "too many tokens",
        "POST",
        "/chat/message",
        {"session": "known", "text": "hi", "max_new_tokens": 10_000},
        422,
        "max_new_tokens must lie in [1, 24]",
    ),
    (
        "beam too wide",
        "POST",
        "/chat/message",
        {"session": "known", "text": "hi", "beam_width": 100},
        422,
        "beam_width must lie in [1, 8]",
    ),
    (
        "sampled beam",
        "POST",
        "/chat/message",
        {"session": "known", "text": "hi", "beam_width": 2, "temperature": 0.5},
        422,
        "beam_width > 1 needs temperature 0",
    ),
    (
        "streamed beam",
        "POST",
        "/chat/stream",
        {"session": "known", "text": "hi", "beam_width": 2},
        422,
        "beam search does not stream",
    ),
    (
        "top_p out of range",
        "POST",
        "/chat/stream",
        {"session": "known", "text": "hi", "top_p": 1.5},
        422,
        "top_p must lie in (0, 1]",
    ),
    (
        "too many steps",
        "POST",
        "/train/interaction",
        {"text": "hi", "reply": "ho", "steps": 1000},
        422,
        "steps must lie in [1, 32]",
    ),
    ("empty reply", "POST", "/train/interaction", {"text": "hi", "reply": ""}, 422, "reply is empty"),
    ("bad action", "POST", "/train/checkpoint", {"action": "delete"}, 422, "body.action"),
    ("history limit", "GET", "/chat/history/known?limit=0", None, 422, "limit must lie in [1, 1000]"),
    (
        "negative age",
        "POST",
        "/memory/forget",
        {"session": "known", "older_than_hours": -2.0},
        422,
        "older_than_hours must be",
    ),
]


def snapshot(path) -> tuple:
    """Every row and the AUTOINCREMENT counter, read by a connection of the test's own."""
    with sqlite3.connect(path) as connection:
        rows = connection.execute("SELECT * FROM memories ORDER BY id").fetchall()
        sequence = connection.execute("SELECT * FROM sqlite_sequence").fetchall()
    return rows, sequence


@pytest.fixture(scope="module")
def client(server):
    with server.client() as http:
        assert http.post("/chat/message", json={"session": "known", "text": "Good even."}).status_code == 200
        yield http


@pytest.mark.parametrize(("name", "method", "path", "body", "status", "reason"), BAD, ids=[case[0] for case in BAD])
def test_rejected_with_reason_and_nothing_written(client, server, name, method, path, body, status, reason):
    database = server.config.with_name("memory.sqlite")
    before = snapshot(database)
    raw = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
    headers = {"content-type": "application/json"} if raw is not None else {}
    response = client.request(method, path, content=raw, headers=headers)
    assert response.status_code == status, response.text[:300]
    detail = response.json()["detail"]
    assert reason in (detail if isinstance(detail, str) else " | ".join(detail))
    assert len(response.content) < 2000  # the reason, not an echo of the input
    assert snapshot(database) == before


def test_sql_metacharacters_in_text_are_data(client, server):
    hostile = "Robert'); DROP TABLE memories;-- \" ' % _ \\"
    stored = client.post("/memory/store", json={"session": "known", "text": hostile}).json()["ids"]
    recalled = client.post("/memory/recall", json={"session": "known", "query": hostile, "episodic_k": 0}).json()
    top = next(memory for memory in recalled["memories"] if memory["level"] == "long_term")
    assert top["id"] == stored[0] and top["text"] == hostile
    with sqlite3.connect(server.config.with_name("memory.sqlite")) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert connection.execute("SELECT text FROM memories WHERE id = ?", stored).fetchone()[0] == hostile


def test_a_long_message_is_cut_to_the_prompt_limit_when_asked(client):
    body = {"session": "known", "text": "x" * 1500, "max_new_tokens": 2, "truncate": True}
    assert client.post("/chat/message", json=body).status_code == 200
