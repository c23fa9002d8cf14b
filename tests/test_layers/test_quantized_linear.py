"""QuantizedLinear (weight-only int8 / NF4 with double quantization) and LoRA on it (QLoRA's layout)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from src.layers.lora import LoRALinear
from src.layers.quantization import QuantizedLinear, nf4_code_values


def layer(d_in=256, d_out=96):
    torch.manual_seed(0)
    return nn.Linear(d_in, d_out)


@pytest.mark.parametrize("kind", ["int8", "nf4"])
def test_forward_is_the_dequantised_weight_applied(kind):
    linear = layer()
    quantized = QuantizedLinear(linear, kind)
    x = torch.randn(5, 256)
    torch.testing.assert_close(quantized(x), F.linear(x, quantized.weight, linear.bias))


def test_int8_weights_are_within_half_a_step_per_row():
    linear = layer()
    error = (QuantizedLinear(linear, "int8").weight - linear.weight).abs()
    assert torch.all(error <= linear.weight.abs().amax(dim=1, keepdim=True) / 254 + 1e-7)


def test_nf4_weights_are_within_half_the_widest_gap_of_their_block_constant():
    linear = layer()
    error = (QuantizedLinear(linear, "nf4").weight - linear.weight).abs().flatten()
    absmax = linear.weight.flatten().view(-1, 64).abs().amax(dim=1).repeat_interleave(64)
    half_gap = nf4_code_values().diff().max() / 2
    # the block constants are themselves FP8 (relative error <= 2^-4 of their group's spread)
    assert torch.all(error <= absmax * (half_gap + 1 / 16) + 1e-7)


@pytest.mark.parametrize(("kind", "bits"), [("int8", 8 + 32 / 256), ("nf4", 4 + 8 / 64 + 32 / (64 * 256))])
def test_bits_per_frozen_parameter(kind, bits):
    quantized = QuantizedLinear(layer(256, 256), kind)
    measured = 8 * quantized.stored_bytes() / (256 * 256)
    assert abs(measured - bits) < 8 * 4 / (256 * 256) + 1e-9  # plus the one float32 mean of NF4's constants


def test_lora_on_a_quantized_base_starts_equal_and_trains_only_its_factors():
    quantized = QuantizedLinear(layer(), "nf4")
    adapted = LoRALinear(quantized, rank=4, alpha=8.0)
    x = torch.randn(3, 256)
    assert torch.equal(adapted(x), quantized(x))
    adapted(x).sum().backward()
    assert [name for name, p in adapted.named_parameters()] == ["A", "B"] and adapted.B.grad is not None


def test_unknown_kind_is_named():
    with pytest.raises(ValueError, match="kind must be 'int8' or 'nf4'"):
        QuantizedLinear(layer(), "fp4")


@pytest.mark.parametrize("kind", ["int8", "nf4"])
def test_the_input_gradient_is_that_of_the_dequantised_weight(kind):
    quantized = QuantizedLinear(layer(), kind)
    x = torch.randn(3, 5, 256, dtype=torch.float64, requires_grad=True)
    reference = x.detach().clone().requires_grad_(True)
    (quantized(x) * torch.arange(96.0, dtype=torch.float64)).sum().backward()
    (F.linear(reference, quantized.weight.double(), quantized.bias.double()) * torch.arange(96.0)).sum().backward()
    torch.testing.assert_close(x.grad, reference.grad)
    assert torch.autograd.gradcheck(lambda v: quantized(v), (x[:1, :2].detach().requires_grad_(True),))


def test_autocast_runs_the_product_in_the_autocast_dtype():
    quantized, x = QuantizedLinear(layer(), "nf4"), torch.randn(4, 256)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = quantized(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), quantized(x), atol=0.05, rtol=0.05)
