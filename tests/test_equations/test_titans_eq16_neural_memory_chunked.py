"""The chunked (mini-batch) form of Titans Sec. 3.2: equal to the recurrence at chunk size 1 and
to a literal loop of its own definition at larger chunks, for the linear and the MLP memory."""

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from src.layers.neural_memory import MLPMemory, neural_memory_chunked, neural_memory_recurrent


def sequence(b, L, d_k, d_v, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, L, d_k, generator=g, dtype=torch.float64)
    k = torch.nn.functional.normalize(torch.randn(b, L, d_k, generator=g, dtype=torch.float64), dim=-1)
    v = torch.randn(b, L, d_v, generator=g, dtype=torch.float64)
    alpha, eta, theta = (torch.rand(b, L, generator=g, dtype=torch.float64) * s for s in (0.3, 1.0, 0.3))
    return q, k, v, alpha, eta, theta


def literal_definition(q, k, v, alpha, eta, theta, chunk_size, params0, apply):
    """Token by token, each gradient taken by autograd at the weights of its chunk's start."""
    b, L = alpha.shape
    ys = []
    for i in range(b):
        params = {n: p[i].clone() for n, p in params0.items()}
        momentum = {n: torch.zeros_like(p) for n, p in params.items()}
        start, y = params, []
        for t in range(L):
            if t % chunk_size == 0:
                start = {n: p.detach().clone().requires_grad_() for n, p in params.items()}
            loss = (apply(start, k[i, t]) - v[i, t]).pow(2).sum()
            grads = dict(zip(start, torch.autograd.grad(loss, list(start.values()))))
            for n in params:
                momentum[n] = eta[i, t] * momentum[n] - theta[i, t] * grads[n]
                params[n] = (1 - alpha[i, t]) * params[n] + momentum[n]
            y.append(apply(params, q[i, t]))
        ys.append(torch.stack(y))
    return torch.stack(ys).detach()


def linear_apply(params, x):
    return x @ params["M"]


@settings(max_examples=10, deadline=None)
@given(L=st.integers(1, 20), seed=st.integers(0, 10_000))
def test_chunk_size_one_is_the_recurrence(L, seed):
    q, k, v, alpha, eta, theta = sequence(2, L, 3, 2, seed)
    M0 = torch.randn(2, 3, 2, dtype=torch.float64)
    S0 = torch.randn(2, 3, 2, dtype=torch.float64)
    y, params, momentum = neural_memory_chunked(q, k, v, alpha, eta, theta, 1, {"M": M0}, {"M": S0})
    y_ref, M_ref, S_ref = neural_memory_recurrent(q, k, v, alpha, eta, theta, M0, S0)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(params["M"], M_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(momentum["M"], S_ref, rtol=1e-10, atol=1e-10)


@settings(max_examples=12, deadline=None)
@given(chunk_size=st.integers(2, 64), L=st.integers(1, 70), seed=st.integers(0, 10_000))
def test_linear_memory_equals_its_literal_definition(chunk_size, L, seed):
    q, k, v, alpha, eta, theta = sequence(1, L, 3, 2, seed)
    params0 = {"M": torch.randn(1, 3, 2, dtype=torch.float64)}
    y, _, _ = neural_memory_chunked(q, k, v, alpha, eta, theta, chunk_size, params0)
    expected = literal_definition(q, k, v, alpha, eta, theta, chunk_size, params0, linear_apply)
    torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-10)


@settings(max_examples=6, deadline=None)
@given(chunk_size=st.integers(2, 16), L=st.integers(1, 20), seed=st.integers(0, 10_000))
def test_mlp_memory_equals_its_literal_definition(chunk_size, L, seed):
    q, k, v, alpha, eta, theta = sequence(2, L, 3, 2, seed)
    g = torch.Generator().manual_seed(seed + 1)
    params0 = {
        "W1": torch.randn(2, 3, 5, generator=g, dtype=torch.float64),
        "W2": torch.randn(2, 5, 2, generator=g, dtype=torch.float64),
    }
    y, _, _ = neural_memory_chunked(q, k, v, alpha, eta, theta, chunk_size, params0, memory="mlp")
    expected = literal_definition(q, k, v, alpha, eta, theta, chunk_size, params0, MLPMemory.apply)
    torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-10)


def _deep_apply(params, k):
    """An L_M-layer MLP written out: SiLU after every layer but the last."""
    for i in range(1, len(params)):
        k = torch.nn.functional.silu(k @ params[f"W{i}"])
    return k @ params[f"W{len(params)}"]


@settings(max_examples=4, deadline=None)
@given(depth=st.integers(3, 4), chunk_size=st.integers(2, 8), L=st.integers(1, 12), seed=st.integers(0, 10_000))
def test_deep_memory_equals_its_literal_definition(depth, chunk_size, L, seed):
    q, k, v, alpha, eta, theta = sequence(1, L, 3, 2, seed)
    g = torch.Generator().manual_seed(seed + 2)
    widths = [3] + [4] * (depth - 1) + [2]
    params0 = {
        f"W{i + 1}": torch.randn(1, widths[i], widths[i + 1], generator=g, dtype=torch.float64) for i in range(depth)
    }
    y, _, _ = neural_memory_chunked(q, k, v, alpha, eta, theta, chunk_size, params0, memory="mlp")
    expected = literal_definition(q, k, v, alpha, eta, theta, chunk_size, params0, _deep_apply)
    torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-10)


def test_zero_decay_factors_are_exact():
    q, k, v, alpha, eta, theta = sequence(1, 8, 2, 2, 5)
    alpha[:, 3] = 1.0  # forget everything at token 4
    eta[:, 5] = 0.0  # drop the momentum at token 6
    params0 = {"M": torch.randn(1, 2, 2, dtype=torch.float64)}
    y, _, _ = neural_memory_chunked(q, k, v, alpha, eta, theta, 8, params0)
    expected = literal_definition(q, k, v, alpha, eta, theta, 8, params0, linear_apply)
    torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-10)


def test_unknown_memory_is_named():
    q, k, v, alpha, eta, theta = sequence(1, 3, 2, 2, 0)
    with pytest.raises(ValueError, match="memory must be one of"):
        neural_memory_chunked(
            q, k, v, alpha, eta, theta, 2, {"M": torch.zeros(1, 2, 2, dtype=torch.float64)}, memory="x"
        )
