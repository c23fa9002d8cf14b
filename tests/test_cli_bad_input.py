"""Bad input to `memory-models train | evaluate | generate`: one line on stderr, exit 2, files untouched."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from src.checkpoints import save
from src.cli import main
from src.validation import read_yaml
from tests.test_cli import final_line, tiny_experiment

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


def run(capsys, *args: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `memory-models ARGS`; argparse's own errors exit by SystemExit."""
    try:
        code = main(list(args))
    except SystemExit as exit:
        code = exit.code
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(capsys, *args: str) -> str:
    """Run a command that must fail as a user error; return its single stderr line."""
    code, _, err = run(capsys, *args)
    assert code == 2, err
    assert err.endswith("\n") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def files(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` with its bytes (a directory that is not there has none)."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def write_config(raw: dict, path: Path) -> str:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return str(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[str, Path, dict]:
    """(config, run directory, final metrics) of one finished tiny run: 6 steps, evaluated at 3 and 6."""
    tmp_path = tmp_path_factory.mktemp("trained")
    config = tiny_experiment(tmp_path)
    assert main(["train", config]) == 0
    final = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1]
    return config, tmp_path / "run", json.loads(final)


def copy_run(trained, tmp_path, **train_changes) -> tuple[str, Path]:
    """A copy of the trained run in tmp_path, with a config pointing at it (and `train_changes`)."""
    config, run_dir, _ = trained
    shutil.copytree(run_dir, tmp_path / "run")
    raw = read_yaml(config)
    raw["train"].update(out_dir=str(tmp_path / "run"), **train_changes)
    return write_config(raw, tmp_path / "copy.yaml"), tmp_path / "run"


def damage(path: Path, kind: str, trained_checkpoint: Path | None = None) -> None:
    """Write a bad checkpoint of one kind to `path` (nothing for "missing")."""
    if kind == "missing":
        return
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        good = path.with_name("good.pt")
        save({"model": {"w": torch.randn(4096)}, "step": 1}, good)
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "random":
        path.write_bytes(os.urandom(2048))
    elif kind == "wrong structure":
        save({"model": {}}, path)
    else:  # a whole checkpoint of the trained run with one entry changed
        checkpoint = torch.load(trained_checkpoint, weights_only=True)
        changed = {
            "foreign weights": {"model": {"w": torch.ones(1)}},
            "stored config not YAML": {"config": "model: [1, 2"},
            "stored config without sections": {"config": "model: {}\n"},
        }[kind]
        save({**checkpoint, **changed}, path)


DAMAGE = ["missing", "empty", "truncated", "random", "wrong structure"]
DAMAGE_MESSAGE = {
    "missing": "no checkpoint file there",
    "empty": "not a readable checkpoint",
    "truncated": "not a readable checkpoint",
    "random": "not a readable checkpoint",
    "wrong structure": "checkpoint has no 'optimizer' entry",
    "foreign weights": "its model state does not fit the model",
    "stored config not YAML": "its stored config is not valid YAML",
    "stored config without sections": "its stored config must have the sections ['model', 'task', 'train', 'eval']",
}


# ---- train: a run directory is never changed before the run is known to start


def test_a_directory_holding_a_run_is_refused_and_left_as_it_is(trained, capsys):
    config, run_dir, _ = trained
    before = files(run_dir)
    err = one_error_line(capsys, "train", config)
    assert f"train.out_dir {run_dir} already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert files(run_dir) == before


def test_a_metrics_log_alone_counts_as_a_run(tmp_path, capsys):
    config = tiny_experiment(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 3}\n')
    assert "already holds a run" in one_error_line(capsys, "train", config)
    assert files(tmp_path / "run") == {"metrics.jsonl": b'{"step": 3}\n'}


def test_resume_and_overwrite_together_are_one_usage_error(trained, capsys):
    assert "not allowed with argument" in one_error_line(capsys, "train", trained[0], "--resume", "--overwrite")


def test_an_out_dir_that_is_a_file_is_named(tmp_path, capsys):
    config = tiny_experiment(tmp_path)
    (tmp_path / "run").write_text("my notes\n")
    assert f"train.out_dir {tmp_path / 'run'} is a file, not a directory" in one_error_line(capsys, "train", config)
    assert (tmp_path / "run").read_text() == "my notes\n"


def test_an_out_dir_below_a_file_is_named(tmp_path, capsys):
    (tmp_path / "notes").write_text("my notes\n")
    config = tiny_experiment(tmp_path, out_dir=str(tmp_path / "notes" / "run"))
    assert f"cannot create train.out_dir {tmp_path / 'notes' / 'run'}" in one_error_line(capsys, "train", config)
    assert (tmp_path / "notes").read_text() == "my notes\n"


def test_an_unwritable_out_dir_is_named(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    if os.access(locked, os.W_OK):  # root ignores permission bits; sysfs refuses new directories to everyone
        if not Path("/sys/kernel").is_dir():
            pytest.skip("running as root without a read-only /sys")
        locked = Path("/sys/kernel")
    config = tiny_experiment(tmp_path, out_dir=str(locked / "run"))
    err = one_error_line(capsys, "train", config)
    assert f"train.out_dir {locked / 'run'}" in err and ("cannot create" in err or "cannot write" in err)
    assert not (locked / "run").exists()


def test_resume_without_a_checkpoint_is_named_and_creates_nothing(tmp_path, capsys):
    config = tiny_experiment(tmp_path)
    err = one_error_line(capsys, "train", config, "--resume")
    assert f"{config}: nothing to resume: there is no checkpoint at {tmp_path / 'run' / 'checkpoint.pt'}" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kind", [kind for kind in DAMAGE if kind != "missing"])
def test_resume_from_a_damaged_checkpoint_names_it(tmp_path, capsys, kind):
    config = tiny_experiment(tmp_path)
    (tmp_path / "run").mkdir()
    damage(tmp_path / "run" / "checkpoint.pt", kind)
    before = files(tmp_path / "run")
    err = one_error_line(capsys, "train", config, "--resume")
    assert f"{tmp_path / 'run' / 'checkpoint.pt'}: {DAMAGE_MESSAGE[kind]}" in err
    assert files(tmp_path / "run") == before


@pytest.mark.parametrize(
    ("change", "key"),
    [({"lr": 0.01}, "train.lr"), ({"batch_size": 8}, "train.batch_size"), ({"seed": 1}, "train.seed")],
)
def test_resume_with_another_train_setting_names_the_key(trained, tmp_path, capsys, change, key):
    config, run_dir = copy_run(trained, tmp_path, **change)
    before = files(run_dir)
    err = one_error_line(capsys, "train", config, "--resume")
    assert f"{run_dir / 'checkpoint.pt'}: was written with {key} = " in err and f"but {config} has" in err
    assert files(run_dir) == before


def test_resume_with_another_model_names_the_key(trained, tmp_path, capsys):
    config, run_dir = copy_run(trained, tmp_path)
    raw = read_yaml(config)
    raw["model"]["blocks"][0]["mixer"]["n_heads"] = 2
    write_config(raw, Path(config))
    before = files(run_dir)
    assert "was written with model.blocks[0].mixer.n_heads = 4" in one_error_line(capsys, "train", config, "--resume")
    assert files(run_dir) == before


def test_resume_with_fewer_steps_than_the_checkpoint_is_refused(trained, tmp_path, capsys):
    config, run_dir = copy_run(trained, tmp_path, steps=4)
    before = files(run_dir)
    assert f"train.steps (4) is below the step of {run_dir / 'checkpoint.pt'}" in one_error_line(
        capsys, "train", config, "--resume"
    )
    assert files(run_dir) == before


def test_resuming_a_finished_run_reports_its_final_metrics(trained, capsys):
    config, run_dir, final = trained
    before = files(run_dir)
    code, out, err = run(capsys, "train", config, "--resume")
    assert code == 0, err
    expected = f"final: eval_loss {final['eval_loss']:.4f}  eval_accuracy {final['eval_accuracy']:.4f}"
    assert final_line(out) == expected and "is a finished run of 6 steps" in out
    assert files(run_dir) == before


def test_raising_train_steps_extends_a_run_on_resume(trained, tmp_path, capsys):
    config, run_dir = copy_run(trained, tmp_path, steps=9)
    code, out, err = run(capsys, "train", config, "--resume")
    assert code == 0, err
    assert "resuming from" in out and "at step 6" in out
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [3, 6, 9]
    assert metrics[2]["tokens"] == 3 * metrics[0]["tokens"]  # the token count goes on from the checkpoint
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert checkpoint["step"] == 9 and yaml.safe_load(checkpoint["config"])["train"]["steps"] == 9


def test_a_diverging_run_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    config = tiny_experiment(tmp_path, lr=1e10, eval_every=1, warmup_steps=0)
    err = one_error_line(capsys, "train", config)
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    assert f"{config}: training diverged: the loss at step 2 is nan; {checkpoint} keeps step 1" in err
    kept = torch.load(checkpoint, weights_only=True)
    assert kept["step"] == 1 and all(torch.isfinite(value).all() for value in kept["model"].values())
    assert [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == [1]


def test_an_update_that_makes_parameters_non_finite_is_caught_before_saving(tmp_path, capsys):
    config = tiny_experiment(tmp_path, lr=1e20, eval_every=1, warmup_steps=0)
    err = one_error_line(capsys, "train", config)
    assert "training diverged: the update of step 2 made parameters non-finite" in err
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["step"] == 1


def test_overwrite_leaves_the_old_run_intact_until_the_new_one_has_evaluated(trained, tmp_path, capsys):
    config, run_dir = copy_run(trained, tmp_path, lr=1e30, warmup_steps=0)  # diverges before step 3
    before = files(run_dir)
    assert "training diverged" in one_error_line(capsys, "train", config, "--overwrite")
    assert files(run_dir) == before


# ---- evaluate: the checkpoint must come from the given config


@pytest.mark.parametrize(
    ("path", "value", "key"),
    [
        (("model", "blocks", 0, "mixer", "n_heads"), 2, "model.blocks[0].mixer.n_heads"),
        (("model", "blocks", 0, "mixer", "rope_base"), 500.0, "model.blocks[0].mixer.rope_base"),
        (("model", "tie_embeddings"), False, "model.tie_embeddings"),
        (("task", "num_pairs"), 5, "task.num_pairs"),
    ],
)
def test_evaluate_refuses_a_checkpoint_of_another_config(trained, tmp_path, capsys, path, value, key):
    config, run_dir, _ = trained
    raw = read_yaml(config)
    *parents, last = path
    section = raw
    for name in parents:
        section = section[name]
    section[last] = value
    other = write_config(raw, tmp_path / "other.yaml")
    err = one_error_line(capsys, "evaluate", other, str(run_dir / "checkpoint.pt"))
    assert f"{run_dir / 'checkpoint.pt'}: was written with {key} = " in err and f"but {other} has {value!r}" in err


def test_evaluate_accepts_another_eval_section(trained, tmp_path, capsys):
    config, run_dir, _ = trained
    raw = read_yaml(config)
    raw["eval"]["num_examples"] = 10
    code, out, err = run(capsys, "evaluate", write_config(raw, tmp_path / "other.yaml"), str(run_dir / "checkpoint.pt"))
    assert code == 0 and out.startswith("step 6: eval_loss"), err


@pytest.mark.parametrize(
    "kind", [*DAMAGE, "foreign weights", "stored config not YAML", "stored config without sections"]
)
@pytest.mark.parametrize("command", ["evaluate", "generate"])
def test_a_damaged_checkpoint_is_named(trained, tmp_path, capsys, command, kind):
    checkpoint = tmp_path / "checkpoint.pt"
    damage(checkpoint, kind, trained[1] / "checkpoint.pt")
    args = [trained[0], str(checkpoint)] if command == "evaluate" else [str(checkpoint), "--prompt-ids", "3"]
    assert f"{checkpoint}: {DAMAGE_MESSAGE[kind]}" in one_error_line(capsys, command, *args)


@NO_CUDA
@pytest.mark.parametrize("command", ["evaluate", "generate"])
def test_device_flag_cuda_without_cuda_is_named(trained, capsys, command):
    config, run_dir, _ = trained
    checkpoint = str(run_dir / "checkpoint.pt")
    args = [config, checkpoint] if command == "evaluate" else [checkpoint, "--prompt-ids", "3"]
    assert "--device is 'cuda' but no CUDA device is available" in one_error_line(
        capsys, command, *args, "--device", "cuda"
    )


@NO_CUDA
def test_evaluate_takes_the_device_from_the_config(trained, tmp_path, capsys):
    config, run_dir, _ = trained
    raw = read_yaml(config)
    raw["train"]["device"] = "cuda"
    other = write_config(raw, tmp_path / "cuda.yaml")
    err = one_error_line(capsys, "evaluate", other, str(run_dir / "checkpoint.pt"))
    assert f"{other}: train.device is 'cuda' but no CUDA device is available" in err
    code, out, err = run(capsys, "evaluate", other, str(run_dir / "checkpoint.pt"), "--device", "cpu")
    assert code == 0 and out.startswith("step 6:"), err


# ---- generate: every flag is checked, whatever the temperature


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--top-p", "-5"], "top_p must lie in (0, 1], got -5.0"),
        (["--top-p", "0"], "top_p must lie in (0, 1], got 0.0"),
        (["--top-p", "1.5"], "top_p must lie in (0, 1], got 1.5"),
        (["--top-k", "-3"], "top_k must lie in [1, 64] (the vocabulary), got -3"),
        (["--top-k", "0"], "top_k must lie in [1, 64]"),
        (["--top-k", "65"], "top_k must lie in [1, 64]"),
        (["--temperature", "-1"], "temperature must be a finite number >= 0"),
        (["--temperature", "nan"], "temperature must be a finite number >= 0"),
        (["--temperature", "inf"], "temperature must be a finite number >= 0"),
        (["--max-new-tokens", "0"], "max_new_tokens must be >= 1, got 0"),
        (["--max-new-tokens", "-2"], "max_new_tokens must be >= 1, got -2"),
        (["--seed", "-1"], "seed must lie in [0, 2**63)"),
        (["--seed", str(2**70)], "seed must lie in [0, 2**63)"),
        (["--top-k", "two"], "argument --top-k: invalid int value: 'two'"),
        (["--prompt-ids", "3 64"], "--prompt-ids: 64 is outside the model's vocabulary [0, 64)"),
        (["--prompt-ids", "-1 3"], "--prompt-ids: -1 is outside the model's vocabulary [0, 64)"),
        (["--prompt-ids", "3 x"], "--prompt-ids must be space-separated integers, got '3 x'"),
        (["--prompt-ids", " "], "the prompt is empty"),
        (["--prompt", "text"], "a associative_recall model needs --prompt-ids"),
        (["--prompt-ids", "3", "--beam", "4"], "unrecognized arguments: --beam 4"),
    ],
)
def test_generate_names_each_bad_flag(trained, capsys, flags, message):
    checkpoint = str(trained[1] / "checkpoint.pt")
    args = flags if "--prompt-ids" in flags or "--prompt" in flags else ["--prompt-ids", "3 40", *flags]
    assert message in one_error_line(capsys, "generate", checkpoint, *args)


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> Path:
    """A one-step text model whose vocabulary (300) is larger than the 256 bytes."""
    tmp_path = tmp_path_factory.mktemp("text")
    (tmp_path / "corpus.txt").write_text("to be or not to be, that is the question. " * 40)
    raw = read_yaml(tiny_experiment(tmp_path, steps=1, eval_every=1, warmup_steps=0))
    raw["model"]["vocab_size"] = 300
    raw["task"] = {"type": "text", "path": str(tmp_path / "corpus.txt"), "length": 32}
    assert main(["train", write_config(raw, tmp_path / "text.yaml")]) == 0
    return tmp_path / "run" / "checkpoint.pt"


def test_a_text_model_with_a_larger_vocabulary_prints_non_byte_ids(text_run, capsys):
    code, out, err = run(capsys, "generate", str(text_run), "--prompt-ids", "104 105 299", "--max-new-tokens", "3")
    assert code == 0, err
    assert out.startswith("hi<299>")
    code, out, err = run(capsys, "generate", str(text_run), "--prompt", "to be", "--temperature", "1.5", "--seed", "3")
    assert code == 0 and out.startswith("to be"), err


def test_an_empty_text_prompt_is_named(text_run, capsys):
    assert "the prompt is empty" in one_error_line(capsys, "generate", str(text_run))
    assert "the prompt is empty" in one_error_line(capsys, "generate", str(text_run), "--prompt", "")


def test_generate_takes_the_device_from_the_checkpoint_or_the_flag(trained, capsys):
    checkpoint = str(trained[1] / "checkpoint.pt")
    code, from_config, err = run(capsys, "generate", checkpoint, "--prompt-ids", "3 40", "--max-new-tokens", "5")
    assert code == 0 and from_config.split()[:2] == ["3", "40"] and len(from_config.split()) == 7, err
    code, from_flag, err = run(
        capsys, "generate", checkpoint, "--prompt-ids", "3 40", "--max-new-tokens", "5", "--device", "cpu"
    )
    assert code == 0 and from_flag == from_config, err


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda raw: raw["train"].update(lr=float("inf")), "key 'train.lr' must be a finite number, got inf"),
        (lambda raw: raw["train"].update(lr=float("nan")), "key 'train.lr' must be a finite number, got nan"),
        (lambda raw: raw["train"].update(betas=[0.9, 1.0]), "key 'train.betas[1]' must be < 1, got 1.0"),
        (lambda raw: raw["model"].update(norm_eps=float("nan")), "key 'model.norm_eps' must be a finite number"),
        (lambda raw: raw["model"]["blocks"][0].update(repeat=10_000_000), "makes 10000000 blocks, more than 1024"),
        (lambda raw: raw["train"].update(seed=2**70), "key 'train.seed' must lie in"),
        (lambda raw: raw["model"]["blocks"][0]["mixer"].update(type=["attention"]), "key 'model.blocks[0].mixer.type'"),
    ],
)
def test_a_bad_config_value_is_one_line_and_writes_nothing(tmp_path, capsys, change, message):
    config = tiny_experiment(tmp_path)
    raw = read_yaml(config)
    change(raw)
    write_config(raw, Path(config))
    assert message in one_error_line(capsys, "train", config)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["../../escaped", "a/b", ".hidden"])
def test_a_comparison_model_name_outside_out_dir_is_refused(tmp_path, capsys, name):
    config = tiny_experiment(tmp_path)
    raw = read_yaml(config)
    comparison = {"models": {name: raw["model"]}, **{key: raw[key] for key in ("task", "train", "eval")}}
    path = write_config(comparison, tmp_path / "compare.yaml")
    assert "a model name becomes a directory name" in one_error_line(capsys, "compare", path)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["compare.yaml", "tiny.yaml"]


def comparison_of(tmp_path, **sections) -> str:
    """A comparison config of the tiny model, its sections replaced (None: left out)."""
    raw = read_yaml(tiny_experiment(tmp_path))
    comparison = {"models": {"tiny": raw["model"]}, **{key: raw[key] for key in ("task", "train", "eval")}}
    comparison.update(sections)
    return write_config({key: value for key, value in comparison.items() if value is not None}, tmp_path / "c.yaml")


@pytest.mark.parametrize(
    ("train", "message"),
    [(None, "missing key '<top>.train'"), ([1, 2], "key 'train' must be a mapping, got [1, 2]")],
)
def test_a_comparison_without_a_train_mapping_is_named(tmp_path, capsys, train, message):
    path = comparison_of(tmp_path, train=train)
    assert f"{path}: {message}" in one_error_line(capsys, "compare", path)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["train", "compare", "estimate"])
def test_a_binary_config_file_is_named(tmp_path, capsys, command):
    path = tmp_path / "model.pt"
    torch.save({"w": torch.randn(64)}, path)
    assert f"{path}: not a YAML text file (not UTF-8" in one_error_line(capsys, command, str(path))


def test_an_empty_out_dir_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tiny_experiment(tmp_path, out_dir="")
    assert f"{config}: key 'train.out_dir' must name a directory, got ''" in one_error_line(capsys, "train", config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml"]
