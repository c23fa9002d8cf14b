"""Retrieve-then-update over segments, Infini-attention Eq. (3)-(5): a scalar float64 loop, causality."""

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from src.layers.compressive_memory import compressive_memory_recurrent


def reference(sigma_q, sigma_k, v, update, segment_size):
    """The equations with Python floats, one segment at a time, for (n, d_k) / (n, d_v) inputs."""
    n, d_k = sigma_q.shape
    d_v = v.shape[1]
    M = [[0.0] * d_v for _ in range(d_k)]
    z = [0.0] * d_k
    out = torch.zeros(n, d_v, dtype=torch.float64)

    def read(row):
        den = max(sum(row[i] * z[i] for i in range(d_k)), 1e-6)
        return [sum(row[i] * M[i][j] for i in range(d_k)) / den for j in range(d_v)]

    for start in range(0, n, segment_size):
        rows = range(start, min(n, start + segment_size))
        for t in rows:
            out[t] = torch.tensor(read(sigma_q[t].tolist()), dtype=torch.float64)
        keys = [sigma_k[t].tolist() for t in rows]
        corrections = [
            [v[t, j].item() - (read(k)[j] if update == "delta" else 0.0) for j in range(d_v)]
            for t, k in zip(rows, keys)
        ]
        for k, c in zip(keys, corrections):
            for i in range(d_k):
                z[i] += k[i]
                for j in range(d_v):
                    M[i][j] += k[i] * c[j]
    return out, torch.tensor(M, dtype=torch.float64), torch.tensor(z, dtype=torch.float64)


def inputs(n, d_k=3, d_v=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.rand(n, d_k, generator=g, dtype=torch.float64) + 0.05,
        torch.rand(n, d_k, generator=g, dtype=torch.float64) + 0.05,
        torch.randn(n, d_v, generator=g, dtype=torch.float64),
    )


@pytest.mark.parametrize("update", ["linear", "delta"])
@pytest.mark.parametrize("segment_size", [1, 3, 4, 10])
def test_matches_the_scalar_loop(update, segment_size):
    sigma_q, sigma_k, v = inputs(10)
    A, M, z = compressive_memory_recurrent(sigma_q, sigma_k, v, update, segment_size)
    A_ref, M_ref, z_ref = reference(sigma_q, sigma_k, v, update, segment_size)
    torch.testing.assert_close(A, A_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(M, M_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(z, z_ref, rtol=1e-12, atol=1e-12)


def test_hand_worked_two_tokens_token_level():
    d = torch.float64
    sigma_k = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=d)
    v = torch.tensor([[2.0, 4.0], [6.0, 0.0]], dtype=d)
    sigma_q = torch.tensor([[1.0, 1.0], [3.0, 1.0]], dtype=d)
    A, M, z = compressive_memory_recurrent(sigma_q, sigma_k, v, "linear", 1)
    # Token 1 reads the empty memory: 0. Token 2 reads token 1 only: 3 (2, 4) / 3 = v1.
    assert A.tolist() == [[0.0, 0.0], [2.0, 4.0]]
    assert M.tolist() == [[8.0, 4.0], [6.0, 0.0]] and z.tolist() == [2.0, 1.0]


def test_initial_memory_continues_a_sequence():
    sigma_q, sigma_k, v = inputs(9, seed=3)
    A_full, M_full, z_full = compressive_memory_recurrent(sigma_q, sigma_k, v, "delta", 3)
    A_1, M_1, z_1 = compressive_memory_recurrent(sigma_q[:6], sigma_k[:6], v[:6], "delta", 3)
    A_2, M_2, z_2 = compressive_memory_recurrent(sigma_q[6:], sigma_k[6:], v[6:], "delta", 3, M_1, z_1)
    torch.testing.assert_close(torch.cat((A_1, A_2)), A_full, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(M_2, M_full, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(z_2, z_full, rtol=1e-13, atol=1e-13)


@settings(max_examples=30, deadline=None)
@given(
    t=st.integers(0, 11),
    update=st.sampled_from(["linear", "delta"]),
    segment_size=st.sampled_from([1, 2, 5]),
    seed=st.integers(0, 10_000),
)
def test_no_token_reads_itself_or_the_future(t, update, segment_size, seed):
    """Output t ignores σ(K), V at positions >= t (its own key and value included) and Q after t."""
    sigma_q, sigma_k, v = inputs(12, seed=seed)
    A, _, _ = compressive_memory_recurrent(sigma_q, sigma_k, v, update, segment_size)
    g = torch.Generator().manual_seed(seed + 1)
    q2, k2, v2 = sigma_q.clone(), sigma_k.clone(), v.clone()
    q2[t + 1 :] = torch.rand(q2[t + 1 :].shape, generator=g, dtype=torch.float64) + 0.05
    k2[t:] = torch.rand(k2[t:].shape, generator=g, dtype=torch.float64) + 0.05
    v2[t:] = torch.randn(v2[t:].shape, generator=g, dtype=torch.float64)
    A2, _, _ = compressive_memory_recurrent(q2, k2, v2, update, segment_size)
    torch.testing.assert_close(A2[: t + 1], A[: t + 1], rtol=0, atol=0)


def test_unknown_update_is_named():
    with pytest.raises(ValueError, match="update must be 'linear' or 'delta'"):
        compressive_memory_recurrent(*inputs(3), update="hebbian")
