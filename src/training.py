"""Training and evaluation driven only by an `ExperimentConfig`.

AdamW (Loshchilov & Hutter 2019) with linear warm-up and cosine decay to `min_lr_ratio * lr`,
gradient-norm clipping, periodic evaluation on a held-out set drawn with its own seed, a JSON-lines
metrics log and a checkpoint (model, optimizer, step, config) in `train.out_dir`.
Every training batch is generated from seed (train.seed, step), so a run is reproducible.
"""

import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from src.config import ExperimentConfig, TrainConfig
from src.model import PaperModel
from src.tasks import IGNORE, build_task, held_out
from src.tasks.text_corpus import TextCorpus

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


def learning_rate(step: int, train: TrainConfig) -> float:
    """Linear warm-up over `warmup_steps`, then cosine decay from lr to min_lr_ratio * lr."""
    if step < train.warmup_steps:
        return train.lr * (step + 1) / train.warmup_steps
    progress = (step - train.warmup_steps) / max(1, train.steps - train.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return train.lr * (train.min_lr_ratio + (1 - train.min_lr_ratio) * cosine)


def chunked_loss_and_accuracy(
    hidden: torch.Tensor, head: torch.nn.Linear, targets: torch.Tensor, chunk_tokens: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`masked_loss_and_accuracy` of head(hidden), computed chunk_tokens positions at a time.

    Each chunk's logits are recomputed in backward instead of kept, so the (tokens, vocab) logits
    never exist all at once (1.6 GB in float32 for 4 x 2048 tokens and a 50k vocabulary).
    """

    def chunk_loss(h: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = head(h)
        # argmax is never IGNORE (< 0), so unscored positions never count as correct.
        return F.cross_entropy(logits, y, ignore_index=IGNORE, reduction="sum"), (logits.argmax(-1) == y).sum()

    hidden, targets = hidden.flatten(0, 1), targets.flatten()
    chunks = [
        checkpoint(chunk_loss, hidden[i : i + chunk_tokens], targets[i : i + chunk_tokens], use_reentrant=False)
        for i in range(0, targets.numel(), chunk_tokens)
    ]
    scored = (targets != IGNORE).sum()
    return sum(loss for loss, _ in chunks) / scored, sum(correct for _, correct in chunks) / scored


def masked_loss_and_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy and accuracy over the scored positions (targets != IGNORE)."""
    loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE)
    scored = targets != IGNORE
    accuracy = (logits.argmax(-1) == targets)[scored].float().mean()
    return loss, accuracy


def loss_and_accuracy(
    model: PaperModel, inputs: torch.Tensor, targets: torch.Tensor, train: TrainConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """The training objective with the train section's memory options.

    `train.checkpoint_blocks` recomputes each block in backward (PaperModel.hidden_states);
    `train.loss_chunk_tokens` computes the loss without materialising all logits.
    """
    hidden = model.hidden_states(inputs, checkpoint_blocks=train.checkpoint_blocks)
    if train.loss_chunk_tokens is None:
        return masked_loss_and_accuracy(model.head(hidden), targets)
    return chunked_loss_and_accuracy(hidden, model.head, targets, train.loss_chunk_tokens)


def setting_label(override: dict) -> str:
    """The name of an evaluation setting: its task overrides, `key=value` joined by commas."""
    return ",".join(f"{key}={value}" for key, value in override.items())


@torch.no_grad()
def _evaluate_task(model: PaperModel, task, experiment: ExperimentConfig) -> dict:
    device = next(model.parameters()).device
    total_loss = total_correct = total_scored = 0.0
    done = 0
    while done < experiment.eval.num_examples:
        size = min(experiment.eval.batch_size, experiment.eval.num_examples - done)
        inputs, targets = task.sample(size, seed=experiment.eval.seed * 1_000_003 + done)
        inputs, targets = inputs.to(device), targets.to(device)
        scored = (targets != IGNORE).sum().item()
        loss, accuracy = masked_loss_and_accuracy(model(inputs), targets)
        total_loss += loss.item() * scored
        total_correct += accuracy.item() * scored
        total_scored += scored
        done += size
    loss = total_loss / total_scored
    result = {"eval_loss": loss, "eval_accuracy": total_correct / total_scored}
    if isinstance(task, TextCorpus):  # one token is one byte
        result |= {"eval_bits_per_byte": loss / math.log(2), "eval_perplexity": math.exp(loss)}
    return result


def evaluation_tasks(experiment: ExperimentConfig) -> list[tuple[str, object]]:
    """(metric suffix, held-out task) for the training task ("") and each `eval.settings` entry."""
    tasks = []
    for override in [{}, *(experiment.eval.settings or [])]:
        task = held_out(build_task({**experiment.task, **override}))
        tasks.append((f"@{setting_label(override)}" if override else "", task))
    return tasks


def evaluate(model: PaperModel, experiment: ExperimentConfig, tasks: list | None = None) -> dict:
    """Loss and accuracy on `eval.num_examples` held-out examples (seeded by `eval.seed`).

    The training task's metrics are `eval_loss`, `eval_accuracy` (and bits per byte and perplexity
    for text); each `eval.settings` entry (task overrides, e.g. a longer length) adds the same
    metrics with `@<setting>` appended. `tasks` (from `evaluation_tasks`) saves rebuilding them
    when evaluating repeatedly.
    """
    was_training = model.training
    model.eval()
    result = {}
    for suffix, task in tasks if tasks is not None else evaluation_tasks(experiment):
        result |= {f"{name}{suffix}": value for name, value in _evaluate_task(model, task, experiment).items()}
    model.train(was_training)
    return result


def _progress(step: int, steps: int) -> None:
    """A one-line progress bar on stderr when it is a terminal."""
    if sys.stderr.isatty():
        filled = 30 * step // steps
        print(f"\r[{'#' * filled}{'.' * (30 - filled)}] {step}/{steps}", end="", file=sys.stderr, flush=True)


def train(experiment: ExperimentConfig, log=print, resume: bool = False) -> dict:
    """Train the configured model on the configured task; return the final evaluation.

    With `resume`, continue from `train.out_dir/checkpoint.pt` (model, optimizer and step; its
    config must be this one): batches depend only on (seed, step) and the schedule only on the
    step, so the resumed run repeats the uninterrupted one exactly.
    """
    cfg = experiment.train
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{experiment.file}: train.device is 'cuda' but no CUDA device is available")
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    model = PaperModel(experiment.model, experiment.file).to(device)
    task = build_task(experiment.task)
    eval_tasks = evaluation_tasks(experiment)  # built once: a text task reads its file here
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas or (0.9, 0.999))
    )
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    first_step = 0
    if resume:
        first_step = load_checkpoint(out_dir / CHECKPOINT, model, optimizer, experiment)
        log(f"resuming from {out_dir / CHECKPOINT} at step {first_step}")
    metrics_file = (out_dir / METRICS).open("a" if resume else "w")
    log(f"model: {model.num_parameters():,} parameters; task: {experiment.task['type']}; {cfg.steps} steps")
    started, tokens, evaluating = time.perf_counter(), 0, 0.0  # evaluation time is not training time
    result = {}
    for step in range(first_step, cfg.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, cfg)
        inputs, targets = task.sample(cfg.batch_size, seed=cfg.seed * 1_000_003 + step)
        inputs, targets = inputs.to(device), targets.to(device)
        loss, accuracy = loss_and_accuracy(model, inputs, targets, cfg)
        aux_losses = model.auxiliary_losses()  # router losses, coefficients from the config
        optimizer.zero_grad(set_to_none=True)
        (loss + sum(aux_losses.values())).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        tokens += inputs.numel()
        _progress(step + 1, cfg.steps)
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            training_seconds = time.perf_counter() - started - evaluating
            eval_started = time.perf_counter()
            result = {
                "step": step + 1,
                "loss": loss.item(),
                "accuracy": accuracy.item(),
                "lr": optimizer.param_groups[0]["lr"],
                "tokens_per_s": tokens / training_seconds,
                **{f"aux_{name}": value.item() for name, value in aux_losses.items()},
                **evaluate(model, experiment, eval_tasks),
            }
            evaluating += time.perf_counter() - eval_started
            metrics_file.write(json.dumps(result) + "\n")
            metrics_file.flush()
            save_checkpoint(out_dir / CHECKPOINT, model, optimizer, step + 1, experiment)
            log(
                f"step {step + 1:>6}/{cfg.steps}  loss {result['loss']:.4f}  "
                f"eval_loss {result['eval_loss']:.4f}  eval_accuracy {result['eval_accuracy']:.4f}  "
                f"{result['tokens_per_s']:,.0f} tok/s"
                + "".join(f"  aux_{name} {value.item():.4f}" for name, value in aux_losses.items())
            )
    metrics_file.close()
    return result


def save_checkpoint(path: Path, model: PaperModel, optimizer, step: int, experiment: ExperimentConfig) -> None:
    """Write model and optimizer state, the step reached and the resolved config."""
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "config": experiment.to_yaml(),
        },
        path,
    )


def load_checkpoint(path: Path, model: PaperModel, optimizer, experiment: ExperimentConfig) -> int:
    """Restore model and optimizer from a checkpoint of this experiment; return its step."""
    if not path.is_file():
        raise FileNotFoundError(f"{experiment.file}: no checkpoint to resume at {path}")
    checkpoint = torch.load(path, map_location=next(model.parameters()).device, weights_only=True)
    if checkpoint["config"] != experiment.to_yaml():
        raise ValueError(f"{path} was written by a different config than {experiment.file}; refusing to resume")
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    return checkpoint["step"]
