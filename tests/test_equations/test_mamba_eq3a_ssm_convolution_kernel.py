"""LTI kernel, Eq. (3a): K_k = C Ā^k B̄, against a loop of matrix powers."""

import torch

from src.layers.selective_ssm import ssm_convolution_kernel


def test_matches_matrix_powers():
    torch.manual_seed(0)
    A_bar = torch.rand(2, 3, dtype=torch.float64)
    B_bar, C = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    K = ssm_convolution_kernel(A_bar, B_bar, C, 6)
    for d in range(2):
        power = torch.eye(3, dtype=torch.float64)
        for k in range(6):
            torch.testing.assert_close(K[d, k], C[d] @ power @ B_bar[d], rtol=1e-12, atol=1e-12)
            power = power @ torch.diag(A_bar[d])


def test_hand_worked():
    # N = 1, Ā = 1/2, B̄ = 2, C = 3: K = 6 (1, 1/2, 1/4).
    one = torch.ones(1, 1, dtype=torch.float64)
    K = ssm_convolution_kernel(one / 2, 2 * one, 3 * one, 3)
    torch.testing.assert_close(K, torch.tensor([[6.0, 3.0, 1.5]], dtype=torch.float64))
