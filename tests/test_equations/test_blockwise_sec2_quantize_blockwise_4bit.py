"""4-bit blockwise quantisation (Dettmers et al. 2021, Sec. 2, block 64): hand-worked block, bound, storage."""

import torch

from src.layers.quantization import dequantize_blockwise_4bit, quantize_blockwise_4bit


def test_hand_worked_block_of_four():
    X = torch.tensor([0.7, -0.35, 0.0, 0.1], dtype=torch.float64)
    packed, scale = quantize_blockwise_4bit(X, block=4)
    # scale 0.1; codes 7, -4 (round half to even of -3.5), 0, 1; stored +8 -> 15, 4, 8, 9; packed (15<<4|4), (8<<4|9)
    assert packed.tolist() == [15 * 16 + 4, 8 * 16 + 9]
    torch.testing.assert_close(scale, torch.tensor([0.1], dtype=torch.float64))


def test_round_trip_within_half_of_each_blocks_step_and_seven_times_smaller():
    X = torch.randn(300, 64) * torch.rand(300, 1) * 3
    packed, scale = quantize_blockwise_4bit(X, block=64)
    error = (dequantize_blockwise_4bit(packed, scale, tuple(X.shape)) - X).abs().view(-1, 64)
    step = X.view(-1, 64).abs().amax(dim=-1, keepdim=True) / 7
    assert (error <= step / 2 + 1e-6).all()
    stored = packed.numel() * packed.element_size() + scale.numel() * scale.element_size()
    assert X.numel() * 4 / stored >= 7


def test_length_not_a_multiple_of_the_block():
    X = torch.randn(5, 13)
    packed, scale = quantize_blockwise_4bit(X, block=64)
    assert scale.shape == (2,) and packed.numel() == 64
    restored = dequantize_blockwise_4bit(packed, scale, (5, 13))
    assert ((restored - X).abs() <= X.abs().max() / 14 + 1e-6).all()
