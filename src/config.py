"""YAML experiment configs, validated against the constructors they build.

A config has four sections: `model` (vocabulary, width and the explicit list of blocks), `task`,
`train` and `eval`. Every mapping is checked against the signature of the callable it feeds (a
mixer or MLP constructor, a task class, the train/eval dataclasses): an unknown key, a missing
key, a wrong type, a non-finite number or an out-of-range value raises `ConfigError` naming the
key and the file. Defaults exist only where the callable declares them (hyper-parameters the paper
fixes), and `ExperimentConfig.to_yaml` prints them back so the resolved experiment is visible.
The rules shared by every section are `src.validation`'s; a model section with a `base` is an adapted
pretrained model, resolved by `src.adapted.config`. `src.runs` builds from what this module resolved.
"""

import copy
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal, cast

import torch
import yaml
from torch import nn

from src.adapted.config import (
    base_vocab_size,
    count_adapted_parameters,
    is_adapted_section,
    resolve_adapted_section,
)
from src.early_stopping import EarlyStopping
from src.layers import MIXERS
from src.layers.block import Block
from src.layers.feedforward import SwiGLU
from src.layers.mixer import Mixer
from src.schema import (
    BelowOneFloat,
    Device,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Seed,
    UnitFloat,
)
from src.tasks import TASKS, build_task
from src.validation import ConfigError, arguments_for, build, check_keys, check_value, read_yaml

MLPS: dict[str, type[nn.Module]] = {"swiglu": SwiGLU}
NO_MLP = "none"
MAX_BLOCKS = 1024  # blocks after `repeat`; far above any published model of this kind
MAX_PARAMETERS = 2_000_000_000  # 8 GB of float32 weights; counted before anything is built


@dataclass(frozen=True)
class TrainConfig:
    """The `train` section: optimiser, schedule, budget and bookkeeping."""

    steps: PositiveInt
    batch_size: PositiveInt
    lr: PositiveFloat
    warmup_steps: NonNegativeInt
    weight_decay: NonNegativeFloat
    grad_clip: PositiveFloat
    seed: Seed
    out_dir: str
    eval_every: PositiveInt
    min_lr_ratio: UnitFloat = 0.1
    betas: list[BelowOneFloat] | None = None
    device: Device = "cpu"
    parallel: Literal["none", "ddp", "fsdp"] = "none"  # data-parallel over torchrun's processes (src.distributed)
    checkpoint_blocks: bool = False
    loss_chunk_tokens: PositiveInt | None = None
    precision: Literal["float32", "bfloat16"] = "float32"
    early_stopping: EarlyStopping | None = None  # src.early_stopping


@dataclass(frozen=True)
class EvalConfig:
    """The `eval` section: how many held-out examples, and their seed (disjoint from training).

    `settings` lists extra evaluation settings as task overrides (e.g. `{length: 256}` to test
    length extrapolation); each is evaluated besides the training task.
    """

    num_examples: PositiveInt
    batch_size: PositiveInt
    seed: Seed
    settings: list[dict] | None = None


@dataclass(frozen=True)
class ExperimentConfig:
    """A validated experiment: resolved model/task mappings and the train/eval sections."""

    file: str
    model: dict
    task: dict
    train: TrainConfig
    eval: EvalConfig

    def to_yaml(self) -> str:
        """The resolved config, defaults included, as YAML."""
        sections = {"model": self.model, "task": self.task, "train": asdict(self.train), "eval": asdict(self.eval)}
        return yaml.safe_dump(sections, sort_keys=False)


def _resolve_component(raw: object, registry: Mapping[str, type], where: str, file: str) -> dict:
    if not isinstance(raw, dict) or "type" not in raw:
        raise ConfigError(f"{file}: key '{where}' must be a mapping with a 'type' key, one of {sorted(registry)}")
    kind = raw["type"]
    if not isinstance(kind, str) or kind not in registry:
        raise ConfigError(f"{file}: key '{where}.type' must be one of {sorted(registry)}, got {kind!r}")
    rest = {key: value for key, value in raw.items() if key != "type"}
    return {"type": kind, **arguments_for(registry[kind], rest, where, file, provided=("d_model",))}


def _build_component(spec: dict, registry: Mapping[str, type], where: str, file: str, d_model: int) -> nn.Module:
    kwargs = {key: value for key, value in spec.items() if key != "type"}
    return build(registry[spec["type"]], kwargs, where, file, d_model=d_model)


def build_block(spec: dict, where: str, file: str, d_model: int, norm_eps: float) -> Block:
    """One block of a resolved model section: its mixer (from `MIXERS`) and MLP (from `MLPS`)."""
    mixer = cast(Mixer, _build_component(spec["mixer"], MIXERS, f"{where}.mixer", file, d_model))
    mlp = None if spec["mlp"] == NO_MLP else _build_component(spec["mlp"], MLPS, f"{where}.mlp", file, d_model)
    return Block(d_model, mixer, mlp, norm_eps)


def count_parameters(model: dict, file: str = "<config>") -> int:
    """Parameters of the model a resolved model section describes, without building it.

    One block of each spec is built on the meta device (no memory) and counted `repeat` times;
    the embedding, the head (unless tied) and the final norm are added. Equal to
    `PaperModel(model).num_parameters()` (tested for every config).
    """
    d_model, vocab_size = model["d_model"], model["vocab_size"]
    total = vocab_size * d_model * (1 if model["tie_embeddings"] else 2) + d_model
    with torch.device("meta"):
        for i, spec in enumerate(model["blocks"]):
            where = f"model.blocks[{i}]"
            try:
                block = build_block(spec, where, file, d_model, model["norm_eps"])
            except (RuntimeError, OverflowError) as error:  # sizes too large to describe a tensor
                raise ConfigError(f"{file}: key '{where}' cannot be built: {str(error).splitlines()[0]}") from error
            total += spec["repeat"] * sum(p.numel() for p in block.parameters())
    return total


def parameter_counts(model: dict, file: str = "<config>") -> tuple[int, int]:
    """(all, trained) parameters of a resolved model section, without building it (see `count_parameters`
    and, for an adapted pretrained model, `src.adapted.config.count_adapted_parameters`)."""
    if is_adapted_section(model):
        return count_adapted_parameters(model)
    total = count_parameters(model, file)
    return total, total


def resolve_model_section(raw: Any, file: str, section: str = "model") -> dict:
    """Validate a model section (key `section` of the file) and return it with every default filled in.

    The model's size is bounded before anything is built: at most `MAX_BLOCKS` blocks and
    `MAX_PARAMETERS` parameters (the error gives the count). A section with a `base` key is an
    adapted pretrained model, validated by `src.adapted.config`.
    """
    if is_adapted_section(raw):
        return resolve_adapted_section(raw, file, section)
    check_keys(
        raw,
        {"vocab_size": True, "d_model": True, "tie_embeddings": True, "blocks": True, "norm_eps": False},
        section,
        file,
    )
    blocks = raw["blocks"]
    if not isinstance(blocks, list) or not blocks:
        raise ConfigError(f"{file}: key '{section}.blocks' must be a non-empty list of blocks")
    resolved_blocks, n_blocks = [], 0
    for i, block in enumerate(blocks):
        where = f"{section}.blocks[{i}]"
        check_keys(block, {"mixer": True, "mlp": True, "repeat": False}, where, file)
        mlp = block["mlp"]
        repeat = check_value(block.get("repeat", 1), PositiveInt, f"{where}.repeat", file)
        n_blocks += repeat
        if n_blocks > MAX_BLOCKS:
            raise ConfigError(f"{file}: key '{where}.repeat' makes {n_blocks} blocks, more than {MAX_BLOCKS}")
        resolved_blocks.append(
            {
                "mixer": _resolve_component(block["mixer"], MIXERS, f"{where}.mixer", file),
                "mlp": NO_MLP if mlp == NO_MLP else _resolve_component(mlp, MLPS, f"{where}.mlp", file),
                "repeat": repeat,
            }
        )
    model = {
        "vocab_size": check_value(raw["vocab_size"], PositiveInt, f"{section}.vocab_size", file),
        "d_model": check_value(raw["d_model"], PositiveInt, f"{section}.d_model", file),
        "tie_embeddings": check_value(raw["tie_embeddings"], bool, f"{section}.tie_embeddings", file),
        "norm_eps": check_value(raw.get("norm_eps", 1e-5), PositiveFloat, f"{section}.norm_eps", file),
        "blocks": resolved_blocks,
    }
    if (parameters := count_parameters(model, file)) > MAX_PARAMETERS:
        raise ConfigError(
            f"{file}: key '{section}' describes a model of {parameters:,} parameters, more than {MAX_PARAMETERS:,}"
        )
    return model


MODEL_KEY = re.compile(r"model((?:\.[A-Za-z_]\w*|\[\d+\])+)")
_KEY_PART = re.compile(r"\.([A-Za-z_]\w*)|\[(\d+)\]")


def _parameter_shapes(model: dict, file: str) -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape of the PaperModel a resolved section describes (built on the meta device)."""
    shapes = {"embedding": (model["vocab_size"], model["d_model"]), "head tied": (int(model["tie_embeddings"]),)}
    with torch.device("meta"):
        for i, spec in enumerate(model["blocks"]):
            block = build_block(spec, f"model.blocks[{i}]", file, model["d_model"], model["norm_eps"])
            shapes |= {f"model.blocks[{i}] {name}": tuple(p.shape) for name, p in block.named_parameters()}
            shapes[f"model.blocks[{i}] repeat"] = (spec["repeat"],)
    return shapes


def _set_key(section: dict, parts: list[tuple[str, str]], value: Any) -> bool:
    """Set the entry that `parts` ((name, "") or ("", index) pairs) name in a nested section; False if none."""
    target: Any = section
    for i, (name, index) in enumerate(parts):
        key: str | int = name or int(index)
        if not (isinstance(target, dict) if name else isinstance(target, list) and int(index) < len(target)):
            return False
        if i == len(parts) - 1:
            target[key] = value
            return True
        if name and name not in target:
            return False
        target = target[key]
    return False


def override_model_section(model: dict, overrides: dict[str, Any], file: str, where: str) -> dict:
    """A resolved model section with inference-time overrides applied, e.g. `{"model.blocks[2].mixer.top_k": 8}`.

    The result is validated as any model section, and refused when an override changes the shape of
    a parameter: only settings that a trained model's weights still fit can change (routing top-k and
    strategy, a memory bank's `quantize`, segment and chunk sizes, ...). Errors name `where` (the
    flag or eval.settings entry) and the key.
    """
    if is_adapted_section(model):
        raise ConfigError(f"{file}: {where}: model overrides apply to block-list models, not to an adapted base")
    changed = copy.deepcopy(model)
    for key, value in overrides.items():
        if not isinstance(key, str) or not (match := MODEL_KEY.fullmatch(key)):
            raise ConfigError(f"{file}: {where}: {key!r} is not a model key such as model.blocks[0].mixer.top_k")
        if not _set_key(changed, _KEY_PART.findall(match.group(1)), value):
            raise ConfigError(f"{file}: {where}: key '{key}' names nothing in the model section")
    try:
        resolved = resolve_model_section(changed, file)
    except ConfigError as error:
        raise ConfigError(f"{file}: {where}: {str(error).removeprefix(f'{file}: ')}") from error
    before, after = _parameter_shapes(model, file), _parameter_shapes(resolved, file)
    if before != after:
        name = next(n for n in [*before, *after] if before.get(n) != after.get(n))
        raise ConfigError(
            f"{file}: {where}: {', '.join(overrides)} changes the model's parameters ({name}: {before.get(name)} -> "
            f"{after.get(name)}); only settings the trained weights still fit can change"
        )
    return resolved


def model_overrides(setting: dict) -> tuple[dict, dict]:
    """An `eval.settings` entry split into its model overrides (keys `model....`) and its task overrides."""
    model = {key: value for key, value in setting.items() if isinstance(key, str) and key.startswith("model")}
    return model, {key: value for key, value in setting.items() if key not in model}


def resolve_task_section(raw: object, file: str) -> dict:
    """Validate the `task` section against its task class; return it with defaults filled in."""
    if not isinstance(raw, dict) or not isinstance(raw.get("type"), str) or raw["type"] not in TASKS:
        raise ConfigError(f"{file}: key 'task.type' must be one of {sorted(TASKS)}, got {raw!r}")
    kind = raw["type"]
    rest = {key: value for key, value in raw.items() if key != "type"}
    resolved = {"type": kind, **arguments_for(TASKS[kind], rest, "task", file)}
    build(TASKS[kind], {key: value for key, value in resolved.items() if key != "type"}, "task", file)  # cross-field
    return resolved


def model_vocab_size(model: dict) -> int:
    """The vocabulary of a resolved model section (an adapted model's is its base's)."""
    if is_adapted_section(model):
        return base_vocab_size(model)
    return model["vocab_size"]


TOKENIZED_TASKS = ("text", "fact_recall")  # tasks with a `tokenizer` key


def _task_for_model(raw_task: Any, model: dict) -> Any:
    """An adapted model's text tasks tokenize with its base's tokenizer unless the task names one."""
    if is_adapted_section(model) and isinstance(raw_task, dict) and raw_task.get("type") in TOKENIZED_TASKS:
        return {"tokenizer": model["base"]["directory"], **raw_task}
    return raw_task


def _resolve_train_section(raw: Any, file: str) -> TrainConfig:
    """Validate the `train` section, with the constraints between its keys."""
    train = build(TrainConfig, arguments_for(TrainConfig, raw, "train", file), "train", file)
    if train.betas is not None and len(train.betas) != 2:
        raise ConfigError(f"{file}: key 'train.betas' must have two entries, got {train.betas}")
    if not train.out_dir.strip():
        raise ConfigError(f"{file}: key 'train.out_dir' must name a directory, got {train.out_dir!r}")
    if train.warmup_steps > train.steps:
        raise ConfigError(
            f"{file}: key 'train.warmup_steps' ({train.warmup_steps}) must be <= train.steps ({train.steps}): "
            "the learning rate would never reach train.lr"
        )
    return train


def _experiment(raw: dict, raw_model: Any, file: str, model_key: str = "model") -> ExperimentConfig:
    """Validate the model, task, train and eval sections of one experiment."""
    model = resolve_model_section(raw_model, file, model_key)
    vocab_size, vocab_key = model_vocab_size(model), f"{model_key}.{'base' if 'base' in model else 'vocab_size'}"
    raw_task = _task_for_model(raw["task"], model)
    task = resolve_task_section(raw_task, file)
    task_vocab = build_task(task).vocab_size
    if task_vocab > vocab_size:
        raise ConfigError(f"{file}: key '{vocab_key}' ({vocab_size}) must be >= the task's vocabulary ({task_vocab})")
    train = _resolve_train_section(raw["train"], file)
    evaluation = EvalConfig(**arguments_for(EvalConfig, raw["eval"], "eval", file))
    for i, setting in enumerate(evaluation.settings or []):
        model_changes, task_changes = model_overrides(setting)
        where = f"key 'eval.settings[{i}]'"
        if model_changes and train.parallel == "fsdp":
            raise ConfigError(f"{file}: {where}: model overrides need whole weights, not fsdp's shards")
        if model_changes:
            override_model_section(model, model_changes, file, where)
        try:
            task_setting = resolve_task_section({**raw_task, **task_changes}, file)
        except ConfigError as error:
            raise ConfigError(f"{file}: key 'eval.settings[{i}]' does not give a valid task: {error}") from error
        if build_task(task_setting).vocab_size > vocab_size:
            raise ConfigError(f"{file}: key 'eval.settings[{i}]' needs a vocabulary larger than the model's")
    return ExperimentConfig(file, model, task, train, evaluation)


def load_experiment(path: str | Path) -> ExperimentConfig:
    """Read and validate a whole experiment config (model, task, train, eval)."""
    file = str(path)
    raw = read_yaml(path)
    check_keys(raw, {"model": True, "task": True, "train": True, "eval": True}, "<top>", file)
    return _experiment(raw, raw["model"], file)


MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def load_comparison(path: str | Path) -> dict[str, ExperimentConfig]:
    """Read a comparison config: `models` (name -> model section) sharing one task, train and eval.

    Each model trains in `train.out_dir/<name>`; the result maps names to their experiments.
    """
    file = str(path)
    raw = read_yaml(path)
    check_keys(raw, {"models": True, "task": True, "train": True, "eval": True}, "<top>", file)
    if not isinstance(raw["models"], dict) or not raw["models"]:
        raise ConfigError(f"{file}: key 'models' must map model names to model sections")
    experiments = {}
    for name, raw_model in raw["models"].items():
        if not isinstance(name, str) or not MODEL_NAME.fullmatch(name):
            raise ConfigError(
                f"{file}: key 'models.{name}': a model name becomes a directory name, so it must be letters, "
                "digits, '_', '-' or '.' and start with a letter or digit"
            )
        if not isinstance(raw_model, dict):
            raise ConfigError(f"{file}: key 'models.{name}' must be a model section")
        experiment = _experiment(raw, raw_model, file, f"models.{name}")
        train = replace(experiment.train, out_dir=str(Path(experiment.train.out_dir) / name))
        experiments[name] = replace(experiment, train=train)
    return experiments
