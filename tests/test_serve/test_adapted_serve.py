"""`memory-models serve` on an adapted pretrained model: a real server (uvicorn subprocess, httpx) loads a
`memory-models train` checkpoint of a memory adapter + LoRA on a tiny Llama, replies through the base's
tokenizer as the model run here does, streams the same reply, stores memories embedded by the model, and
learns an interaction with LoRA through the training step."""

from pathlib import Path

import pytest
import torch
import yaml

from src.config import load_experiment
from src.generation import generate
from src.serve.chat import load_model
from src.training import train
from tests.test_adapted_distributed import adapted_experiment
from tests.test_serve.conftest import Server, write_config
from tests.test_serve.test_api import PROMPT, events

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def adapted_checkpoint(tmp_path_factory, tiny_bases):
    path = adapted_experiment(tmp_path_factory.mktemp("adapted_chat"), tiny_bases["llama"], steps=2, eval_every=2)
    raw = yaml.safe_load(Path(path).read_text())
    raw["model"]["adapters"] = raw["model"]["adapters"][:1]  # the memory adapter; the service adds its own LoRA
    Path(path).write_text(yaml.safe_dump(raw))
    experiment = load_experiment(path)
    train(experiment, log=lambda line: None)
    return f"{experiment.train.out_dir}/checkpoint.pt"


@pytest.fixture(scope="module")
def adapted_server(adapted_checkpoint, tmp_path_factory):
    directory = tmp_path_factory.mktemp("adapted_serve")
    learning = {"adapter_path": str(directory / "adapter.pt"), "steps": 3, "targets": ["q_proj", "v_proj"]}
    running = Server(write_config(directory, adapted_checkpoint, learning=learning)).start()
    yield running
    running.stop()


def test_an_adapted_checkpoint_is_served(adapted_server, adapted_checkpoint):
    model = load_model(adapted_checkpoint, "cpu")
    with adapted_server.client() as client:
        reply = client.post("/chat/message", json={"session": "a", "text": "Who art thou?"}).json()
        prompt = torch.tensor([model.tokenizer.encode(PROMPT.format("Who art thou?"))])
        expected = generate(model, prompt, 24)[0, prompt.shape[1] :].tolist()
        stop = model.tokenizer.encode("\n")[0]
        assert reply["tokens"] == (expected[: expected.index(stop) + 1] if stop in expected else expected)
        assert reply["reply"] == model.tokenizer.decode([t for t in reply["tokens"] if t != stop])
        streamed = events(client.post("/chat/stream", json={"session": "b", "text": "Who art thou?"}))
        assert [data["token"] for kind, data in streamed if kind == "token"] == reply["tokens"]
        stored = client.post("/memory/store", json={"session": "a", "text": "The ship sails at dawn."}).json()
        recalled = client.post("/memory/recall", json={"session": "a", "query": "The ship sails at dawn."}).json()
        long_term = [memory for memory in recalled["memories"] if memory["level"] == "long_term"]
        assert long_term[0]["id"] == stored["ids"][0] and long_term[0]["score"] == pytest.approx(1.0, abs=1e-4)
        learned = client.post("/train/interaction", json={"text": "Who art thou?", "reply": "Romeo."}).json()
        assert learned["steps"] == 3 and learned["loss_after"] < learned["loss_before"]


def test_more_new_tokens_than_the_base_positions_is_refused_at_start(adapted_checkpoint, tmp_path, capsys):
    from src.cli import main

    assert main(["serve", str(write_config(tmp_path, adapted_checkpoint, chat={"max_new_tokens": 5000}))]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "key 'chat.max_new_tokens': 5000 new tokens leave no room for a prompt in the model's 4096 positions" in err
