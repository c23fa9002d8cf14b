"""CausalSelfAttention: built from Eq. (1) and RoPE (step == forward and causality: tests/test_mixer_contract.py)."""

import subprocess
import sys

import pytest
import torch

from src.layers.attention import CausalSelfAttention, rotary_embedding, scaled_dot_product_attention
from tests.conftest import ROOT


def test_forward_equals_equations_composed_by_hand():
    torch.manual_seed(0)
    layer = CausalSelfAttention(d_model=8, n_heads=2).double()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    heads = lambda t: t.view(2, 5, 2, 4).transpose(1, 2)  # noqa: E731
    q = rotary_embedding(heads(x @ layer.W_q.weight.T))
    k = rotary_embedding(heads(x @ layer.W_k.weight.T))
    v = heads(x @ layer.W_v.weight.T)
    y = scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 5, 8) @ layer.W_o.weight.T
    torch.testing.assert_close(layer(x), y, rtol=1e-12, atol=1e-12)


def test_constructor_errors_name_the_argument():
    with pytest.raises(ValueError, match="n_heads=3 must divide d_model=8"):
        CausalSelfAttention(d_model=8, n_heads=3)
    with pytest.raises(ValueError, match="must be even"):
        CausalSelfAttention(d_model=6, n_heads=2)


def test_forward_at_65536_positions_never_holds_the_score_matrix():
    # The (L x L) float32 scores of one head at L = 65,536 take 16 GiB; the fused path must stay far
    # below that. Measured as the peak resident memory of a fresh process (not a time limit).
    program = (
        "import resource, torch\n"
        "from src.layers.attention import CausalSelfAttention\n"
        "torch.manual_seed(0)\n"
        "layer = CausalSelfAttention(d_model=16, n_heads=2)\n"
        "with torch.no_grad():\n"
        "    y = layer(torch.randn(1, 65536, 16))\n"
        "assert bool(y.isfinite().all())\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, cwd=ROOT, check=True)
    peak_gib = int(done.stdout.split()[-1]) / 2**20  # ru_maxrss is in KiB on Linux
    assert peak_gib < 2.0, f"peak memory {peak_gib:.2f} GiB: the scores were materialised"
