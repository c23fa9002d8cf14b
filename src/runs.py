"""The run format: building a model from its config section, and a run's checkpoint written and read back.

One module for what every command reads and writes (`train`, `evaluate`, `compare`, `generate`,
`serve`, `estimate`, `export` and the distributed loop):

- `build_model`: the `LanguageModel` of a resolved model section, a `PaperModel` or, for a
  section with a `base`, an `AdaptedModel`;
- `save_checkpoint` / `read_checkpoint`: `train.out_dir/checkpoint.pt`, written atomically
  (`src.checkpoints`) with the step, tokens, metrics and the resolved config. Its model state is the
  model's `state_dict`: the whole PaperModel, or an adapted model's adapters only (the resolved
  config pins the frozen base by `model.base.files_sha256`); under `train.parallel: fsdp` the
  state lies in DCP shards beside the file (`src.distributed`), which `load_model` reads into one
  process at any number of processes;
- `load_trained_model`: the one loader of a trained model (checkpoint -> config -> model -> state).
"""

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, get_args

import torch
import yaml

from src import checkpoints, distributed
from src.adapted.config import is_adapted_section
from src.adapted.model import AdaptedModel
from src.checkpoints import CheckpointError
from src.config import ExperimentConfig, resolve_model_section
from src.distributed import Processes
from src.early_stopping import Patience
from src.language_model import LanguageModel
from src.model import PaperModel
from src.schema import Device

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"  # train.early_stopping: the checkpoint of the best held-out loss, beside CHECKPOINT
METRICS = "metrics.jsonl"
SECTIONS = ("model", "task", "train", "eval")
RUN_CHECKPOINT = {"step": int, "tokens": int, "metrics": dict, "config": str}
FULL_STATE = {"model": dict, "optimizer": dict}  # train.parallel none or ddp: the state in the file
SHARDED_STATE = {"shards": str}  # fsdp: the DCP directory beside the file (src.distributed)
ABSENT = "<absent>"  # a key one of two compared configs does not have


class RunError(RuntimeError):
    """A run cannot start or go on (its directory, its device, a diverging loss); the message says where."""


def build_model(
    section: dict, file: str = "<config>", device: torch.device | str | None = "cpu", base_weights: bool = True
) -> LanguageModel:
    """The model of a resolved model section on `device`: a `PaperModel`, or an `AdaptedModel` for one with a
    `base` (built on the device, where its weights are quantised; from its config alone without
    `base_weights`). A PaperModel is initialised on the CPU and moved, so a seed gives the same weights
    on every device. With `device` None nothing is moved: the model is built on the default device
    (a `with torch.device(...)` block, as `src.estimate` builds under fake tensors)."""
    if is_adapted_section(section):
        return AdaptedModel(section, file, device, base_weights)
    model = PaperModel(section, file)
    return model if device is None else model.to(device)


DEVICES = get_args(Device)


def select_device(name: str, where: str) -> torch.device:
    """The torch device `name` (one of `DEVICES`); `where` names its source (config key or flag) in errors."""
    if name not in DEVICES:
        raise RunError(f"{where} must be one of {list(DEVICES)}, got {name!r}")
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if name == "auto":
        name = next(kind for kind in ("cuda", "mps", "cpu") if available[kind])
    if not available[name]:
        raise RunError(f"{where} is {name!r} but no {name.upper()} device is available")
    return torch.device(name)


def differing_keys(first: Any, second: Any, key: str) -> list[tuple[str, Any, Any]]:
    """(dotted key, first value, second value) wherever two parsed configs differ; `key` names the root."""
    if isinstance(first, dict) and isinstance(second, dict):
        names = [*first, *(name for name in second if name not in first)]
        return [
            difference
            for name in names
            for difference in differing_keys(first.get(name, ABSENT), second.get(name, ABSENT), f"{key}.{name}")
        ]
    if isinstance(first, list) and isinstance(second, list) and len(first) == len(second):
        return [
            difference
            for i, pair in enumerate(zip(first, second))
            for difference in differing_keys(*pair, f"{key}[{i}]")
        ]
    return [] if first == second else [(key, first, second)]


def check_config_matches(
    path: Path, stored: dict, experiment: ExperimentConfig, sections: tuple[str, ...], allowed: tuple[str, ...] = ()
) -> None:
    """Refuse a checkpoint whose stored config differs from `experiment` in `sections` (except `allowed` keys)."""
    current = yaml.safe_load(experiment.to_yaml())
    for section in sections:
        for key, was, now in differing_keys(stored[section], current[section], section):
            if key not in allowed:
                raise CheckpointError(f"{path}: was written with {key} = {was!r}, but {experiment.file} has {now!r}")


def read_checkpoint(path: str | Path) -> dict:
    """A checkpoint written by `train`, on the CPU, with its stored config parsed into a dict.

    It holds the model and optimizer state, or (train.parallel fsdp) the name of their shards' directory.
    """
    checkpoint = checkpoints.load(path, {})
    state = SHARDED_STATE if "shards" in checkpoint else FULL_STATE
    checkpoints.check_entries(checkpoint, {**state, **RUN_CHECKPOINT}, path)
    try:
        config = yaml.safe_load(checkpoint["config"])
    except yaml.YAMLError as error:
        raise CheckpointError(f"{path}: its stored config is not valid YAML") from error
    if not isinstance(config, dict) or not all(isinstance(config.get(name), dict) for name in SECTIONS):
        raise CheckpointError(f"{path}: its stored config must have the sections {list(SECTIONS)}")
    return {**checkpoint, "config": config}


def load_training_state(path: Path, checkpoint: dict, model: LanguageModel, optimizer: torch.optim.Optimizer) -> None:
    """Put a checkpoint's model and optimizer state (its file's, or its fsdp shards') into model and optimizer."""
    if "shards" in checkpoint:
        distributed.load_shards(model, optimizer, checkpoint, path)
    else:
        checkpoints.load_state(model, checkpoint["model"], path, "model")
        checkpoints.load_state(optimizer, checkpoint["optimizer"], path, "optimizer")


def load_model(path: str | Path, checkpoint: dict, model: LanguageModel) -> None:
    """Put the model state of a checkpoint read by `read_checkpoint` into an unsharded model (one process)."""
    if "shards" in checkpoint:
        distributed.load_sharded_model(model, checkpoint, Path(path))
    else:
        checkpoints.load_state(model, checkpoint["model"], path, "model")


def save_checkpoint(
    path: Path,
    model: LanguageModel,
    optimizer: torch.optim.Optimizer,
    metrics: dict,
    experiment: ExperimentConfig,
    processes: Processes,
    patience: Patience | None = None,
) -> None:
    """Write, atomically, model and optimizer state, the step and tokens reached, their metrics and the config.

    One file from rank 0; under fsdp every process first writes its shards, then rank 0 the file naming them.
    Under early stopping (`patience`, saved with it) the checkpoint of a new best held-out loss is
    written as `best.pt` beside it too, first (a kill between the two leaves a checkpoint.pt whose
    step is then replayed); under fsdp the best step's shards are kept until a better one comes.
    """
    step, config = metrics["step"], experiment.to_yaml()
    metadata = {"step": step, "tokens": metrics["tokens"], "metrics": metrics, "config": config}
    if patience is not None:
        metadata["early_stopping"] = asdict(patience)
    paths = [path.with_name(BEST), path] if patience is not None and patience.best_step == step else [path]
    if processes.parallel == "fsdp":
        shards = distributed.save_shards(path.parent, step, model, optimizer, processes.is_main)
        if processes.is_main:
            for target in paths:
                checkpoints.save({"shards": shards, **metadata}, target)
            best = {distributed.shards_name(patience.best_step)} if patience is not None else set()
            distributed.remove_other_shards(path.parent, keep={shards, *best})
    elif processes.is_main:
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), **metadata}
        for target in paths:
            checkpoints.save(state, target)


@dataclass(frozen=True)
class TrainedModel:
    """A model read back from a run's checkpoint, and the checkpoint (its step, metrics and parsed config)."""

    model: LanguageModel
    checkpoint: dict


def load_trained_model(
    path: str | Path, device: torch.device, section: dict | None = None, checkpoint: dict | None = None
) -> TrainedModel:
    """The model of the checkpoint at `path` on `device`, in eval mode, with the checkpoint read.

    The model is built from the checkpoint's own config, or from `section` (a resolved model section
    that the caller has checked against it); `checkpoint`, when the caller has read it already
    (`read_checkpoint`), is not read again.
    """
    if checkpoint is None:
        checkpoint = read_checkpoint(path)
    if section is None:
        section = resolve_model_section(checkpoint["config"]["model"], str(path))
    model = build_model(section, str(path), device)
    load_model(path, checkpoint, model)
    return TrainedModel(model.eval(), checkpoint)
