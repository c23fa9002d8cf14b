"""Hugging Face tokenizers for the text tasks: a directory's `tokenizer.json`, read by the `tokenizers` library.

A pretrained model's directory ships its fast tokenizer as `tokenizer.json`; the text tasks encode
with it when their `tokenizer` key names that directory (an adapted model's config fills it in
with the base directory). `tokenizers` comes with the `hf` extra and is imported only here.
"""

from functools import cache
from pathlib import Path

HF_EXTRA = "uv sync --extra hf"


def tokenizers_library():
    try:
        import tokenizers
    except ImportError as error:
        raise ImportError(f"a tokenizer directory needs the 'hf' extra (tokenizers is missing): {HF_EXTRA}") from error
    return tokenizers


@cache
def load_tokenizer(directory: str):
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
