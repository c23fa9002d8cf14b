"""One training loop for a model of ours and a peer's, so a comparison differs in the model alone.

Both see the same seeded batches of a task (`task.sample(batch, seed)`), the same AdamW, learning-rate
schedule and gradient clipping, and are scored on the same held-out batch by the scored positions of
the task's targets (`src.training.masked_loss_and_accuracy`). A model is any module mapping token ids
(batch, L) to logits (batch, L, vocab); `logits` adapts one whose forward returns something else.
"""

import time
from collections.abc import Callable

import torch
from torch import nn

from src.tasks import IGNORE
from src.training import masked_loss_and_accuracy

Logits = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def plain_logits(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    return model(inputs)


def train_on_task(
    model: nn.Module,
    task,
    steps: int,
    batch: int,
    learning_rate: Callable[[int], float],
    seed: int,
    device: str,
    logits: Logits = plain_logits,
    on_step: Callable[[int], None] | None = None,
) -> float:
    """Train `model` for `steps` AdamW steps (no weight decay, clipping at 1); return the seconds taken.

    Batch `step` is `task.sample(batch, seed * 1_000_003 + step)`; `on_step(step)` runs after each step.
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate(0), weight_decay=0.0)
    started = time.perf_counter()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step)
        inputs, targets = (t.to(device) for t in task.sample(batch, seed=seed * 1_000_003 + step))
        loss, _ = masked_loss_and_accuracy(logits(model, inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if on_step is not None:
            on_step(step)
    return time.perf_counter() - started


@torch.no_grad()
def held_out_accuracy(
    model: nn.Module, task, examples: int, batch: int, device: str, logits: Logits = plain_logits, seed: int = 12345
) -> tuple[float, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Accuracy over `examples` held-out sequences (seed 12345: training seeds never reach it).

    Returns (accuracy, inputs, predictions, targets), the last three on the CPU for the task's splits.
    """
    inputs, targets = task.sample(examples, seed=seed)
    predictions = torch.cat(
        [logits(model, inputs[i : i + batch].to(device)).argmax(-1).cpu() for i in range(0, examples, batch)]
    )
    scored = targets != IGNORE
    accuracy = ((predictions == targets) & scored).sum() / scored.sum()
    return accuracy.item(), inputs, predictions, targets
