"""Data-parallel training in real processes on the CPU (gloo): DDP and FSDP2 train as one process does.

Each run forks its processes with torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT on a free port of 127.0.0.1), so they join through the same
`init_process_group` as under torchrun; one test starts the real `torchrun`.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import yaml

from src.cli import main
from src.config import load_experiment
from src.distributed import Processes
from src.memory_use import MACHINE_FIELDS
from src.model import PaperModel
from src.runs import CHECKPOINT, METRICS, load_model, read_checkpoint
from src.tasks import IGNORE
from src.training import local_batch, masked_loss_and_accuracy, train
from src.validation import read_yaml
from tests.test_cli import Interrupted, final_line, tiny_experiment

WORLD_SIZE = 2
STEPS, EVAL_EVERY, STOP_AT = 6, 2, 4


def experiment_file(directory: Path, **train_changes) -> str:
    """The tiny transformer of tests.test_cli with two blocks (FSDP shards each), 6 steps at global batch 4.

    Blocks are recomputed in backward and the loss is chunked, as MambaGPT-130m trains.
    """
    directory.mkdir(parents=True, exist_ok=True)
    memory = {"checkpoint_blocks": True, "loss_chunk_tokens": 24}
    raw = read_yaml(tiny_experiment(directory, steps=STEPS, eval_every=EVAL_EVERY, lr=3e-3, **memory, **train_changes))
    raw["model"]["blocks"][0]["repeat"] = 2
    path = directory / "experiment.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _stop_after_step(step: int):
    def log(line: str) -> None:
        if line.startswith(f"step {step:>6}/"):
            raise Interrupted  # rank 0 dies right after this step's checkpoint; the launcher ends the others

    return log


def _process(rank: int, world_size: int, port: int, path: str, resume: bool, stop_at: int | None) -> None:
    """One process of a run, with the environment torchrun gives it."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    log = _stop_after_step(stop_at) if stop_at else (lambda line: None)
    train(load_experiment(path), log=log, resume=resume)


def run_processes(path: str, world_size: int = WORLD_SIZE, resume: bool = False, stop_at: int | None = None) -> None:
    """Train the experiment at `path` in `world_size` forked processes; a process's error is raised here."""
    mp.start_processes(
        _process, args=(world_size, _free_port(), path, resume, stop_at), nprocs=world_size, start_method="fork"
    )


def parameters(run_dir: Path, experiment_path: str) -> dict[str, torch.Tensor]:
    """The model state of a run's checkpoint (its file's or its fsdp shards'), read in this process."""
    model = PaperModel(load_experiment(experiment_path).model)
    load_model(run_dir / CHECKPOINT, read_checkpoint(run_dir / CHECKPOINT), model)
    return model.state_dict()


def metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / METRICS).read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in MACHINE_FIELDS} for line in lines]


def assert_same_parameters(first: dict, second: dict, relative: float) -> None:
    """Every tensor agrees within `relative` in norm: |a - b| <= relative * |b| (0 is bitwise)."""
    assert first.keys() == second.keys()
    for name in first:
        difference = (first[name] - second[name]).norm().item()
        assert difference <= relative * second[name].norm().item(), f"{name}: |difference| {difference}"


def assert_same_metrics(first: list[dict], second: list[dict]) -> None:
    """Step, tokens and learning rate equal; losses and accuracies to float32 rounding."""
    assert [line.keys() for line in first] == [line.keys() for line in second]
    for a, b in zip(first, second):
        assert (a["step"], a["tokens"], a["lr"]) == (b["step"], b["tokens"], b["lr"])
        assert a == pytest.approx(b, rel=1e-5)


def test_the_weighted_rows_of_each_process_average_to_the_whole_batch_loss():
    """Processes scoring different numbers of positions: the average of their weighted losses is the batch's."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, 7, generator=generator)
    targets = torch.randint(7, (6, 5), generator=generator)
    targets[:2, 1:] = IGNORE  # the first process's rows score 2 positions, the others' 10 each
    whole, whole_accuracy = masked_loss_and_accuracy(logits, targets)
    losses, accuracies, weights = [], [], []
    for rank in range(3):
        rows, row_targets, weight = local_batch(logits, targets, Processes("ddp", rank, 3, torch.device("cpu")))
        loss, accuracy = masked_loss_and_accuracy(rows, row_targets)
        losses.append(loss)
        accuracies.append(accuracy)
        weights.append(weight)
    assert weights == pytest.approx([3 * 2 / 22, 3 * 10 / 22, 3 * 10 / 22])
    weights = torch.tensor(weights)
    assert (torch.stack(losses) * weights).mean().item() == pytest.approx(whole.item(), rel=1e-6)
    assert (torch.stack(accuracies) * weights).mean().item() == pytest.approx(whole_accuracy.item(), rel=1e-6)
    assert torch.stack(losses).mean().item() != pytest.approx(whole.item(), rel=1e-3)  # unweighted, it would differ


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> tuple[Path, str]:
    """The reference: the same experiment trained in this process (train.parallel none)."""
    path = experiment_file(tmp_path_factory.mktemp("one_process"))
    train(load_experiment(path), log=lambda line: None)
    return Path(load_experiment(path).train.out_dir), path


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> tuple[Path, str]:
    path = experiment_file(tmp_path_factory.mktemp("ddp"), parallel="ddp")
    run_processes(path)
    return Path(load_experiment(path).train.out_dir), path


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory) -> tuple[Path, str]:
    path = experiment_file(tmp_path_factory.mktemp("fsdp"), parallel="fsdp")
    run_processes(path)
    return Path(load_experiment(path).train.out_dir), path


def test_ddp_over_two_processes_trains_as_one_process_does(one_process, ddp_run):
    assert_same_parameters(parameters(*ddp_run), parameters(*one_process), relative=1e-6)
    assert_same_metrics(metrics(ddp_run[0]), metrics(one_process[0]))
    assert metrics(one_process[0])[-1]["loss"] < metrics(one_process[0])[0]["loss"]  # it did learn
    assert set(read_checkpoint(ddp_run[0] / CHECKPOINT)) >= {"model", "optimizer"}  # one file, from rank 0


@pytest.mark.slow
def test_fsdp_over_two_processes_trains_as_one_process_does(one_process, fsdp_run):
    assert_same_parameters(parameters(*fsdp_run), parameters(*one_process), relative=1e-6)
    assert_same_metrics(metrics(fsdp_run[0]), metrics(one_process[0]))
    checkpoint = read_checkpoint(fsdp_run[0] / CHECKPOINT)
    assert "model" not in checkpoint and checkpoint["shards"] == f"checkpoint-step{STEPS}"
    # the shards of earlier checkpoints are gone; each process wrote its own file of the last one
    assert sorted(p.name for p in fsdp_run[0].iterdir() if p.is_dir()) == [checkpoint["shards"]]
    assert len(list((fsdp_run[0] / checkpoint["shards"]).glob("*.distcp"))) == WORLD_SIZE


def interrupted_and_resumed(
    run_dir: Path, path: str, resume_world_size: int, interrupt_world_size: int = WORLD_SIZE
) -> Path:
    """A copy of the experiment killed after step STOP_AT over `interrupt_world_size` processes, then resumed."""
    copy_dir = run_dir.parent / f"{run_dir.name}_resumed_{interrupt_world_size}to{resume_world_size}"
    raw = read_yaml(path)
    raw["train"]["out_dir"] = str(copy_dir)
    copy = copy_dir.with_suffix(".yaml")
    copy.write_text(yaml.safe_dump(raw))
    with pytest.raises(mp.ProcessRaisedException):  # rank 0's Interrupted, or the others losing it
        run_processes(str(copy), world_size=interrupt_world_size, stop_at=STOP_AT)
    assert read_checkpoint(copy_dir / CHECKPOINT)["step"] == STOP_AT
    run_processes(str(copy), world_size=resume_world_size, resume=True)
    return copy_dir


def test_a_resumed_ddp_run_repeats_the_uninterrupted_one(ddp_run):
    resumed = interrupted_and_resumed(*ddp_run, resume_world_size=WORLD_SIZE)
    assert_same_parameters(parameters(resumed, ddp_run[1]), parameters(*ddp_run), relative=0)
    assert metrics(resumed) == metrics(ddp_run[0])


@pytest.mark.slow
@pytest.mark.parametrize(("interrupt_world_size", "resume_world_size"), [(2, 1), (1, 2)])
def test_an_fsdp_run_resumes_at_another_number_of_processes(fsdp_run, interrupt_world_size, resume_world_size):
    """n processes until step 4, then m: torch.distributed.checkpoint reshards model and AdamW state, and
    every logged loss stays within float32 rounding (relative 1e-5) of the uninterrupted run's."""
    resumed = interrupted_and_resumed(*fsdp_run, resume_world_size, interrupt_world_size)
    assert_same_parameters(parameters(resumed, fsdp_run[1]), parameters(*fsdp_run), relative=1e-6)
    assert_same_metrics(metrics(resumed), metrics(fsdp_run[0]))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"parallel": "ddp", "batch_size": 5},
            "key 'train.batch_size' (5) must be divisible by the number of processes (2)",
        ),
        ({"parallel": "none"}, "key 'train.parallel' is 'none', but torchrun started 2 processes"),
    ],
)
def test_launches_that_cannot_split_the_batch_are_refused_naming_the_key(tmp_path, changes, message):
    path = experiment_file(tmp_path, **changes)
    with pytest.raises(mp.ProcessRaisedException, match=re.escape(f"{path}: {message}")):
        run_processes(path)
    assert not Path(load_experiment(path).train.out_dir).exists()


def test_a_ddp_checkpoint_is_not_resumed_under_fsdp(one_process, tmp_path):
    """none and ddp share one file format and resume each other; fsdp's shards are another."""
    run_dir, path = one_process
    raw = read_yaml(path)
    raw["train"].update(parallel="fsdp", out_dir=str(tmp_path / "run"))
    shutil.copytree(run_dir, tmp_path / "run")
    fsdp_path = tmp_path / "fsdp.yaml"
    fsdp_path.write_text(yaml.safe_dump(raw))
    expected = "was written with train.parallel = 'none', but .* has 'fsdp'"
    with pytest.raises(mp.ProcessRaisedException, match=expected):
        run_processes(str(fsdp_path), world_size=1, resume=True)


@pytest.mark.slow
def test_torchrun_runs_the_command_and_evaluate_and_generate_read_the_fsdp_shards(one_process, tmp_path, capsys):
    """The real launcher: rank 0 alone prints; the result equals one process's; `evaluate` and `generate`
    read the shards in one process (greedy tokens equal the one-process checkpoint's)."""
    path = experiment_file(tmp_path, parallel="fsdp")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(WORLD_SIZE), "--no-python"]
    command += [str(Path(sys.executable).parent / "memory-models"), "train", path]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("final:") == 1 and done.stdout.count("model:\n") == 1
    main(["train", one_process[1], "--resume"])  # the finished reference run: prints its final line
    assert final_line(done.stdout) == final_line(capsys.readouterr().out)
    assert main(["evaluate", path, str(tmp_path / "run" / CHECKPOINT)]) == 0
    assert capsys.readouterr().out.strip() == f"step {STEPS}: {final_line(done.stdout).removeprefix('final: ')}"
    generated = []
    for checkpoint in (tmp_path / "run" / CHECKPOINT, one_process[0] / CHECKPOINT):
        assert main(["generate", str(checkpoint), "--prompt-ids", "3 40 5", "--max-new-tokens", "4"]) == 0
        generated.append(capsys.readouterr().out)
    assert generated[0].split()[:3] == ["3", "40", "5"] and generated[0] == generated[1]
