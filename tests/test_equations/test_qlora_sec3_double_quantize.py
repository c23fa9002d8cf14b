"""QLoRA's double quantization (Sec. 3): FP8 constants after mean subtraction, error bound, bits per parameter."""

import torch

from src.layers.quantization import double_dequantize, double_quantize, quantize_nf4


def test_codes_are_the_centred_constants_scaled_per_group_then_cast_to_fp8():
    c = torch.tensor([1.0, 3.0, 2.0, 6.0])  # mean 3; centred (-2, 0, -1, 3)
    codes, scale, mean = double_quantize(c, block=2)
    assert mean.item() == 3.0 and scale.tolist() == [2.0, 3.0]
    expected = torch.tensor([-448.0, 0.0, -448 / 3, 448.0]).to(torch.float8_e4m3fn)
    assert torch.equal(codes.float(), expected.float())


def test_round_trip_error_is_within_fp8_precision():
    constants = torch.rand(1000) * 3 + 0.1
    codes, scale, mean = double_quantize(constants)
    restored = double_dequantize(codes, scale, mean)
    group_scale = scale.repeat_interleave(256)[:1000]
    # float8_e4m3 keeps 3 mantissa bits: relative error <= 2^-4 of the scaled value, whose magnitude <= the group scale
    assert torch.all((restored - constants).abs() <= group_scale / 16 + 1e-6)


def test_constants_cost_about_an_eighth_of_a_bit_per_parameter():
    X = torch.randn(64 * 256 * 4)
    _, absmax = quantize_nf4(X, block=64)
    codes, scale, mean = double_quantize(absmax, block=256)
    stored = [codes, scale, mean.reshape(1)]
    constant_bits = 8 * sum(t.numel() * t.element_size() for t in stored)
    assert constant_bits / X.numel() == 8 / 64 + 32 / (64 * 256) + 32 / X.numel()  # the paper's 0.127, plus one mean
