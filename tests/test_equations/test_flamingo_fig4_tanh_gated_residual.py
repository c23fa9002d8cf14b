"""Flamingo's tanh gate (Sec. 2.2, Figure 4): y = h + tanh(α) u, against a hand-worked case and a float64 loop."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from src.layers.memory_adapter import MemoryAdapter, tanh_gated_residual


def test_hand_worked_case():
    h = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    u = torch.tensor([[4.0, 8.0]], dtype=torch.float64)
    alpha = torch.tensor(math.atanh(0.5), dtype=torch.float64)  # tanh α = 1/2
    torch.testing.assert_close(tanh_gated_residual(h, u, alpha), torch.tensor([[3.0, 2.0]], dtype=torch.float64))


@settings(max_examples=25, deadline=None)
@given(d=st.integers(1, 6), alpha=st.floats(-5.0, 5.0), seed=st.integers(0, 1000))
def test_equals_a_float64_loop(d, alpha, seed):
    g = torch.Generator().manual_seed(seed)
    h, u = (
        torch.randn(2, 3, d, generator=g, dtype=torch.float64),
        torch.randn(2, 3, d, generator=g, dtype=torch.float64),
    )
    expected = torch.empty_like(h)
    for index in range(h.numel()):
        expected.view(-1)[index] = h.view(-1)[index] + math.tanh(alpha) * u.view(-1)[index]
    torch.testing.assert_close(tanh_gated_residual(h, u, torch.tensor(alpha, dtype=torch.float64)), expected)


@settings(max_examples=20, deadline=None)
@given(scale=st.floats(1e-3, 1e3), seed=st.integers(0, 1000))
def test_a_zero_gate_returns_the_stream_bit_for_bit(scale, seed):
    g = torch.Generator().manual_seed(seed)
    h, u = scale * torch.randn(4, 7, generator=g), scale * torch.randn(4, 7, generator=g)
    assert torch.equal(tanh_gated_residual(h, u, torch.zeros(())), h)


def test_the_update_is_bounded_by_the_gate():
    h, u = torch.zeros(3), torch.ones(3)
    assert tanh_gated_residual(h, u, torch.tensor(100.0)).abs().max() <= 1.0


def test_the_gate_gets_its_gradient_only_through_the_update():
    h, u = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    alpha = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    tanh_gated_residual(h, u, alpha).sum().backward()
    torch.testing.assert_close(alpha.grad, (1 - math.tanh(0.3) ** 2) * u.sum())  # d tanh = 1 - tanh²


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_adapter_starts_equal_to_its_input(dtype):
    adapter = MemoryAdapter(16, 1e-5, n_heads=2, n_memory=8)
    h = torch.randn(2, 5, 16).to(dtype)
    y = adapter(h)
    assert y.dtype == dtype and torch.equal(y, h)
    with torch.no_grad():
        adapter.alpha.fill_(0.5)
    assert not torch.equal(adapter(h), h)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"update": torch.zeros(2, 4)}, "update has d=4"),
        ({"alpha": torch.zeros(1)}, r"alpha must have shape \(\)"),
        ({"alpha": torch.zeros((), dtype=torch.float64)}, "alpha has dtype torch.float64"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    arguments = {"h": torch.zeros(2, 3), "update": torch.zeros(2, 3), "alpha": torch.zeros(())} | kwargs
    with pytest.raises((ValueError, TypeError), match=message):
        tanh_gated_residual(**arguments)
