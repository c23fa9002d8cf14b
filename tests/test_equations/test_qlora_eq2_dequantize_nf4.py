"""NF4 dequantisation (QLoRA Sec. 3, Eq. (2)): code values times the block constant, exact on the codes."""

import pytest
import torch

from src.layers.quantization import dequantize_nf4, nf4_code_values, quantize_nf4


def test_values_on_the_code_grid_round_trip_exactly():
    values = nf4_code_values(torch.float64)
    X = torch.cat((3.0 * values, 0.5 * values.flip(0))).view(2, 16)
    packed, absmax = quantize_nf4(X, block=16)
    assert torch.equal(dequantize_nf4(packed, absmax, X.shape), X)


def test_hand_worked_case():
    packed = torch.tensor([15 << 4 | 7, 0 << 4 | 8], dtype=torch.uint8)  # codes 15, 7, 0, 8
    got = dequantize_nf4(packed, torch.tensor([2.0], dtype=torch.float64), (4,))
    torch.testing.assert_close(got, torch.tensor([2.0, 0.0, -2.0, 2 * 0.07958029955625534], dtype=torch.float64))


def test_too_few_values_for_the_shape_are_named():
    packed, absmax = quantize_nf4(torch.zeros(8), block=8)
    with pytest.raises(ValueError, match=r"shape \(3, 3\) needs 9"):
        dequantize_nf4(packed, absmax, (3, 3))
