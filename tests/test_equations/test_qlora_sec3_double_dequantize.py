"""The inverse of QLoRA's double quantization: hand-worked values and an exact round trip on FP8's grid."""

import pytest
import torch

from src.layers.quantization import double_dequantize, double_quantize


def test_hand_worked_case():
    codes = torch.tensor([448.0, -224.0, 0.0]).to(torch.float8_e4m3fn)
    got = double_dequantize(codes, torch.tensor([2.0, 4.0]), torch.tensor(1.0))  # groups of 2: scales 2, 2, 4
    torch.testing.assert_close(got, torch.tensor([3.0, 0.0, 1.0]))


def test_constants_on_the_fp8_grid_round_trip_exactly():
    constants = torch.tensor([0.5, 1.5, 1.0, 1.0])  # mean 1, centred (-0.5, 0.5, 0, 0): exact in FP8 after scaling
    codes, scale, mean = double_quantize(constants, block=4)
    assert torch.equal(double_dequantize(codes, scale, mean), constants)


def test_codes_of_another_dtype_are_refused():
    with pytest.raises(TypeError, match="float8_e4m3fn"):
        double_dequantize(torch.zeros(3), torch.ones(1), torch.tensor(0.0))
