"""Surprise with momentum, Titans Eq. (14): hand-worked values per sequence, shape errors named."""

import pytest
import torch

from src.layers.neural_memory import surprise_momentum


def test_hand_worked_per_sequence():
    S = torch.tensor([[[1.0, 2.0]], [[3.0, -1.0]]], dtype=torch.float64)
    grad = torch.tensor([[[4.0, 0.0]], [[-2.0, 2.0]]], dtype=torch.float64)
    eta = torch.tensor([0.5, 0.0], dtype=torch.float64)
    theta = torch.tensor([0.25, 1.0], dtype=torch.float64)
    out = surprise_momentum(S, grad, eta, theta)
    assert out.tolist() == [[[0.5 - 1.0, 1.0]], [[2.0, -2.0]]]


def test_mismatched_gradient_is_named():
    with pytest.raises(ValueError, match="grad has leading dimensions"):
        surprise_momentum(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2), torch.zeros(2))
