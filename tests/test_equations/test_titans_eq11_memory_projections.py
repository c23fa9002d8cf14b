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


def test_sec44_depthwise_convolution_after_each_projection_matches_a_loop():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 5, 3, generator=g, dtype=torch.float64)
    W_K, W_V, W_Q = (torch.randn(2, 3, generator=g, dtype=torch.float64) for _ in range(3))
    conv = torch.randn(6, 3, generator=g, dtype=torch.float64)  # [K, V, Q] channels, kernel 3
    k, v, q = memory_projections(x, W_K, W_V, W_Q, conv)
    projected = torch.cat((x @ W_K.T, x @ W_V.T, x @ W_Q.T), dim=-1)[0]  # (5, 6)
    for t in range(5):
        filtered = torch.zeros(6, dtype=torch.float64)
        for c in range(6):
            for i in range(3):  # tap i reads token t - 2 + i; tokens before the first are zero
                if t - 2 + i >= 0:
                    filtered[c] += conv[c, i] * projected[t - 2 + i, c]
        silu = filtered * torch.sigmoid(filtered)
        torch.testing.assert_close(k[0, t], silu[:2] / silu[:2].norm(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(v[0, t], silu[2:4], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(q[0, t], silu[4:] / silu[4:].norm(), rtol=1e-12, atol=1e-12)


def test_a_kernel_of_one_tap_scales_each_projection():
    x = torch.randn(2, 4, 3, dtype=torch.float64)
    W_K, W_V, W_Q = (torch.randn(2, 3, dtype=torch.float64) for _ in range(3))
    scaled = memory_projections(x, 2 * W_K, 2 * W_V, 2 * W_Q)
    convolved = memory_projections(x, W_K, W_V, W_Q, torch.full((6, 1), 2.0, dtype=torch.float64))
    for a, b in zip(scaled, convolved):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
