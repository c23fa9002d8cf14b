"""The top-k operator T_k (Lample et al. 2019, Sec. 3.1, Eq. 1) over the product-key candidates: the same keys,
scores and order as ranking all |C|^2 keys by brute force in float64."""

import pytest
import torch

from src.layers.product_keys import product_key_candidates, sub_key_top_k, top_k_keys
from tests.test_equations.lample2019_reference import brute_force_read, random_memory


@pytest.mark.parametrize("k", [1, 3, 6])
def test_matches_brute_force_over_all_keys(k):
    q, C, C2, values = random_memory(items=12, seed=k)
    scores, indices = top_k_keys(*product_key_candidates(*sub_key_top_k(q, C, C2, k), len(C2)), k)
    for row, (best, best_scores, _, _) in enumerate(brute_force_read(q, C, C2, values, k)):
        assert indices[row].tolist() == best
        torch.testing.assert_close(scores[row], torch.tensor(best_scores, dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_hand_worked():
    scores, indices = top_k_keys(torch.tensor([[0.5, 2.0, -1.0, 1.0]]), torch.tensor([[10, 11, 12, 13]]), 2)
    assert scores.tolist() == [[2.0, 1.0]] and indices.tolist() == [[11, 13]]


def test_k_out_of_range_is_named():
    with pytest.raises(ValueError, match=r"k must lie in \[1, 4\]"):
        top_k_keys(torch.zeros(1, 4), torch.zeros(1, 4).long(), 5)
