"""Theorem 1 (Sec. 3.5.1): with N = 1, A = -1, B = 1 the selective SSM is a gated RNN,
h_t = (1 - g_t) h_{t-1} + g_t x_t with g_t = sigmoid(Linear(x_t)). Exact under the ZOH of Eq. (4)."""

import torch
from hypothesis import given
from hypothesis import strategies as st

from src.layers.selective_ssm import discretize_zoh, selective_scan_sequential


@given(seed=st.integers(0, 10_000), length=st.integers(1, 30))
def test_selective_recurrence_is_a_gated_rnn(seed, length):
    torch.manual_seed(seed)
    x = torch.randn(length, dtype=torch.float64)
    w, b = torch.randn(2, dtype=torch.float64)
    delta = torch.nn.functional.softplus(w * x + b)  # τ_Δ(Linear(x))
    A = torch.tensor([[-1.0]], dtype=torch.float64)
    h, h_gru = torch.zeros(1, 1, dtype=torch.float64), 0.0
    for t in range(length):
        A_bar, B_bar = discretize_zoh(delta[t].view(1), A, torch.ones(1, dtype=torch.float64))
        h = A_bar * h + B_bar * x[t]
        g = torch.sigmoid(w * x[t] + b)
        h_gru = (1 - g) * h_gru + g * x[t]
        torch.testing.assert_close(h.view(()), h_gru, rtol=1e-12, atol=1e-12)


def test_simplified_scan_is_the_first_order_version():
    # With B̄ = ΔB (official code) the gate multiplying x_t is Δ_t instead of 1 - e^{-Δ_t}.
    x = torch.tensor([[[1.0, 2.0]]], dtype=torch.float64)
    delta = torch.tensor([[[0.3, 0.5]]], dtype=torch.float64)
    ones = torch.ones(1, 1, 2, dtype=torch.float64)
    y = selective_scan_sequential(x, delta, -torch.ones(1, 1, dtype=torch.float64), ones, ones)
    h1 = 0.3 * 1.0
    h2 = torch.exp(torch.tensor(-0.5, dtype=torch.float64)) * h1 + 0.5 * 2.0
    torch.testing.assert_close(y, torch.stack([torch.tensor(h1, dtype=torch.float64), h2]).view(1, 1, 2))
