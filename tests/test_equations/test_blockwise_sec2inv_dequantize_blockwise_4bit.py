"""4-bit blockwise dequantisation (Dettmers et al. 2021, Sec. 2): hand-worked bytes, input checks."""

import pytest
import torch

from src.layers.quantization import dequantize_blockwise_4bit


def test_hand_worked_bytes():
    packed = torch.tensor([15 * 16 + 1, 8 * 16 + 9], dtype=torch.uint8)  # codes 7, -7, 0, 1
    out = dequantize_blockwise_4bit(packed, torch.tensor([0.5, 2.0]), (4,))
    assert out.tolist() == [3.5, -3.5, 0.0, 2.0]  # first block of 2 uses 0.5, the second 2.0


def test_shape_larger_than_the_codes_is_named():
    with pytest.raises(ValueError, match="packed holds 2 values"):
        dequantize_blockwise_4bit(torch.tensor([0], dtype=torch.uint8), torch.tensor([1.0]), (3,))
