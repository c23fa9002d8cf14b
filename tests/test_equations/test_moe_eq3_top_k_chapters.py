"""KeepTopK and renormalised gates (Shazeer et al. 2017, Eq. 3-5): hand-worked cases."""

import pytest
import torch

from src.layers.routing import top_k_chapters


def test_hand_worked():
    probs = torch.tensor([[0.1, 0.5, 0.4], [0.6, 0.3, 0.1]], dtype=torch.float64)
    chosen, gates = top_k_chapters(probs, 2)
    assert chosen.tolist() == [[1, 2], [0, 1]]
    torch.testing.assert_close(gates, torch.tensor([[5 / 9, 4 / 9], [2 / 3, 1 / 3]], dtype=torch.float64))


def test_k_equal_one_gives_gate_one():
    chosen, gates = top_k_chapters(torch.tensor([[0.2, 0.8]]), 1)
    assert chosen.tolist() == [[1]] and gates.tolist() == [[1.0]]


def test_k_out_of_range_is_named():
    with pytest.raises(ValueError, match=r"k must lie in \[1, 3\]"):
        top_k_chapters(torch.rand(2, 3), 4)
