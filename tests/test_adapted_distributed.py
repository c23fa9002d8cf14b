"""An adapted pretrained model (memory adapter + LoRA on a tiny Llama) trains under DDP and FSDP2 in real
processes on the CPU (gloo) as one process does, and its adapter-only fsdp shards are read back by one
process and resumed at another number of processes."""

from pathlib import Path

import pytest
import yaml

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


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_an_adapted_model_trains_over_two_processes_as_in_one(tmp_path, tiny_bases, one_process, parallel):
    path = adapted_experiment(tmp_path, tiny_bases["llama"], parallel=parallel)
    run_processes(path)
    state = adapter_state(path)
    assert all(key.startswith("memory_adapters.") or key.endswith((".A", ".B")) for key in state)  # adapters only
    assert_same_parameters(state, adapter_state(one_process), relative=1e-5)
    run_dir, reference_dir = Path(load_experiment(path).train.out_dir), Path(load_experiment(one_process).train.out_dir)
    assert_same_metrics(metrics(run_dir), metrics(reference_dir))
    if parallel == "fsdp":
        assert "shards" in read_checkpoint(run_dir / CHECKPOINT)


@pytest.mark.slow
def test_adapter_shards_resume_at_another_number_of_processes(tmp_path, tiny_bases, one_process):
    """fsdp over two processes killed after step 4, resumed in one process to step 6: the uninterrupted adapters."""
    path = adapted_experiment(tmp_path, tiny_bases["llama"], parallel="fsdp")
    run_dir = Path(load_experiment(path).train.out_dir)
    interrupted_and_resumed(run_dir, path, resume_world_size=1)
    resumed_config = str(run_dir.parent / f"{run_dir.name}_resumed.yaml")
    assert_same_parameters(adapter_state(resumed_config), adapter_state(one_process), relative=1e-5)
