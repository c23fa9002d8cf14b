"""Zero-order hold, Eq. (4): against the matrix-exponential closed form and a worked case."""

import math

import pytest
import torch

from src.layers.selective_ssm import discretize_zoh


def zoh_by_matrix_exponential(delta: float, A: torch.Tensor, B: torch.Tensor):
    """exp([[ΔA, ΔB], [0, 0]]) = [[Ā, B̄], [0, 1]] for a full (here diagonal) A (Van Loan)."""
    N = A.shape[0]
    block = torch.zeros(N + 1, N + 1, dtype=torch.float64)
    block[:N, :N] = delta * torch.diag(A)
    block[:N, N] = delta * B
    expm = torch.linalg.matrix_exp(block)
    return torch.diagonal(expm[:N, :N]), expm[:N, N]


def test_matches_matrix_exponential():
    torch.manual_seed(0)
    A = -torch.rand(3, 5, dtype=torch.float64) * 4 - 0.1
    delta = torch.rand(2, 3, dtype=torch.float64) + 0.01
    B = torch.randn(2, 5, dtype=torch.float64)
    A_bar, B_bar = discretize_zoh(delta, A, B)
    assert A_bar.shape == B_bar.shape == (2, 3, 5)
    for b in range(2):
        for d in range(3):
            expected_A, expected_B = zoh_by_matrix_exponential(delta[b, d].item(), A[d], B[b])
            torch.testing.assert_close(A_bar[b, d], expected_A, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(B_bar[b, d], expected_B, rtol=1e-12, atol=1e-12)


def test_hand_worked():
    # A = -1, Δ = ln 2: Ā = 1/2 and B̄ = (1/2 - 1) / (-1) * B = B / 2.
    A_bar, B_bar = discretize_zoh(
        torch.tensor([math.log(2)], dtype=torch.float64),
        torch.tensor([[-1.0]], dtype=torch.float64),
        torch.tensor([3.0], dtype=torch.float64),
    )
    torch.testing.assert_close(A_bar, torch.tensor([[0.5]], dtype=torch.float64))
    torch.testing.assert_close(B_bar, torch.tensor([[1.5]], dtype=torch.float64))


def test_large_steps_saturate_without_overflow():
    A_bar, B_bar = discretize_zoh(torch.tensor([1e4]), torch.tensor([[-2.0]]), torch.tensor([4.0]))
    assert A_bar.item() == 0.0
    torch.testing.assert_close(B_bar, torch.tensor([[2.0]]))  # -(0 - 1)/2 * 4


def test_gradcheck():
    delta = (torch.rand(2, 3, dtype=torch.float64) + 0.1).requires_grad_()
    A = (-torch.rand(3, 2, dtype=torch.float64) - 0.5).requires_grad_()
    B = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(discretize_zoh, (delta, A, B))


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="A must be non-zero"):
        discretize_zoh(torch.ones(1, 2), torch.zeros(2, 3), torch.ones(1, 3))
    with pytest.raises(ValueError, match="B has N=4"):
        discretize_zoh(torch.ones(1, 2), -torch.ones(2, 3), torch.ones(1, 4))
