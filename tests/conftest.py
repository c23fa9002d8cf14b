"""Shared test settings: Triton's interpreter without a GPU, hypothesis profiles, small helpers."""

import os
import shutil
from pathlib import Path

# Without a GPU the Triton kernels (src/kernels) run in Triton's interpreter on CPU tensors; the
# switch is read when triton is imported, so it is set before any test module imports it.
if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
from hypothesis import settings

settings.register_profile("default", deadline=None, max_examples=25)
settings.register_profile("ci", deadline=None, max_examples=25, derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")

ROOT = Path(__file__).resolve().parents[1]

CORPUS = ROOT / "data" / "tinyshakespeare.txt"


@pytest.fixture(scope="session")
def tiny_bases(tmp_path_factory) -> dict[str, Path]:
    """A tiny random Llama and Qwen2 (tied embeddings) saved with save_pretrained, each with a BPE
    tokenizer trained on the committed corpus; written once per test session."""
    pytest.importorskip("transformers")
    from src.adapted.tiny_base import write_tiny_base

    root = tmp_path_factory.mktemp("bases")
    return {
        kind: write_tiny_base(root / kind, CORPUS, kind, tie_word_embeddings=kind == "qwen2")
        for kind in ("llama", "qwen2")
    }
