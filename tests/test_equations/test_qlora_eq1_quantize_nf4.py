"""Block-wise NF4 quantisation (QLoRA Sec. 3, Eq. (1) with NF4): nearest code by a loop, error bound, storage."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from src.layers.quantization import dequantize_nf4, nf4_code_values, quantize_nf4


def test_codes_are_the_nearest_value_found_by_a_loop():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(3, 40, generator=g, dtype=torch.float64)
    packed, absmax = quantize_nf4(X, block=16)
    codes = torch.stack((packed >> 4, packed & 15), dim=-1).flatten().tolist()
    values = nf4_code_values(torch.float64).tolist()
    flat = X.flatten().tolist() + [0.0] * (-X.numel() % 16)
    for j, x in enumerate(flat):
        block = flat[16 * (j // 16) : 16 * (j // 16 + 1)]
        c = max(abs(b) for b in block)
        assert absmax[j // 16].item() == c
        nearest = min(range(16), key=lambda i: abs(values[i] - x / c))
        assert codes[j] == nearest


def test_hand_worked_block():
    # absmax 2: x / 2 = (1, -1, 0, 0.08) -> codes 15, 0, 7, 8 (0.0796 is the nearest positive value)
    packed, absmax = quantize_nf4(torch.tensor([2.0, -2.0, 0.0, 0.16]), block=4)
    assert packed.tolist() == [15 << 4 | 0, 7 << 4 | 8] and absmax.tolist() == [2.0]


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 300), scale=st.floats(1e-3, 1e3), seed=st.integers(0, 1000))
def test_round_trip_error_is_at_most_half_the_widest_gap(n, scale, seed):
    X = scale * torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    packed, absmax = quantize_nf4(X, block=64)
    error = (dequantize_nf4(packed, absmax, X.shape) - X).abs()
    half_gap = (nf4_code_values(torch.float64).diff().max() / 2).item()
    per_value = absmax.repeat_interleave(64)[:n]
    assert torch.all(error <= per_value * half_gap + 1e-12)


def test_storage_is_four_bits_plus_the_constants():
    X = torch.randn(4096, 64)
    packed, absmax = quantize_nf4(X)
    bits = 8 * (packed.numel() * packed.element_size() + absmax.numel() * absmax.element_size()) / X.numel()
    assert bits == 4 + 32 / 64


def test_odd_block_is_refused():
    with pytest.raises(ValueError, match="block must be even"):
        quantize_nf4(torch.zeros(4), block=3)
