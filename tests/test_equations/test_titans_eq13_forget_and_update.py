"""Forgetting gate, Titans Eq. (13): hand-worked values, alpha = 1 forgets everything."""

import torch

from src.layers.neural_memory import forget_and_update


def test_hand_worked():
    M = torch.tensor([[2.0, 4.0], [1.0, -1.0]], dtype=torch.float64)
    S = torch.tensor([[1.0, 1.0], [0.5, 0.5]], dtype=torch.float64)
    alpha = torch.tensor([0.25, 1.0], dtype=torch.float64)
    assert forget_and_update(M, S, alpha).tolist() == [[2.5, 4.0], [0.5, 0.5]]
