"""Titans far beyond its training length: the neural memory's step-size bound keeps every layer finite.

Within a chunk all gradients are taken at the chunk's first memory (Sec. 3.2), so a chunk of b similar
keys moves the memory b steps at once; `NeuralMemoryOptions.step_size_bound` (theta_max / b) keeps
that summed step from overshooting. Tested where it matters most: every gate at its extreme (θ_t at
its bound, no forgetting, the largest momentum) and one token repeated, so every key of a chunk is
the same, at 64 times a training length of 64 tokens; and a briefly trained MAG on passkey retrieval.

The bound is a guarantee for the linear memory (every shipped config) only: the MLP memory's gradient
grows with its weights, and with its gates saturated it diverges within 256 tokens (issue 31's note).
"""

import pytest
import torch
import yaml

from src.config import load_experiment
from src.layers.neural_memory import NeuralMemory, NeuralMemoryOptions, linear_memory_gradient
from src.layers.titans import TitansMAC, TitansMAG, TitansMAL
from src.runs import load_trained_model
from src.training import train

OPTIONS = NeuralMemoryOptions(kind="linear", chunk_size=16)
LAYERS = {
    "neural_memory": lambda: NeuralMemory(16, OPTIONS, n_persistent=2),
    "titans_mag": lambda: TitansMAG(16, n_heads=2, window=4, n_persistent=2, memory=OPTIONS),
    "titans_mac": lambda: TitansMAC(16, n_heads=2, segment_size=8, n_persistent=2, memory=OPTIONS),
    "titans_mal": lambda: TitansMAL(16, n_heads=2, window=4, n_persistent=2, memory=OPTIONS),
}


def saturated(layer):
    """The layer with its memory's gates at their extremes: θ_t at the bound, α_t ≈ 0, η_t ≈ 1."""
    torch.manual_seed(0)
    memory = layer if isinstance(layer, NeuralMemory) else layer.neural_memory
    with torch.no_grad():
        memory.gates.weight.zero_()
        memory.gates.bias.copy_(torch.tensor([-30.0, 6.0, 30.0]))  # (α, η, θ) before their sigmoids
        for parameter in memory.initial.values():
            parameter.copy_(torch.randn_like(parameter))
    return layer


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_a_repeated_token_at_64x_the_training_length_stays_finite(name):
    layer = saturated(LAYERS[name]())
    x = torch.randn(1, 1, 16).expand(2, 64 * 64, 16)  # one token, 4,096 times: every key alike
    with torch.no_grad():
        y = layer(x)
    assert torch.isfinite(y).all()
    assert y.abs().max() < 1e3


def test_a_chunk_of_identical_keys_at_the_step_bound_does_not_overshoot():
    """k M_1 - v = (1 - 2 b θ)(k M_0 - v) for b identical unit keys: with θ = theta_max / b, the
    factor is 1 - 2 theta_max, in [-1, 1] for theta_max <= 1 (hand-worked, float64)."""
    b, d = OPTIONS.chunk_size, 8
    k = torch.nn.functional.normalize(torch.randn(d, dtype=torch.float64), dim=0)
    v = torch.randn(d, dtype=torch.float64)
    M0 = torch.randn(d, d, dtype=torch.float64)
    theta = torch.full((1,), OPTIONS.step_size_bound, dtype=torch.float64)
    M1 = M0.clone()
    for _ in range(b):  # the chunk's gradients all at M_0 (Sec. 3.2), no momentum, no forgetting
        M1 = M1 - theta * linear_memory_gradient(M0[None], k[None], v[None])[0]
    torch.testing.assert_close(k @ M1 - v, (1 - 2 * OPTIONS.theta_max) * (k @ M0 - v))


@pytest.mark.slow
def test_a_trained_mag_reads_64x_its_training_length_with_finite_outputs(tmp_path):
    """A MAG trained briefly on passkey retrieval at 32 tokens, then run over 2,048 (64x)."""
    config = {
        "model": {
            "vocab_size": 16,
            "d_model": 32,
            "tie_embeddings": True,
            "blocks": [
                {
                    "mixer": {
                        "type": "titans_mag",
                        "n_heads": 2,
                        "window": 8,
                        "n_persistent": 2,
                        "memory": {"chunk_size": 8},
                    },
                    "mlp": {"type": "swiglu", "d_hidden": 64},
                }
            ],
        },
        "task": {"type": "passkey", "vocab_size": 16, "length": 32, "depth": None, "num_digits": 3},
        "train": {
            "steps": 40,
            "batch_size": 16,
            "lr": 3e-3,
            "warmup_steps": 5,
            "weight_decay": 0.0,
            "grad_clip": 1.0,
            "seed": 0,
            "out_dir": str(tmp_path / "run"),
            "eval_every": 40,
        },
        "eval": {"num_examples": 8, "batch_size": 8, "seed": 1},
    }
    path = tmp_path / "mag.yaml"
    path.write_text(yaml.safe_dump(config))
    train(load_experiment(path), log=lambda line: None)
    model = load_trained_model(tmp_path / "run" / "checkpoint.pt", torch.device("cpu")).model.eval()
    tokens = torch.cat((torch.randint(0, 16, (2, 32)), torch.full((2, 2016), 5)), dim=1)
    with torch.no_grad():
        logits = model(tokens)
    assert torch.isfinite(logits).all()
