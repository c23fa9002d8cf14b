"""A training run meets a full disk or an unwritable metrics log: one line naming the file and what to
do, exit 2, and nothing already written lost (the last checkpoint resumes to the uninterrupted result).

The full disk is the process's file size limit (RLIMIT_FSIZE, set in the child before it runs; Python
ignores SIGXFSZ, so a write past it fails with EFBIG as on a full disk)."""

import os
import resource
import subprocess
import sys

import pytest

from src.cli import main
from tests.conftest import ROOT
from tests.test_cli import final_line, tiny_experiment
from tests.test_cli_bad_input import one_error_line


def train_limited(config: str, limit: int, *flags: str) -> subprocess.CompletedProcess:
    """`memory-models train CONFIG FLAGS` in a child whose files may not grow past `limit` bytes."""

    def limit_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    command = [sys.executable, "-c", "import sys; from src.cli import main; sys.exit(main(sys.argv[1:]))"]
    return subprocess.run(
        [*command, "train", config, *flags],
        cwd=ROOT, capture_output=True, text=True, timeout=300, preexec_fn=limit_files,
    )  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> str:
    """The final line of the 6-step run, uninterrupted."""
    tmp_path = tmp_path_factory.mktemp("uninterrupted")
    assert main(["train", tiny_experiment(tmp_path)]) == 0
    return (tmp_path / "run" / "metrics.jsonl").read_text()


@pytest.mark.slow  # three runs, one in a child process
def test_a_full_disk_at_a_checkpoint_is_one_line_and_the_last_checkpoint_resumes(tmp_path, uninterrupted, capsys):
    assert main(["train", tiny_experiment(tmp_path, steps=3)]) == 0
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    before = checkpoint.read_bytes()
    config = tiny_experiment(tmp_path)  # 6 steps: resumed from step 3, its next checkpoint at step 6
    limited = train_limited(config, checkpoint.stat().st_size // 2, "--resume")  # the metrics line fits, not it
    assert limited.returncode == 2, limited.stderr
    assert limited.stderr.count("\n") == 1 and "Traceback" not in limited.stderr
    assert f"{checkpoint}: could not be written" in limited.stderr and "MiB free on its disk" in limited.stderr
    assert checkpoint.read_bytes() == before and not (tmp_path / "run" / ".checkpoint.pt.tmp").exists()
    capsys.readouterr()
    assert main(["train", config, "--resume"]) == 0  # the step-6 metrics line logged before the failure is redone
    assert (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1].split('"tokens_per_s"')[0] == (
        uninterrupted.splitlines()[-1].split('"tokens_per_s"')[0]
    )
    assert "final:" in final_line(capsys.readouterr().out)


@pytest.mark.slow  # two runs, one in a child process
def test_a_full_disk_at_the_metrics_log_is_one_line(tmp_path):
    assert main(["train", tiny_experiment(tmp_path, steps=3)]) == 0
    metrics = tmp_path / "run" / "metrics.jsonl"
    logged = metrics.read_text()
    limited = train_limited(tiny_experiment(tmp_path), metrics.stat().st_size, "--resume")
    assert limited.returncode == 2 and limited.stderr.count("\n") == 1, limited.stderr
    assert f"{metrics}: step 6's metrics could not be written (File too large)" in limited.stderr
    assert metrics.read_text() == logged


def test_an_unwritable_metrics_log_is_named_before_training(tmp_path, capsys):
    assert main(["train", tiny_experiment(tmp_path, steps=3)]) == 0
    metrics = tmp_path / "run" / "metrics.jsonl"
    metrics.chmod(0o444)
    if os.access(metrics, os.W_OK):
        pytest.skip("running as root: permission bits do not stop writes (the full-disk cases above run)")
    error = one_error_line(capsys, "train", tiny_experiment(tmp_path), "--resume")
    assert f"{metrics}: the metrics log cannot be appended to (Permission denied)" in error
