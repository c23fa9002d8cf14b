"""Memory retrieval, Infini-attention Eq. (3): float64 loop, a hand-worked case, and eps's only role."""

import pytest
import torch

from src.layers.compressive_memory import memory_retrieve


def reference(sigma_q, M, z):
    n, d_k = sigma_q.shape
    d_v = M.shape[1]
    out = torch.zeros(n, d_v, dtype=torch.float64)
    for t in range(n):
        den = sum(float(sigma_q[t, i]) * float(z[i]) for i in range(d_k))
        for j in range(d_v):
            out[t, j] = sum(float(sigma_q[t, i]) * float(M[i, j]) for i in range(d_k)) / den
    return out


def test_matches_float64_loop():
    g = torch.Generator().manual_seed(0)
    sigma_q = torch.rand(5, 3, generator=g, dtype=torch.float64) + 0.1
    M = torch.randn(3, 4, generator=g, dtype=torch.float64)
    z = torch.rand(3, generator=g, dtype=torch.float64) + 0.5
    torch.testing.assert_close(memory_retrieve(sigma_q, M, z), reference(sigma_q, M, z), rtol=1e-13, atol=0)


def test_hand_worked_two_token_memory():
    # Memory written by two tokens with σ(k1) = (1, 0), v1 = (2, 4) and σ(k2) = (1, 1), v2 = (6, 0):
    # M = k1^T v1 + k2^T v2 = [[8, 4], [6, 0]], z = (2, 1).
    M = torch.tensor([[8.0, 4.0], [6.0, 0.0]], dtype=torch.float64)
    z = torch.tensor([2.0, 1.0], dtype=torch.float64)
    sigma_q = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    # q = (1, 0): (8, 4) / 2 = (4, 2), the mean of v1 and v2; q = (0, 1): (6, 0) / 1 = v2.
    expected = torch.tensor([[4.0, 2.0], [6.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(memory_retrieve(sigma_q, M, z), expected, rtol=0, atol=1e-15)


def test_empty_memory_retrieves_zero_and_eps_changes_nothing_otherwise():
    sigma_q = torch.rand(2, 4, 3, dtype=torch.float64) + 0.1
    empty = memory_retrieve(sigma_q, torch.zeros(2, 3, 5, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.float64))
    assert torch.equal(empty, torch.zeros(2, 4, 5, dtype=torch.float64))
    M, z = torch.randn(2, 3, 5, dtype=torch.float64), torch.rand(2, 3, dtype=torch.float64) + 0.1
    assert torch.equal(memory_retrieve(sigma_q, M, z, eps=1e-6), memory_retrieve(sigma_q, M, z, eps=1e-12))


def test_mismatched_key_dimension_is_named():
    with pytest.raises(ValueError, match="M has d_k=4"):
        memory_retrieve(torch.rand(2, 3), torch.rand(4, 2), torch.rand(3))
