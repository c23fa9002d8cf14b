"""memory-models info: parameters per block and in total, the step state's bytes and growth, the estimate."""

import re

import pytest
import torch

from src.config import load_experiment
from src.info import model_info
from src.runs import build_model
from tests.conftest import ROOT
from tests.test_cli import tiny_experiment
from tests.test_cli_bad_input import one_error_line, run

LENGTH = 12


def real_state_bytes(experiment, length: int) -> tuple[int, int]:
    """Bytes of a real model's step state after `length` tokens, and after one more."""
    model = build_model(experiment.model, experiment.file)
    ids = torch.randint(0, 8, (1, length))
    with torch.no_grad():
        _, state = model.step(ids, None)
        before = sum(t.numel() * t.element_size() for t in state.tensors())
        _, state = model.step(ids[:, :1], state)
    return before, sum(t.numel() * t.element_size() for t in state.tensors())


def numbers(line: str) -> list[int]:
    return [int(n.replace(",", "")) for n in re.findall(r"\d[\d,]*", line)]


@pytest.mark.parametrize("config", ["transformer_mqar.yaml", "mamba_tiny.yaml", "memory_bank_a_mqar.yaml"])
def test_info_equals_the_real_models_parameters_and_state(config):
    experiment = load_experiment(ROOT / "configs" / config)
    report = model_info(experiment, LENGTH).splitlines()
    model = build_model(experiment.model, experiment.file)
    parameters = next(line for line in report if line.startswith("parameters: "))
    assert numbers(parameters)[:2] == [model.num_parameters()] * 2
    rows = [line for line in report if line.startswith("| model.blocks[")]
    assert sum(numbers(row.split("|")[6])[0] for row in rows) == model.num_parameters() - sum(
        p.numel() for name, p in model.named_parameters() if not name.startswith("blocks.")
    )
    before, after = real_state_bytes(experiment, LENGTH)
    state = next(line for line in report if line.startswith(f"step state per sequence after {LENGTH} tokens"))
    assert numbers(state.split(":")[1])[0] == before
    if after > before:  # attention's KV cache: 2 (keys, values) x d_model float32 numbers per block and token
        growth = next(line for line in report if line.startswith("it grows by"))
        blocks = sum(block.mixer.constant_state is False for block in model.blocks)
        assert numbers(growth)[0] == after - before == blocks * 2 * experiment.model["d_model"] * 4
    else:
        assert report[-1].startswith("its size stays the same")


def test_an_adapted_model_shows_trained_and_frozen_parameters_and_its_kv_cache(tmp_path, tiny_bases):
    from tests.test_adapted_cli import LORA, experiment

    adapted = load_experiment(experiment(tmp_path, tiny_bases["llama"], adapters=[LORA]))
    report = model_info(adapted, LENGTH)
    model = build_model(adapted.model, adapted.file)
    total, trained = model.num_parameters(), model.trainable_parameters()
    assert f"parameters: {total:,} ({trained:,} trained, {total - trained:,} frozen)" in report
    before, after = real_state_bytes(adapted, LENGTH)
    assert f"after {LENGTH} tokens: {before:,} B" in report and f"it grows by {after - before:,} B" in report


def test_the_command_prints_the_estimate_for_a_batch_and_length(tmp_path, capsys):
    config = tiny_experiment(tmp_path)
    code, out, err = run(capsys, "info", config, "--batch", "2", "--length", "40")
    assert code == 0, err
    assert "step state per sequence after 40 tokens" in out and "training step at batch 2 x length 40" in out
    code, out, err = run(capsys, "info", config)
    assert code == 0 and "training step" not in out, err  # no flags: no estimate (it runs the step)


@pytest.mark.parametrize(("flags", "message"), [(["--length", "0"], "--length must be >= 1, got 0"),
                                                (["--batch", "-2"], "--batch must be >= 1, got -2")])  # fmt: skip
def test_bad_flags_are_one_line(tmp_path, capsys, flags, message):
    assert message in one_error_line(capsys, "info", tiny_experiment(tmp_path), *flags)
