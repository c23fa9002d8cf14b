"""The kept keys' weights (Lample et al. 2019, Sec. 3.1, Eq. 2): a softmax over the k kept scores, float64 loop."""

import math

import torch

from src.layers.product_keys import key_weights


def test_matches_float64_loop():
    scores = torch.tensor([[2.0, 1.0, -0.5], [4.0, 4.0, 4.0]], dtype=torch.float64)
    expected = [[math.exp(s) / sum(math.exp(t) for t in row) for s in row] for row in scores.tolist()]
    torch.testing.assert_close(key_weights(scores), torch.tensor(expected, dtype=torch.float64), rtol=1e-14, atol=0)
    assert key_weights(scores)[1].tolist() == [1 / 3, 1 / 3, 1 / 3]
