"""Titans Sec. 4.4's output gate, checked by value: with the gate, the neural memory returns
W_O (RMSNorm(y_t) ⊙ σ(x_t W_G)), where y_t is what the same memory returns without the gate."""

import pytest
import torch

from src.layers.neural_memory import NeuralMemory, NeuralMemoryOptions


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_the_gate_normalises_and_gates_the_ungated_read(kind):
    torch.manual_seed(0)
    d_model = 8
    options = {"kind": kind, "chunk_size": 3, "d_hidden": 8 if kind == "mlp" else None}
    plain = NeuralMemory(d_model, NeuralMemoryOptions(**options), n_persistent=2).double()
    gated = NeuralMemory(d_model, NeuralMemoryOptions(**options, output_gate=True), n_persistent=2).double()
    gated.load_state_dict(plain.state_dict(), strict=False)  # the same memory; the gate's own weights differ
    with torch.no_grad():
        for layer in (plain, gated):
            layer.W_O.weight.copy_(torch.eye(d_model, dtype=torch.float64))  # read y_t itself
        gated.output_norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 7, d_model, dtype=torch.float64)
    y = plain(x)
    rms = torch.sqrt((y**2).mean(-1, keepdim=True) + gated.output_norm.eps)
    expected = y / rms * gated.output_norm.weight * torch.sigmoid(x @ gated.W_G.weight.T)
    torch.testing.assert_close(gated(x), expected, rtol=1e-10, atol=1e-12)
