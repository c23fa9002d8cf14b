"""The k x k candidate product keys (Lample et al. 2019, Sec. 3.2, the set after Eq. 4): hand-worked scores and
rows, and the paper's guarantee that K's k best keys are among them (brute force over all |K| keys)."""

import pytest
import torch

from src.layers.product_keys import product_key_candidates, sub_key_top_k
from tests.test_equations.lample2019_reference import brute_force_read, random_memory


def test_hand_worked():
    scores, indices = product_key_candidates(
        torch.tensor([[3.0, 1.0]]), torch.tensor([[2, 0]]), torch.tensor([[0.5, -1.0]]), torch.tensor([[4, 1]]), 5
    )
    assert scores.tolist() == [[3.5, 2.0, 1.5, 0.0]]
    assert indices.tolist() == [[2 * 5 + 4, 2 * 5 + 1, 0 * 5 + 4, 0 * 5 + 1]]


def test_the_k_best_of_all_keys_are_candidates():
    q, C, C2, values = random_memory(n_keys=7, items=20)
    _, indices = product_key_candidates(*sub_key_top_k(q, C, C2, 4), 7)
    for row, (best, *_) in enumerate(brute_force_read(q, C, C2, values, 4)):
        assert set(best) <= set(indices[row].tolist())


def test_indices_must_be_int64():
    with pytest.raises(ValueError, match="indices_1 must be an int64 tensor"):
        product_key_candidates(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2).long(), 3)
