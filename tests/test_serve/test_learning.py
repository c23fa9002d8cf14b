"""Incremental LoRA learning in-process: the base stays frozen, a few steps teach one interaction,
and adapter checkpoints are written atomically and restored exactly."""

import pytest
import torch

from src.checkpoints import CheckpointError, temporary_path
from src.config import resolve_model_section
from src.generation import generate
from src.model import PaperModel
from src.serve.config import LearningConfig
from src.serve.learning import IncrementalLearner
from src.tasks.tokenizer import ByteTokenizer
from src.validation import ConfigError

PROMPT, REPLY = ByteTokenizer().encode("USER:\nWho art thou?\n\nMODEL:\n"), ByteTokenizer().encode("I am Romeo.\n")


def model() -> PaperModel:
    """Two attention blocks; a head drawn large enough to express a peaked next-byte distribution."""
    raw = {"vocab_size": 256, "d_model": 32, "tie_embeddings": False}
    raw["blocks"] = [
        {"mixer": {"type": "attention", "n_heads": 2}, "mlp": {"type": "swiglu", "d_hidden": 64}, "repeat": 2}
    ]
    torch.manual_seed(0)
    built = PaperModel(resolve_model_section(raw, "<test>"))
    with torch.no_grad():
        built.head.weight.normal_(0, 1.0)
    return built


def test_a_few_steps_teach_the_reply_and_leave_the_base_frozen():
    learner_model = model()
    base = {name: value.clone() for name, value in learner_model.state_dict().items()}
    learner = IncrementalLearner(learner_model, LearningConfig(lr=1e-2))
    assert all(".A" in name or ".B" in name for name in learner.adapters)
    result = learner.learn(PROMPT, REPLY, 40)
    assert result["loss_after"] < 0.1 < result["loss_before"]
    assert bytes(generate(learner_model, torch.tensor([PROMPT]), len(REPLY))[0, len(PROMPT) :].tolist()) == bytes(REPLY)
    after = learner_model.state_dict()
    for name, value in base.items():  # every base weight is where it was (LoRA wraps the targets)
        stored = after.get(name, after.get(name.replace(".weight", ".base.weight")))
        assert torch.equal(stored, value), name


def test_adapter_checkpoint_round_trip_is_exact_and_atomic(tmp_path):
    learner_model = model()
    learner = IncrementalLearner(learner_model, LearningConfig(lr=1e-2))
    learner.learn(PROMPT, REPLY, 5)
    path = tmp_path / "adapters" / "adapter.pt"
    saved = learner.save(path)
    assert saved["tensors"] == len(learner.adapters) and path.is_file() and not temporary_path(path).exists()
    with torch.no_grad():
        expected = learner_model(torch.tensor([PROMPT]))
    learner.learn(PROMPT, ByteTokenizer().encode("Nay, I am Tybalt!\n"), 10)
    with torch.no_grad():
        assert not torch.equal(learner_model(torch.tensor([PROMPT])), expected)
    learner.restore(path)
    with torch.no_grad():
        assert torch.equal(learner_model(torch.tensor([PROMPT])), expected)
    first = path.read_bytes()
    learner.learn(PROMPT, REPLY, 3)
    learner.save(path)  # replaced whole, never appended to
    assert path.read_bytes() != first and not temporary_path(path).exists()


def test_restoring_a_foreign_or_missing_adapter_is_refused(tmp_path):
    path = tmp_path / "adapter.pt"
    IncrementalLearner(model(), LearningConfig(rank=2)).save(path)
    with pytest.raises(CheckpointError, match="rank 2"):
        IncrementalLearner(model(), LearningConfig(rank=4)).restore(path)
    with pytest.raises(CheckpointError, match="no checkpoint file"):
        IncrementalLearner(model(), LearningConfig()).restore(tmp_path / "missing.pt")
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        IncrementalLearner(model(), LearningConfig()).restore(path)


def test_targets_that_name_no_layer_are_a_config_error():
    with pytest.raises(ConfigError, match=r"learning\.targets"):
        IncrementalLearner(model(), LearningConfig(targets=["in_proj"]))
