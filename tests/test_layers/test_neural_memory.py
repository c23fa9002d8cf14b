"""NeuralMemory and TitansMAG: the equations composed, window state, persistent tokens, bad input named."""

import pytest
import torch

from src.layers.neural_memory import NeuralMemory, TitansMAG, neural_memory_chunked

LAYERS = {
    "memory_linear": lambda: NeuralMemory(8, "linear", chunk_size=4, n_persistent=2),
    "memory_mlp": lambda: NeuralMemory(8, "mlp", chunk_size=3, n_persistent=1, d_hidden=6),
    "mag_linear": lambda: TitansMAG(8, 2, window=4, n_persistent=2, memory="linear", chunk_size=4),
    "mag_mlp": lambda: TitansMAG(8, 2, window=3, n_persistent=3, memory="mlp", chunk_size=5),
}


def perturbed(name):
    torch.manual_seed(0)
    layer = LAYERS[name]().double()
    with torch.no_grad():  # move the zero-initialised memory weights so every path carries signal
        for parameter in layer.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return layer


def test_mag_state_keeps_only_the_persistent_and_window_keys():
    layer = perturbed("mag_linear")
    state = None
    for _ in range(9):
        _, state = layer.step(torch.randn(1, 1, 8, dtype=torch.float64), state)
    assert state.k.shape[-2] == 2 + 4 - 1  # persistent + window - 1


def test_memory_layer_is_the_chunked_equations_composed_by_hand():
    layer = perturbed("memory_linear")
    x = torch.randn(2, 6, 8, dtype=torch.float64)
    x_tilde = torch.cat((layer.persistent.expand(2, -1, -1), x), dim=1)  # 8 tokens = 2 chunks of 4
    params0 = {"M": layer.initial["M"].expand(2, -1, -1)}
    y, _, _ = neural_memory_chunked(*layer._inputs(x_tilde, x_tilde[:, :0]), 4, params0)
    torch.testing.assert_close(layer(x), layer.W_O(y[:, 2:]), rtol=1e-12, atol=1e-12)


def test_persistent_tokens_change_the_output():
    layer = perturbed("memory_linear")
    x = torch.randn(1, 5, 8, dtype=torch.float64)
    before = layer(x)
    with torch.no_grad():
        layer.persistent.add_(1.0)
    assert not torch.allclose(layer(x), before)


def test_unknown_memory_is_named():
    with pytest.raises(ValueError, match="memory must be one of"):
        NeuralMemory(8, memory="transformer")
