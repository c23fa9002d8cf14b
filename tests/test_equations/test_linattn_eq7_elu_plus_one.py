"""σ = ELU + 1 (Katharopoulos et al. 2020, Eq. 7): values against the piecewise definition."""

import math

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given

from src.layers.compressive_memory import elu_plus_one


def test_matches_the_piecewise_definition():
    x = torch.linspace(-6, 6, 101, dtype=torch.float64)
    expected = torch.tensor([v + 1 if v > 0 else math.exp(v) for v in x.tolist()], dtype=torch.float64)
    torch.testing.assert_close(elu_plus_one(x), expected, rtol=1e-15, atol=0)


def test_hand_worked_values():
    x = torch.tensor([-1.0, 0.0, 1.0, 2.5], dtype=torch.float64)
    torch.testing.assert_close(elu_plus_one(x), torch.tensor([math.exp(-1), 1.0, 2.0, 3.5], dtype=torch.float64))


@given(st.floats(min_value=-80, max_value=80))
def test_positive_even_where_elu_plus_one_cancels_to_zero(value):
    # elu(-38) + 1 = expm1(-38) + 1 is exactly 0.0 in float64; σ must stay e^{-38} > 0.
    y = elu_plus_one(torch.tensor([value, 0.0], dtype=torch.float64))
    assert y[0] > 0 and y[1] == 1.0
    assert elu_plus_one(torch.tensor(-30.0)).item() == pytest.approx(math.exp(-30), rel=1e-6)


def test_gradient_is_finite_and_piecewise():
    x = torch.tensor([-800.0, -2.0, 0.5, 800.0], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(elu_plus_one(x).sum(), x)
    torch.testing.assert_close(grad, torch.tensor([0.0, math.exp(-2.0), 1.0, 1.0], dtype=torch.float64))


def test_integer_input_is_refused():
    try:
        elu_plus_one(torch.tensor([1, 2]))
    except TypeError as error:
        assert "x must be a floating-point tensor" in str(error)
    else:
        raise AssertionError("an integer tensor was accepted")
