"""SwiGLU layer: its forward is the swiglu equation on its own weights."""

import torch

from src.layers.feedforward import SwiGLU, swiglu


def test_layer_is_the_equation():
    torch.manual_seed(0)
    layer = SwiGLU(d_model=6, d_hidden=10).double()
    x = torch.randn(2, 3, 6, dtype=torch.float64)
    expected = swiglu(x, layer.W.weight.T, layer.V.weight.T, layer.W2.weight.T)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)
    assert sum(p.numel() for p in layer.parameters()) == 3 * 6 * 10
