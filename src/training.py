"""Training and evaluation driven only by an `ExperimentConfig`.

AdamW (Loshchilov & Hutter 2019) with linear warm-up and cosine decay to `min_lr_ratio * lr`,
gradient-norm clipping, periodic evaluation on a held-out set drawn with its own seed, a JSON-lines
metrics log and a checkpoint (model, optimizer, step, config) in `train.out_dir`.
Every training batch is generated from seed (train.seed, step), so a run is reproducible.
"""

import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from src.config import ExperimentConfig, TrainConfig
from src.model import PaperModel
from src.tasks import IGNORE, build_task

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


@torch.no_grad()
def evaluate(model: PaperModel, experiment: ExperimentConfig) -> dict:
    """Loss and accuracy on `eval.num_examples` held-out examples (seeded by `eval.seed`)."""
    task = build_task(experiment.task, experiment.file)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_loss = total_correct = total_scored = 0.0
    done = 0
    while done < experiment.eval.num_examples:
        size = min(experiment.eval.batch_size, experiment.eval.num_examples - done)
        inputs, targets = task.sample(size, seed=experiment.eval.seed * 1_000_003 + done)
        inputs, targets = inputs.to(device), targets.to(device)
        logits = model(inputs)
        scored = (targets != IGNORE).sum().item()
        loss, accuracy = masked_loss_and_accuracy(logits, targets)
        total_loss += loss.item() * scored
        total_correct += accuracy.item() * scored
        total_scored += scored
        done += size
    model.train(was_training)
    return {"eval_loss": total_loss / total_scored, "eval_accuracy": total_correct / total_scored}


def train(experiment: ExperimentConfig, log=print) -> dict:
    """Train the configured model on the configured task; return the final evaluation."""
    cfg = experiment.train
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{experiment.file}: train.device is 'cuda' but no CUDA device is available")
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    model = PaperModel(experiment.model, experiment.file).to(device)
    task = build_task(experiment.task, experiment.file)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas or (0.9, 0.999))
    )
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_file = (out_dir / METRICS).open("w")
    log(f"model: {model.num_parameters():,} parameters; task: {experiment.task['type']}; {cfg.steps} steps")
    started, tokens = time.perf_counter(), 0
    result = {}
    for step in range(cfg.steps):
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
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            elapsed = time.perf_counter() - started
            result = {
                "step": step + 1,
                "loss": loss.item(),
                "accuracy": accuracy.item(),
                "lr": optimizer.param_groups[0]["lr"],
                "tokens_per_s": tokens / elapsed,
                **{f"aux_{name}": value.item() for name, value in aux_losses.items()},
                **evaluate(model, experiment),
            }
            metrics_file.write(json.dumps(result) + "\n")
            metrics_file.flush()
            log(
                f"step {step + 1:>6}/{cfg.steps}  loss {result['loss']:.4f}  "
                f"eval_loss {result['eval_loss']:.4f}  eval_accuracy {result['eval_accuracy']:.4f}  "
                f"{result['tokens_per_s']:,.0f} tok/s"
                + "".join(f"  aux_{name} {value.item():.4f}" for name, value in aux_losses.items())
            )
            save_checkpoint(out_dir / CHECKPOINT, model, optimizer, step + 1, experiment)
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
