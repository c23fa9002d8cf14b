"""Keys, values, queries of the neural memory (Titans Eq. 11, 15; Sec. 4.4 SiLU + l2 norm): float64 loop."""

import math

import torch

from src.layers.neural_memory import memory_projections


def test_matches_float64_loop():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    W_K, W_V, W_Q = (torch.randn(5, 4, generator=g, dtype=torch.float64) for _ in range(3))
    k, v, q = memory_projections(x, W_K, W_V, W_Q)

    def silu_row(W, row):
        out = []
        for i in range(W.shape[0]):
            a = sum(float(row[j]) * float(W[i, j]) for j in range(4))
            out.append(a / (1 + math.exp(-a)))
        return out

    for b in range(2):
        for t in range(3):
            for W, got, normalised in ((W_K, k, True), (W_V, v, False), (W_Q, q, True)):
                expected = silu_row(W, x[b, t])
                if normalised:
                    norm = math.sqrt(sum(e * e for e in expected))
                    expected = [e / norm for e in expected]
                torch.testing.assert_close(
                    got[b, t], torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-12
                )
