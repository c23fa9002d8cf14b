"""The shifted construction of src/kernels/fla_memory.py: fla's self-inclusive recurrences, fed keys and
values one token later, give the token-level memory equations exactly. On the CPU the recurrences are
literal float64 loops of fla's definitions, and fla's own reference implementations (its naive.py
files); on a GPU (marker `cuda`) fla's own kernels."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from src.kernels.fla_memory import delta_memory_shifted, fla_available, fla_delta, fla_linear, linear_memory_shifted
from src.layers.compressive_memory import (
    TensorMemory,
    compressive_memory_recurrent,
    delta_memory_chunked,
    elu_plus_one,
    linear_memory_chunked,
)


def inclusive_linear_loop(q, k, v, S0):
    """fla's linear attention without normalisation, scale 1: S_t = S_{t-1} + k_t^T v_t, o_t = q_t S_t."""
    S, outputs = S0.clone(), []
    for t in range(q.shape[-2]):
        S = S + k[..., t, :, None] * v[..., t, None, :]
        outputs.append((q[..., t, None, :] @ S)[..., 0, :])
    return torch.stack(outputs, dim=-2), S


def inclusive_delta_loop(q, k, v, beta, S0):
    """fla's delta rule (its naive.py recurrence), scale 1: S_t = S_{t-1} + β_t k_t^T (v_t - k_t S_{t-1})."""
    S, outputs = S0.clone(), []
    for t in range(q.shape[-2]):
        k_t = k[..., t, :]
        written = beta[..., t, None] * (v[..., t, :] - (k_t[..., None, :] @ S)[..., 0, :])
        S = S + k_t[..., :, None] * written[..., None, :]
        outputs.append((q[..., t, None, :] @ S)[..., 0, :])
    return torch.stack(outputs, dim=-2), S


def inputs(seed, n, d_k=3, d_v=2, device="cpu", dtype=torch.float64, state=True):
    g = torch.Generator().manual_seed(seed)
    q, k = (elu_plus_one(torch.randn(2, 2, n, d_k, generator=g, dtype=dtype)) for _ in range(2))
    v = torch.randn(2, 2, n, d_v, generator=g, dtype=dtype)
    M0 = torch.randn(2, 2, d_k, d_v, generator=g, dtype=dtype) if state else torch.zeros(2, 2, d_k, d_v, dtype=dtype)
    z0 = torch.rand(2, 2, d_k, generator=g, dtype=dtype) if state else torch.zeros(2, 2, d_k, dtype=dtype)
    return [t.to(device) for t in (q, k, v, M0, z0)]


@pytest.mark.parametrize(("shifted", "loop", "chunked", "chunk_size"), [
    (linear_memory_shifted, inclusive_linear_loop, linear_memory_chunked, 7),
    (delta_memory_shifted, inclusive_delta_loop, delta_memory_chunked, 5),
])  # fmt: skip
@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 40), seed=st.integers(0, 10_000), state=st.booleans())
def test_shift_equals_the_equations(shifted, loop, chunked, chunk_size, n, seed, state):
    q, k, v, M0, z0 = inputs(seed, n, state=state)
    expected = chunked(q, k, v, chunk_size, M0, z0)
    for got, want in zip(shifted(q, k, v, M0, z0, 1e-6, loop), expected):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_delta_shift_equals_the_token_recurrence_itself():
    q, k, v, M0, z0 = inputs(3, 9, state=False)
    A_mem = delta_memory_shifted(q, k, v, M0, z0, 1e-6, inclusive_delta_loop)[0]
    torch.testing.assert_close(A_mem, compressive_memory_recurrent(q, k, v, "delta", 1)[0], rtol=1e-10, atol=1e-10)


def fla_references():
    """fla's own reference implementations (its naive.py), or a skip that says why they cannot run here."""
    try:
        from fla.ops.delta_rule import naive as delta
        from fla.ops.linear_attn import naive as linear
    except Exception as error:  # the 'fla' extra missing, or fla refusing to import on this machine
        pytest.skip(f"flash-linear-attention's naive.py references cannot be imported here: {error!r}")
    return linear, delta


def heads_second(*tensors):
    """(b, H, n, d) <-> fla's (b, n, H, d)."""
    return [t.transpose(1, 2) for t in tensors]


@pytest.mark.parametrize(("seed", "n"), [(0, 64), (1, 128)])
def test_shift_through_flas_own_chunk_references_in_float64(seed, n):
    """fla's naive chunk forms keep float64 but take no initial state (M0 = 0; z0 random) and lengths
    of whole chunks; the linear one returns no state (checked by the recurrence test below)."""
    linear, delta = fla_references()
    q, k, v, M0, z0 = inputs(seed, n)
    M0 = torch.zeros_like(M0)
    d_k = q.shape[-1]

    def fla_chunk_linear(q, k, v, S0):
        (o,) = heads_second(linear.naive_chunk_linear_attn(*heads_second(q, k, v), scale=1.0, normalize=False))
        return o, S0 + k.transpose(-1, -2) @ v

    def fla_chunk_delta(q, k, v, beta, S0):
        return delta.delta_rule_chunkwise(q * d_k**0.5, k, v, beta, chunk_size=32)  # its q scale undone

    for shifted, reference, chunked in (
        (linear_memory_shifted, fla_chunk_linear, linear_memory_chunked),
        (delta_memory_shifted, fla_chunk_delta, delta_memory_chunked),
    ):
        got = shifted(q, k, v, M0, z0, 1e-6, reference)
        for a, b in zip(got, chunked(q, k, v, 16, M0, z0)):
            assert a.dtype == torch.float64
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("seed", "n", "state"), [(0, 1, True), (1, 17, True), (2, 40, False)])
def test_shift_through_flas_own_recurrences(seed, n, state):
    """fla's naive recurrences take initial states and any length but compute in float32 whatever the
    inputs' dtype, so they are compared in float32 with the float64 equations of the same inputs."""
    linear, delta = fla_references()
    q, k, v, M0, z0 = (t.float() for t in inputs(seed, n, state=state))
    d_k = q.shape[-1]

    def fla_recurrent_linear(q, k, v, S0):
        o, S = linear.naive_recurrent_linear_attn(
            *heads_second(q, k, v), scale=1.0, initial_state=S0, output_final_state=True
        )
        return o.transpose(1, 2), S

    def fla_recurrent_delta(q, k, v, beta, S0):
        return delta.delta_rule_recurrence(q * d_k**0.5, k, v, beta, initial_state=S0, output_final_state=True)

    for shifted, reference, chunked in (
        (linear_memory_shifted, fla_recurrent_linear, linear_memory_chunked),
        (delta_memory_shifted, fla_recurrent_delta, delta_memory_chunked),
    ):
        got = shifted(q, k, v, M0, z0, 1e-6, reference)
        want = chunked(*(t.double() for t in (q, k, v)), 8, M0.double(), z0.double())
        for a, b in zip(got, want):
            torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5)


def test_the_fla_backend_on_a_cpu_tensor_is_refused_naming_the_requirement():
    layer = TensorMemory(8, 2, backend="fla")
    with pytest.raises(ValueError, match="backend 'fla' needs CUDA tensors"):
        layer(torch.randn(1, 4, 8))


@pytest.mark.cuda
@pytest.mark.skipif(not fla_available(), reason="needs CUDA and the 'fla' extra")
@pytest.mark.parametrize(("shifted", "kernel", "chunked", "tolerance"), [
    (linear_memory_shifted, fla_linear, linear_memory_chunked, 1e-2),  # fla's TF32 products
    (delta_memory_shifted, fla_delta, delta_memory_chunked, 5e-2),  # fla's delta rule runs in bfloat16
])  # fmt: skip
def test_fla_kernels_give_the_equations_on_a_gpu(shifted, kernel, chunked, tolerance):
    q, k, v, M0, z0 = inputs(0, 300, d_k=64, d_v=64, device="cuda", dtype=torch.float32)
    q, k = q / 8, k / 8  # keep the float32 sums of 300 tokens well conditioned
    got = shifted(q, k, v, M0, z0, 1e-6, kernel)
    want = chunked(q.double(), k.double(), v.double(), 64, M0.double(), z0.double())
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, rtol=tolerance, atol=tolerance)


@pytest.mark.cuda
@pytest.mark.skipif(not fla_available(), reason="needs CUDA and the 'fla' extra")
@pytest.mark.parametrize("update", ["linear", "delta"])
def test_tensor_memory_auto_backend_uses_fla_on_a_gpu_and_agrees_with_chunked(update):
    torch.manual_seed(0)
    fast = TensorMemory(128, 2, update=update).cuda()
    reference = TensorMemory(128, 2, update=update, backend="chunked").cuda()
    reference.load_state_dict(fast.state_dict())
    x = torch.randn(2, 256, 128, device="cuda") / 4
    torch.testing.assert_close(fast(x), reference(x), rtol=5e-2, atol=5e-2)  # TF32 / bfloat16 inside fla
