"""Router probabilities, Switch Transformer Eq. (1): softmax over chapters, float64 loop."""

import math

import torch

from src.layers.routing import router_probs


def test_matches_float64_loop():
    logits = torch.tensor([[0.0, 1.0, -2.0], [3.0, 3.0, 3.0]], dtype=torch.float64)
    expected = torch.tensor(
        [[math.exp(x) / sum(math.exp(y) for y in row) for x in row] for row in logits.tolist()], dtype=torch.float64
    )
    torch.testing.assert_close(router_probs(logits), expected, rtol=1e-14, atol=0)
    assert router_probs(logits)[1].tolist() == [1 / 3, 1 / 3, 1 / 3]
