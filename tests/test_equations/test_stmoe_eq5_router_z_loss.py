"""ST-MoE router z-loss, Eq. (5): a known logits matrix."""

import math

import torch

from src.layers.routing import router_z_loss


def test_known_logits():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]], dtype=torch.float64)
    # log-sum-exp per row: log 2 and log 4
    expected = (math.log(2.0) ** 2 + math.log(4.0) ** 2) / 2
    assert math.isclose(router_z_loss(logits).item(), expected, rel_tol=1e-14)


def test_shifting_logits_up_raises_it():
    logits = torch.randn(5, 4, dtype=torch.float64)
    assert router_z_loss(logits + 3) > router_z_loss(logits - logits.logsumexp(-1, keepdim=True))
