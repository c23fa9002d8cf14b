"""Associative memory loss, Titans Eq. (12): a hand-worked case and a float64 loop."""

import torch

from src.layers.neural_memory import associative_loss


def test_hand_worked():
    prediction = torch.tensor([[1.0, 2.0], [0.5, -1.0]], dtype=torch.float64)
    v = torch.tensor([[0.0, 4.0], [0.5, 1.0]], dtype=torch.float64)
    assert associative_loss(prediction, v).tolist() == [1.0 + 4.0, 0.0 + 4.0]


def test_matches_float64_loop():
    g = torch.Generator().manual_seed(1)
    prediction, v = (torch.randn(3, 4, 5, generator=g, dtype=torch.float64) for _ in range(2))
    expected = torch.tensor(
        [
            [sum((float(prediction[a, b, c]) - float(v[a, b, c])) ** 2 for c in range(5)) for b in range(4)]
            for a in range(3)
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(associative_loss(prediction, v), expected, rtol=1e-13, atol=1e-13)
