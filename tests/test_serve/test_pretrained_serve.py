"""`memory-models serve` on a local Hugging Face directory (`pretrained:`): tiny random Llama (float32) and
Qwen2 (NF4) directories written here with a BPE tokenizer trained on the committed corpus and their family's
chat template. A real server (uvicorn subprocess, httpx) formats the message with the template, replies
greedily as the model built here does, stores and recalls memories, learns an interaction with LoRA, and
(NF4) passes the load test of `test_load.py` (its 32 concurrent clients, 10 stores each rather than 50: the
stores' durability is `test_load`'s, here the NF4 model embeds under concurrency) and the SIGKILL test of
`test_crash.py`."""

import pytest
import torch
import yaml

from src.adapted.config import resolve_base
from src.adapted.tiny_base import write_tiny_base
from src.generation import generate
from src.runs import build_model
from src.serve.config import load_serve_config
from src.validation import ConfigError
from tests.conftest import CORPUS
from tests.test_serve.conftest import Server, write_config
from tests.test_serve.test_crash import assert_acknowledged_writes_survive_sigkill
from tests.test_serve.test_load import CLIENTS, assert_stores_are_all_kept_once

transformers = pytest.importorskip("transformers")

STOP = {"llama": "<|eot_id|>", "qwen2": "<|im_end|>"}
CASES = [("llama", "none"), ("qwen2", "nf4")]


@pytest.fixture(scope="module")
def chat_bases(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("chat_bases")
    return {kind: write_tiny_base(root / kind, CORPUS, kind, chat_template=True) for kind in STOP}


def serve_config(directory, base, kind: str, quantization: str):
    """A serve config of the directory `base` (`pretrained:` instead of a checkpoint), its end-of-turn token as stop."""
    learning = {"adapter_path": str(directory / "adapter.pt"), "steps": 3, "targets": ["q_proj", "v_proj"]}
    path = write_config(directory, "unused", chat={"stop": STOP[kind], "max_new_tokens": 12}, learning=learning)
    raw = yaml.safe_load(path.read_text())
    del raw["checkpoint"]
    raw["pretrained"] = {"directory": str(base), "quantization": quantization}
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module", params=CASES, ids=[f"{kind}-{quantization}" for kind, quantization in CASES])
def served(request, chat_bases, tmp_path_factory):
    kind, quantization = request.param
    directory = tmp_path_factory.mktemp(f"serve_{kind}")
    running = Server(serve_config(directory, chat_bases[kind], kind, quantization)).start()
    yield kind, quantization, running
    running.stop()


@pytest.mark.slow  # two servers, each loading transformers and a base (one quantised to NF4)
def test_the_reply_follows_the_chat_template(served, chat_bases):
    kind, quantization, server = served
    directory = str(chat_bases[kind])
    model = build_model({"base": resolve_base({"directory": directory, "quantization": quantization}, "b", "t"),
                         "adapters": []}).eval()  # fmt: skip
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory, local_files_only=True)
    messages = [{"role": "user", "content": "Who art thou?"}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prompt = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    expected = generate(model, prompt, 12)[0, prompt.shape[1] :].tolist()
    stop = tokenizer.convert_tokens_to_ids(STOP[kind])
    expected = expected[: expected.index(stop) + 1] if stop in expected else expected
    with server.client() as client:
        health = client.get("/health").json()
        assert health["model"]["kind"] == "AdaptedModel" and health["model"]["constant_state"] is False
        reply = client.post("/chat/message", json={"session": "a", "text": "Who art thou?"}).json()
        assert reply["tokens"] == expected
        assert reply["reply"] == tokenizer.decode([t for t in expected if t != stop], skip_special_tokens=True)
        second = client.post("/chat/message", json={"session": "a", "text": "And whence?"})
        assert second.status_code == 200
        history = client.get("/chat/history/a").json()["turns"]
        assert [turn["role"] for turn in history] == ["user", "assistant"] * 2


@pytest.mark.slow
def test_memories_and_learning_on_a_pretrained_model(served):
    _, _, server = served
    with server.client() as client:
        stored = client.post("/memory/store", json={"session": "m", "text": "The ship sails at dawn."}).json()
        recalled = client.post("/memory/recall", json={"session": "m", "query": "The ship sails at dawn."}).json()
        long_term = [memory for memory in recalled["memories"] if memory["level"] == "long_term"]
        assert long_term[0]["id"] == stored["ids"][0] and long_term[0]["score"] == pytest.approx(1.0, abs=1e-4)
        learned = client.post("/train/interaction", json={"text": "Who art thou?", "reply": "Romeo."}).json()
        assert learned["steps"] == 3 and learned["loss_after"] < learned["loss_before"]
        stats = client.get("/train/stats").json()
        assert stats["steps"] == 3 and stats["adapter"]["targets"] == ["q_proj", "v_proj"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"pretrained": {"quantization": "int4"}}, "pretrained.quantization"),
        ({"pretrained": {"freeze": False}}, "key 'pretrained.freeze' must be true"),
        ({"pretrained": {"directory": "/no/such/directory"}}, "key 'pretrained.directory': no directory"),
        ({"checkpoint": "run/checkpoint.pt"}, "give one of the keys 'checkpoint'"),
    ],
)
def test_a_bad_pretrained_section_is_named(chat_bases, tmp_path, change, message):
    path = serve_config(tmp_path, chat_bases["llama"], "llama", "none")
    raw = yaml.safe_load(path.read_text())
    for key, value in change.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) else value
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=message):
        load_serve_config(path)


@pytest.mark.slow
def test_the_load_test_on_the_nf4_model(served):
    """`test_load`'s 32 concurrent clients (10 stores each), each acknowledged store recalled once, on the NF4 Qwen2."""
    _, quantization, server = served
    if quantization != "nf4":
        pytest.skip("the load test runs on the NF4 model")
    assert_stores_are_all_kept_once(server, CLIENTS, stores=10)


@pytest.mark.slow
def test_acknowledged_writes_survive_sigkill_on_the_nf4_model(served):
    """`test_crash`'s SIGKILL during concurrent stores and chats, on the module's NF4 server: the last test of
    that server (killed, restarted on its database, stopped)."""
    _, quantization, server = served
    if quantization != "nf4":
        pytest.skip("the SIGKILL test runs on the NF4 model")
    assert_acknowledged_writes_survive_sigkill(server)
