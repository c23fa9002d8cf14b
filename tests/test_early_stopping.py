"""train.early_stopping: the rule, best.pt beside checkpoint.pt, evaluate / generate on either, resume."""

import json
import math
from pathlib import Path

import pytest
import torch

from src.cli import main
from src.early_stopping import EarlyStopping, Patience
from tests.test_cli import tiny_experiment
from tests.test_cli_bad_input import files, one_error_line, run

NEVER_BETTER = 100.0  # a min_delta no later evaluation beats: only the first evaluation is an improvement


def test_patience_counts_evaluations_without_an_improvement_beyond_min_delta():
    rule = EarlyStopping(patience=2, min_delta=0.1)
    state = Patience().after(1.0, 10, rule)
    assert state == Patience(1.0, 10, 0) and not state.exhausted(rule)
    state = state.after(0.95, 20, rule)  # better, but not by more than min_delta
    assert state == Patience(1.0, 10, 1) and not state.exhausted(rule)
    assert state.after(0.85, 30, rule) == Patience(0.85, 30, 0)  # an improvement resets the count
    assert state.after(2.0, 30, rule).exhausted(rule)
    assert Patience().best_loss == math.inf


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def stopped(tmp_path_factory) -> tuple[str, Path]:
    """A run of 8 steps evaluated at every step that stops at step 3 (patience 2, nothing beats step 1)."""
    tmp_path = tmp_path_factory.mktemp("stopped")
    config = tiny_experiment(tmp_path, steps=8, eval_every=1, early_stopping={"patience": 2, "min_delta": NEVER_BETTER})
    assert main(["train", config]) == 0
    return config, tmp_path / "run"


def test_a_run_stops_after_patience_evaluations_and_keeps_the_best(stopped):
    run_dir = stopped[1]
    records = metrics(run_dir)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert [r["best_step"] for r in records] == [1, 1, 1]
    assert records[-1]["best_eval_loss"] == records[0]["eval_loss"]
    best = torch.load(run_dir / "best.pt", weights_only=True)
    last = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert best["step"] == 1 and last["step"] == 3
    assert last["early_stopping"] == {"best_loss": records[0]["eval_loss"], "best_step": 1, "waited": 2}
    assert not any(torch.equal(best["model"][k], last["model"][k]) for k in best["model"] if k.endswith("W_q.weight"))


@pytest.mark.parametrize("name", ["best.pt", "checkpoint.pt"])
def test_evaluate_and_generate_take_either_checkpoint(stopped, capsys, name):
    config, run_dir = stopped
    code, out, err = run(capsys, "evaluate", config, str(run_dir / name))
    assert code == 0, err
    step = 1 if name == "best.pt" else 3
    assert out.startswith(f"step {step}: eval_loss {metrics(run_dir)[step - 1]['eval_loss']:.4f}")
    code, out, err = run(capsys, "generate", str(run_dir / name), "--prompt-ids", "3 40", "--max-new-tokens", "2")
    assert code == 0 and len(out.split()) == 4, err


def test_resuming_a_stopped_run_reports_it_and_changes_nothing(stopped, capsys):
    config, run_dir = stopped
    before = files(run_dir)
    code, out, err = run(capsys, "train", config, "--resume")
    assert code == 0, err
    assert "stopped early at step 3 (raise train.early_stopping.patience to go on)" in out
    assert files(run_dir) == before


def test_resume_continues_the_patience_count(tmp_path):
    rule = {"patience": 3, "min_delta": NEVER_BETTER}
    assert main(["train", tiny_experiment(tmp_path, steps=2, eval_every=1, early_stopping=rule)]) == 0
    assert main(["train", tiny_experiment(tmp_path, steps=9, eval_every=1, early_stopping=rule), "--resume"]) == 0
    # stops at step 4, as the uninterrupted run does: a count reset at step 2 would go on to step 5
    assert [r["step"] for r in metrics(tmp_path / "run")] == [1, 2, 3, 4]
    assert torch.load(tmp_path / "run" / "best.pt", weights_only=True)["step"] == 1


def test_more_patience_continues_a_stopped_run(tmp_path):
    config = tiny_experiment(tmp_path, steps=6, eval_every=1, early_stopping={"patience": 1, "min_delta": NEVER_BETTER})
    assert main(["train", config]) == 0
    more = tiny_experiment(tmp_path, steps=6, eval_every=1, early_stopping={"patience": 2, "min_delta": NEVER_BETTER})
    assert main(["train", more, "--resume"]) == 0
    assert [r["step"] for r in metrics(tmp_path / "run")] == [1, 2, 3]


def test_a_new_run_without_early_stopping_removes_an_old_best(tmp_path):
    config = tiny_experiment(tmp_path, steps=2, eval_every=1, early_stopping={"patience": 1})
    assert main(["train", config]) == 0
    assert (tmp_path / "run" / "best.pt").is_file()
    assert main(["train", tiny_experiment(tmp_path, steps=2, eval_every=1), "--overwrite"]) == 0
    assert not (tmp_path / "run" / "best.pt").exists()


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"patience": 0}, "key 'train.early_stopping.patience' must be >= 1, got 0"),
        ({"min_delta": 0.1}, "missing key 'train.early_stopping.patience'"),
        ({"patience": 2, "min_delta": -1.0}, "key 'train.early_stopping.min_delta' must be >= 0, got -1.0"),
        ({"patience": 2, "metric": "accuracy"}, "unknown key 'train.early_stopping.metric'"),
    ],
)
def test_a_bad_early_stopping_section_is_named(tmp_path, capsys, rule, message):
    config = tiny_experiment(tmp_path, early_stopping=rule)
    assert message in one_error_line(capsys, "train", config)
    assert not (tmp_path / "run").exists()


def test_under_fsdp_the_best_steps_shards_are_kept(tmp_path):
    rule = {"patience": 2, "min_delta": NEVER_BETTER}
    config = tiny_experiment(tmp_path, steps=3, eval_every=1, parallel="fsdp", early_stopping=rule)
    assert main(["train", config]) == 0  # a group of one process (gloo)
    shards = sorted(p.name for p in (tmp_path / "run").glob("checkpoint-step*"))
    assert shards == ["checkpoint-step1", "checkpoint-step3"]
    assert torch.load(tmp_path / "run" / "best.pt", weights_only=True)["shards"] == "checkpoint-step1"
    assert main(["evaluate", config, str(tmp_path / "run" / "best.pt")]) == 0
