"""τ_Δ = softplus(Parameter + s_Δ(x)) of Algorithm 2."""

import math

import pytest
import torch

from src.layers.selective_ssm import tau_delta


def test_values_against_the_formula():
    s = torch.tensor([[[-2.0, 0.0, 3.0]]], dtype=torch.float64)
    bias = torch.tensor([1.0], dtype=torch.float64)
    expected = torch.tensor([[[math.log1p(math.exp(v + 1.0)) for v in (-2.0, 0.0, 3.0)]]], dtype=torch.float64)
    torch.testing.assert_close(tau_delta(s, bias), expected, rtol=1e-14, atol=0)
    torch.testing.assert_close(tau_delta(s), torch.log1p(torch.exp(s)), rtol=1e-14, atol=0)


def test_large_inputs_are_identity_and_small_are_positive():
    out = tau_delta(torch.tensor([[[100.0, -100.0]]]))
    assert out[0, 0, 0].item() == 100.0 and 0 < out[0, 0, 1].item() < 1e-40


def test_bias_shape_is_checked():
    with pytest.raises(ValueError, match="delta_bias has d=3"):
        tau_delta(torch.zeros(1, 2, 4), torch.zeros(3))
