"""A bounded fuzzer over the HTTP bodies and paths of a real server: whatever a client sends, the
answer is a 200 or a documented 4xx with its reason, never a 500 or a bare 400 (hypothesis,
derandomized: the same cases on every run). Bodies are any JSON (huge integers, NaN, lone
surrogates, nesting), an endpoint's own fields with any values, or raw bytes."""

import json
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_serve.conftest import Server, write_config

ENDPOINTS = {
    "/chat/message": ["session", "text", "max_new_tokens", "temperature", "top_k", "top_p", "seed", "beam_width"],
    "/chat/stream": ["session", "text", "max_new_tokens", "temperature", "top_k", "top_p", "seed"],
    "/memory/store": ["session", "text", "level", "role", "importance"],
    "/memory/recall": ["session", "query", "long_term_k", "episodic_k"],
    "/memory/forget": ["session", "older_than_hours"],
    "/train/interaction": ["text", "reply", "steps"],
    "/train/checkpoint": ["action"],
}
KNOWN = "fuzz"  # a session with memories, so that fuzzed requests reach past the unknown-session check
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.sampled_from([0, 1, 2, 4, 100, 2**63 - 1, 2**63, -1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from([KNOWN, "save", "restore", "episodic", "long_term", "plan", "Hark.", "\ud800", "a\x00b", ""]),
)
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
)


@st.composite
def bodies(draw, fields: list[str]) -> bytes:
    kind = draw(st.sampled_from(["fields", "fields", "json", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "json":
        return json.dumps(draw(values)).encode()
    chosen = draw(st.lists(st.sampled_from(fields), unique=True))
    body = {field: draw(scalars) for field in chosen}
    return json.dumps(body).encode()


@pytest.fixture(scope="module")
def client(checkpoint, tmp_path_factory):
    config = write_config(
        tmp_path_factory.mktemp("fuzz"), checkpoint, chat={"max_new_tokens": 4}, learning={"max_steps": 2}
    )
    server = Server(config).start()
    with server.client() as http:
        assert http.post("/memory/store", json={"session": KNOWN, "text": "The ship sails at dawn."}).status_code == 200
        yield http
    server.stop()


def assert_answered_without_500(response) -> None:
    """200, or the documented 404 (unknown), 409 (no adapter saved) or 422 (bad input) with its reason
    (or 307: a path ending in '/' is redirected to the one without)."""
    assert response.status_code in (200, 307, 404, 409, 422), response.text[:300]
    if response.status_code >= 400:
        detail = response.json()["detail"]
        assert detail, "an error without its reason"


@FUZZ
@given(data=st.data())
def test_no_body_answers_500(client, data):
    path = data.draw(st.sampled_from(sorted(ENDPOINTS)))
    body = data.draw(bodies(ENDPOINTS[path]))
    assert_answered_without_500(client.post(path, content=body, headers={"content-type": "application/json"}))


@FUZZ
@given(
    memory_id=st.integers(min_value=-(2**80), max_value=2**80),
    session=st.one_of(st.just(KNOWN), st.text(max_size=20)),
    limit=st.one_of(st.integers(min_value=-(2**70), max_value=2**70), st.floats().map(str)),
)
def test_no_path_or_query_answers_500(client, memory_id, session, limit):
    assert_answered_without_500(client.delete(f"/memory/{memory_id}", params={"session": session}))
    assert_answered_without_500(client.get(f"/chat/history/{quote(session, safe='')}", params={"limit": limit}))
    assert_answered_without_500(client.get("/memory/stats", params={"session": session}))
