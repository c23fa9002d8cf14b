"""Causal depthwise conv1d of the Mamba block: equals nn.Conv1d (official block) and a loop."""

import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from src.layers.selective_ssm import causal_conv1d


def test_equals_official_padded_conv():
    torch.manual_seed(0)
    conv = nn.Conv1d(6, 6, 4, groups=6, padding=3).double()
    x = torch.randn(2, 6, 9, dtype=torch.float64)
    torch.testing.assert_close(causal_conv1d(x, conv.weight[:, 0], conv.bias), conv(x)[..., :9], rtol=1e-12, atol=1e-12)


def test_matches_loop():
    torch.manual_seed(1)
    x, w, bias = (
        torch.randn(1, 2, 5, dtype=torch.float64),
        torch.randn(2, 3, dtype=torch.float64),
        torch.randn(2, dtype=torch.float64),
    )
    expected = torch.zeros(1, 2, 5, dtype=torch.float64)
    for d in range(2):
        for t in range(5):
            expected[0, d, t] = bias[d] + sum(w[d, i] * x[0, d, t - 2 + i] for i in range(3) if t - 2 + i >= 0)
    torch.testing.assert_close(causal_conv1d(x, w, bias), expected, rtol=1e-12, atol=1e-12)


@given(t=st.integers(0, 9))
def test_causal(t):
    torch.manual_seed(t)
    x, w = torch.randn(1, 3, 10, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    x2 = x.clone()
    x2[..., t:] = torch.randn_like(x2[..., t:])
    torch.testing.assert_close(causal_conv1d(x, w)[..., :t], causal_conv1d(x2, w)[..., :t], rtol=0, atol=0)
