"""Adapted pretrained models through the whole command: config errors, train, evaluate, generate, compare,
adapter-only checkpoints and the base-weight hash."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch
import yaml

from src.cli import main
from src.config import load_experiment
from src.validation import ConfigError
from tests.conftest import CORPUS

pytest.importorskip("transformers")
safetensors = pytest.importorskip("safetensors.torch")

MEMORY = {"type": "memory", "layers": [1], "variant": "A", "n_heads": 4, "n_memory": 16}
LORA = {"type": "lora", "targets": ["q_proj", "v_proj"], "rank": 2, "alpha": 4}
TRAIN = {"steps": 4, "batch_size": 2, "lr": 0.01, "warmup_steps": 1, "weight_decay": 0.0, "grad_clip": 1.0,
         "seed": 0, "eval_every": 2}  # fmt: skip
EVAL = {"num_examples": 4, "batch_size": 2, "seed": 1}


def write(tmp_path, raw: dict, name="adapted.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return str(path)


def experiment(tmp_path, base, adapters=(MEMORY, LORA), task=None, **base_keys) -> str:
    raw = {
        "model": {"base": {"directory": str(base), **base_keys}, "adapters": list(adapters)},
        "task": task or {"type": "text", "path": str(CORPUS), "length": 32},
        "train": {**TRAIN, "out_dir": str(tmp_path / "run")},
        "eval": EVAL,
    }
    return write(tmp_path, raw)


def test_train_evaluate_and_generate_an_adapted_model(tmp_path, tiny_bases, capsys):
    path = experiment(tmp_path, tiny_bases["llama"])
    assert main(["train", path]) == 0
    out = capsys.readouterr().out
    assert "files_sha256:" in out and f"tokenizer: {tiny_bases['llama']}" in out  # resolved config
    assert "trained; task: text" in out and "final: eval_loss" in out
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert all(key.startswith("memory_adapters.") or key.endswith((".A", ".B")) for key in checkpoint["model"])
    metrics = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0 < metrics["eval_bits_per_byte"] < metrics["eval_loss"] / 0.6931  # tokens are longer than a byte
    assert main(["evaluate", path, str(tmp_path / "run" / "checkpoint.pt")]) == 0
    assert capsys.readouterr().out.startswith("step 4: eval_loss")
    checkpoint_path = str(tmp_path / "run" / "checkpoint.pt")
    assert main(["generate", checkpoint_path, "--prompt", "ROMEO:", "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("ROMEO:")


def test_a_changed_base_is_refused_by_every_command(tmp_path, tiny_bases, capsys):
    base = tmp_path / "base"
    base.mkdir()
    for file in tiny_bases["qwen2"].iterdir():
        (base / file.name).write_bytes(file.read_bytes())
    path = experiment(tmp_path, base, adapters=[LORA])
    assert main(["train", path]) == 0
    capsys.readouterr()
    weights = safetensors.load_file(base / "model.safetensors")
    weights["model.norm.weight"] = weights["model.norm.weight"] + 1
    safetensors.save_file(weights, base / "model.safetensors", metadata={"format": "pt"})
    checkpoint = str(tmp_path / "run" / "checkpoint.pt")
    assert main(["generate", checkpoint, "--prompt", "A"]) == 2
    assert f"model.base.files_sha256': {base / 'model.safetensors'} changed" in capsys.readouterr().err
    assert main(["train", path, "--resume"]) == 2  # the config resolves the new hash; the checkpoint has the old one
    err = capsys.readouterr().err
    assert "model.base.files_sha256" in err and "checkpoint.pt" in err


def test_fact_recall_trains_through_the_base_tokenizer(tmp_path, tiny_bases, capsys):
    task = {"type": "fact_recall", "length": 48, "n_facts": 30}
    path = experiment(tmp_path, tiny_bases["qwen2"], adapters=[MEMORY], task=task)
    assert main(["train", path]) == 0
    assert "final: eval_loss" in capsys.readouterr().out
    assert load_experiment(path).task["tokenizer"] == str(tiny_bases["qwen2"])


def test_compare_puts_adapters_side_by_side(tmp_path, tiny_bases, capsys):
    base = {"directory": str(tiny_bases["llama"])}
    raw = {
        "models": {
            "memory": {"base": base, "adapters": [MEMORY]},
            "lora": {"base": base, "adapters": [LORA]},
            "full": {"base": {**base, "freeze": False}, "adapters": []},
        },
        "task": {"type": "text", "path": str(CORPUS), "length": 32},
        "train": {**TRAIN, "steps": 2, "out_dir": str(tmp_path / "runs")},
        "eval": EVAL,
    }
    assert main(["compare", write(tmp_path, raw)]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("memory", "lora", "full"))
    assert all((tmp_path / "runs" / name / "checkpoint.pt").is_file() for name in ("memory", "lora", "full"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"adapters": [{**MEMORY, "layers": [2]}]}, r"adapters\[0\]\.layers' names layer 2, but the base has 2"),
        ({"adapters": [{**LORA, "targets": ["x_proj"]}]}, r"adapters\[0\]\.targets' names projection 'x_proj'"),
        ({"adapters": [{**LORA, "rank": 0}]}, r"adapters\[0\]\.rank' must be >= 1"),
        ({"adapters": [{**MEMORY, "n_heads": 3}]}, r"adapters\[0\]'.*n_heads=3 must divide"),
        ({"adapters": [{**MEMORY, "colour": 1}]}, r"unknown key 'model\.adapters\[0\]\.colour'"),
        ({"adapters": [{"type": "prefix"}]}, r"adapters\[0\]' must be a mapping with 'type' one of"),
        ({"adapters": [MEMORY, MEMORY]}, "two memory adapters at layer 1, variant A"),
        ({"adapters": []}, "nothing would train"),
        ({"base": {"directory": "/nonexistent"}}, r"model\.base\.directory': no directory /nonexistent"),
        ({"base": {"quantization": "nf4", "freeze": False}}, "quantized weights cannot train"),
        ({"base": {"quantization": "int4"}}, r"model\.base\.quantization' must be one of"),
        ({"base": {"files_sha256": {"config.json": "0" * 64}}}, r"model\.base\.files_sha256': .*config\.json changed"),
        ({"base": {"dirctory": "x"}}, r"unknown key 'model\.base\.dirctory'"),
    ],
)
def test_config_errors_name_the_key_and_the_file(tmp_path, tiny_bases, capsys, change, message):
    raw = {"base": {"directory": str(tiny_bases["llama"])}, "adapters": [MEMORY]}
    if "base" in change:
        raw["base"] = {**raw["base"], **change["base"]}
        if "dirctory" in change["base"]:
            del raw["base"]["directory"]
    else:
        raw["adapters"] = change["adapters"]
    path = write(tmp_path, {"model": raw, "task": {"type": "text", "path": str(CORPUS), "length": 32},
                            "train": {**TRAIN, "out_dir": str(tmp_path / "run")}, "eval": EVAL})  # fmt: skip
    with pytest.raises(ConfigError, match=message):
        load_experiment(path)
    assert main(["train", path]) == 2
    err = capsys.readouterr().err
    assert path in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_a_task_vocabulary_beyond_the_base_is_refused(tmp_path, tiny_bases):
    task = {"type": "associative_recall", "vocab_size": 1024, "num_pairs": 4, "num_queries": 2}
    with pytest.raises(ConfigError, match=r"key 'model\.base' \(512\) must be >= the task's vocabulary \(1024\)"):
        load_experiment(experiment(tmp_path, tiny_bases["llama"], task=task))


def test_without_the_hf_extra_the_error_names_it(tmp_path, tiny_bases, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now raises ImportError
    path = experiment(tmp_path, tiny_bases["llama"])
    assert main(["train", path]) == 2
    err = capsys.readouterr().err
    assert "needs the 'hf' extra" in err and "uv sync --extra hf" in err and path in err


def test_an_nf4_base_trains_in_bfloat16_with_every_memory_option(tmp_path, tiny_bases, capsys):
    path = experiment(tmp_path, tiny_bases["qwen2"], quantization="nf4")
    raw = yaml.safe_load(Path(path).read_text())
    raw["train"] |= {"precision": "bfloat16", "checkpoint_blocks": True, "loss_chunk_tokens": 16}
    assert main(["train", write(tmp_path, raw)]) == 0
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [2, 4] and all(math.isfinite(m["eval_loss"]) for m in metrics)
