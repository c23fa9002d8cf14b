"""A small byte-level model (random weights) whose embeddings the memory tests use."""

import pytest
import torch

from src.config import resolve_model_section
from src.memory_system.embedding import embed_texts
from src.model import PaperModel


def byte_model(seed: int = 0) -> PaperModel:
    raw = {"vocab_size": 256, "d_model": 32, "tie_embeddings": True}
    raw["blocks"] = [{"mixer": {"type": "attention", "n_heads": 2}, "mlp": {"type": "swiglu", "d_hidden": 64}}]
    torch.manual_seed(seed)
    return PaperModel(resolve_model_section(raw, "<test>")).eval()


@pytest.fixture(scope="session")
def model() -> PaperModel:
    return byte_model()


@pytest.fixture(scope="session")
def embed(model):
    return lambda texts: embed_texts(model, texts)
