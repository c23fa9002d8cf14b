"""Inference-time overrides: `evaluate --set` and `eval.settings` model keys read trained weights with
other settings (top-k, routing, quantize); a key that changes a parameter's shape is refused."""

import json
import re
from pathlib import Path

import pytest

from src.cli import main
from src.config import load_experiment
from src.validation import ConfigError, read_yaml
from tests.test_cli import tiny_experiment
from tests.test_cli_bad_input import files, one_error_line, run, write_config

BANK = "model.blocks[1].mixer"
SETTINGS = [{f"{BANK}.top_k": 1}, {f"{BANK}.top_k": 4}, {f"{BANK}.quantize": 8}, {f"{BANK}.quantize": 4},
            {f"{BANK}.routing": "sequence", "num_queries": 2}]  # fmt: skip


def bank_experiment(tmp_path: Path, settings=SETTINGS) -> str:
    """The tiny transformer of test_cli with a routed memory bank (2 of 4 chapters) as its second block."""
    raw = read_yaml(tiny_experiment(tmp_path, steps=3, eval_every=3, warmup_steps=1))
    bank = {"type": "memory_bank", "n_heads": 2, "n_memory": 32, "chapters": 4, "top_k": 2}
    raw["model"]["blocks"] = [raw["model"]["blocks"][0], {"mixer": bank, "mlp": "none"}]
    raw["eval"]["settings"] = settings
    return write_config(raw, tmp_path / "bank.yaml")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[str, Path, dict]:
    tmp_path = tmp_path_factory.mktemp("bank")
    config = bank_experiment(tmp_path)
    assert main(["train", config]) == 0
    final = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    return config, tmp_path / "run" / "checkpoint.pt", final


def evaluated_loss(capsys, *args: str) -> float:
    code, out, err = run(capsys, "evaluate", *args)
    assert code == 0, err
    return float(re.search(r"eval_loss (\d+\.\d+)", out).group(1))


def test_eval_settings_read_the_trained_weights_with_each_model_override(trained):
    final = trained[2]
    losses = {label: final[f"eval_loss@{label}"] for label in
              [f"{BANK}.top_k=1", f"{BANK}.top_k=4", f"{BANK}.quantize=8", f"{BANK}.quantize=4",
               f"{BANK}.routing=sequence,num_queries=2"]}  # fmt: skip
    assert len(set(losses.values()) | {final["eval_loss"]}) == 6  # each reads the bank differently
    change = {bits: abs(losses[f"{BANK}.quantize={bits}"] - final["eval_loss"]) for bits in (8, 4)}
    assert change[8] < change[4]  # int8 codes move the read less than 4-bit ones


@pytest.mark.parametrize(("key", "value"), [("top_k", "4"), ("quantize", "8")])
def test_evaluate_set_equals_the_same_eval_setting(trained, capsys, key, value):
    config, checkpoint, final = trained
    loss = evaluated_loss(capsys, config, str(checkpoint), "--set", f"{BANK}.{key}={value}")
    assert loss == round(final[f"eval_loss@{BANK}.{key}={value}"], 4)
    assert evaluated_loss(capsys, config, str(checkpoint)) == round(final["eval_loss"], 4)  # the checkpoint as trained


def test_generate_takes_set_too(trained, capsys):
    code, out, err = run(capsys, "generate", str(trained[1]), "--prompt-ids", "3 4", "--set", f"{BANK}.top_k=1")
    assert code == 0 and out.startswith("3 4 "), err


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        (f"{BANK}.n_memory=64", f"--set: {BANK}.n_memory changes the model's parameters (model.blocks[1] mixer.M: "),
        (f"{BANK}.chapters=8", "parameters (model.blocks[1] mixer.router.weight: (4, 16) -> (8, 16))"),
        ("model.d_model=32", "--set: model.d_model changes the model's parameters (embedding: (64, 16) -> (64, 32))"),
        (f"{BANK}.top_k=5", f"--set: key '{BANK}': top_k must lie in [1, chapters=4], got 5"),
        (f"{BANK}.quantize=2", f"--set: key '{BANK}.quantize' must be one of [8, 4], got 2"),
        (f"{BANK}.topk=2", f"--set: unknown key '{BANK}.topk'"),
        ("model.blocks[7].mixer.top_k=2", "--set: key 'model.blocks[7].mixer.top_k' names nothing in the model"),
        ("task.length=9", "--set: 'task.length' is not a model key"),
        ("top_k", "--set takes KEY=VALUE"),
        (f"{BANK}.top_k=[1", "not a YAML value"),
    ],
)
def test_a_bad_override_is_one_line_naming_the_key(trained, capsys, flag, message):
    config, checkpoint, _ = trained
    assert message in one_error_line(capsys, "evaluate", config, str(checkpoint), "--set", flag)


def test_an_eval_setting_that_changes_parameters_is_refused_at_load(tmp_path):
    config = bank_experiment(tmp_path, settings=[{f"{BANK}.n_heads": 4}, {f"{BANK}.n_memory": 16}])
    with pytest.raises(ConfigError, match=r"key 'eval.settings\[1\]': .*n_memory changes the model's parameters"):
        load_experiment(config)
    assert files(tmp_path / "run") == {}
