"""Retrieval y = q M, Titans Eq. (15): float64 loop; reading does not change the memory."""

import torch

from src.layers.neural_memory import linear_memory_read


def test_matches_float64_loop_and_leaves_memory_unchanged():
    g = torch.Generator().manual_seed(2)
    M = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    q = torch.randn(2, 3, generator=g, dtype=torch.float64)
    before = M.clone()
    expected = torch.tensor(
        [[sum(float(q[b, i]) * float(M[b, i, j]) for i in range(3)) for j in range(4)] for b in range(2)],
        dtype=torch.float64,
    )
    torch.testing.assert_close(linear_memory_read(M, q), expected, rtol=1e-13, atol=1e-13)
    assert torch.equal(M, before)
