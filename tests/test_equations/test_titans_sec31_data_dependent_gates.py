"""Data-dependent alpha, eta, theta (Titans Sec. 3.1): a hand-worked token and their ranges."""

import math

import torch

from src.layers.neural_memory import data_dependent_gates


def test_hand_worked_token():
    x = torch.tensor([[[1.0, 2.0]]], dtype=torch.float64)
    W = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    bias = torch.tensor([0.0, -2.0, 1.0], dtype=torch.float64)
    alpha, eta, theta = data_dependent_gates(x, W, bias, theta_max=0.5)

    def sigmoid(a):
        return 1 / (1 + math.exp(-a))

    assert math.isclose(alpha.item(), sigmoid(1.0), rel_tol=1e-14)
    assert math.isclose(eta.item(), sigmoid(0.0), rel_tol=1e-14)
    assert math.isclose(theta.item(), 0.5 * (1 - sigmoid(0.0)) * sigmoid(0.0), rel_tol=1e-14)


def test_ranges():
    x = 10 * torch.randn(4, 7, 3, dtype=torch.float64)
    alpha, eta, theta = data_dependent_gates(
        x, torch.randn(3, 3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), 0.3
    )
    assert ((alpha >= 0) & (alpha <= 1) & (eta >= 0) & (eta <= 1) & (theta >= 0) & (theta <= 0.3 * (1 - eta))).all()
