"""Incremental learning: a few LoRA steps on one interaction, the base weights frozen.

`LoRALinear.add_to` (`src.layers.lora`) wraps the configured linear layers of the model
(attention's W_q, W_k, W_v, W_o; Mamba's in_proj, out_proj; SwiGLU's W, V, W2) with low-rank
adapters, h = W_0 x + (α/r) B A x (Hu et al. 2021, arXiv:2106.09685, Sec. 4.1, Eq. (3): A Gaussian,
B zero, so training starts from the base model); only the adapters train, by the training step of
`memory-models train` (`src.training.training_step`: the masked next-token loss of the reply given
the prompt, whose positions are not scored; clipped AdamW). The adapter is saved and restored
atomically (`src.checkpoints`): a killed save leaves the previous file. `stats` reports the steps
taken (saved with the adapter and restored with it), the last losses, the adapter's size and the
last save (`GET /train/stats`).
"""

import time
from collections import deque
from pathlib import Path

import torch

from src import checkpoints
from src.config import TrainConfig
from src.language_model import LanguageModel
from src.layers.lora import LoRALinear
from src.optimizer import set_learning_rates
from src.serve.config import LearningConfig
from src.tasks import IGNORE
from src.training import TrainingObjective, masked_loss_and_accuracy, training_step
from src.validation import ConfigError

RECENT_LOSSES = 32  # training losses `stats` reports, the newest last


def interaction_training(config: LearningConfig) -> TrainConfig:
    """The train section of learning one interaction: `steps` full-batch AdamW steps at a constant lr."""
    return TrainConfig(
        steps=config.steps, batch_size=1, lr=config.lr, warmup_steps=0, weight_decay=0.0,
        grad_clip=config.grad_clip, seed=0, out_dir=str(Path(config.adapter_path).parent), eval_every=config.steps,
    )  # fmt: skip


class IncrementalLearner:
    """LoRA adapters on `config.targets` of `model` and their optimizer."""

    def __init__(self, model: LanguageModel, config: LearningConfig):
        self.model, self.config = model, config
        model.requires_grad_(False)
        adapters = LoRALinear.add_to(model, config.targets, config.rank, config.alpha)
        if not adapters:
            raise ConfigError(f"learning.targets {config.targets} name no linear layer of the model")
        self.adapters = {name: parameter for name, parameter in model.named_parameters() if parameter.requires_grad}
        self.training = interaction_training(config)
        self.objective = TrainingObjective(model, self.training)
        self.optimizer: torch.optim.Optimizer | None = None  # made at the first step (see `_optimizer`)
        self.steps, self.recent_losses, self.last_save = 0, deque(maxlen=RECENT_LOSSES), None

    def _optimizer(self) -> torch.optim.Optimizer:
        """The adapters' AdamW, made at the first step: building an optimizer imports torch._dynamo, seconds
        a server's start need not pay."""
        if self.optimizer is None:
            self.optimizer = torch.optim.AdamW(self.model.parameter_groups(0.0), lr=self.config.lr)
            set_learning_rates(self.optimizer, self.config.lr)
        return self.optimizer

    def learn(self, prompt: list[int], reply: list[int], steps: int) -> dict:
        """`steps` AdamW steps on log p(reply | prompt); returns the loss before and after, per reply token."""
        ids = torch.tensor([prompt + reply], device=self.model.device)
        inputs, targets = ids[:, :-1], ids[:, 1:].clone()
        targets[:, : len(prompt) - 1] = IGNORE  # only the reply is learned
        self.model.train()
        losses = []
        for _ in range(steps):
            loss, *_ = training_step(self.objective, self._optimizer(), inputs, targets, self.training)
            losses.append(loss.item())
        self.steps += steps
        self.recent_losses.extend(losses)
        self.model.eval()
        with torch.no_grad():
            after = masked_loss_and_accuracy(self.model(inputs), targets)[0].item()
        return {"steps": steps, "loss_before": losses[0], "loss_after": after}

    def save(self, path: str | Path) -> dict:
        """Write the adapter weights (and what they adapt) atomically to `path`."""
        state = {name: parameter.detach().cpu().clone() for name, parameter in self.adapters.items()}
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        saved = {"adapter": state, "targets": list(self.config.targets), "rank": self.config.rank, "steps": self.steps}
        checkpoints.save(saved, path)
        self.last_save = {"path": str(path), "time": time.time(), "steps": self.steps}
        return {"path": str(path), "tensors": len(state), "parameters": sum(t.numel() for t in state.values())}

    def restore(self, path: str | Path) -> dict:
        """Load adapter weights saved by `save` (same targets and rank); the optimizer starts afresh."""
        saved = checkpoints.load(path, {"adapter": dict, "targets": list, "rank": int, "steps": int})
        if sorted(saved["adapter"]) != sorted(self.adapters) or saved["rank"] != self.config.rank:
            raise checkpoints.CheckpointError(
                f"{path}: holds an adapter of rank {saved['rank']} on {saved['targets']}, "
                f"not this model's rank {self.config.rank} on {self.config.targets}"
            )
        with torch.no_grad():
            for name, parameter in self.adapters.items():
                if saved["adapter"][name].shape != parameter.shape:
                    raise checkpoints.CheckpointError(f"{path}: adapter tensor {name} has another shape")
                parameter.copy_(saved["adapter"][name])
        self.optimizer = None  # a fresh one at the next step
        self.steps = saved["steps"]
        return {"path": str(path), "tensors": len(self.adapters)}

    def stats(self) -> dict:
        """Steps taken, the last `RECENT_LOSSES` step losses, the adapter's size, the last save (None before one)."""
        parameters = list(self.adapters.values())
        return {
            "steps": self.steps,
            "recent_losses": list(self.recent_losses),
            "adapter": {
                "targets": list(self.config.targets),
                "rank": self.config.rank,
                "tensors": len(parameters),
                "parameters": sum(p.numel() for p in parameters),
                "bytes": sum(p.numel() * p.element_size() for p in parameters),
            },
            "last_save": self.last_save,
        }
