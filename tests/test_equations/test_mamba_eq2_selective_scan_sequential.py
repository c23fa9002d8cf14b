"""Literal recurrence, Eq. (2a)-(2b): against scalar float64 loops and a hand-worked case."""

import math

import pytest
import torch

from src.layers.selective_ssm import selective_scan_sequential


def scalar_reference(u, delta, A, B, C, D, z, delta_bias):
    """Eq. (2) written with Python floats, one channel and one state entry at a time."""
    b, d, l = u.shape
    N = A.shape[1]
    out = torch.zeros(b, d, l, dtype=torch.float64)
    for i in range(b):
        for c in range(d):
            h = [0.0] * N
            for t in range(l):
                dt = math.log1p(math.exp(float(delta[i, c, t]) + float(delta_bias[c])))  # softplus
                y = 0.0
                for n in range(N):
                    h[n] = math.exp(dt * float(A[c, n])) * h[n] + dt * float(B[i, n, t]) * float(u[i, c, t])
                    y += float(C[i, n, t]) * h[n]
                y += float(D[c]) * float(u[i, c, t])
                gate = float(z[i, c, t]) / (1 + math.exp(-float(z[i, c, t])))
                out[i, c, t] = y * gate
    return out


def random_inputs(b=2, d=3, l=6, N=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    f64 = dict(dtype=torch.float64)
    return dict(
        u=torch.randn(b, d, l, generator=g, **f64),
        delta=torch.randn(b, d, l, generator=g, **f64),
        A=-torch.rand(d, N, generator=g, **f64) * 4,
        B=torch.randn(b, N, l, generator=g, **f64),
        C=torch.randn(b, N, l, generator=g, **f64),
        D=torch.randn(d, generator=g, **f64),
        z=torch.randn(b, d, l, generator=g, **f64),
        delta_bias=torch.randn(d, generator=g, **f64),
    )


def test_matches_scalar_loop_with_every_option():
    x = random_inputs()
    y = selective_scan_sequential(**x, delta_softplus=True)
    torch.testing.assert_close(y, scalar_reference(**x), rtol=1e-12, atol=1e-12)


def test_hand_worked_two_steps():
    # N = d = 1, A = -ln 2, Δ = 1, B = C = 1, u = (2, 4): h_1 = 2, h_2 = 2/2 + 4 = 5.
    one = torch.ones(1, 1, 1, dtype=torch.float64)
    y, last = selective_scan_sequential(
        torch.tensor([[[2.0, 4.0]]], dtype=torch.float64),
        torch.ones(1, 1, 2, dtype=torch.float64),
        torch.tensor([[-math.log(2)]], dtype=torch.float64),
        one.expand(1, 1, 2),
        one.expand(1, 1, 2),
        return_last_state=True,
    )
    torch.testing.assert_close(y, torch.tensor([[[2.0, 5.0]]], dtype=torch.float64))
    torch.testing.assert_close(last, torch.tensor([[[5.0]]], dtype=torch.float64))


def test_initial_state_continues_a_sequence():
    x = random_inputs(l=8)
    full, last = selective_scan_sequential(**x, delta_softplus=True, return_last_state=True)
    first_half = {k: (v[..., :5] if v.dim() == 3 else v) for k, v in x.items()}
    second_half = {k: (v[..., 5:] if v.dim() == 3 else v) for k, v in x.items()}
    y1, h = selective_scan_sequential(**first_half, delta_softplus=True, return_last_state=True)
    y2, h2 = selective_scan_sequential(**second_half, delta_softplus=True, return_last_state=True, initial_state=h)
    torch.testing.assert_close(torch.cat((y1, y2), -1), full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h2, last, rtol=1e-12, atol=1e-12)


def test_batch_independence():
    x = random_inputs(b=3)
    full = selective_scan_sequential(**x, delta_softplus=True)
    one = {k: (v[1:2] if v.dim() == 3 else v) for k, v in x.items()}
    torch.testing.assert_close(selective_scan_sequential(**one, delta_softplus=True), full[1:2], rtol=0, atol=0)


def test_bad_inputs_name_the_argument():
    x = random_inputs()
    with pytest.raises(ValueError, match="B has N=5"):
        selective_scan_sequential(**{**x, "B": torch.randn(2, 5, 6, dtype=torch.float64)})
    with pytest.raises(TypeError, match=r"C has dtype torch\.float32"):
        selective_scan_sequential(**{**x, "C": x["C"].float()})
    with pytest.raises(ValueError, match=r"u must have shape \(b d l\)"):
        selective_scan_sequential(**{**x, "u": x["u"][0]})
