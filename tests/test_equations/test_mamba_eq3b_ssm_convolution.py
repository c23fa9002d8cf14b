"""LTI convolution, Eq. (3b): equals the direct sum and, for constant parameters, the recurrence."""

import torch
from hypothesis import given
from hypothesis import strategies as st

from src.layers.selective_ssm import (
    discretize_simplified,
    selective_scan_sequential,
    ssm_convolution,
    ssm_convolution_kernel,
)


def test_matches_direct_sum():
    torch.manual_seed(0)
    u, K = torch.randn(2, 3, 7, dtype=torch.float64), torch.randn(3, 7, dtype=torch.float64)
    expected = torch.zeros_like(u)
    for t in range(7):
        for k in range(t + 1):
            expected[..., t] += K[:, k] * u[..., t - k]
    torch.testing.assert_close(ssm_convolution(u, K), expected, rtol=1e-10, atol=1e-10)


@given(length=st.integers(1, 40), seed=st.integers(0, 1000))
def test_convolution_equals_recurrence_when_time_invariant(length, seed):
    # Sec. 2: with Δ, B, C constant over time, Eq. (2) and Eq. (3) compute the same y.
    torch.manual_seed(seed)
    d, N = 3, 4
    A = -torch.rand(d, N, dtype=torch.float64) * 2 - 0.1
    delta = torch.rand(d, dtype=torch.float64) * 0.5 + 0.01
    B, C = torch.randn(N, dtype=torch.float64), torch.randn(N, dtype=torch.float64)
    u = torch.randn(2, d, length, dtype=torch.float64)
    A_bar, B_bar = discretize_simplified(delta, A, B.expand(d, N)[0])
    K = ssm_convolution_kernel(A_bar, B_bar, C.expand(d, N), length)
    y_conv = ssm_convolution(u, K)
    y_rec = selective_scan_sequential(
        u,
        delta[None, :, None].expand(2, d, length),
        A,
        B[None, :, None].expand(2, N, length),
        C[None, :, None].expand(2, N, length),
    )
    torch.testing.assert_close(y_conv, y_rec, rtol=1e-9, atol=1e-9)
