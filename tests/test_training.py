"""Schedule and loss of the training loop, against hand-computed values."""

import json
import math

import pytest
import torch

from src.config import TrainConfig, load_experiment
from src.runs import ABSENT, METRICS, differing_keys
from src.tasks import IGNORE
from src.training import learning_rate, masked_loss_and_accuracy, train
from tests.test_cli import Interrupted, tiny_experiment

CFG = TrainConfig(
    steps=110,
    batch_size=1,
    lr=1.0,
    warmup_steps=10,
    weight_decay=0.0,
    grad_clip=1.0,
    seed=0,
    out_dir="unused",
    eval_every=10,
    min_lr_ratio=0.1,
)


def test_warmup_then_cosine():
    assert learning_rate(0, CFG) == 0.1
    assert learning_rate(9, CFG) == 1.0
    assert learning_rate(10, CFG) == 1.0
    assert math.isclose(learning_rate(60, CFG), 0.1 + 0.9 * 0.5)  # half-way down the cosine
    assert math.isclose(learning_rate(110, CFG), 0.1)


def test_masked_loss_scores_only_targets():
    logits = torch.tensor([[[0.0, 10.0], [5.0, 0.0], [2.0, 0.0]]])
    targets = torch.tensor([[1, IGNORE, 1]])
    loss, accuracy = masked_loss_and_accuracy(logits, targets)
    expected = (math.log(1 + math.exp(-10)) + math.log(1 + math.exp(2))) / 2
    assert math.isclose(loss.item(), expected, rel_tol=1e-6)
    assert accuracy.item() == 0.5  # position 0 right, position 2 wrong, position 1 not scored


def test_differing_keys_names_each_difference_by_its_path():
    first = {"model": {"d_model": 16, "blocks": [{"mixer": {"n_heads": 4}}]}, "steps": [1, 2]}
    second = {"model": {"d_model": 16, "blocks": [{"mixer": {"n_heads": 2}}], "tie": True}, "steps": [1, 2, 3]}
    assert differing_keys(first, second, "config") == [
        ("config.model.blocks[0].mixer.n_heads", 4, 2),
        ("config.model.tie", ABSENT, True),
        ("config.steps", [1, 2], [1, 2, 3]),
    ]
    assert differing_keys(first, first, "config") == []


def test_resume_drops_metrics_lines_past_the_checkpoint(tmp_path):
    """Lines a killed run logged after its last checkpoint (one of them cut short) are not kept."""
    experiment = load_experiment(tiny_experiment(tmp_path, steps=4, eval_every=2))

    def stop_after_step_2(line):
        if line.startswith("step      2/4"):
            raise Interrupted

    with pytest.raises(Interrupted):
        train(experiment, log=stop_after_step_2)
    metrics = tmp_path / "run" / METRICS
    metrics.write_text(metrics.read_text() + '{"step": 4, "loss": 0.5}\n{"step": 6, "lo')
    train(experiment, log=lambda line: None, resume=True)
    logged = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [line["step"] for line in logged] == [2, 4] and "eval_loss" in logged[1]
