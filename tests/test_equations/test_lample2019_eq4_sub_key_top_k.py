"""Each half's k best sub-keys (Lample et al. 2019, Sec. 3.2, Eq. 4): against a float64 loop over each sub-key set."""

import pytest
import torch

from src.layers.product_keys import sub_key_top_k
from tests.test_equations.lample2019_reference import random_memory


def test_matches_a_loop_over_each_half():
    q, C, C2, _ = random_memory()
    scores_1, indices_1, scores_2, indices_2 = sub_key_top_k(q, C, C2, 3)
    for row, query in enumerate(q.tolist()):
        for half, keys, scores, indices in ((query[:4], C, scores_1, indices_1), (query[4:], C2, scores_2, indices_2)):
            ranked = sorted(((sum(x * y for x, y in zip(half, key)), i) for i, key in enumerate(keys.tolist())))[::-1]
            assert indices[row].tolist() == [i for _, i in ranked[:3]]
            torch.testing.assert_close(scores[row], torch.tensor([s for s, _ in ranked[:3]], dtype=torch.float64))


def test_one_set_of_sub_keys_per_head_broadcasts():
    q, C, C2, _ = random_memory()
    heads = q.reshape(7, 2, 4)  # two heads of width 4, each with its own sub-keys of width 2
    per_head_1, per_head_2 = torch.stack([C[:, :2], C[:, 2:]]), torch.stack([C2[:, :2], C2[:, 2:]])
    together = sub_key_top_k(heads, per_head_1, per_head_2, 2)
    for h in range(2):
        alone = sub_key_top_k(heads[:, h], per_head_1[h], per_head_2[h], 2)
        for joint, single in zip(together, alone, strict=True):
            torch.testing.assert_close(joint[:, h], single, rtol=0, atol=0)


def test_wrong_widths_and_k_are_named():
    q, C, C2, _ = random_memory()
    with pytest.raises(ValueError, match="half the query's width 8"):
        sub_key_top_k(q, C[:, :3], C2[:, :3], 2)
    with pytest.raises(ValueError, match=r"k must lie in \[1, 6\]"):
        sub_key_top_k(q, C, C2, 7)
