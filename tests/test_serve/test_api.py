"""Every endpoint round trip against a real server (uvicorn subprocess, httpx), the token stream
against the whole reply, beam search and greedy replies against the model run here, and session
isolation."""

import json

import pytest
import torch

from src.generation import beam_search, generate
from src.serve.chat import load_model
from src.tasks.tokenizer import ByteTokenizer

PROMPT = "USER:\n{}\n\nMODEL:\n"  # a new session's prompt: no memories, no earlier turns


def events(response) -> list[tuple[str, dict]]:
    """The (event, data) pairs of a server-sent-events body."""
    parsed = []
    for block in response.text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        parsed.append((lines["event"], json.loads(lines["data"])))
    return parsed


@pytest.fixture(scope="module")
def client(server):
    with server.client() as http:
        yield http


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_model(str(checkpoint), "cpu")


def test_health(client, model):
    health = client.get("/health").json()
    assert (health["status"], health["device"], health["session_state"]) == ("ok", "cpu", "replay")
    assert health["model"]["kind"] == "PaperModel" and health["model"]["constant_state"] is False
    assert health["model"]["parameters"] >= model.num_parameters()  # and the LoRA adapter's
    assert set(health["memory"]) >= {"sessions", "long_term", "episodic", "short_term_turns"}
    assert health["uptime_seconds"] > 0


def test_store_recall_delete_forget_and_stats(client):
    first = client.post("/memory/store", json={"session": "notes", "text": "The ship sails at dawn."})
    assert first.status_code == 200 and len(first.json()["ids"]) == 1
    (ship,) = first.json()["ids"]
    episode = client.post(
        "/memory/store",
        json={"session": "notes", "text": "Met Juliet at the ball.", "level": "episodic", "importance": 9.0},
    ).json()["ids"]
    recalled = client.post("/memory/recall", json={"session": "notes", "query": "The ship sails at dawn."}).json()
    by_level = {m["level"]: m for m in recalled["memories"]}
    assert by_level["long_term"]["id"] == ship and by_level["long_term"]["score"] == pytest.approx(1.0, abs=1e-4)
    assert by_level["episodic"]["id"] == episode[0] and by_level["episodic"]["importance"] == 9.0
    stats = client.get("/memory/stats", params={"session": "notes"}).json()
    assert stats == {"session": "notes", "short_term_turns": 0, "long_term": 1, "episodic": 1}
    assert client.delete(f"/memory/{ship}", params={"session": "notes"}).json() == {
        "session": "notes",
        "deleted": [ship],
    }
    assert client.delete(f"/memory/{ship}", params={"session": "notes"}).status_code == 404
    left = client.post("/memory/recall", json={"session": "notes", "query": "ship"}).json()["memories"]
    assert [m["id"] for m in left] == episode
    assert client.post("/memory/forget", json={"session": "notes"}).json()["deleted"] == episode
    assert client.get("/memory/stats", params={"session": "notes"}).status_code == 404
    totals = client.get("/memory/stats").json()
    assert {"sessions", "long_term", "episodic", "short_term_turns", "index", "database_bytes"} <= set(totals)


def test_chat_message_is_greedy_decoding_of_the_prompt_and_is_remembered(client, model):
    reply = client.post("/chat/message", json={"session": "greedy", "text": "Who art thou?"}).json()
    prompt = torch.tensor([ByteTokenizer().encode(PROMPT.format("Who art thou?"))])
    expected = generate(model, prompt, 24)[0, prompt.shape[1] :].tolist()
    stop = expected.index(10) + 1 if 10 in expected else len(expected)
    assert reply["tokens"] == expected[:stop]
    history = client.get("/chat/history/greedy").json()["turns"]
    assert history[0]["role"] == "user" and history[0]["text"] == "Who art thou?"
    assert [t["text"] for t in history[1:]] == ([reply["reply"]] if reply["reply"].strip() else [])
    second = client.post("/chat/message", json={"session": "greedy", "text": "Speak again."}).json()
    assert [m["level"] for m in second["memories"]][:1] == ["short_term"]  # the first turn is in context


def test_beam_search_reply_equals_beam_search_on_the_model(client, model):
    reply = client.post("/chat/message", json={"session": "beam", "text": "Good morrow", "beam_width": 4}).json()
    prompt = torch.tensor([ByteTokenizer().encode(PROMPT.format("Good morrow"))])
    assert reply["tokens"] == beam_search(model, prompt, 24, 4, alpha=0.6, end_id=10).tokens


def test_stream_delivers_the_tokens_in_order_and_equals_the_reply_at_temperature_zero(client):
    whole = client.post("/chat/message", json={"session": "whole", "text": "What news?"}).json()
    streamed = events(client.post("/chat/stream", json={"session": "streamed", "text": "What news?"}))
    tokens = [data for kind, data in streamed if kind == "token"]
    assert [data["index"] for data in tokens] == list(range(len(tokens)))
    assert [data["token"] for data in tokens] == whole["tokens"]
    kind, done = streamed[-1]
    assert kind == "done" and done["reply"] == whole["reply"] and done["tokens"] == whole["tokens"]
    assert "".join(data["text"] for data in tokens) == whole["reply"]
    assert client.get("/chat/history/streamed").json()["turns"][0]["text"] == "What news?"


def test_sampled_stream_equals_sampled_reply_with_the_same_seed(client):
    request = {"text": "Hark!", "temperature": 1.0, "top_k": 20, "seed": 7}
    whole = client.post("/chat/message", json={"session": "sampled-a", **request}).json()
    streamed = events(client.post("/chat/stream", json={"session": "sampled-b", **request}))
    assert streamed[-1][1]["tokens"] == whole["tokens"]


def test_sessions_are_isolated(client):
    alice = client.post("/memory/store", json={"session": "alice", "text": "alice hides the key in the well"})
    client.post("/memory/store", json={"session": "bob", "text": "bob keeps bees", "level": "episodic"})
    client.post("/chat/message", json={"session": "bob", "text": "Where is the key?"})
    alice_id = alice.json()["ids"][0]
    for query in ("alice hides the key in the well", "Where is the key?"):
        body = {"session": "bob", "query": query, "long_term_k": 100, "episodic_k": 100}
        memories = client.post("/memory/recall", json=body).json()["memories"]
        assert memories and all("alice" not in m["text"] and m["id"] != alice_id for m in memories)
    assert client.delete(f"/memory/{alice_id}", params={"session": "bob"}).status_code == 404
    assert all("alice" not in t["text"] for t in client.get("/chat/history/bob").json()["turns"])


def test_incremental_learning_and_adapter_checkpoints(client, server):
    interaction = {"text": "Who art thou?", "reply": "I am Romeo.", "steps": 8}

    def probe() -> float:
        """The loss of the current weights on the interaction (reported before the one step it takes)."""
        return client.post("/train/interaction", json={**interaction, "steps": 1}).json()["loss_before"]

    before = client.get("/train/stats").json()
    learned = client.post("/train/interaction", json=interaction).json()
    assert learned["steps"] == 8 and learned["loss_after"] < learned["loss_before"]
    stats = client.get("/train/stats").json()
    assert stats["steps"] == before["steps"] + 8 and stats["recent_losses"][-8] == learned["loss_before"]
    assert stats["adapter"]["parameters"] > 0 and stats["adapter"]["bytes"] == 4 * stats["adapter"]["parameters"]
    saved = client.post("/train/checkpoint", json={"action": "save"}).json()
    assert saved["tensors"] > 0 and server.config.with_name("adapter.pt").is_file()
    assert client.get("/train/stats").json()["last_save"]["steps"] == stats["steps"]
    at_save = probe()
    client.post("/train/interaction", json={**interaction, "reply": "Nay, I am Tybalt!", "steps": 16})
    assert probe() != at_save  # the second interaction changed the weights
    assert client.post("/train/checkpoint", json={"action": "restore"}).status_code == 200
    assert probe() == at_save  # the very weights that were saved
