"""Tokenizers: UTF-8 bytes, or a Hugging Face directory's `tokenizer.json` read by the `tokenizers` library.

A pretrained model's directory ships its fast tokenizer as `tokenizer.json`; the text tasks encode
with it when their `tokenizer` key names that directory (an adapted model's config fills it in
with the base directory). `tokenizers` comes with the `hf` extra and is imported only here.
"""

import codecs
import itertools
from abc import ABC, abstractmethod
from collections.abc import Callable
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tokenizers  # the optional 'hf' extra

HF_EXTRA = "uv sync --extra hf"


def tokenizers_library() -> ModuleType:
    try:
        import tokenizers
    except ImportError as error:
        raise ImportError(f"a tokenizer directory needs the 'hf' extra (tokenizers is missing): {HF_EXTRA}") from error
    return tokenizers


@cache
def load_tokenizer(directory: str) -> "tokenizers.Tokenizer":
    """The `tokenizers.Tokenizer` of `directory/tokenizer.json`; a ValueError names a missing or unreadable file."""
    file = Path(directory) / "tokenizer.json"
    if not file.is_file():
        raise ValueError(f"tokenizer {directory!r} has no tokenizer.json (a Hugging Face fast tokenizer file)")
    library = tokenizers_library()
    try:
        return library.Tokenizer.from_file(str(file))
    except Exception as error:  # the Rust library raises its own exception type for a damaged file
        raise ValueError(f"{file} is not a readable tokenizer file: {error}") from error


def encode(tokenizer: str, text: bytes) -> list[int]:
    """The token ids of UTF-8 `text` under the tokenizer of directory `tokenizer`."""
    return load_tokenizer(tokenizer).encode(text.decode("utf-8", errors="replace")).ids


def decode_bytes(ids: list[int]) -> str:
    """Byte-level token ids as UTF-8 text; an id >= 256 is no byte and shows as `<id>`.

    (A text model whose vocab_size exceeds 256 has such ids: they never occur in its training data
    but can still be sampled.)
    """
    pieces = []
    for is_byte, group in itertools.groupby(ids, key=lambda i: i < 256):
        run = list(group)
        pieces.append(bytes(run).decode("utf-8", errors="replace") if is_byte else "".join(f"<{i}>" for i in run))
    return "".join(pieces)


class Tokenizer(ABC):
    """Text <-> the token ids a model reads."""

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """The ids of `text`."""

    @abstractmethod
    def decode(self, ids: list[int]) -> str:
        """The text of `ids`."""

    def stream_decoder(self) -> Callable[[int], str]:
        """A function taking the ids of a text one at a time and returning the text each completes.

        A character spread over several ids arrives with its last one: the text decoded so far is
        held back while it ends in U+FFFD, the mark of a character still incomplete.
        """
        ids: list[int] = []
        shown = ""

        def push(token: int) -> str:
            nonlocal shown
            ids.append(token)
            text = self.decode(ids)
            if text.endswith("\ufffd"):
                return ""
            piece, shown = text[len(shown) :], text
            return piece

        return push


class ByteTokenizer(Tokenizer):
    """A byte-level model's tokenizer: the ids are the text's UTF-8 bytes."""

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return decode_bytes(ids)

    def stream_decoder(self) -> Callable[[int], str]:
        """UTF-8 decoded incrementally (an invalid byte shows as U+FFFD at once); an id >= 256 shows as `<id>`."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        return lambda token: decoder.decode(bytes([token])) if token < 256 else f"<{token}>"


class DirectoryTokenizer(Tokenizer):
    """The fast tokenizer (`tokenizer.json`) of a Hugging Face directory (`load_tokenizer`)."""

    def __init__(self, directory: str):
        self.directory = directory
        self.library_tokenizer = load_tokenizer(directory)

    def encode(self, text: str) -> list[int]:
        return self.library_tokenizer.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        return self.library_tokenizer.decode(ids)
