"""Delta-rule memory update, Infini-attention Eq. (5): float64 loop, hand-worked case, no rewrite of a known value."""

import torch

from src.layers.compressive_memory import memory_update_delta


def test_matches_float64_loop():
    g = torch.Generator().manual_seed(2)
    M = torch.randn(3, 4, generator=g, dtype=torch.float64)
    z = torch.rand(3, generator=g, dtype=torch.float64) + 0.2
    sigma_k = torch.rand(5, 3, generator=g, dtype=torch.float64) + 0.1
    v = torch.randn(5, 4, generator=g, dtype=torch.float64)
    M_ref = M.clone()
    for t in range(5):  # every token's correction uses M_{s-1}, the memory before the segment
        den = sum(sigma_k[t, i] * z[i] for i in range(3))
        for j in range(4):
            retrieved = sum(sigma_k[t, i] * M[i, j] for i in range(3)) / den
            for i in range(3):
                M_ref[i, j] += sigma_k[t, i] * (v[t, j] - retrieved)
    M_new, z_new = memory_update_delta(M, z, sigma_k, v)
    torch.testing.assert_close(M_new, M_ref, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(z_new, z + sigma_k.sum(0), rtol=1e-14, atol=0)


def test_hand_worked_two_segments():
    d = torch.float64
    # Segment 1 into the empty memory: the retrieval is 0, so Eq. (5) adds k^T v like Eq. (4).
    k1, v1 = torch.tensor([[1.0, 0.0]], dtype=d), torch.tensor([[2.0, 4.0]], dtype=d)
    M, z = memory_update_delta(torch.zeros(2, 2, dtype=d), torch.zeros(2, dtype=d), k1, v1)
    assert M.tolist() == [[2.0, 4.0], [0.0, 0.0]] and z.tolist() == [1.0, 0.0]
    # Segment 2, σ(k) = (1, 1), v = (6, 0): retrieved (2, 4) / 1, correction (4, -4) added to both rows.
    M, z = memory_update_delta(M, z, torch.tensor([[1.0, 1.0]], dtype=d), torch.tensor([[6.0, 0.0]], dtype=d))
    assert M.tolist() == [[6.0, 0.0], [4.0, -4.0]] and z.tolist() == [2.0, 1.0]


def test_a_value_the_memory_already_returns_is_not_written_again():
    d = torch.float64
    M, z = torch.tensor([[2.0, 4.0], [0.0, 0.0]], dtype=d), torch.tensor([1.0, 0.0], dtype=d)
    k = torch.tensor([[3.0, 0.0]], dtype=d)  # same direction as the stored key: retrieves (2, 4)
    M_new, _ = memory_update_delta(M, z, k, torch.tensor([[2.0, 4.0]], dtype=d))
    assert torch.equal(M_new, M)
