"""LoRA Sec. 4.1: the merged weight W0 + (α/r) B A serves Eq. (3) exactly, and unmerges to W0."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from src.layers.lora import LoRALinear, lora_forward, lora_merge


def test_hand_worked_case():
    W0 = torch.eye(2, dtype=torch.float64)
    A = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    B = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)
    # (α/r) B A = 2 * [[1, 2], [-1, -2]]
    assert lora_merge(W0, A, B, alpha=2.0).tolist() == [[3.0, 4.0], [-2.0, -3.0]]


@settings(max_examples=25, deadline=None)
@given(d_in=st.integers(1, 8), d_out=st.integers(1, 8), r=st.integers(1, 4), alpha=st.floats(0.1, 32.0),
       seed=st.integers(0, 1000))  # fmt: skip
def test_merged_product_equals_the_adapted_forward_and_unmerges(d_in, d_out, r, alpha, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, d_in, generator=g, dtype=torch.float64)
    W0, A = (
        torch.randn(d_out, d_in, generator=g, dtype=torch.float64),
        torch.randn(r, d_in, generator=g, dtype=torch.float64),
    )
    B = torch.randn(d_out, r, generator=g, dtype=torch.float64)
    W = lora_merge(W0, A, B, alpha)
    torch.testing.assert_close(x @ W.T, lora_forward(x, W0, A, B, alpha), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(W - alpha / r * B @ A, W0, rtol=1e-12, atol=1e-12)


def test_merged_linear_matches_the_adapted_module():
    adapted = LoRALinear(nn.Linear(6, 5).double(), rank=3, alpha=8.0)
    with torch.no_grad():
        adapted.B.normal_()
    x = torch.randn(7, 6, dtype=torch.float64)
    merged = adapted.merged()
    torch.testing.assert_close(merged(x), adapted(x), rtol=1e-12, atol=1e-12)
    assert not any(p.requires_grad for p in merged.parameters())
