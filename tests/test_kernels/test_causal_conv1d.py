"""The fused causal depthwise conv1d + SiLU kernels equal `causal_conv1d` followed by SiLU (Mamba, Fig. 3),
in value and in every gradient. Triton's interpreter runs them on CPU tensors where there is no GPU
(tests/conftest.py); the `cuda` test repeats the comparison at MambaGPT-130m's size."""

import pytest
import torch
import torch.nn.functional as F

from src.kernels.causal_conv1d import causal_conv1d_silu_triton
from src.kernels.causal_conv1d_op import BLOCK_T
from src.layers.selective_ssm import causal_conv1d
from tests.test_kernels.test_selective_scan_triton import needs_cuda


def check(batch, dim, k, length, dtype, bias=True, device="cpu", rtol=1e-12, atol=1e-12):
    g = torch.Generator(device=device).manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=g, device=device, dtype=dtype).requires_grad_()

    history, weight = randn(batch, dim, k - 1 + length), randn(dim, k)
    b = randn(dim) if bias else None
    y = causal_conv1d_silu_triton(history, weight, b)
    exact = [None if t is None else t.detach().double().requires_grad_() for t in (history, weight, b)]
    y_ref = F.silu(causal_conv1d(*exact)[..., k - 1 :])
    assert y.dtype == dtype
    torch.testing.assert_close(y.double(), y_ref, rtol=rtol, atol=atol)
    dy = torch.randn(y.shape, generator=g, device=device, dtype=dtype)
    given = [t for t in (history, weight, b) if t is not None]
    grads = torch.autograd.grad((y * dy).sum(), given)
    grads_ref = torch.autograd.grad((y_ref * dy.double()).sum(), [t for t in exact if t is not None])
    for name, got, want in zip(("history", "weight", "bias"), grads, grads_ref):
        assert got.dtype == dtype, name
        torch.testing.assert_close(got.double(), want, rtol=rtol, atol=atol, msg=lambda m, name=name: f"d{name}: {m}")


@pytest.mark.parametrize(
    ("batch", "dim", "k", "length", "bias"),
    [(2, 19, 4, BLOCK_T + 5, True), (1, 3, 3, 1, False), (1, 2, 1, 7, True)],
)
def test_equals_the_conv_and_silu_in_float64(batch, dim, k, length, bias):
    # two blocks of channels (16 + 3) and two of positions; one new position (decoding); k = 1
    check(batch, dim, k, length, torch.float64, bias)


def test_bfloat16_within_its_rounding():
    check(1, 3, 4, 9, torch.bfloat16, rtol=2**-7, atol=2**-7)


def test_a_history_without_the_earlier_inputs_is_refused():
    history = torch.zeros(1, 2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="history must hold k - 1 = 2 earlier inputs"):
        causal_conv1d_silu_triton(history, torch.ones(2, 3, dtype=torch.float64))


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_on_a_gpu_at_the_size_of_mambagpt_130m(dtype):
    # dweight and dbias sum batch x length = 4,096 float32 products (sums of magnitude ~60): on an H200 they
    # differed from float64 by up to 2.7e-5, within float32's rounding of such a sum, above a flat 1e-5.
    tolerance = {torch.float32: 1e-4, torch.bfloat16: 2**-7}[dtype]
    check(2, 1536, 4, 2048, dtype, device="cuda", rtol=tolerance, atol=tolerance)
