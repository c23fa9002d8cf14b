"""LoRA Eq. (3), the update term ΔW x = (α/r) B A x, against a float64 loop and a hand-worked case."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from src.layers.lora import lora_forward, lora_update


def test_hand_worked_case():
    x = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    A = torch.tensor([[1.0, -1.0], [0.5, 0.5]], dtype=torch.float64)  # A x = (-1, 1.5)
    B = torch.tensor([[2.0, 0.0], [1.0, 2.0]], dtype=torch.float64)  # B A x = (-2, 2)
    # r = 2, α = 4: (α / r) B A x = 2 (-2, 2) = (-4, 4)
    assert lora_update(x, A, B, alpha=4.0).tolist() == [[-4.0, 4.0]]


@settings(max_examples=25, deadline=None)
@given(d_in=st.integers(1, 6), d_out=st.integers(1, 6), r=st.integers(1, 4), alpha=st.floats(0.1, 32.0),
       seed=st.integers(0, 1000))  # fmt: skip
def test_equals_a_float64_loop_and_completes_the_forward(d_in, d_out, r, alpha, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, d_in, generator=g, dtype=torch.float64)
    A, B = (
        torch.randn(r, d_in, generator=g, dtype=torch.float64),
        torch.randn(d_out, r, generator=g, dtype=torch.float64),
    )
    expected = torch.zeros(2, 3, d_out, dtype=torch.float64)
    for i in range(d_out):
        expected[..., i] = alpha / r * sum(B[i, k] * (A[k] * x).sum(-1) for k in range(r))
    torch.testing.assert_close(lora_update(x, A, B, alpha), expected)
    W0 = torch.randn(d_out, d_in, generator=g, dtype=torch.float64)
    torch.testing.assert_close(lora_forward(x, W0, A, B, alpha), x @ W0.T + expected)


def test_a_zero_B_gives_no_update():
    assert torch.equal(lora_update(torch.randn(4, 5), torch.randn(3, 5), torch.zeros(2, 3), 8.0), torch.zeros(4, 2))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"A": torch.zeros(2, 4)}, "A has d_in=4"), ({"B": torch.zeros(4, 3)}, "B has r=3"), ({"alpha": -1.0}, "alpha")],
)
def test_bad_arguments_are_named(kwargs, message):
    arguments = {"x": torch.zeros(1, 3), "A": torch.zeros(2, 3), "B": torch.zeros(4, 2), "alpha": 1.0} | kwargs
    with pytest.raises((ValueError, TypeError), match=message):
        lora_update(**arguments)
