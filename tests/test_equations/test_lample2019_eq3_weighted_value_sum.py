"""The memory's output m(x) = sum_i w_i v_i (Lample et al. 2019, Sec. 3.1, Eq. 3): against a float64 loop, the whole
read (Eq. 4, 1, 2, 3) against brute force over all |C|^2 keys, and a gradient that touches only the rows read."""

import torch

from src.layers.product_keys import key_weights, product_key_candidates, sub_key_top_k, top_k_keys, weighted_value_sum
from tests.test_equations.lample2019_reference import brute_force_read, random_memory


def test_matches_float64_loop():
    _, _, _, values = random_memory()
    weights = torch.tensor([[[0.7, 0.2, 0.1]], [[0.5, 0.5, 0.0]]], dtype=torch.float64)  # (2, 1, 3)
    indices = torch.tensor([[[4, 0, 35]], [[9, 9, 1]]])
    expected = [
        [[sum(w * values[i, j].item() for w, i in zip(ws, ix)) for j in range(values.shape[1])]]
        for ws, ix in zip(weights[:, 0].tolist(), indices[:, 0].tolist())
    ]
    read = weighted_value_sum(weights, indices, values)
    torch.testing.assert_close(read, torch.tensor(expected, dtype=torch.float64), rtol=1e-14, atol=1e-15)


def test_whole_read_matches_brute_force_over_all_keys():
    q, C, C2, values = random_memory(n_keys=8, items=16)
    scores, indices = top_k_keys(*product_key_candidates(*sub_key_top_k(q, C, C2, 4), 8), 4)
    read = weighted_value_sum(key_weights(scores), indices, values)
    expected = [r for *_, r in brute_force_read(q, C, C2, values, 4)]
    torch.testing.assert_close(read, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_gradient_touches_only_the_rows_read():
    _, _, _, values = random_memory()
    values.requires_grad_(True)
    indices = torch.tensor([[3, 17], [17, 30]])
    weighted_value_sum(torch.tensor([[0.6, 0.4], [0.9, 0.1]], dtype=torch.float64), indices, values).sum().backward()
    touched = values.grad.abs().sum(dim=-1).nonzero().flatten().tolist()
    assert touched == [3, 17, 30]
    torch.testing.assert_close(values.grad[17], torch.full((5,), 0.4 + 0.9, dtype=torch.float64))
