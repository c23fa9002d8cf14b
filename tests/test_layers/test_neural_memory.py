"""NeuralMemory: the equations composed, persistent tokens, bad options named."""

import pytest
import torch

from src.layers.neural_memory import NeuralMemory, NeuralMemoryOptions, neural_memory_chunked


def perturbed(layer):
    torch.manual_seed(0)
    layer = layer.double()
    with torch.no_grad():  # move the zero-initialised memory weights so every path carries signal
        for parameter in layer.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return layer


def linear_memory():
    return perturbed(NeuralMemory(8, NeuralMemoryOptions("linear", chunk_size=4), n_persistent=2))


def test_memory_layer_is_the_chunked_equations_composed_by_hand():
    layer = linear_memory()
    x = torch.randn(2, 6, 8, dtype=torch.float64)
    x_tilde = torch.cat((layer.persistent.expand(2, -1, -1), x), dim=1)  # 8 tokens = 2 chunks of 4
    params0 = {"M": layer.initial["M"].expand(2, -1, -1)}
    y, _, _ = neural_memory_chunked(*layer._inputs(x_tilde, x_tilde[:, :0]), 4, params0)
    torch.testing.assert_close(layer(x), layer.W_O(y[:, 2:]), rtol=1e-12, atol=1e-12)


def test_persistent_tokens_change_the_output():
    layer = linear_memory()
    x = torch.randn(1, 5, 8, dtype=torch.float64)
    before = layer(x)
    with torch.no_grad():
        layer.persistent.add_(1.0)
    assert not torch.allclose(layer(x), before)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"kind": "transformer"}, "kind must be one of"),
        ({"kind": "linear", "depth": 2}, "depth 2 needs kind: mlp"),
        ({"kind": "mlp", "depth": 1}, "kind: mlp needs depth >= 2"),
    ],
)
def test_bad_options_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        NeuralMemoryOptions(**options)
