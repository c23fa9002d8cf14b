"""Chunked selective scan: equal to the literal recurrence (values and gradients), stable, any chunking."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from src.layers.selective_ssm import selective_scan, selective_scan_sequential


def random_inputs(b, d, l, N, seed, dtype=torch.float64, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    tensors = dict(
        u=torch.randn(b, d, l, generator=g),
        delta=torch.randn(b, d, l, generator=g),
        A=-torch.rand(d, N, generator=g) * 8,
        B=torch.randn(b, N, l, generator=g),
        C=torch.randn(b, N, l, generator=g),
        D=torch.randn(d, generator=g),
        z=torch.randn(b, d, l, generator=g),
        delta_bias=torch.randn(d, generator=g),
        initial_state=torch.randn(b, d, N, generator=g),
    )
    return {k: v.to(dtype).requires_grad_(requires_grad) for k, v in tensors.items()}


@given(
    b=st.integers(1, 2),
    d=st.integers(1, 4),
    l=st.integers(1, 70),
    N=st.integers(1, 5),
    chunk=st.one_of(st.none(), st.integers(1, 80)),
    seed=st.integers(0, 10_000),
)
def test_equals_recurrence_in_float64(b, d, l, N, chunk, seed):
    x = random_inputs(b, d, l, N, seed)
    y, h = selective_scan(**x, delta_softplus=True, return_last_state=True, chunk_size=chunk)
    y_ref, h_ref = selective_scan_sequential(**x, delta_softplus=True, return_last_state=True)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(h, h_ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("l, chunk", [(1, None), (37, 8), (64, 64), (200, None)])
def test_gradients_equal_autograd_of_the_recurrence(l, chunk):
    x = random_inputs(2, 3, l, 4, seed=l, requires_grad=True)
    y, h = selective_scan(**x, delta_softplus=True, return_last_state=True, chunk_size=chunk)
    y_ref, h_ref = selective_scan_sequential(**x, delta_softplus=True, return_last_state=True)
    w, w_h = torch.randn_like(y), torch.randn_like(h)
    grads = torch.autograd.grad((y * w).sum() + (h * w_h).sum(), list(x.values()))
    grads_ref = torch.autograd.grad((y_ref * w).sum() + (h_ref * w_h).sum(), list(x.values()))
    for name, g, g_ref in zip(x, grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-10, msg=lambda m, name=name: f"grad of {name}: {m}")


def test_gradcheck_without_optional_arguments():
    x = random_inputs(1, 2, 9, 3, seed=5, requires_grad=True)
    args = (x["u"], x["delta"].detach().abs().requires_grad_(), x["A"], x["B"], x["C"])
    assert torch.autograd.gradcheck(lambda *a: selective_scan(*a, chunk_size=4), args)


def test_float32_relative_agreement():
    x = random_inputs(2, 8, 300, 16, seed=1, dtype=torch.float32)
    y = selective_scan(**x, delta_softplus=True)
    y_ref = selective_scan_sequential(**x, delta_softplus=True)
    assert ((y - y_ref).norm() / y_ref.norm()).item() < 1e-4


@pytest.mark.slow
def test_long_sequence_8192_matches_and_stays_finite():
    x = random_inputs(1, 4, 8192, 16, seed=2)
    x["delta"] = x["delta"] * 10  # large steps: e^{ΔA} underflows to 0, which is the exact limit
    y = selective_scan(**x, delta_softplus=True)
    y_ref = selective_scan_sequential(**x, delta_softplus=True)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-10)
    x32 = {k: v.float() for k, v in x.items()}
    y32 = selective_scan(**x32, delta_softplus=True)
    assert ((y32.double() - y_ref).norm() / y_ref.norm()).item() < 1e-4


def test_bad_chunk_size_is_named():
    x = random_inputs(1, 2, 5, 3, seed=0)
    with pytest.raises(ValueError, match="chunk_size must be positive"):
        selective_scan(**x, chunk_size=0)
