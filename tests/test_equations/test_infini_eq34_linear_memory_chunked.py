"""The chunked token-level linear memory equals the token-by-token recurrence (Eq. 3-4), any chunking."""

import hypothesis.strategies as st
import torch
from hypothesis import given, settings

from src.layers.compressive_memory import compressive_memory_recurrent, linear_memory_chunked


def inputs(batch, heads, n, d_k, d_v, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.nn.functional.elu(torch.randn(batch, heads, n, d_k, generator=g, dtype=dtype)) + 1,
        torch.nn.functional.elu(torch.randn(batch, heads, n, d_k, generator=g, dtype=dtype)) + 1,
        torch.randn(batch, heads, n, d_v, generator=g, dtype=dtype),
    )


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 40),
    chunk_size=st.integers(1, 45),
    d_k=st.integers(1, 5),
    d_v=st.integers(1, 4),
    seed=st.integers(0, 10_000),
    with_initial_memory=st.booleans(),
)
def test_equals_the_recurrence_to_1e_10(n, chunk_size, d_k, d_v, seed, with_initial_memory):
    sigma_q, sigma_k, v = inputs(2, 2, n, d_k, d_v, seed)
    M0 = z0 = None
    if with_initial_memory:
        M0 = torch.randn(2, 2, d_k, d_v, dtype=torch.float64)
        z0 = torch.rand(2, 2, d_k, dtype=torch.float64) + 0.1
    A, M, z = linear_memory_chunked(sigma_q, sigma_k, v, chunk_size, M0, z0)
    A_ref, M_ref, z_ref = compressive_memory_recurrent(sigma_q, sigma_k, v, "linear", 1, M0, z0)
    torch.testing.assert_close(A, A_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(M, M_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(z, z_ref, rtol=1e-10, atol=1e-10)


def test_long_sequence_in_float32_stays_within_1e_4():
    sigma_q, sigma_k, v = inputs(1, 2, 2048, 8, 8, seed=7, dtype=torch.float32)
    A, _, _ = linear_memory_chunked(sigma_q, sigma_k, v, 64)
    A_ref, _, _ = compressive_memory_recurrent(sigma_q.double(), sigma_k.double(), v.double(), "linear", 1)
    torch.testing.assert_close(A.double(), A_ref, rtol=1e-4, atol=1e-4)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), chunk_size=st.integers(1, 9))
def test_batch_elements_are_independent(seed, chunk_size):
    sigma_q, sigma_k, v = inputs(3, 1, 11, 3, 2, seed)
    A, _, _ = linear_memory_chunked(sigma_q, sigma_k, v, chunk_size)
    A_single, _, _ = linear_memory_chunked(sigma_q[1:2], sigma_k[1:2], v[1:2], chunk_size)
    torch.testing.assert_close(A[1:2], A_single, rtol=1e-12, atol=1e-12)
