"""The inverse of QLoRA's double quantization: hand-worked values, a per-group loop, a round trip on FP8's grid."""

import pytest
import torch

from src.layers.quantization import double_dequantize, double_quantize


def test_hand_worked_case():
    codes = torch.tensor([448.0, -224.0, 0.0]).to(torch.float8_e4m3fn)
    got = double_dequantize(codes, torch.tensor([2.0, 4.0]), torch.tensor(1.0), block=2)  # scales 2, 2, 4
    torch.testing.assert_close(got, torch.tensor([3.0, 0.0, 1.0]))


def test_n_300_in_groups_of_256_equals_a_per_group_float64_loop():
    """Groups of 256 then 44: constant b takes the scale of group b // 256 (not of ceil(300 / 2) = 150)."""
    torch.manual_seed(0)
    constants = torch.rand(300) * 3 + 0.1
    codes, scale, mean = double_quantize(constants)
    assert scale.shape == (2,)
    expected = torch.empty(300, dtype=torch.float64)
    for b in range(300):
        expected[b] = float(scale[b // 256]) / 448 * float(codes[b].float()) + float(mean)
    torch.testing.assert_close(double_dequantize(codes, scale, mean).double(), expected, rtol=1e-6, atol=1e-6)


def test_a_group_count_that_does_not_match_the_block_is_refused():
    codes = torch.zeros(300).to(torch.float8_e4m3fn)
    with pytest.raises(ValueError, match="scale has 3 groups, but 300 codes in groups of 256 make 2"):
        double_dequantize(codes, torch.ones(3), torch.tensor(0.0))


def test_constants_on_the_fp8_grid_round_trip_exactly():
    constants = torch.tensor([0.5, 1.5, 1.0, 1.0])  # mean 1, centred (-0.5, 0.5, 0, 0): exact in FP8 after scaling
    codes, scale, mean = double_quantize(constants, block=4)
    assert torch.equal(double_dequantize(codes, scale, mean, block=4), constants)


def test_codes_of_another_dtype_are_refused():
    with pytest.raises(TypeError, match="float8_e4m3fn"):
        double_dequantize(torch.zeros(3), torch.ones(1), torch.tensor(0.0))
