"""Language modelling on a text file, byte-level or through a pretrained model's tokenizer.

Without `tokenizer`, the file's bytes are the tokens (vocabulary 256). With `tokenizer` (a
directory holding a Hugging Face `tokenizer.json`; an adapted model's config sets its base
directory), each split is encoded by that tokenizer and the vocabulary is the tokenizer's. The
first (1 - eval_fraction) of the bytes are the training split and the rest the held-out split,
cut at the same byte whatever the tokenizer; a batch is random windows of `length + 1` tokens of
its split (inputs the first `length`, targets the last `length`: every position is scored).
`bytes_per_token` of the split turns a loss in nats per token into bits per byte,
loss / (ln 2 · bytes_per_token), comparable across tokenizers; perplexity is per token.
"""

import copy
from functools import cache
from pathlib import Path
from typing import Literal

import torch

from src.schema import PositiveInt, UnitFloat
from src.tasks.common import generator
from src.tasks.tokenizer import encode, load_tokenizer


@cache
def _split_tokens(path: str, eval_fraction: float, tokenizer: str | None) -> dict[str, tuple[torch.Tensor, float]]:
    """split -> (token ids, bytes per token), the file read and encoded once per process."""
    data = Path(path).read_bytes()
    cut = int(len(data) * (1 - eval_fraction))
    splits = {}
    for name, text in (("train", data[:cut]), ("eval", data[cut:])):
        if tokenizer is None:
            tokens = torch.frombuffer(bytearray(text), dtype=torch.uint8).long() if text else torch.zeros(0).long()
        else:
            tokens = torch.tensor(encode(tokenizer, text), dtype=torch.long)
        splits[name] = (tokens, len(text) / max(1, len(tokens)))
    return splits


class TextCorpus:
    """Random windows of a text file's tokens; `held_out()` reads the evaluation split."""

    def __init__(
        self,
        path: str,
        length: PositiveInt,
        eval_fraction: UnitFloat = 0.1,
        split: Literal["train", "eval"] = "train",
        tokenizer: str | None = None,
    ):
        file = Path(path)
        if not file.is_file():
            raise ValueError(f"path {path!r} is not a file (relative paths start at the working directory)")
        self.vocab_size = 256 if tokenizer is None else load_tokenizer(tokenizer).get_vocab_size()
        self._splits = _split_tokens(str(file.resolve()), eval_fraction, tokenizer)
        self.path, self.length, self.eval_fraction, self.tokenizer = path, length, eval_fraction, tokenizer
        self._use(split)

    def _use(self, split: str) -> None:
        self.split = split
        self.data, self.bytes_per_token = self._splits[split]
        if len(self.data) < self.length + 1:
            raise ValueError(f"the {split} split of {self.path!r} has {len(self.data)} tokens, fewer than length + 1")

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
