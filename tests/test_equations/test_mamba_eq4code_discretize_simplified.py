"""The official code's discretisation: exact Ā, B̄ = ΔB; first-order agreement with Eq. (4)."""

import math

import torch

from src.layers.selective_ssm import discretize_simplified, discretize_zoh


def test_hand_worked():
    A_bar, B_bar = discretize_simplified(
        torch.tensor([0.5], dtype=torch.float64),
        torch.tensor([[-2.0, -4.0]], dtype=torch.float64),
        torch.tensor([3.0, 5.0], dtype=torch.float64),
    )
    torch.testing.assert_close(A_bar, torch.tensor([[math.exp(-1.0), math.exp(-2.0)]], dtype=torch.float64))
    torch.testing.assert_close(B_bar, torch.tensor([[1.5, 2.5]], dtype=torch.float64))


def test_agrees_with_zoh_to_second_order_in_delta():
    # B̄_zoh = (e^{ΔA} - 1)/A B = ΔB + Δ²AB/2 + O(Δ³): halving Δ quarters the difference.
    A = torch.tensor([[-1.0, -3.0]], dtype=torch.float64)
    B = torch.tensor([[2.0, 1.0]], dtype=torch.float64)
    errors = []
    for delta in (1e-2, 5e-3, 2.5e-3):
        d = torch.tensor([[delta]], dtype=torch.float64)
        A_s, B_s = discretize_simplified(d, A, B)
        A_z, B_z = discretize_zoh(d, A, B)
        torch.testing.assert_close(A_s, A_z, rtol=0, atol=0)  # Ā is exact in both
        errors.append((B_z - B_s).abs().max().item())
        torch.testing.assert_close(B_z - B_s, (delta**2 * A * B / 2).view(1, 1, 2), rtol=0.02, atol=0)
    assert 3.9 < errors[0] / errors[1] < 4.1 and 3.9 < errors[1] / errors[2] < 4.1
