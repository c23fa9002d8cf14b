"""The Triton selective scan equals the literal recurrence of Eq. (2a)-(2b), in value and in every gradient.

On a machine without a GPU the kernels run in Triton's interpreter on CPU tensors (tests/conftest.py
sets TRITON_INTERPRET=1), at small shapes with chunks of CHUNK steps so that lengths of 2-3 chunks
cross chunk boundaries (the state carried forward, the adjoint carried back); the `cuda` tests repeat
the comparison at the size of MambaGPT-130m's scan on a GPU, with the default chunks.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from src.kernels.selective_scan import selective_scan_triton
from src.layers.selective_ssm import MambaMixer, selective_scan, selective_scan_sequential

CHUNK = 8  # the kernels' chunk size in the interpreted tests

GRADIENT_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


def scan_inputs(b, d, N, L, dtype, device="cpu", seed=0, D=True, z=True, bias=True, h0=True):
    g = torch.Generator(device=device).manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g, device=device, dtype=dtype)).requires_grad_()

    A = (-torch.rand(d, N, generator=g, device=device, dtype=dtype) - 0.1).requires_grad_()
    return {
        "u": randn(b, d, L),
        "delta": randn(b, d, L, scale=0.5),
        "A": A,
        "B": randn(b, N, L),
        "C": randn(b, N, L),
        "D": randn(d) if D else None,
        "z": randn(b, d, L) if z else None,
        "delta_bias": randn(d, scale=0.1) if bias else None,
        "initial_state": randn(b, d, N) if h0 else None,
    }


def check_equal(inputs, rtol, atol, softplus=True, scan=selective_scan_sequential, chunk_size=CHUNK):
    """Outputs, last states and the gradients of every given input agree with the reference."""
    y, last = selective_scan_triton(**inputs, delta_softplus=softplus, return_last_state=True, chunk_size=chunk_size)
    y_ref, last_ref = scan(**inputs, delta_softplus=softplus, return_last_state=True)
    torch.testing.assert_close(y, y_ref, rtol=rtol, atol=atol)
    torch.testing.assert_close(last, last_ref, rtol=rtol, atol=atol)
    g = torch.Generator(device=y.device).manual_seed(1)
    dy = torch.randn(y.shape, generator=g, device=y.device, dtype=y.dtype)
    dlast = torch.randn(last.shape, generator=g, device=y.device, dtype=y.dtype)
    given_inputs = {name: t for name, t in inputs.items() if t is not None}
    grads = torch.autograd.grad((y * dy).sum() + (last * dlast).sum(), list(given_inputs.values()))
    grads_ref = torch.autograd.grad((y_ref * dy).sum() + (last_ref * dlast).sum(), list(given_inputs.values()))
    for name, got, want in zip(given_inputs, grads, grads_ref):
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol, msg=lambda m, name=name: f"d{name}: {m}")


@settings(max_examples=6, deadline=None)
@given(
    b=st.integers(1, 2),
    d=st.integers(1, 5),
    N=st.integers(1, 3),
    L=st.integers(1, 2 * CHUNK + 3),
    options=st.lists(st.booleans(), min_size=5, max_size=5),
)
def test_equals_the_recurrence_in_float64_for_any_shape_and_options(b, d, N, L, options):
    D, z, bias, h0, softplus = options
    inputs = scan_inputs(b, d, N, L, torch.float64, D=D, z=z, bias=bias, h0=h0)
    check_equal(inputs, rtol=1e-10, atol=1e-12, softplus=softplus)


def test_float32_within_1e_5_across_two_and_a_half_chunks():
    inputs = scan_inputs(2, 3, 2, 2 * CHUNK + CHUNK // 2, torch.float32, seed=3)
    check_equal(inputs, rtol=1e-5, atol=1e-5)


def check_half_precision(dtype, bound, device="cpu", sizes=(1, 3, 2, 2 * CHUNK + 3), chunk_size=CHUNK):
    """u, Δ, B, C, z in `dtype` with float32 A, D, Δ bias and state (the official kernel's rules): the
    output and every gradient within `bound`, norm-wise relative, of the float64 loop on the same values."""
    float64 = scan_inputs(*sizes, torch.float64, device=device, seed=5)
    low = {
        name: None if t is None else t.detach().to(dtype if name in HALF_INPUTS else torch.float32).requires_grad_()
        for name, t in float64.items()
    }
    exact = {name: t.detach().double().requires_grad_() for name, t in low.items() if t is not None}
    y, last = selective_scan_triton(**low, delta_softplus=True, return_last_state=True, chunk_size=chunk_size)
    assert (y.dtype, last.dtype) == (dtype, torch.float32)
    y_exact, last_exact = selective_scan_sequential(**exact, delta_softplus=True, return_last_state=True)
    dy, dlast = torch.randn_like(y), torch.randn_like(last)
    grads = torch.autograd.grad((y * dy).sum() + (last * dlast).sum(), list(low.values()))
    grads_exact = torch.autograd.grad(
        (y_exact * dy.double()).sum() + (last_exact * dlast.double()).sum(), list(exact.values())
    )
    names = ["y", "last state", *(f"d{name}" for name in low)]
    dtypes = [dtype, torch.float32, *(t.dtype for t in low.values())]  # a gradient has its input's dtype
    for name, got, want, expected in zip(names, [y, last, *grads], [y_exact, last_exact, *grads_exact], dtypes):
        assert got.dtype == expected, name
        error = (got.double() - want).norm() / want.norm()
        assert error < bound, f"{name}: relative error {error:.2e}"


HALF_INPUTS = ("u", "delta", "B", "C", "z")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_within_two_unit_roundoffs_of_float64(dtype):
    # outputs and gradients stored in `dtype` carry its rounding, at most one unit roundoff u
    # (2^-8 bfloat16, 2^-11 float16); the float32 computation adds ~1e-6; 2u (finfo's eps) bounds both
    # (measured: 3.6e-3 bfloat16, 2.5e-4 float16)
    check_half_precision(dtype, bound=torch.finfo(dtype).eps)


def test_without_any_optional_argument_and_only_the_output():
    inputs = scan_inputs(1, 2, 3, 10, torch.float64, D=False, z=False, bias=False, h0=False)
    y = selective_scan_triton(**inputs)  # the default chunk: one
    torch.testing.assert_close(y, selective_scan_sequential(**inputs), rtol=1e-12, atol=1e-12)
    (du,) = torch.autograd.grad(y.sum(), inputs["u"])
    (du_ref,) = torch.autograd.grad(selective_scan_sequential(**inputs).sum(), inputs["u"])
    torch.testing.assert_close(du, du_ref, rtol=1e-12, atol=1e-12)


def test_hand_worked_single_channel():
    # d = N = 1, A = -1, Δ = log 2 (softplus off), B = C = 1: Ā = 1/2, h_t = h_{t-1} / 2 + log(2) u_t
    u = torch.tensor([[[1.0, 0.0, 2.0]]], dtype=torch.float64)
    delta = torch.full_like(u, torch.log(torch.tensor(2.0, dtype=torch.float64)).item())
    ones = torch.ones(1, 1, 3, dtype=torch.float64)
    y = selective_scan_triton(u, delta, -torch.ones(1, 1, dtype=torch.float64), ones, ones)
    log2 = torch.log(torch.tensor(2.0, dtype=torch.float64)).item()
    expected = torch.tensor([[[log2, log2 / 2, log2 / 4 + 2 * log2]]], dtype=torch.float64)
    torch.testing.assert_close(y, expected, rtol=1e-14, atol=1e-14)


def test_mamba_block_with_the_triton_scan_equals_the_literal_scan():
    # the block-level contract (causality, step == forward, ...) runs in tests/test_mixer_contract.py
    # on the chunked and sequential scans; here the kernel inside the block, forward and gradients
    torch.manual_seed(0)
    kernel_block = MambaMixer(d_model=4, d_state=2, scan="triton").double()
    literal_block = MambaMixer(d_model=4, d_state=2, scan="sequential").double()
    literal_block.load_state_dict(kernel_block.state_dict())
    x = torch.randn(2, 11, 4, dtype=torch.float64)
    y, state = kernel_block.step(x[:, :7], None)
    y_rest, _ = kernel_block.step(x[:, 7:], state)  # continues from the kernel's last state
    expected = literal_block(x)
    torch.testing.assert_close(torch.cat((y, y_rest), dim=1), expected, rtol=1e-10, atol=1e-12)
    grads = torch.autograd.grad(kernel_block(x).square().sum(), list(kernel_block.parameters()))
    expected_grads = torch.autograd.grad(literal_block(x).square().sum(), list(literal_block.parameters()))
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


def test_bad_arguments_are_named():
    inputs = {k: v.detach() if v is not None else None for k, v in scan_inputs(1, 2, 3, 5, torch.float64).items()}
    with pytest.raises(ValueError, match="B must have shape"):
        selective_scan_triton(**{**inputs, "B": inputs["B"][0]})
    with pytest.raises(TypeError, match=r"delta has dtype torch\.float32"):
        selective_scan_triton(**{**inputs, "delta": inputs["delta"].float()})
    half = {name: t.to(torch.bfloat16) if name in HALF_INPUTS else t for name, t in inputs.items()}
    with pytest.raises(TypeError, match=r"A has dtype torch\.float64, but with u of dtype torch\.bfloat16"):
        selective_scan_triton(**half)
    with pytest.raises(ValueError, match="chunk_size must be a power of two, got 6"):
        selective_scan_triton(**inputs, chunk_size=6)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.cuda
@needs_cuda
def test_on_a_gpu_at_the_size_of_mambagpt_130m():
    # float32 against a float64 reference (the chunked scan in float64): sums over 4 x 2048 steps
    # (dA, dD, d bias) round differently in every summation order, so the error is measured
    # against the exact values, norm-wise, output by output and gradient by gradient
    inputs = scan_inputs(4, 1536, 16, 2048, torch.float32, device="cuda")
    inputs["delta"] = (inputs["delta"].detach() - 4.0).requires_grad_()  # Δ ~ softplus(-4): the trained range
    exact = {name: t.detach().double().requires_grad_() for name, t in inputs.items()}
    outputs = selective_scan_triton(**inputs, delta_softplus=True, return_last_state=True)
    outputs_exact = selective_scan(**exact, delta_softplus=True, return_last_state=True)
    weights = [torch.randn_like(t) for t in outputs_exact]
    grads = torch.autograd.grad(sum((o * w.float()).sum() for o, w in zip(outputs, weights)), list(inputs.values()))
    grads_exact = torch.autograd.grad(sum((o * w).sum() for o, w in zip(outputs_exact, weights)), list(exact.values()))
    names = ["y", "last state", *(f"d{name}" for name in inputs)]
    for name, got, want in zip(names, [*outputs, *grads], [*outputs_exact, *grads_exact]):
        error = (got.double() - want).norm() / want.norm()
        assert error < 1e-5, f"{name}: relative error {error:.2e}"


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("chunk_size", [None, 64])
def test_on_a_gpu_against_the_literal_loop(chunk_size):
    inputs = scan_inputs(2, 64, 16, 300, torch.float64, device="cuda")
    check_equal(inputs, rtol=1e-10, atol=1e-10, chunk_size=chunk_size)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_on_a_gpu_half_precision_inputs_within_two_unit_roundoffs(dtype):
    check_half_precision(dtype, torch.finfo(dtype).eps, device="cuda", sizes=(2, 64, 16, 300), chunk_size=None)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("autocast", [False, True])
def test_on_a_gpu_the_block_equals_the_chunked_scan_block(autocast):
    # the whole Mamba block on its CUDA path (fused conv + SiLU, scan kernels; under bfloat16 autocast
    # the projections, conv and scan inputs in bfloat16, the state in float32) against the same block
    # with the chunked PyTorch scan in float32 (no autocast, no TF32 in its conv): output and every
    # parameter's gradient, norm-wise, within float32's error, or within 2^-4 under autocast (the
    # interpreted block at d_model 16 measured 0.8-1.9e-2: bfloat16's rounding of every matmul's inputs)
    torch.manual_seed(0)
    kernel_block = MambaMixer(d_model=64, d_state=16, scan="triton").cuda()
    chunked_block = MambaMixer(d_model=64, d_state=16, scan="chunked").cuda()
    chunked_block.load_state_dict(kernel_block.state_dict())
    x = torch.randn(2, 600, 64, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        y = kernel_block(x)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        y_ref = chunked_block(x)
        grads_ref = torch.autograd.grad(y_ref.square().sum(), list(chunked_block.parameters()))
    grads = torch.autograd.grad(y.float().square().sum(), list(kernel_block.parameters()))
    bound = 2**-4 if autocast else 1e-5
    names = ["y", *(name for name, _ in kernel_block.named_parameters())]
    for name, got, want in zip(names, [y, *grads], [y_ref, *grads_ref]):
        error = (got.float() - want).norm() / want.norm()
        assert error < bound, f"{name}: relative error {error:.2e}"
