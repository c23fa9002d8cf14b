"""FFN_SwiGLU, Eq. (6): values against a float64 loop and a one-dimensional worked case."""

import math

import pytest
import torch

from src.layers.feedforward import swiglu


def reference(x, W, V, W2):
    d_model, d_ff = W.shape
    out = torch.zeros(x.shape[0], d_model, dtype=torch.float64)
    for row in range(x.shape[0]):
        hidden = []
        for j in range(d_ff):
            a = sum(float(x[row, i]) * float(W[i, j]) for i in range(d_model))
            b = sum(float(x[row, i]) * float(V[i, j]) for i in range(d_model))
            hidden.append(a / (1 + math.exp(-a)) * b)  # Swish_1(a) * b
        for i in range(d_model):
            out[row, i] = sum(hidden[j] * float(W2[j, i]) for j in range(d_ff))
    return out


def test_matches_float64_loop():
    torch.manual_seed(0)
    x = torch.randn(4, 5, dtype=torch.float64)
    W, V, W2 = (
        torch.randn(5, 6, dtype=torch.float64),
        torch.randn(5, 6, dtype=torch.float64),
        torch.randn(6, 5, dtype=torch.float64),
    )
    torch.testing.assert_close(swiglu(x, W, V, W2), reference(x, W, V, W2), rtol=1e-12, atol=1e-12)


def test_hand_worked_scalar():
    # x = 1, W = 1, V = 2, W2 = 3: Swish(1) * 2 * 3 = 6 / (1 + e^-1).
    one = torch.ones(1, 1, dtype=torch.float64)
    out = swiglu(one, one, 2 * one, 3 * one)
    torch.testing.assert_close(out, one * 6 / (1 + math.exp(-1)), rtol=1e-15, atol=0)


def test_batch_independence():
    torch.manual_seed(1)
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    W, V, W2 = (
        torch.randn(5, 8, dtype=torch.float64),
        torch.randn(5, 8, dtype=torch.float64),
        torch.randn(8, 5, dtype=torch.float64),
    )
    full = swiglu(x, W, V, W2)
    for b in range(3):
        torch.testing.assert_close(swiglu(x[b : b + 1], W, V, W2), full[b : b + 1], rtol=0, atol=0)


def test_gradcheck():
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    W = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    V = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    W2 = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(swiglu, (x, W, V, W2))


def test_bad_shapes_name_the_argument():
    with pytest.raises(ValueError, match="W2"):
        swiglu(torch.randn(2, 3), torch.randn(3, 4), torch.randn(3, 4), torch.randn(5, 3))
    with pytest.raises(TypeError, match="V has dtype"):
        swiglu(torch.randn(2, 3), torch.randn(3, 4), torch.randn(3, 4, dtype=torch.float64), torch.randn(4, 3))
