"""Conventions shared by the task generators."""

import torch

IGNORE = -100
"""Target value of positions that are not scored (PyTorch's cross-entropy ignore_index)."""


def generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with `seed`, so a batch depends on its seed alone."""
    return torch.Generator().manual_seed(seed)
