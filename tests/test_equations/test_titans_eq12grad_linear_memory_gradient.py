"""Closed-form gradient of the associative loss for a linear memory equals autograd's (float64, 1e-10)."""

import hypothesis.strategies as st
import torch
from hypothesis import given, settings

from src.layers.neural_memory import associative_loss, linear_memory_gradient


@settings(max_examples=40, deadline=None)
@given(batch=st.integers(1, 3), d_k=st.integers(1, 6), d_v=st.integers(1, 6), seed=st.integers(0, 10_000))
def test_equals_autograd(batch, d_k, d_v, seed):
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(batch, d_k, d_v, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(batch, d_k, generator=g, dtype=torch.float64)
    v = torch.randn(batch, d_v, generator=g, dtype=torch.float64)
    loss = associative_loss((k[:, None, :] @ M)[:, 0, :], v).sum()
    (expected,) = torch.autograd.grad(loss, M)
    torch.testing.assert_close(linear_memory_gradient(M.detach(), k, v), expected, rtol=1e-10, atol=1e-10)


def test_hand_worked():
    M = torch.tensor([[1.0], [0.0]], dtype=torch.float64)  # M(k) = k M
    k = torch.tensor([2.0, 1.0], dtype=torch.float64)
    v = torch.tensor([5.0], dtype=torch.float64)
    # k M - v = 2 - 5 = -3; gradient 2 k^T (-3) = [[-12], [-6]]
    assert linear_memory_gradient(M, k, v).tolist() == [[-12.0], [-6.0]]
