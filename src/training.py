"""Training and evaluation driven only by an `ExperimentConfig`.

AdamW (Loshchilov & Hutter 2019) with linear warm-up and cosine decay to `min_lr_ratio * lr`,
gradient-norm clipping, periodic evaluation on a held-out set drawn with its own seed, a JSON-lines
metrics log and a checkpoint (model, optimizer, step, tokens, metrics, config) in `train.out_dir`,
written atomically (`src.checkpoints`). Every training batch is generated from seed
(train.seed, step), so a run is reproducible. Under torchrun, `train.parallel: ddp | fsdp` trains
data-parallel over the processes (`src.distributed`) on the same batches.
"""

import json
import math
import os
import sys
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from src import checkpoints, distributed
from src.config import ExperimentConfig, TrainConfig, model_overrides, override_model_section
from src.distributed import Processes
from src.early_stopping import Patience
from src.language_model import LanguageModel
from src.memory_use import memory_text, peak_memory
from src.optimizer import set_learning_rates
from src.runs import (
    BEST,
    CHECKPOINT,
    METRICS,
    SECTIONS,
    RunError,
    build_model,
    check_config_matches,
    load_training_state,
    read_checkpoint,
    save_checkpoint,
    select_device,
)
from src.tasks import IGNORE, Task, build_task, held_out
from src.tasks.text_corpus import TextCorpus


class OutOfMemory(RunError):
    """The device ran out of memory at a step of a run, in its training step or its evaluation.

    `src.estimate.out_of_memory_advice` turns it into the one line a command prints: the step, the
    estimate for the config and the settings the estimator finds to fit the device.
    """

    def __init__(self, experiment: ExperimentConfig, step: int, phase: str, device: torch.device, processes: int = 1):
        super().__init__(f"{experiment.file}: out of memory at step {step} ({phase}) on {device.type}")
        self.experiment = experiment
        self.step = step
        self.phase = phase  # "training step" or "evaluation"
        self.device = device
        self.processes = processes  # the batch is split over them (train.parallel)


@contextmanager
def out_of_memory_at(
    experiment: ExperimentConfig, step: int, phase: str, device: torch.device, processes: int = 1
) -> Generator[None]:
    """Turn torch's OutOfMemoryError inside the block into `OutOfMemory` naming `step` and `phase`."""
    try:
        yield
    except torch.OutOfMemoryError as error:
        raise OutOfMemory(experiment, step, phase, device, processes) from error


def learning_rate(step: int, train: TrainConfig) -> float:
    """Linear warm-up over `warmup_steps`, then cosine decay from lr to min_lr_ratio * lr."""
    if step < train.warmup_steps:
        return train.lr * (step + 1) / train.warmup_steps
    progress = (step - train.warmup_steps) / max(1, train.steps - train.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return train.lr * (train.min_lr_ratio + (1 - train.min_lr_ratio) * cosine)


LossChunks = Callable[[int, int], Sequence[int]]  # (tokens, chunk_tokens) -> the chunks' first positions


def every_loss_chunk(tokens: int, chunk_tokens: int) -> range:
    """The first position of every chunk of `chunked_loss_and_accuracy`: the training objective."""
    return range(0, tokens, chunk_tokens)


def chunked_loss_and_accuracy(
    hidden: torch.Tensor,
    head: torch.nn.Module,
    targets: torch.Tensor,
    chunk_tokens: int,
    chunks: LossChunks = every_loss_chunk,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`masked_loss_and_accuracy` of head(hidden), computed chunk_tokens positions at a time.

    Each chunk's logits are recomputed in backward instead of kept, so the (tokens, vocab) logits
    never exist all at once (1.6 GB in float32 for 4 x 2048 tokens and a 50k vocabulary). The sums
    run along, so every chunk after the first holds the same storages as the one before it (what
    `src.estimate` relies on to run three chunks of any number: `chunks` picks which are computed).
    """

    def chunk_loss(h: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = head(h)
        # argmax is never IGNORE (< 0), so unscored positions never count as correct.
        return F.cross_entropy(logits, y, ignore_index=IGNORE, reduction="sum"), (logits.argmax(-1) == y).sum()

    hidden, targets = hidden.flatten(0, 1), targets.flatten()
    loss_sum = correct_sum = 0
    for i in chunks(targets.numel(), chunk_tokens):
        loss, correct = checkpoint(
            chunk_loss, hidden[i : i + chunk_tokens], targets[i : i + chunk_tokens], use_reentrant=False
        )
        loss_sum, correct_sum = loss_sum + loss, correct_sum + correct
    scored = (targets != IGNORE).sum()
    return loss_sum / scored, correct_sum / scored


def masked_loss_and_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy and accuracy over the scored positions (targets != IGNORE)."""
    loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE)
    scored = targets != IGNORE  # counted, not indexed: no shape depends on the values (src.estimate)
    accuracy = ((logits.argmax(-1) == targets) & scored).sum() / scored.sum()
    return loss, accuracy


def loss_and_accuracy(
    model: LanguageModel,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    train: TrainConfig,
    loss_chunks: LossChunks = every_loss_chunk,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The training objective with the train section's memory options.

    `train.checkpoint_blocks` recomputes each block in backward (LanguageModel.hidden_states);
    `train.loss_chunk_tokens` computes the loss without materialising all logits, over the chunks
    `loss_chunks` picks (`chunked_loss_and_accuracy`).
    """
    hidden = model.hidden_states(inputs, checkpoint_blocks=train.checkpoint_blocks)
    if train.loss_chunk_tokens is None:
        return masked_loss_and_accuracy(model.head(hidden), targets)
    return chunked_loss_and_accuracy(hidden, model.head, targets, train.loss_chunk_tokens, loss_chunks)


def precision(train: TrainConfig, device: torch.device) -> torch.autocast:
    """The autocast context of `train.precision`: bfloat16 mixed precision, or plain float32.

    Parameters, gradients and optimizer state stay float32; under bfloat16 the matrix products of
    the MLPs, the head, attention and Mamba's projections run in bfloat16, while recurrent states,
    reductions and the mixers that do not opt in (`Mixer.autocast`) compute in float32.
    """
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=train.precision == "bfloat16")


class TrainingObjective(nn.Module):
    """The model with `loss_and_accuracy` as its forward: the module DDP and FSDP wrap.

    Data-parallel wrappers act when their module is called, and the objective reaches the model
    through `hidden_states` and the head, so it runs here: `forward(inputs, targets)` gives the
    loss, the accuracy and the auxiliary losses; `forward(inputs)` gives the logits (evaluation).
    `loss_chunks` picks the chunks of a chunked loss: every one, but for `src.estimate`.
    """

    def __init__(self, model: LanguageModel, train: TrainConfig, loss_chunks: LossChunks = every_loss_chunk):
        super().__init__()
        self.model = model
        self.train_config = train
        self.loss_chunks = loss_chunks

    def forward(
        self, inputs: torch.Tensor, targets: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        if targets is None:
            return self.model(inputs)
        loss, accuracy = loss_and_accuracy(self.model, inputs, targets, self.train_config, self.loss_chunks)
        return loss, accuracy, self.model.auxiliary_losses()


def training_step(
    objective: nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    train: TrainConfig,
    weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """One optimisation step of `objective` (a `TrainingObjective`, possibly wrapped by DDP or FSDP).

    The loss is scaled by `weight` (this process's share of the batch's scored positions) and the
    mixers' auxiliary losses are added; then clipped AdamW. Returns the loss, the accuracy, the
    auxiliary losses and the total that was minimised, none synchronised.
    """
    with precision(train, inputs.device):
        loss, accuracy, aux_losses = objective(inputs, targets)
        total = loss * weight + sum(aux_losses.values())  # router losses, coefficients from the config
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    torch.nn.utils.clip_grad_norm_(objective.parameters(), train.grad_clip)
    optimizer.step()
    return loss, accuracy, aux_losses, total


def setting_label(override: dict) -> str:
    """The name of an evaluation setting: its task overrides, `key=value` joined by commas."""
    return ",".join(f"{key}={value}" for key, value in override.items())


@torch.no_grad()
def evaluation_batches(task: Task, experiment: ExperimentConfig) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The held-out (inputs, targets) batches the evaluation scores: `eval.num_examples` examples of `task`,
    `eval.batch_size` at a time, each batch seeded by `eval.seed` and its first example's index."""
    for done in range(0, experiment.eval.num_examples, experiment.eval.batch_size):
        size = min(experiment.eval.batch_size, experiment.eval.num_examples - done)
        yield task.sample(size, seed=experiment.eval.seed * 1_000_003 + done)


def _evaluate_task(model: nn.Module, task: Task, experiment: ExperimentConfig) -> dict:
    device = next(model.parameters()).device
    total_loss = total_correct = total_scored = 0.0
    for inputs, targets in evaluation_batches(task, experiment):
        inputs, targets = inputs.to(device), targets.to(device)
        scored = (targets != IGNORE).sum().item()
        with precision(experiment.train, device):
            loss, accuracy = masked_loss_and_accuracy(model(inputs), targets)
        total_loss += loss.item() * scored
        total_correct += accuracy.item() * scored
        total_scored += scored
    loss = total_loss / total_scored
    result = {"eval_loss": loss, "eval_accuracy": total_correct / total_scored}
    if isinstance(task, TextCorpus):  # nats per token -> bits per byte of the split's text
        result |= {"eval_bits_per_byte": loss / (math.log(2) * task.bytes_per_token), "eval_perplexity": math.exp(loss)}
    return result


@dataclass(frozen=True)
class EvaluationSetting:
    """One evaluation: its metric suffix, its held-out task, and the model section it reads with (None:
    the trained model as it is; else a section of `eval.settings` model overrides, the same weights)."""

    suffix: str
    task: Task
    model_section: dict | None = None


def evaluation_tasks(experiment: ExperimentConfig) -> list[EvaluationSetting]:
    """The training task's evaluation ("" suffix) and each `eval.settings` entry's (task and model overrides)."""
    settings = []
    for setting in [{}, *(experiment.eval.settings or [])]:
        model_changes, task_changes = model_overrides(setting)
        task = held_out(build_task({**experiment.task, **task_changes}))
        section = (
            override_model_section(experiment.model, model_changes, experiment.file, "eval.settings")
            if model_changes
            else None
        )
        settings.append(EvaluationSetting(f"@{setting_label(setting)}" if setting else "", task, section))
    return settings


def setting_model(model: LanguageModel, setting: EvaluationSetting) -> LanguageModel:
    """The model an evaluation setting reads: `model`, or a model of its overridden section with `model`'s weights."""
    if setting.model_section is None:
        return model
    variant = build_model(setting.model_section, "eval.settings", model.device)
    variant.load_state_dict(model.state_dict())
    return variant.eval()


def evaluate(model: nn.Module, experiment: ExperimentConfig, tasks: list[EvaluationSetting] | None = None) -> dict:
    """Loss and accuracy of `model` (a LanguageModel, or the TrainingObjective around one) on
    `eval.num_examples` held-out examples (seeded by `eval.seed`).

    The training task's metrics are `eval_loss`, `eval_accuracy` (and bits per byte and perplexity
    for text); each `eval.settings` entry (task overrides, e.g. a longer length, and model overrides,
    e.g. `model.blocks[1].mixer.top_k: 4`, read with the same weights) adds the same metrics with
    `@<setting>` appended. `tasks` (from `evaluation_tasks`) saves rebuilding them when evaluating
    repeatedly.
    """
    was_training = model.training
    model.eval()
    language_model = cast(LanguageModel, model.model if isinstance(model, TrainingObjective) else model)
    result = {}
    for setting in tasks if tasks is not None else evaluation_tasks(experiment):
        reader = model if setting.model_section is None else setting_model(language_model, setting)
        result |= {
            f"{name}{setting.suffix}": value for name, value in _evaluate_task(reader, setting.task, experiment).items()
        }
    model.train(was_training)
    return result


def _progress(step: int, steps: int) -> None:
    """A one-line progress bar on stderr when it is a terminal."""
    if sys.stderr.isatty():
        filled = 30 * step // steps
        print(f"\r[{'#' * filled}{'.' * (30 - filled)}] {step}/{steps}", end="", file=sys.stderr, flush=True)


def _check_out_dir(out_dir: Path, file: str, resume: bool, overwrite: bool) -> None:
    """Refuse, before anything is written, a run directory that cannot hold this run."""
    if out_dir.exists() and not out_dir.is_dir():
        raise RunError(f"{file}: train.out_dir {out_dir} is a file, not a directory")
    if resume and overwrite:
        raise RunError(f"{file}: resume and overwrite exclude each other")
    if resume and not (out_dir / CHECKPOINT).is_file():
        raise RunError(f"{file}: nothing to resume: there is no checkpoint at {out_dir / CHECKPOINT}")
    if not resume and not overwrite and any((out_dir / name).exists() for name in (CHECKPOINT, METRICS)):
        raise RunError(
            f"{file}: train.out_dir {out_dir} already holds a run; resume it (--resume) or replace it (--overwrite)"
        )


def _logged_step(line: str) -> int | None:
    """The step of one metrics line, None for a line cut short by a kill."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return None


def _prepare_out_dir(out_dir: Path, file: str, resume_step: int | None) -> None:
    """Create the run directory (the run is known to start) and check that it takes files.

    On resume, metrics lines past the checkpoint's step (logged just before a kill interrupted the
    checkpoint) are dropped, so the resumed log equals the uninterrupted one.
    """
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunError(f"{file}: cannot create train.out_dir {out_dir}: {error.strerror or error}") from error
    if not os.access(out_dir, os.W_OK):
        raise RunError(f"{file}: cannot write to train.out_dir {out_dir}: permission denied")
    metrics = out_dir / METRICS
    if resume_step is not None and metrics.exists():
        try:
            metrics.open("a").close()  # the log is appended to at each evaluation: found out now, not after steps
        except OSError as error:
            raise RunError(f"{metrics}: the metrics log cannot be appended to ({error.strerror}); {_FIX}") from error
        lines = metrics.read_text().splitlines(keepends=True)
        kept = [line for line in lines if (step := _logged_step(line)) is not None and step <= resume_step]
        if kept != lines:
            checkpoints.write_atomically(metrics, lambda handle: handle.write("".join(kept).encode()))


_FIX = "make it writable (permissions, free disk space), then run again with --resume"


def _log_metrics(path: Path, result: dict, replace: bool) -> None:
    """Append one JSON line to the metrics log (`replace`: start the log anew with it). A failed write
    leaves at most a line cut short, which --resume drops."""
    try:
        with path.open("w" if replace else "a") as file:
            file.write(json.dumps(result) + "\n")
    except OSError as error:
        raise RunError(
            f"{path}: step {result['step']}'s metrics could not be written ({error.strerror}); the checkpoint "
            f"before it is intact: {_FIX}"
        ) from error


def _check_finite(
    objectives: list[torch.Tensor],
    step: int,
    model: LanguageModel,
    processes: Processes,
    file: str,
    path: Path,
    saved_step: int | None,
) -> None:
    """Stop on a non-finite loss (or parameter) of any process before anything of it is logged or saved."""
    kept = f"{path} keeps step {saved_step}" if saved_step is not None else "no checkpoint of this run was written"
    values = processes.sum(torch.stack(objectives))  # a non-finite value on one process is one in the sum
    bad = (~torch.isfinite(values)).nonzero()
    if len(bad):
        first = int(bad[0])
        at = step - len(objectives) + first + 1
        raise RunError(f"{file}: training diverged: the loss at step {at} is {values[first].item()}; {kept}")
    if not processes.all_finite(model.parameters()):
        raise RunError(f"{file}: training diverged: the update of step {step} made parameters non-finite; {kept}")


def _restore(path: Path, experiment: ExperimentConfig) -> dict:
    """Read and check the checkpoint to resume.

    Its config may differ only in train.steps (extending the run), train.out_dir (the run was
    moved), train.early_stopping (more patience continues a stopped run) and train.parallel between
    none and ddp (one file format; fsdp writes shards).
    """
    checkpoint = read_checkpoint(path)
    full_state = ("none", "ddp")
    was_parallel = checkpoint["config"]["train"].get("parallel", "none")  # absent before the key existed
    same_format = was_parallel in full_state and experiment.train.parallel in full_state
    early_stopping = ("train.early_stopping", "train.early_stopping.patience", "train.early_stopping.min_delta")
    allowed = ("train.steps", "train.out_dir", *early_stopping, *(("train.parallel",) if same_format else ()))
    check_config_matches(path, checkpoint["config"], experiment, SECTIONS, allowed=allowed)
    if checkpoint["step"] > experiment.train.steps:
        raise RunError(f"{experiment.file}: train.steps ({experiment.train.steps}) is below the step of {path}")
    return checkpoint


def _restored_patience(path: Path, checkpoint: dict) -> Patience:
    """The early-stopping state a checkpoint saved (a fresh one if its run had no early stopping)."""
    try:
        return Patience(**checkpoint.get("early_stopping", {}))
    except TypeError as error:
        raise RunError(f"{path}: its early_stopping entry is not an early-stopping state: {error}") from error


def _progress_line(result: dict, steps: int) -> str:
    auxiliary = "".join(f"  {name} {value:.4f}" for name, value in result.items() if name.startswith("aux_"))
    return (
        f"step {result['step']:>6}/{steps}  loss {result['loss']:.4f}  eval_loss {result['eval_loss']:.4f}  "
        f"eval_accuracy {result['eval_accuracy']:.4f}  {result['tokens_per_s']:,.0f} tok/s{auxiliary}"
        f"{memory_text(result)}"
    )


def train(
    experiment: ExperimentConfig, log: Callable[[str], object] = print, resume: bool = False, overwrite: bool = False
) -> dict:
    """Train the configured model on the configured task; return the final evaluation.

    Nothing is written before the run is known to start: a `train.out_dir` that already holds a
    run is refused unless `resume` (continue from its checkpoint) or `overwrite` (replace it; its
    files are replaced at this run's first evaluation). A resumed checkpoint's config must equal
    this one except `train.steps` and `train.out_dir`: batches depend only on (seed, step) and the
    schedule only on the step, so a resumed run repeats the uninterrupted one exactly, and a larger
    `train.steps` extends a run (its cosine schedule then stretches to the new length). Resuming a finished run
    returns its final metrics. A non-finite loss stops the run, naming the step, before anything
    of it is logged or saved.

    Under torchrun with `train.parallel` ddp or fsdp (`src.distributed`), each process trains on
    its rows of the global batch, weighted so that the averaged gradient is the whole batch's;
    every process evaluates (an fsdp forward needs them all) and rank 0 alone logs and writes.
    """
    cfg = experiment.train
    device = select_device(cfg.device, f"{experiment.file}: train.device")
    _check_out_dir(Path(cfg.out_dir), experiment.file, resume, overwrite)
    with distributed.processes(cfg, experiment.file, device) as processes:
        return _train(experiment, processes, log if processes.is_main else _silent, resume)


def _silent(message: str) -> None:
    """The log of processes other than rank 0."""


def local_batch(
    inputs: torch.Tensor, targets: torch.Tensor, processes: Processes
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """This process's rows of a global batch and the weight of their mean loss.

    The loss is a mean over scored positions, and data parallelism averages the processes'
    gradients, so the weight n * (scored here) / (scored in the batch) makes that average the
    gradient of the whole batch's mean loss (exactly 1 in one process).
    """
    scored = targets != IGNORE
    weight = processes.world_size * processes.rows(scored).sum().item() / scored.sum().item()
    return processes.rows(inputs), processes.rows(targets), weight


@dataclass(frozen=True)
class Training:
    """What a run trains: the model, its objective, the objective as the processes run it, and AdamW."""

    model: LanguageModel
    objective: TrainingObjective
    wrapped: nn.Module  # the objective in DDP, sharded by FSDP2, or itself (src.distributed)
    optimizer: torch.optim.Optimizer


def build_training(experiment: ExperimentConfig, processes: Processes) -> Training:
    """The seeded model on this process's device, wrapped for `train.parallel`, and its optimizer."""
    cfg = experiment.train
    torch.manual_seed(cfg.seed)
    model = build_model(experiment.model, experiment.file, processes.device)
    objective = TrainingObjective(model, cfg)
    wrapped = processes.wrap(objective, model.sharding_units())
    beta1, beta2 = cfg.betas or (0.9, 0.999)
    optimizer = torch.optim.AdamW(  # built after wrapping: under fsdp the parameters are shards
        model.parameter_groups(cfg.weight_decay), lr=cfg.lr, betas=(beta1, beta2)
    )
    return Training(model, objective, wrapped, optimizer)


@dataclass(frozen=True)
class StepResult:
    """One training step, seen from one process: its rows' loss and accuracy, their weight (`local_batch`)."""

    loss: torch.Tensor
    accuracy: torch.Tensor
    aux_losses: dict[str, torch.Tensor]
    objective: torch.Tensor  # weighted loss + auxiliary losses, detached
    weight: float
    tokens: int  # of the global batch


def train_step(training: Training, task: Task, step: int, train: TrainConfig, processes: Processes) -> StepResult:
    """Step `step`: its learning rate, the (seed, step) batch, this process's rows, a clipped AdamW update."""
    set_learning_rates(training.optimizer, learning_rate(step, train))
    inputs, targets = task.sample(train.batch_size, seed=train.seed * 1_000_003 + step)
    tokens = inputs.numel()
    inputs, targets, weight = local_batch(inputs, targets, processes)
    inputs, targets = inputs.to(processes.device), targets.to(processes.device)
    loss, accuracy, aux_losses, objective = training_step(
        training.wrapped, training.optimizer, inputs, targets, train, weight
    )
    return StepResult(loss, accuracy, aux_losses, objective.detach(), weight, tokens)


def _train(experiment: ExperimentConfig, processes: Processes, log: Callable[[str], object], resume: bool) -> dict:
    cfg = experiment.train
    out_dir = Path(cfg.out_dir)
    checkpoint_path = out_dir / CHECKPOINT
    training = build_training(experiment, processes)
    model, optimizer = training.model, training.optimizer
    task = build_task(experiment.task)
    eval_tasks = evaluation_tasks(experiment)  # built once: a text task reads its file here
    first_step, tokens, result = 0, 0, {}
    rule, patience = cfg.early_stopping, Patience()
    if resume:
        checkpoint = _restore(checkpoint_path, experiment)
        load_training_state(checkpoint_path, checkpoint, model, optimizer)
        first_step, tokens, result = checkpoint["step"], checkpoint["tokens"], checkpoint["metrics"]
        patience = _restored_patience(checkpoint_path, checkpoint)
        if first_step == cfg.steps:
            log(f"{checkpoint_path} is a finished run of {first_step} steps (raise train.steps to extend it)")
            return result
        if rule is not None and patience.exhausted(rule):
            log(f"{checkpoint_path} stopped early at step {first_step} (raise train.early_stopping.patience to go on)")
            return result
        log(f"resuming from {checkpoint_path} at step {first_step}")
    if processes.is_main:
        _prepare_out_dir(out_dir, experiment.file, first_step if resume else None)
    saved_step = first_step if resume else None  # the checkpoint a divergence leaves in place
    where = f"; {processes.world_size} processes ({cfg.parallel})" if cfg.parallel != "none" else ""
    trained = model.trainable_parameters()
    size = f"{model.num_parameters():,} parameters" + (
        f", {trained:,} trained" if trained < model.num_parameters() else ""
    )
    log(f"model: {size}; task: {experiment.task['type']}; {cfg.steps} steps{where}")
    started, run_tokens, evaluating = time.perf_counter(), 0, 0.0  # evaluation time is not training time
    objectives = []  # checked for finiteness at each evaluation, so steps need no device sync
    for step in range(first_step, cfg.steps):
        with out_of_memory_at(experiment, step + 1, "training step", processes.device, processes.world_size):
            done = train_step(training, task, step, cfg, processes)
        run_tokens += done.tokens
        objectives.append(done.objective)
        if processes.is_main:
            _progress(step + 1, cfg.steps)
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            _check_finite(objectives, step + 1, model, processes, experiment.file, checkpoint_path, saved_step)
            objectives = []
            training_seconds = time.perf_counter() - started - evaluating
            eval_started = time.perf_counter()
            with out_of_memory_at(experiment, step + 1, "evaluation", processes.device, processes.world_size):
                evaluation = evaluate(training.objective, experiment, eval_tasks)
            mean = processes.mean  # over the processes: the values of the global batch
            result = {
                "step": step + 1,
                "tokens": tokens + run_tokens,
                "loss": mean(done.loss * done.weight),
                "accuracy": mean(done.accuracy * done.weight),
                "lr": optimizer.param_groups[0]["lr"],
                "tokens_per_s": run_tokens / training_seconds,
                **{f"aux_{name}": mean(value) for name, value in done.aux_losses.items()},
                **evaluation,
                **peak_memory(processes.device),  # of the steps and the evaluation since the last line
            }
            evaluating += time.perf_counter() - eval_started
            if rule is not None:
                patience = patience.after(result["eval_loss"], step + 1, rule)
                result |= {"best_step": patience.best_step, "best_eval_loss": patience.best_loss}
            if processes.is_main and saved_step is None:  # a new run replaces an old one here, not before
                (out_dir / BEST).unlink(missing_ok=True)
            if processes.is_main:
                _log_metrics(out_dir / METRICS, result, replace=saved_step is None)
            save_checkpoint(
                checkpoint_path, model, optimizer, result, experiment, processes, patience if rule else None
            )
            saved_step = step + 1
            log(_progress_line(result, cfg.steps))
            if rule is not None and patience.exhausted(rule):
                log(
                    f"early stopping at step {step + 1}: eval_loss has not improved by more than {rule.min_delta} "
                    f"for {rule.patience} evaluations; the best, {patience.best_loss:.4f} at step "
                    f"{patience.best_step}, is {out_dir / BEST}"
                )
                break
    return result
