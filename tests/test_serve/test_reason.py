"""`POST /reason` against a real server (uvicorn subprocess): the structure of each program's steps, its limits
on steps and tokens, its errors, greedy determinism, and plan-and-solve's steps answered with the session's
memories. The model is the tiny byte-level transformer after one training step: its greedy completions never
end early (no newline, no blank), so every program runs to its limits."""

import pytest

from src.reasoning.common import numbered_items
from tests.test_serve.conftest import Server, train_text_model, write_config

QUESTION = "When does the ship sail?"
KINDS = {"cot": {"reasoning"}, "plan": {"plan", "result"}, "reflect": {"draft", "feedback", "revision"}}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    directory = tmp_path_factory.mktemp("reason")
    server = Server(write_config(directory, train_text_model(directory, steps=1))).start()
    try:
        with server.client() as http:
            yield http
    finally:
        server.stop()


def ask(client, mode: str, session: str = "reason", **limits) -> dict:
    response = client.post("/reason", json={"session": session, "text": QUESTION, "mode": mode, **limits})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("mode", sorted(KINDS))
def test_each_program_keeps_to_its_limits_and_repeats_under_greedy_decoding(client, mode):
    result = ask(client, mode, max_steps=2, max_new_tokens=8)
    assert result["mode"] == mode and isinstance(result["answer"], str)
    kinds = [step["kind"] for step in result["steps"]]
    expected = {"cot": ["reasoning"] * 2, "reflect": ["draft", "feedback", "revision", "feedback", "revision"]}
    assert kinds == expected.get(mode, ["plan"] * kinds.count("plan") + ["result"] * kinds.count("plan"))
    assert all(len(step["text"]) <= 8 for step in result["steps"] if step["kind"] != "plan")  # a byte a character
    assert 0 < len(result["answer"]) <= 8
    assert ask(client, mode, max_steps=2, max_new_tokens=8) == result


def test_plan_steps_are_numbered_results_with_recalled_memories(client):
    client.post("/memory/store", json={"session": "voyage", "text": "The ship sails at dawn from Verona."})
    result = ask(client, "plan", session="voyage", max_steps=3, max_new_tokens=16)
    plan = [step for step in result["steps"] if step["kind"] == "plan"]
    results = [step for step in result["steps"] if step["kind"] == "result"]
    assert plan and [step["index"] for step in plan] == list(range(1, len(plan) + 1))
    assert [step["index"] for step in results] == [step["index"] for step in plan]
    assert numbered_items([f"{step['index']}. {step['text']}" for step in plan]) == [step["text"] for step in plan]
    assert any(memory["text"] == "The ship sails at dawn from Verona." for memory in result["memories"])
    assert all("The ship sails at dawn from Verona." in step["memories"] for step in results)


def test_reflection_ends_with_its_last_revision(client):
    result = ask(client, "reflect", max_steps=2, max_new_tokens=8)
    revisions = [step for step in result["steps"] if step["kind"] in ("draft", "revision")]
    assert result["steps"][0]["kind"] == "draft" and result["answer"] == revisions[-1]["text"]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"mode": "tree"}, "mode"),
        ({"mode": "cot", "max_steps": 0}, "max_steps must lie in [1, 8], got 0"),
        ({"mode": "cot", "max_steps": 9}, "max_steps must lie in [1, 8], got 9"),
        ({"mode": "cot", "max_new_tokens": 25}, "max_new_tokens must lie in [1, 24], got 25"),
        ({"mode": "cot", "session": "no spaces"}, "session must be"),
        ({"mode": "cot", "text": ""}, "text is empty"),
    ],
)
def test_bad_requests_are_refused_with_their_reason(client, body, reason):
    response = client.post("/reason", json={"session": "reason", "text": QUESTION, **body})
    assert response.status_code == 422 and reason in str(response.json()["detail"])
