"""The clipped write increment (this project's max_delta on Infini-attention Eq. 4-5): hand-worked, bounds."""

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given

from src.layers.compressive_memory import clip_update, memory_update_linear


def test_hand_worked_write():
    d = torch.float64
    M, z = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=d), torch.zeros(2, dtype=d)
    sigma_k, v = torch.tensor([[2.0, 0.5]], dtype=d), torch.tensor([[3.0, -0.2]], dtype=d)
    M_next, _ = memory_update_linear(M, z, sigma_k, v)  # ΔM = [[6, -0.4], [1.5, -0.1]]
    clipped = M + clip_update(M_next - M, max_delta=1.0)
    torch.testing.assert_close(clipped, torch.tensor([[2.0, -0.4], [1.0, -0.1]], dtype=d), rtol=0, atol=1e-15)


@given(seed=st.integers(0, 10_000), max_delta=st.floats(1e-3, 10.0))
def test_entries_within_the_bound_are_kept_and_the_rest_saturate(seed, max_delta):
    delta = 3 * torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    clipped = clip_update(delta, max_delta)
    for got, value in zip(clipped.flatten().tolist(), delta.flatten().tolist()):
        assert got == (value if abs(value) <= max_delta else max_delta * (1 if value > 0 else -1))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="max_delta must be positive"):
        clip_update(torch.ones(2, 2), 0.0)
    with pytest.raises(ValueError, match="delta_M must have shape"):
        clip_update(torch.ones(2), 1.0)
