"""Text embeddings from the serving language model: mean-pooled final hidden states, L2-normalised.

The text is read through the model's own tokenizer (UTF-8 bytes for a byte-level model, the base's
for an adapted one), so no separate embedding model is needed; any `LanguageModel` embeds the same way.
"""

from collections import defaultdict

import numpy as np
import torch

from src.language_model import LanguageModel


@torch.no_grad()
def embed_texts(model: LanguageModel, texts: list[str], batch_size: int = 256) -> np.ndarray:
    """(len(texts), hidden_size) float32 unit vectors: the mean over positions of `model.hidden_states`.

    Texts of equal token length share one forward pass (no padding, so any mixer, causal or not,
    sees exactly its text), at most `batch_size` texts at a time. Every text must be non-empty.
    """
    if any(not text for text in texts):
        raise ValueError("texts must be non-empty to be embedded")
    device = model.device
    was_training = model.training
    model.eval()
    by_length: dict[int, list[int]] = defaultdict(list)
    encoded = [model.tokenizer.encode(text) for text in texts]
    for i, ids in enumerate(encoded):
        by_length[len(ids)].append(i)
    out = np.empty((len(texts), model.hidden_size), dtype=np.float32)
    for same_length in by_length.values():
        for start in range(0, len(same_length), batch_size):
            rows = same_length[start : start + batch_size]
            ids = torch.tensor([encoded[i] for i in rows], device=device)
            pooled = model.hidden_states(ids).float().mean(dim=1)
            out[rows] = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()
    model.train(was_training)
    return out
