"""Embeddings from the serving model: mean-pooled final hidden states, L2-normalised."""

import numpy as np
import pytest
import torch

from src.memory_system.embedding import embed_texts
from src.tasks.tokenizer import ByteTokenizer


def test_equals_mean_pooled_normalised_hidden_states(model):
    texts = ["To be, or not to be", "naïve café ☕", "x"]
    got = embed_texts(model, texts)
    for row, text in zip(got, texts):
        ids = torch.tensor([list(text.encode("utf-8"))])
        with torch.no_grad():
            pooled = model.hidden_states(ids)[0].double().mean(dim=0)
        expected = (pooled / pooled.norm()).numpy()
        np.testing.assert_allclose(row, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-6)


def test_batching_does_not_change_a_vector(model):
    texts = [f"memory number {i:03d}" for i in range(40)] + ["a longer text of another length"]
    together = embed_texts(model, texts, batch_size=7)
    alone = np.stack([embed_texts(model, [text])[0] for text in texts])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6)
    assert not np.allclose(together[0], together[1])  # different texts, different vectors


def test_bytes_are_the_tokens_and_empty_text_is_refused(model):
    assert ByteTokenizer().encode("é!") == [0xC3, 0xA9, 0x21]
    with pytest.raises(ValueError, match="non-empty"):
        embed_texts(model, ["ok", ""])
