"""The one-token Triton kernel equals the step equation: the literal recurrence of Eq. (2a)-(2b) at length 1
from a given state, alone and inside the Mamba block's decoding. Run by Triton's interpreter on CPU tensors
where there is no GPU (tests/conftest.py); the `cuda` test repeats it on a GPU at the size of MambaGPT-130m."""

import pytest
import torch

from src.kernels.selective_state_update import selective_state_update
from src.layers.selective_ssm import MambaMixer, selective_scan_sequential
from tests.test_kernels.test_selective_scan_triton import HALF_INPUTS, needs_cuda, scan_inputs


def step_inputs(b, d, N, dtype, device="cpu", **options):
    """One step's arguments: the scan's inputs at length 1, the state h (`initial_state`) given."""
    inputs = scan_inputs(b, d, N, 1, dtype, device, **options)
    return {name: None if t is None else t.detach() for name, t in inputs.items()}


def check_step(inputs, softplus, rtol, atol):
    x, delta, B, C, z = (None if inputs[n] is None else inputs[n][..., 0] for n in ("u", "delta", "B", "C", "z"))
    y, new_state = selective_state_update(
        inputs["initial_state"], x, delta, inputs["A"], B, C, inputs["D"], z, inputs["delta_bias"], softplus
    )
    exact = {name: None if t is None else t.double() for name, t in inputs.items()}
    y_ref, state_ref = selective_scan_sequential(**exact, delta_softplus=softplus, return_last_state=True)
    assert y.dtype == inputs["u"].dtype and new_state.dtype == inputs["A"].dtype
    torch.testing.assert_close(y.double(), y_ref[..., 0], rtol=rtol, atol=atol)
    torch.testing.assert_close(new_state.double(), state_ref, rtol=rtol, atol=atol)


@pytest.mark.parametrize(
    "options, softplus",
    [({}, True), ({"D": False, "z": False, "bias": False}, False), ({"z": False}, True)],
)
def test_equals_the_step_equation_in_float64(options, softplus):
    # 3 batches x 20 channels: two programs of 16 channels, the second partly masked; N = 3 of a block of 4
    check_step(step_inputs(3, 20, 3, torch.float64, **options), softplus, rtol=1e-12, atol=1e-12)


def test_bfloat16_inputs_with_a_float32_state_within_bfloat16_rounding():
    inputs = step_inputs(2, 5, 4, torch.float64)
    half = {name: t.to(torch.bfloat16 if name in HALF_INPUTS else torch.float32) for name, t in inputs.items()}
    # the state is float32 (1e-6); y is rounded once to bfloat16 (unit roundoff 2^-8)
    check_step(half, softplus=True, rtol=2**-7, atol=1e-5)


def test_decoding_token_by_token_in_the_block_equals_the_literal_scan():
    torch.manual_seed(0)
    kernel_block = MambaMixer(d_model=4, d_state=2, scan="triton").double()
    literal_block = MambaMixer(d_model=4, d_state=2, scan="sequential").double()
    literal_block.load_state_dict(kernel_block.state_dict())
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    with torch.no_grad():
        y, state = kernel_block.step(x[:, :2], None)  # the prompt: the scan kernel
        outputs = [y]
        for t in range(2, 5):  # one token at a time: the step kernel
            y, state = kernel_block.step(x[:, t : t + 1], state)
            outputs.append(y)
        torch.testing.assert_close(torch.cat(outputs, dim=1), literal_block(x), rtol=1e-12, atol=1e-12)


def test_bad_arguments_are_named():
    inputs = step_inputs(1, 2, 3, torch.float64)
    with pytest.raises(ValueError, match="initial_state"):
        selective_state_update(
            inputs["initial_state"][:, :1], inputs["u"][..., 0], inputs["delta"][..., 0], inputs["A"],
            inputs["B"][..., 0], inputs["C"][..., 0],
        )  # fmt: skip


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_on_a_gpu_at_the_size_of_mambagpt_130m(dtype):
    inputs = step_inputs(4, 1536, 16, torch.float64, device="cuda")
    cast = {name: t.to(dtype if name in HALF_INPUTS else torch.float32) for name, t in inputs.items()}
    check_step(cast, softplus=True, rtol=2**-7 if dtype == torch.bfloat16 else 1e-5, atol=1e-5)
