"""Conventions shared by the task generators."""

from typing import Protocol

import torch

IGNORE = -100
"""Target value of positions that are not scored (PyTorch's cross-entropy ignore_index)."""


class Task(Protocol):
    """What training and evaluation ask of a task (`src.tasks`): its vocabulary and seeded batches."""

    @property
    def vocab_size(self) -> int: ...

    def sample(self, batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets), both (batch_size, length) int64, targets IGNORE where not scored."""
        ...


def generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with `seed`, so a batch depends on its seed alone."""
    return torch.Generator().manual_seed(seed)
