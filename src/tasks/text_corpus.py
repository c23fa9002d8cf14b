"""Byte-level language modelling on a text file.

The file's bytes are the tokens (vocabulary 256). The first (1 - eval_fraction) of the bytes are
the training split and the rest the held-out split; a batch is random windows of `length + 1`
bytes of its split (inputs the first `length`, targets the last `length`: every position is
scored). Loss in nats per byte gives bits per byte = loss / ln 2 and perplexity = e^loss.
"""

import copy
from pathlib import Path
from typing import Literal

import torch

from src.schema import PositiveInt, UnitFloat
from src.tasks.common import generator


class TextCorpus:
    """Random windows of a text file's bytes; `held_out()` reads the evaluation split."""

    def __init__(
        self,
        path: str,
        length: PositiveInt,
        eval_fraction: UnitFloat = 0.1,
        split: Literal["train", "eval"] = "train",
    ):
        file = Path(path)
        if not file.is_file():
            raise ValueError(f"path {path!r} is not a file (relative paths start at the working directory)")
        corpus = torch.frombuffer(bytearray(file.read_bytes()), dtype=torch.uint8).long()
        cut = int(len(corpus) * (1 - eval_fraction))
        self._splits = {"train": corpus[:cut], "eval": corpus[cut:]}
        self.path, self.length, self.eval_fraction = path, length, eval_fraction
        self.vocab_size = 256
        self._use(split)

    def _use(self, split: str) -> None:
        self.split, self.data = split, self._splits[split]
        if len(self.data) < self.length + 1:
            raise ValueError(f"the {split} split of {self.path!r} has {len(self.data)} bytes, fewer than length + 1")

    def held_out(self) -> "TextCorpus":
        """The same corpus reading its evaluation split (the file is not read again)."""
        held = copy.copy(self)
        held._use("eval")
        return held

    def sample(self, batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (inputs, targets), each (batch_size, length) int64: targets are inputs shifted by one."""
        starts = torch.randint(len(self.data) - self.length, (batch_size, 1), generator=generator(seed))
        windows = self.data[starts + torch.arange(self.length + 1)]
        return windows[:, :-1], windows[:, 1:]
