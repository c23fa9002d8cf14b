"""LoRA Eq. (3): h = W0 x + (α/r) B A x, against a float64 loop and a hand-worked case."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from src.layers.lora import LoRALinear, lora_forward


def _loop(x, W0, A, B, alpha, bias):
    """Eq. (3) one output coordinate at a time, in float64: h_i = Σ_j W0_ij x_j + (α/r) Σ_k B_ik Σ_j A_kj x_j."""
    r = A.shape[0]
    out = torch.zeros(*x.shape[:-1], W0.shape[0], dtype=torch.float64)
    for i in range(W0.shape[0]):
        low_rank = sum(B[i, k] * (A[k] * x).sum(-1) for k in range(r))
        out[..., i] = (W0[i] * x).sum(-1) + alpha / r * low_rank + (bias[i] if bias is not None else 0.0)
    return out


def test_hand_worked_case():
    x = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    W0 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    A = torch.tensor([[1.0, -1.0]], dtype=torch.float64)  # A x = -1
    B = torch.tensor([[2.0], [0.0], [1.0]], dtype=torch.float64)  # B A x = (-2, 0, -1)
    # r = 1, α = 3: h = (1, 2, 3) + 3 * (-2, 0, -1) = (-5, 2, 0)
    assert lora_forward(x, W0, A, B, alpha=3.0).tolist() == [[-5.0, 2.0, 0.0]]


@settings(max_examples=25, deadline=None)
@given(
    d_in=st.integers(1, 6), d_out=st.integers(1, 6), r=st.integers(1, 4), alpha=st.floats(0.1, 32.0),
    with_bias=st.booleans(), seed=st.integers(0, 1000),
)  # fmt: skip
def test_equals_a_float64_loop(d_in, d_out, r, alpha, with_bias, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, d_in, generator=g, dtype=torch.float64)
    W0, A = (
        torch.randn(d_out, d_in, generator=g, dtype=torch.float64),
        torch.randn(r, d_in, generator=g, dtype=torch.float64),
    )
    B = torch.randn(d_out, r, generator=g, dtype=torch.float64)
    bias = torch.randn(d_out, generator=g, dtype=torch.float64) if with_bias else None
    torch.testing.assert_close(lora_forward(x, W0, A, B, alpha, bias), _loop(x, W0, A, B, alpha, bias))


def test_zero_B_at_initialisation_gives_the_frozen_layer_exactly():
    base = nn.Linear(5, 4)
    adapted = LoRALinear(base, rank=2, alpha=16.0)
    x = torch.randn(3, 5)
    assert torch.equal(adapted(x), base(x))
    assert torch.equal(adapted.B, torch.zeros(4, 2)) and not adapted.A.eq(0).all()
    assert [name for name, p in adapted.named_parameters() if p.requires_grad] == ["A", "B"]


def test_add_to_wraps_the_named_linears_only():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    model.q_proj, model.other = nn.Linear(3, 3), nn.Linear(3, 3)
    wrapped = LoRALinear.add_to(model, ["q_proj"], rank=1, alpha=1.0)
    assert list(wrapped) == ["q_proj"] and isinstance(model.q_proj, LoRALinear)
    assert isinstance(model.other, nn.Linear)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"A": torch.zeros(2, 4)}, "A has d_in=4"),
        ({"B": torch.zeros(4, 3)}, "B has r=3"),
        ({"alpha": 0.0}, "alpha must be positive"),
        ({"bias": torch.zeros(2)}, "bias has d_out=2"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    arguments = {"x": torch.zeros(1, 3), "W0": torch.zeros(4, 3), "A": torch.zeros(2, 3), "B": torch.zeros(4, 2),
                 "alpha": 1.0, "bias": None} | kwargs  # fmt: skip
    with pytest.raises((ValueError, TypeError), match=message):
        lora_forward(**arguments)
