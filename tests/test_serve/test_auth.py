"""The bearer token: with the token variable set, every route but /health answers 401 without it."""

import httpx
import pytest

from tests.test_serve.conftest import TOKEN

ROUTES = [
    ("POST", "/chat/message", {"session": "auth", "text": "hi"}),
    ("POST", "/chat/stream", {"session": "auth", "text": "hi"}),
    ("GET", "/chat/history/auth", None),
    ("POST", "/memory/store", {"session": "auth", "text": "hi"}),
    ("POST", "/memory/recall", {"session": "auth", "query": "hi"}),
    ("DELETE", "/memory/1?session=auth", None),
    ("POST", "/memory/forget", {"session": "auth"}),
    ("GET", "/memory/stats", None),
    ("POST", "/train/interaction", {"text": "hi", "reply": "ho"}),
    ("POST", "/train/checkpoint", {"action": "save"}),
    ("GET", "/train/stats", None),
    ("GET", "/no/such/route", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", f"Basic {TOKEN}", TOKEN, f"Bearer {TOKEN}x"])
def test_every_route_but_health_needs_the_token(server, method, path, body, authorization):
    headers = {"Authorization": authorization} if authorization else {}
    response = httpx.request(method, server.url + path, json=body, headers=headers, timeout=30)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer" and "bearer token" in response.json()["detail"]


def test_health_is_open_and_the_token_opens_the_rest(server):
    assert httpx.get(server.url + "/health", timeout=30).status_code == 200
    with server.client() as client:
        assert client.post("/memory/store", json={"session": "auth-ok", "text": "let in"}).status_code == 200
        assert client.get("/memory/stats", params={"session": "auth-ok"}).json()["long_term"] == 1
