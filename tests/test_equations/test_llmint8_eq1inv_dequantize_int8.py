"""Dequantisation s * X_i8 (LLM.int8() Eq. 1 inverse): hand-worked and input checks."""

import pytest
import torch

from src.layers.quantization import dequantize_int8


def test_hand_worked():
    codes = torch.tensor([[127, -64, 0]], dtype=torch.int8)
    out = dequantize_int8(codes, torch.tensor([[0.5]], dtype=torch.float64))
    assert out.tolist() == [[63.5, -32.0, 0.0]]


def test_codes_must_be_int8():
    with pytest.raises(TypeError, match="codes must be int8"):
        dequantize_int8(torch.tensor([[1]]), torch.tensor([[1.0]]))
