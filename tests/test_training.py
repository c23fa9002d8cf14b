"""Schedule and loss of the training loop, against hand-computed values."""

import math

import torch

from src.config import TrainConfig
from src.tasks import IGNORE
from src.training import learning_rate, masked_loss_and_accuracy

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
