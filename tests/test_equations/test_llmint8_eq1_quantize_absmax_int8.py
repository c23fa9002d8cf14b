"""Absmax int8 quantisation (LLM.int8() Eq. 1): hand-worked codes, error bound, storage."""

import torch

from src.layers.quantization import dequantize_int8, quantize_absmax_int8


def test_hand_worked_row():
    codes, scale = quantize_absmax_int8(torch.tensor([[1.27, -0.635, 0.0, 0.001]], dtype=torch.float64))
    assert codes.tolist() == [[127, -64, 0, 0]] and codes.dtype == torch.int8  # -63.5 rounds to even: -64
    torch.testing.assert_close(scale, torch.tensor([[0.01]], dtype=torch.float64))


def test_round_trip_error_within_absmax_over_254_and_storage_saving():
    X = torch.randn(512, 64) * torch.rand(512, 1) * 5
    codes, scale = quantize_absmax_int8(X)
    error = (dequantize_int8(codes, scale) - X).abs()
    absmax = X.abs().amax(dim=-1, keepdim=True)
    assert (error <= absmax / 254 + 1e-6).all()
    stored = codes.numel() * codes.element_size() + scale.numel() * scale.element_size()
    assert X.numel() * 4 / stored >= 3.5


def test_zero_row_round_trips_exactly():
    codes, scale = quantize_absmax_int8(torch.zeros(2, 3))
    assert torch.equal(dequantize_int8(codes, scale), torch.zeros(2, 3))
