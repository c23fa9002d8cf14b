"""The memory-models command: train is reproducible from its seed, config errors are clear."""

import importlib.util
import json
import math
import subprocess
import sys

import pytest
import torch
import yaml

from src.cli import main
from src.config import load_experiment
from src.memory_use import MACHINE_FIELDS
from src.tasks.associative_recall import AssociativeRecall
from src.validation import read_yaml
from tests.conftest import ROOT


def tiny_experiment(tmp_path, **train_changes) -> str:
    raw = read_yaml(ROOT / "configs" / "transformer_mqar.yaml")
    raw["model"].update(d_model=16)
    raw["model"]["blocks"][0].update(repeat=1)
    raw["model"]["blocks"][0]["mlp"]["d_hidden"] = 32
    raw["train"].update(steps=6, batch_size=4, eval_every=3, warmup_steps=2, out_dir=str(tmp_path / "run"))
    raw["train"].update(train_changes)
    raw["eval"].update(num_examples=20, batch_size=10)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def final_line(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("final:"))


def test_train_twice_from_one_seed_gives_the_same_final_metric(tmp_path, capsys):
    path = tiny_experiment(tmp_path)
    assert main(["train", path]) == 0
    first = capsys.readouterr().out
    assert main(["train", path, "--overwrite"]) == 0
    second = capsys.readouterr().out
    assert final_line(first) == final_line(second)
    assert "step      6/6" in first  # progress lines
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [3, 6]  # the second run replaced the first one's log
    task = load_experiment(path).task
    length = 2 * task["num_pairs"] + 2 * task["num_queries"]
    assert [m["tokens"] for m in metrics] == [3 * 4 * length, 6 * 4 * length]  # steps x batch x length
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert checkpoint["step"] == 6 and "model" in checkpoint and "optimizer" in checkpoint
    assert checkpoint["metrics"] == metrics[-1] and checkpoint["tokens"] == metrics[-1]["tokens"]
    assert yaml.safe_load(checkpoint["config"])["train"]["steps"] == 6


def test_evaluate_reads_the_checkpoint(tmp_path, capsys):
    path = tiny_experiment(tmp_path)
    main(["train", path])
    trained = final_line(capsys.readouterr().out).removeprefix("final: ")
    assert main(["evaluate", path, str(tmp_path / "run" / "checkpoint.pt")]) == 0
    assert capsys.readouterr().out.strip() == f"step 6: {trained}"


def test_misspelled_key_fails_naming_key_and_file(tmp_path, capsys):
    path = tiny_experiment(tmp_path, warmup=5)
    assert main(["train", path]) == 2
    assert f"{path}: unknown key 'train.warmup'" in capsys.readouterr().err


@pytest.mark.parametrize("config", ["memory_bank_a_mqar", "memory_bank_b_mqar", "transformer_mqar"])
def test_memory_bank_variants_and_the_vanilla_control_train_from_their_configs(tmp_path, capsys, config):
    raw = read_yaml(ROOT / "configs" / f"{config}.yaml")
    raw["train"].update(steps=4, batch_size=4, eval_every=2, warmup_steps=1, out_dir=str(tmp_path / "run"))
    raw["eval"].update(num_examples=8, batch_size=8)
    path = tmp_path / f"{config}.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["train", str(path)]) == 0
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    has_router = config.startswith("memory_bank")
    assert ("aux_load_balancing" in metrics[-1]) == has_router and ("aux_router_z" in metrics[-1]) == has_router
    assert "final:" in capsys.readouterr().out


class Interrupted(Exception):
    pass


def test_resuming_from_a_checkpoint_repeats_the_uninterrupted_run(tmp_path):
    from src.training import train

    path = tiny_experiment(tmp_path, steps=6, eval_every=2)
    experiment = load_experiment(path)
    full = train(experiment, log=lambda line: None)
    full_metrics = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()

    def stop_after_step_4(line):
        if line.startswith("step      4/6"):
            raise Interrupted  # the process dies right after the step-4 checkpoint

    with pytest.raises(Interrupted):
        train(experiment, log=stop_after_step_4, overwrite=True)
    resumed = train(experiment, log=lambda line: None, resume=True)
    resumed_metrics = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    drop_speed = [{k: v for k, v in json.loads(m).items() if k not in MACHINE_FIELDS} for m in resumed_metrics]
    assert drop_speed == [{k: v for k, v in json.loads(m).items() if k not in MACHINE_FIELDS} for m in full_metrics]
    assert resumed["eval_loss"] == full["eval_loss"]


def test_eval_settings_report_each_setting_and_bad_ones_are_named(tmp_path, capsys):
    raw = read_yaml(tiny_experiment(tmp_path))
    raw["eval"]["settings"] = [{"num_pairs": 8, "num_queries": 8}]
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["train", str(path)]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert "eval_accuracy@num_pairs=8,num_queries=8" in metrics and "eval_accuracy" in metrics
    raw["eval"]["settings"] = [{"num_pairs": 40}]
    path.write_text(yaml.safe_dump(raw))
    assert main(["train", str(path)]) == 2
    assert "key 'eval.settings[0]' does not give a valid task" in capsys.readouterr().err


def test_compare_trains_each_model_and_writes_one_table(tmp_path, capsys):
    raw = read_yaml(tiny_experiment(tmp_path))
    mamba = read_yaml(ROOT / "configs" / "mamba_tiny.yaml")["model"]
    mamba.update(d_model=16)
    mamba["blocks"][0].update(repeat=1)
    raw = {"models": {"transformer": raw["model"], "mamba": mamba}, **{k: raw[k] for k in ("task", "train", "eval")}}
    raw["eval"]["settings"] = [{"num_pairs": 6, "num_queries": 6}]
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert main(["compare", str(path)]) == 0
    out = capsys.readouterr().out
    table = (tmp_path / "run" / "compare.md").read_text()
    assert table.splitlines()[0].startswith("| model | parameters | eval loss | accuracy (train setting) |")
    assert "accuracy @ num_pairs=6,num_queries=6" in table and table in out
    rows = json.loads((tmp_path / "run" / "compare.json").read_text())
    assert [row["model"] for row in rows] == ["transformer", "mamba"]
    assert (tmp_path / "run" / "transformer" / "checkpoint.pt").is_file()
    assert (tmp_path / "run" / "compare.png").is_file() == (importlib.util.find_spec("matplotlib") is not None)


def test_compare_error_names_the_model(tmp_path, capsys):
    raw = read_yaml(tiny_experiment(tmp_path))
    raw["model"]["blocks"][0]["mixer"]["n_head"] = 2
    raw = {"models": {"broken": raw["model"]}, **{k: raw[k] for k in ("task", "train", "eval")}}
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["compare", str(path)]) == 2
    assert "unknown key 'models.broken.blocks[0].mixer.n_head'" in capsys.readouterr().err


def test_generate_continues_a_prompt_from_a_checkpoint(tmp_path, capsys):
    path = tiny_experiment(tmp_path)
    assert main(["train", path]) == 0
    capsys.readouterr()
    checkpoint = str(tmp_path / "run" / "checkpoint.pt")
    assert main(["generate", checkpoint, "--prompt-ids", "3 40 5", "--max-new-tokens", "4"]) == 0
    greedy = capsys.readouterr().out.split()
    assert greedy[:3] == ["3", "40", "5"] and len(greedy) == 7
    args = ["generate", checkpoint, "--prompt-ids", "3 40 5", "--max-new-tokens", "4", "--temperature", "1.0"]
    assert main([*args, "--seed", "1"]) == 0 and main([*args, "--seed", "1"]) == 0
    first, second = capsys.readouterr().out.splitlines()
    assert first == second
    assert main(["generate", checkpoint, "--prompt", "text"]) == 2  # a token task needs ids


def test_text_task_reports_bits_per_byte_and_generates_text(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("to be or not to be, that is the question. " * 40)
    raw = read_yaml(tiny_experiment(tmp_path))
    raw["model"]["vocab_size"] = 256
    raw["task"] = {"type": "text", "path": str(corpus), "length": 32}
    path = tmp_path / "text.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["train", str(path)]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert metrics["eval_bits_per_byte"] == pytest.approx(metrics["eval_loss"] / math.log(2))
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]))
    capsys.readouterr()
    assert (
        main(["generate", str(tmp_path / "run" / "checkpoint.pt"), "--prompt", "to be", "--max-new-tokens", "5"]) == 0
    )
    assert capsys.readouterr().out.startswith("to be")


def test_train_ends_with_a_held_out_example_and_the_final_metrics(tmp_path, capsys):
    path = tiny_experiment(tmp_path)
    assert main(["train", path]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("final: eval_loss ") and "eval_accuracy" in lines[-1]
    example = next(i for i, line in enumerate(lines) if line.startswith("example (held-out): context "))
    answers = lines[example + 1].removeprefix("  query -> model's answer: ").split(", ")
    task = load_experiment(path).task
    assert len(answers) == task["num_queries"]  # one answer per MQAR query
    assert all(answer.endswith(("(right)", ")")) and " -> " in answer for answer in answers)
    seed = load_experiment(path).eval.seed
    inputs, targets = AssociativeRecall(task["vocab_size"], task["num_pairs"], task["num_queries"]).sample(1, seed)
    queries = [inputs[0, t].item() for t in range(inputs.shape[1]) if targets[0, t] >= 0]
    assert [int(answer.split(" -> ")[0]) for answer in answers] == queries  # the eval seed's first example


def test_a_reader_that_goes_away_ends_the_command_without_a_traceback():
    """`memory-models equations | true`: the reader has gone before the first line (the command takes
    seconds to start); the command stops quietly instead of a BrokenPipeError traceback."""
    command = "import sys; from src.cli import main; sys.exit(main(['equations']))"
    script = f'{sys.executable} -c "{command}" | true'
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr
