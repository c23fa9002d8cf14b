"""An adapted pretrained model (memory adapter + LoRA on a tiny Llama) trains under DDP and FSDP2 in real
processes on the CPU (gloo) as one process does, and its adapter-only fsdp shards are read back by one
process and resumed at another number of processes."""

from pathlib import Path

import pytest
import yaml

from src.cli import main
from src.config import load_experiment
from src.runs import CHECKPOINT, build_model, load_model, read_checkpoint
from src.training import train
from tests.test_distributed import (
    assert_same_metrics,
    assert_same_parameters,
    interrupted_and_resumed,
    metrics,
    run_processes,
)

pytest.importorskip("transformers")

ADAPTERS = [
    {"type": "memory", "layers": [0], "variant": "A", "n_heads": 4, "n_memory": 16},
    {"type": "lora", "targets": ["q_proj", "v_proj"], "rank": 4, "alpha": 8},
]
TRAIN = {"steps": 6, "batch_size": 4, "lr": 3.0e-3, "warmup_steps": 1, "weight_decay": 0.0, "grad_clip": 1.0,
         "seed": 0, "eval_every": 2}  # fmt: skip


def adapted_experiment(directory: Path, base: Path, **train_changes) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    raw = {
        "model": {"base": {"directory": str(base)}, "adapters": ADAPTERS},
        "task": {"type": "text", "path": str(Path(__file__).parents[1] / "data" / "tinyshakespeare.txt"), "length": 24},
        "train": {**TRAIN, "out_dir": str(directory / "run"), **train_changes},
        "eval": {"num_examples": 8, "batch_size": 8, "seed": 1},
    }
    path = directory / "adapted.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def adapter_state(path: str) -> dict:
    """The trained state of a run's checkpoint (file or fsdp shards), read into one unsharded model here."""
    experiment = load_experiment(path)
    model = build_model(experiment.model, experiment.file)
    checkpoint_path = Path(experiment.train.out_dir) / CHECKPOINT
    load_model(checkpoint_path, read_checkpoint(checkpoint_path), model)
    return model.state_dict()


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, tiny_bases) -> str:
    path = adapted_experiment(tmp_path_factory.mktemp("adapted_one"), tiny_bases["llama"])
    train(load_experiment(path), log=lambda line: None)
    return path


def two_processes(tmp_path_factory, tiny_bases, parallel: str) -> str:
    path = adapted_experiment(tmp_path_factory.mktemp(f"adapted_{parallel}"), tiny_bases["llama"], parallel=parallel)
    run_processes(path)
    return path


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, tiny_bases) -> str:
    return two_processes(tmp_path_factory, tiny_bases, "ddp")


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory, tiny_bases) -> str:
    return two_processes(tmp_path_factory, tiny_bases, "fsdp")


def run_dir(path: str) -> Path:
    return Path(load_experiment(path).train.out_dir)


@pytest.mark.parametrize("run", ["ddp_run", "fsdp_run"])
def test_an_adapted_model_trains_over_two_processes_as_in_one(request, one_process, run):
    path = request.getfixturevalue(run)
    state = adapter_state(path)
    assert all(key.startswith("memory_adapters.") or key.endswith((".A", ".B")) for key in state)  # adapters only
    assert_same_parameters(state, adapter_state(one_process), relative=1e-5)
    assert_same_metrics(metrics(run_dir(path)), metrics(run_dir(one_process)))
    if run == "fsdp_run":
        assert "shards" in read_checkpoint(run_dir(path) / CHECKPOINT)


@pytest.mark.slow
@pytest.mark.parametrize(("interrupt_world_size", "resume_world_size"), [(2, 1), (1, 2)])
def test_adapter_shards_resume_at_another_number_of_processes(
    fsdp_run, one_process, interrupt_world_size, resume_world_size
):
    """fsdp over n processes killed after step 4, resumed over m to step 6: the uninterrupted adapters, and
    every logged loss within float32 rounding (relative 1e-5) of the uninterrupted run's."""
    resumed = interrupted_and_resumed(run_dir(fsdp_run), fsdp_run, resume_world_size, interrupt_world_size)
    assert_same_parameters(adapter_state(f"{resumed}.yaml"), adapter_state(one_process), relative=1e-5)
    assert_same_metrics(metrics(resumed), metrics(run_dir(one_process)))


def test_evaluate_and_generate_read_the_adapter_shards_in_one_process(fsdp_run, one_process, capsys):
    """`evaluate` prints the fsdp run's last held-out metrics; `generate` continues a prompt greedily as the
    one-process run's checkpoint file does."""
    checkpoint = str(run_dir(fsdp_run) / CHECKPOINT)
    assert main(["evaluate", fsdp_run, checkpoint]) == 0
    last = metrics(run_dir(fsdp_run))[-1]
    expected = f"step {last['step']}: eval_loss {last['eval_loss']:.4f}  eval_accuracy {last['eval_accuracy']:.4f}"
    assert capsys.readouterr().out.strip() == expected
    texts = []
    for path in (checkpoint, str(run_dir(one_process) / CHECKPOINT)):
        assert main(["generate", path, "--prompt", "ROMEO:", "--max-new-tokens", "5"]) == 0
        texts.append(capsys.readouterr().out)
    assert texts[0].startswith("ROMEO:") and texts[0] == texts[1]
