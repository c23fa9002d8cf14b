"""The gate of Infini-attention Eq. (6): float64 loop and its limits."""

import math

import torch

from src.layers.compressive_memory import memory_gate


def test_matches_float64_loop():
    g = torch.Generator().manual_seed(3)
    A_mem, A_dot = (torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64) for _ in range(2))
    beta = torch.tensor([-1.0, 0.0, 2.0], dtype=torch.float64)
    expected = torch.empty_like(A_mem)
    for h in range(3):
        s = 1 / (1 + math.exp(-float(beta[h])))
        expected[:, h] = s * A_mem[:, h] + (1 - s) * A_dot[:, h]
    torch.testing.assert_close(memory_gate(A_mem, A_dot, beta), expected, rtol=1e-15, atol=1e-15)


def test_limits_select_one_source():
    A_mem, A_dot = torch.ones(1, 2, 1, 1, dtype=torch.float64), torch.zeros(1, 2, 1, 1, dtype=torch.float64)
    out = memory_gate(A_mem, A_dot, torch.tensor([0.0, 50.0], dtype=torch.float64))
    assert out[0, 0].item() == 0.5 and out[0, 1].item() == 1.0
