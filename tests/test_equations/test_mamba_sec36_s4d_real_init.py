"""S4D-Real initialisation A = -(1..N)."""

import pytest
import torch

from src.layers.selective_ssm import s4d_real_init


def test_values():
    A = s4d_real_init(3, 4)
    assert torch.equal(A, -torch.tensor([[1.0, 2.0, 3.0, 4.0]] * 3))
    assert (A < 0).all()  # a stable (decaying) state for every channel


def test_rejects_empty_sizes():
    with pytest.raises(ValueError, match="d and N must be >= 1"):
        s4d_real_init(0, 4)
