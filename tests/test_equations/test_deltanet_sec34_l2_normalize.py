"""L2 normalisation of queries and keys (DeltaNet Sec. 3.4): hand-worked case, scale invariance, zero guard."""

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given

from src.layers.compressive_memory import l2_normalize


def test_hand_worked():
    x = torch.tensor([[3.0, 4.0], [0.0, -2.0]], dtype=torch.float64)
    assert l2_normalize(x).tolist() == [[0.6, 0.8], [0.0, -1.0]]


@given(seed=st.integers(0, 10_000), scale=st.floats(1e-3, 1e3))
def test_unit_norm_and_positive_scale_invariance(seed, scale):
    x = torch.randn(4, 7, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    y = l2_normalize(x)
    reference = torch.stack([row / sum(value**2 for value in row.tolist()) ** 0.5 for row in x])
    torch.testing.assert_close(y, reference, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(l2_normalize(scale * x), y, rtol=1e-12, atol=1e-12)


def test_zero_vector_stays_zero_and_bad_eps_is_named():
    assert torch.equal(l2_normalize(torch.zeros(2, 3)), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="eps must be positive"):
        l2_normalize(torch.ones(3), eps=0.0)
