"""train.checkpoint_blocks and train.loss_chunk_tokens change memory, not values or gradients."""

from dataclasses import replace

import pytest
import torch
import yaml

from src.config import load_experiment
from src.model import PaperModel
from src.tasks import IGNORE
from src.training import loss_and_accuracy
from src.validation import ConfigError
from tests.conftest import ROOT

CONFIG = ROOT / "configs" / "mamba_tiny.yaml"


def test_checkpointed_chunked_loss_accuracy_and_gradients_equal_the_plain_ones():
    torch.manual_seed(0)
    experiment = load_experiment(CONFIG)
    model = PaperModel.from_config(CONFIG).double()
    ids = torch.randint(64, (2, 17))
    targets = torch.randint(64, (2, 17))
    targets[0, :5] = IGNORE
    plain_cfg = replace(experiment.train, checkpoint_blocks=False, loss_chunk_tokens=None)
    lean_cfg = replace(experiment.train, checkpoint_blocks=True, loss_chunk_tokens=5)

    plain, plain_accuracy = loss_and_accuracy(model, ids, targets, plain_cfg)
    plain_grads = torch.autograd.grad(plain, list(model.parameters()))
    lean, lean_accuracy = loss_and_accuracy(model, ids, targets, lean_cfg)
    lean_grads = torch.autograd.grad(lean, list(model.parameters()))

    torch.testing.assert_close(lean, plain, rtol=1e-12, atol=1e-12)
    scored = targets != IGNORE
    expected_accuracy = (model(ids).argmax(-1) == targets)[scored].double().mean()
    assert lean_accuracy.item() == plain_accuracy.item() == pytest.approx(expected_accuracy.item())
    for g, g_ref in zip(lean_grads, plain_grads):
        torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-12)


def test_loss_chunk_of_zero_tokens_is_refused_naming_key_and_file(tmp_path):
    raw = yaml.safe_load(CONFIG.read_text())
    raw["train"]["loss_chunk_tokens"] = 0
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=rf"{path}: key 'train.loss_chunk_tokens'"):
        load_experiment(path)
