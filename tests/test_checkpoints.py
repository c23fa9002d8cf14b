"""Atomic checkpoint files: a kill during a write keeps the previous file, and bad files are named."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from src.checkpoints import CheckpointError, load, save, temporary_path
from src.runs import CHECKPOINT, METRICS, read_checkpoint
from src.validation import read_yaml
from tests.conftest import ROOT

STRUCTURE = {"weights": dict, "step": int}


def test_save_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "state.pt"
    save({"weights": {"w": torch.ones(3)}, "step": 1}, path)
    save({"weights": {"w": torch.zeros(3)}, "step": 2}, path)
    loaded = load(path, STRUCTURE)
    assert loaded["step"] == 2 and torch.equal(loaded["weights"]["w"], torch.zeros(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]


def test_a_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "state.pt"
    save({"weights": {}, "step": 1}, path)
    before = path.read_bytes()
    with pytest.raises(Exception, match="pickle"):
        save({"weights": {}, "step": 2, "unpicklable": lambda: None}, path)  # fails part-way through
    assert path.read_bytes() == before
    assert not temporary_path(path).exists()


def _damaged(kind, path, tmp_path):
    good = tmp_path / "good.pt"
    save({"weights": {"w": torch.randn(1000)}, "step": 3}, good)
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "random":
        path.write_bytes(os.urandom(4096))
    elif kind == "text":
        path.write_text("model: not a checkpoint\n")
    elif kind == "a list":
        save([1, 2, 3], path)
    elif kind == "missing key":
        save({"weights": {}}, path)
    elif kind == "wrong type":
        save({"weights": {}, "step": "3"}, path)
    elif kind == "a directory":
        path.mkdir()


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing", "no checkpoint file there"),
        ("a directory", "no checkpoint file there"),
        ("empty", "not a readable checkpoint"),
        ("truncated", "not a readable checkpoint"),
        ("random", "not a readable checkpoint"),
        ("text", "not a readable checkpoint"),
        ("a list", "must hold a mapping, this one holds list"),
        ("missing key", "has no 'step' entry"),
        ("wrong type", "entry 'step' must be a int"),
    ],
)
def test_a_bad_checkpoint_is_one_clear_error_naming_its_path(tmp_path, kind, message):
    path = tmp_path / "checkpoint.pt"
    _damaged(kind, path, tmp_path)
    with pytest.raises(CheckpointError) as error:
        load(path, STRUCTURE)
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value)
    assert "\n" not in str(error.value)


def _large_model_config(tmp_path, steps: int) -> str:
    """A transformer of about 8M parameters: model and AdamW state make a ~100 MB checkpoint."""
    raw = read_yaml(ROOT / "configs" / "transformer_mqar.yaml")
    raw["model"].update(d_model=256)
    raw["model"]["blocks"][0].update(repeat=8)
    raw["model"]["blocks"][0]["mlp"]["d_hidden"] = 1024
    raw["train"].update(steps=steps, batch_size=2, eval_every=1, warmup_steps=1, out_dir=str(tmp_path / "run"))
    raw["eval"].update(num_examples=2, batch_size=2)
    path = tmp_path / "large.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _memory_models(*args: str, **kwargs) -> subprocess.Popen:
    """`memory-models ARGS` in a child process (one thread: it shares the cores with the polling test)."""
    code = "import sys; from src.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, env=env, **kwargs)


@pytest.mark.slow
def test_sigkill_while_writing_a_checkpoint_keeps_the_previous_one_and_resume_continues(tmp_path):
    steps = 6
    config = _large_model_config(tmp_path, steps)
    checkpoint, temporary = tmp_path / "run" / CHECKPOINT, temporary_path(tmp_path / "run" / CHECKPOINT)
    with (tmp_path / "stderr").open("w") as stderr:
        process = _memory_models("train", config, stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.monotonic() + 300
    try:
        # Every step ends with a checkpoint write; kill the first one that starts after a finished one.
        while process.poll() is None and time.monotonic() < deadline:
            try:
                writing = checkpoint.is_file() and temporary.stat().st_size > 0
            except FileNotFoundError:
                writing = False
            if writing:
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.0005)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL, (tmp_path / "stderr").read_text()
    assert temporary.exists(), "the kill landed after the write finished"

    survivor = read_checkpoint(checkpoint)  # the previous checkpoint, whole
    assert 1 <= survivor["step"] < steps

    resumed = _memory_models("train", config, "--resume", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert f"resuming from {checkpoint} at step {survivor['step']}" in out
    assert read_checkpoint(checkpoint)["step"] == steps
    logged = [json.loads(line)["step"] for line in (tmp_path / "run" / METRICS).read_text().splitlines()]
    assert logged == list(range(1, steps + 1))  # the line logged before the killed write is not doubled
    assert not temporary.exists()
