"""The entry-wise memory clamp (this project's max_memory on Infini-attention Eq. 4-5): hand-worked, saturation."""

import pytest
import torch

from src.layers.compressive_memory import clip_memory, memory_update_linear


def test_hand_worked_and_saturation():
    d = torch.float64
    M, z = torch.zeros(2, 2, dtype=d), torch.zeros(2, dtype=d)
    k, v = torch.tensor([[1.0, 0.0]], dtype=d), torch.tensor([[0.75, -2.0]], dtype=d)
    M, z = memory_update_linear(M, z, k, v)
    M = clip_memory(M, max_memory=1.0)
    assert M.tolist() == [[0.75, -1.0], [0.0, 0.0]]
    M, z = memory_update_linear(M, z, k, v)  # 0.75 + 0.75 saturates at 1; -1 - 2 stays at -1
    assert clip_memory(M, 1.0).tolist() == [[1.0, -1.0], [0.0, 0.0]]
    M, z = memory_update_linear(clip_memory(M, 1.0), z, k, -v)  # a write against the bound acts
    assert clip_memory(M, 1.0).tolist() == [[0.25, 1.0], [0.0, 0.0]]


def test_inside_the_bound_nothing_changes():
    M = torch.rand(3, 4, dtype=torch.float64) - 0.5
    assert torch.equal(clip_memory(M, 0.5), M)
    with pytest.raises(ValueError, match="max_memory must be positive"):
        clip_memory(M, -1.0)
