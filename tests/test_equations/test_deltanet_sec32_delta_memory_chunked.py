"""The chunked delta rule (DeltaNet's WY / UT form) equals Infini-attention's token-level Eq. (3), (5) recurrence."""

import hypothesis.strategies as st
import torch
from hypothesis import given, settings

from src.layers.compressive_memory import compressive_memory_recurrent, delta_memory_chunked


def inputs(batch, heads, n, d_k, d_v, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.nn.functional.elu(torch.randn(batch, heads, n, d_k, generator=g, dtype=dtype)) + 1,
        torch.nn.functional.elu(torch.randn(batch, heads, n, d_k, generator=g, dtype=dtype)) + 1,
        torch.randn(batch, heads, n, d_v, generator=g, dtype=dtype),
    )


@settings(max_examples=60, deadline=None)
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
    A, M, z = delta_memory_chunked(sigma_q, sigma_k, v, chunk_size, M0, z0)
    A_ref, M_ref, z_ref = compressive_memory_recurrent(sigma_q, sigma_k, v, "delta", 1, M0, z0)
    torch.testing.assert_close(A, A_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(M, M_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(z, z_ref, rtol=1e-10, atol=1e-10)


def test_hand_worked_three_tokens_in_one_chunk():
    d = torch.float64
    # σ(k) = e1, e1, e2 and v = (2), (6), (5); σ(q) = e1 everywhere; M_0 = 0, z_0 = 0.
    k = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=d)
    v = torch.tensor([[2.0], [6.0], [5.0]], dtype=d)
    q = torch.tensor([[1.0, 0.0]] * 3, dtype=d)
    A, M, z = delta_memory_chunked(q, k, v, chunk_size=3)
    # t=1 reads nothing, writes u = 2; t=2 reads 2 / 1, writes u = 6 - 2 = 4 (β = 1/1), so M[0] = 6;
    # t=3 reads M[0] / z[0] = 6 / 2 = 3 and writes u = 5 - 0 into row 2 (its key is orthogonal).
    assert A.flatten().tolist() == [0.0, 2.0, 3.0]
    assert M.tolist() == [[6.0], [5.0]] and z.tolist() == [2.0, 1.0]


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), chunk_size=st.integers(1, 12), n=st.integers(1, 14))
def test_gradients_equal_the_recurrence(seed, chunk_size, n):
    tensors = [t.requires_grad_() for t in inputs(1, 2, n, 3, 2, seed)]
    A, M, _ = delta_memory_chunked(*tensors, chunk_size)
    chunked = torch.autograd.grad((A.sin().sum() + M.square().sum()), tensors)
    A_ref, M_ref, _ = compressive_memory_recurrent(*tensors, "delta", 1)
    reference = torch.autograd.grad((A_ref.sin().sum() + M_ref.square().sum()), tensors)
    for got, expected in zip(chunked, reference):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


def test_long_sequence_in_float32_stays_close_to_float64():
    sigma_q, sigma_k, v = inputs(1, 2, 2048, 8, 8, seed=7, dtype=torch.float32)
    A, _, _ = delta_memory_chunked(sigma_q, sigma_k, v, 64)
    A_ref, _, _ = compressive_memory_recurrent(sigma_q.double(), sigma_k.double(), v.double(), "delta", 1)
    torch.testing.assert_close(A.double(), A_ref, rtol=1e-3, atol=1e-3)


def test_differs_from_the_linear_update():
    sigma_q, sigma_k, v = inputs(1, 1, 12, 3, 2, seed=3)
    A, _, _ = delta_memory_chunked(sigma_q, sigma_k, v, 4)
    A_linear, _, _ = compressive_memory_recurrent(sigma_q, sigma_k, v, "linear", 1)
    assert (A - A_linear)[..., 2:, :].abs().max() > 1e-3  # the first two tokens agree by construction
