"""MultiHead = Concat(head_1..head_h) W^O (Vaswani et al. 2017, Sec. 3.2.2; Infini-attention Eq. 7)."""

import pytest
import torch

from src.layers.attention import concat_heads


def test_matches_float64_loop():
    g = torch.Generator().manual_seed(4)
    heads = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)  # (b, h, L, d_v)
    W_O = torch.randn(6, 15, generator=g, dtype=torch.float64)  # (d_model, h d_v)
    expected = torch.zeros(2, 4, 6, dtype=torch.float64)
    for b in range(2):
        for t in range(4):
            concatenated = [float(heads[b, h, t, j]) for h in range(3) for j in range(5)]
            for o in range(6):
                expected[b, t, o] = sum(c * float(W_O[o, i]) for i, c in enumerate(concatenated))
    torch.testing.assert_close(concat_heads(heads, W_O), expected, rtol=1e-13, atol=1e-13)


def test_wrong_projection_width_is_named():
    with pytest.raises(ValueError, match="W_O must have h \\* d_v = 6 columns"):
        concat_heads(torch.randn(1, 2, 3, 3), torch.randn(4, 5))
