"""The Frobenius-norm clip of the memory (this project's max_norm on Infini-attention Eq. 4-5): hand-worked, bounds."""

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given

from src.layers.compressive_memory import clip_memory_norm


def test_hand_worked_per_head():
    d = torch.float64
    M = torch.tensor([[[3.0, 0.0], [0.0, 4.0]], [[0.3, 0.0], [0.0, 0.4]]], dtype=d)  # norms 5 and 0.5
    clipped = clip_memory_norm(M, max_norm=1.0)
    torch.testing.assert_close(clipped[0], torch.tensor([[0.6, 0.0], [0.0, 0.8]], dtype=d), rtol=0, atol=1e-15)
    assert torch.equal(clipped[1], M[1])  # under the bound: unchanged, bit for bit


@given(seed=st.integers(0, 10_000), max_norm=st.floats(1e-2, 10.0))
def test_norm_bounded_and_direction_kept(seed, max_norm):
    M = 2 * torch.randn(4, 3, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    clipped = clip_memory_norm(M, max_norm)
    for before, after in zip(M, clipped):
        norm = sum(value**2 for value in before.flatten().tolist()) ** 0.5
        expected = before * min(1.0, max_norm / norm)
        torch.testing.assert_close(after, expected, rtol=1e-12, atol=1e-12)


def test_zero_memory_and_bad_bound():
    assert torch.equal(clip_memory_norm(torch.zeros(2, 2), 1.0), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="max_norm must be positive"):
        clip_memory_norm(torch.ones(2, 2), 0.0)
