"""Language modelling on a text file or a local dataset, byte-level or through a pretrained model's tokenizer.

The text is a file (`path`) or a local dataset (`dataset`: JSON, JSON lines, Parquet, CSV or text
files, a file or a directory of them, read by Hugging Face `datasets` from the disk, extra
`datasets`), whose `column` values are joined by newlines into one text. Without `tokenizer`, the
text's bytes are the tokens (vocabulary 256). With `tokenizer` (a directory holding a Hugging Face
`tokenizer.json`; an adapted model's config sets its base directory), each split is encoded by
that tokenizer and the vocabulary is the tokenizer's. The first (1 - eval_fraction) of the bytes
are the training split and the rest the held-out split, cut at the same byte whatever the
tokenizer; a batch is random windows of `length + 1` tokens of its split (inputs the first
`length`, targets the last `length`: every position is scored). `bytes_per_token` of the split
turns a loss in nats per token into bits per byte, loss / (ln 2 · bytes_per_token), comparable
across tokenizers; perplexity is per token.
"""

import copy
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

import torch

from src.schema import PositiveInt, UnitFloat
from src.tasks.common import generator
from src.tasks.tokenizer import encode, load_tokenizer


@dataclass(frozen=True)
class LocalDataset:
    """The text task's `dataset`: local files of one format and the column that holds the text."""

    path: str
    format: Literal["json", "jsonl", "parquet", "csv", "text"]
    column: str = "text"


SUFFIXES = {"json": (".json",), "jsonl": (".jsonl",), "parquet": (".parquet",), "csv": (".csv",), "text": (".txt",)}


def dataset_files(dataset: LocalDataset) -> list[str]:
    """The dataset's files: its path, or the files of its format in that directory (sorted)."""
    source = Path(dataset.path)
    if source.is_file():
        return [str(source.resolve())]
    if not source.is_dir():
        raise ValueError(f"dataset.path {dataset.path!r} is neither a file nor a directory")
    files = sorted(str(p.resolve()) for p in source.iterdir() if p.suffix in SUFFIXES[dataset.format])
    if not files:
        raise ValueError(f"dataset.path {dataset.path!r} holds no {' or '.join(SUFFIXES[dataset.format])} file")
    return files


def dataset_text(dataset: LocalDataset) -> bytes:
    """The `column` values of a local dataset, joined by newlines, as UTF-8 (read by `datasets`, extra `datasets`)."""
    try:
        import datasets
    except ImportError as error:
        raise ValueError("task.dataset needs the 'datasets' extra: uv sync --extra datasets") from error
    files = dataset_files(dataset)
    builder = "json" if dataset.format == "jsonl" else dataset.format  # one reader for JSON and JSON lines
    with tempfile.TemporaryDirectory() as cache_dir:  # its Arrow cache is not kept
        datasets.disable_progress_bars()
        try:
            table = datasets.load_dataset(builder, data_files=files, split="train", cache_dir=cache_dir)
        except Exception as error:  # datasets raises many types for a file it cannot parse
            raise ValueError(f"dataset.path {dataset.path!r} is not readable as {dataset.format}: {error}") from error
        if dataset.column not in table.column_names:
            raise ValueError(
                f"dataset.column {dataset.column!r} is not a column of {dataset.path!r}; it has {table.column_names}"
            )
        texts = table[dataset.column]
    if bad := [value for value in texts if not isinstance(value, str)]:
        raise ValueError(f"dataset.column {dataset.column!r} must hold text, it holds {type(bad[0]).__name__} values")
    return "\n".join(texts).encode("utf-8")


@cache
def _split_tokens(
    source: str | LocalDataset, eval_fraction: float, tokenizer: str | None
) -> dict[str, tuple[torch.Tensor, float]]:
    """split -> (token ids, bytes per token), the file or dataset read and encoded once per process."""
    data = Path(source).read_bytes() if isinstance(source, str) else dataset_text(source)
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
    """Random windows of a text's tokens (a file or a local dataset); `held_out()` reads the evaluation split."""

    def __init__(
        self,
        length: PositiveInt,
        path: str | None = None,
        dataset: LocalDataset | None = None,
        eval_fraction: UnitFloat = 0.1,
        split: Literal["train", "eval"] = "train",
        tokenizer: str | None = None,
    ):
        if (path is None) == (dataset is None):
            raise ValueError("give the text as path (a text file) or as dataset (local dataset files), one of them")
        if path is not None and not Path(path).is_file():
            raise ValueError(f"path {path!r} is not a file (relative paths start at the working directory)")
        self.vocab_size = 256 if tokenizer is None else load_tokenizer(tokenizer).get_vocab_size()
        source = str(Path(path).resolve()) if path is not None else dataset
        self._splits = _split_tokens(source, eval_fraction, tokenizer)
        self.path = dataset.path if dataset is not None else str(path)
        self.length, self.eval_fraction, self.tokenizer = length, eval_fraction, tokenizer
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
