"""train.precision: bfloat16 follows the float32 loss curve of the same run (CPU autocast)."""

import json

import pytest
import torch
import yaml

from src.config import load_experiment
from src.layers import MIXERS
from src.training import train
from tests.test_mixer_contract import EXAMPLES, inputs, make

TOLERANCE = 0.01  # nats; measured differences are about 5e-4 on losses of 2.5-3 (bfloat16: 8 mantissa bits)


def hybrid_experiment(tmp_path, precision: str):
    """A Mamba block and an attention block with an MLP (the mixers that opt into autocast) on MQAR."""
    config = {
        "model": {
            "vocab_size": 32,
            "d_model": 32,
            "tie_embeddings": True,
            "blocks": [
                {"mixer": {"type": "selective_ssm", "d_state": 8}, "mlp": "none"},
                {"mixer": {"type": "attention", "n_heads": 2}, "mlp": {"type": "swiglu", "d_hidden": 64}},
            ],
        },
        "task": {"type": "associative_recall", "vocab_size": 32, "num_pairs": 4, "num_queries": 4},
        "train": {
            "steps": 40, "batch_size": 32, "lr": 3e-3, "warmup_steps": 5, "weight_decay": 0.0, "grad_clip": 1.0,
            "seed": 0, "out_dir": str(tmp_path / precision), "eval_every": 20, "precision": precision,
        },
        "eval": {"num_examples": 200, "batch_size": 100, "seed": 7},
    }  # fmt: skip
    path = tmp_path / f"{precision}.yaml"
    path.write_text(yaml.safe_dump(config))
    return load_experiment(path)


def test_bfloat16_run_follows_the_float32_loss_curve(tmp_path):
    curves = {}
    for precision in ("float32", "bfloat16"):
        train(hybrid_experiment(tmp_path, precision), log=lambda line: None)
        lines = (tmp_path / precision / "metrics.jsonl").read_text().splitlines()
        curves[precision] = [json.loads(line) for line in lines]
    for full, mixed in zip(curves["float32"], curves["bfloat16"], strict=True):
        assert mixed["step"] == full["step"]
        assert abs(mixed["loss"] - full["loss"]) < TOLERANCE
        assert abs(mixed["eval_loss"] - full["eval_loss"]) < TOLERANCE
    assert curves["bfloat16"][-1]["loss"] != curves["float32"][-1]["loss"]  # bfloat16 really ran


@pytest.mark.parametrize("name", EXAMPLES)
def test_every_mixer_runs_under_bfloat16_autocast(name):
    mixer = make(name, torch.float32).train()
    x = inputs(2, 12, dtype=torch.float32)
    reference = mixer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = mixer(x)
    expected_dtype = torch.bfloat16 if MIXERS[EXAMPLES[name][0]].autocast else torch.float32
    assert y.dtype == expected_dtype
    if "routing" not in EXAMPLES[name][1]:  # sequence routing may pick other chapters in bfloat16
        torch.testing.assert_close(y.float(), reference, rtol=0.05, atol=0.05 * reference.abs().max().item())
    y.float().square().sum().backward()
    assert all(p.grad is None or bool(p.grad.isfinite().all()) for p in mixer.parameters())
