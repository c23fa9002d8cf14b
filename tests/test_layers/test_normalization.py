"""RMSNorm layer: unit gain at initialisation, equal to rms_norm."""

import torch

from src.layers.normalization import RMSNorm, rms_norm


def test_layer_is_the_equation_with_unit_initial_gain():
    layer = RMSNorm(5, eps=1e-6)
    x = torch.randn(4, 5)
    assert torch.equal(layer.weight, torch.ones(5))
    torch.testing.assert_close(layer(x), rms_norm(x, torch.ones(5), 1e-6), rtol=0, atol=0)
    torch.testing.assert_close(layer(x).pow(2).mean(-1), torch.ones(4), rtol=1e-4, atol=1e-4)
