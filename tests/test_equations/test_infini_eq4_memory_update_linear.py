"""Linear memory update, Infini-attention Eq. (4): float64 loop and a hand-worked two-token segment."""

import torch

from src.layers.compressive_memory import memory_update_linear


def test_matches_float64_loop():
    g = torch.Generator().manual_seed(1)
    M = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    z = torch.rand(2, 3, generator=g, dtype=torch.float64)
    sigma_k = torch.rand(2, 5, 3, generator=g, dtype=torch.float64)
    v = torch.randn(2, 5, 4, generator=g, dtype=torch.float64)
    M_ref, z_ref = M.clone(), z.clone()
    for b in range(2):
        for t in range(5):
            for i in range(3):
                z_ref[b, i] += sigma_k[b, t, i]
                for j in range(4):
                    M_ref[b, i, j] += sigma_k[b, t, i] * v[b, t, j]
    M_new, z_new = memory_update_linear(M, z, sigma_k, v)
    torch.testing.assert_close(M_new, M_ref, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(z_new, z_ref, rtol=1e-14, atol=1e-14)


def test_hand_worked_two_tokens_into_empty_memory():
    sigma_k = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    v = torch.tensor([[2.0, 4.0], [6.0, 0.0]], dtype=torch.float64)
    M, z = memory_update_linear(torch.zeros(2, 2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64), sigma_k, v)
    assert M.tolist() == [[8.0, 4.0], [6.0, 0.0]]
    assert z.tolist() == [2.0, 1.0]
