"""A small random Llama or Qwen2 with a BPE tokenizer trained on a text file, saved as a base directory.

No checkpoint can be downloaded here, so the adapters are tried on bases made locally: the
tokenizer is a byte-level BPE (the Llama 3 / Qwen2 kind) trained with the `tokenizers` library on
the training split of a text file, and the model is `LlamaConfig` / `Qwen2Config` with small sizes
and random weights, written with `save_pretrained` beside its `tokenizer.json`. The tests build
theirs this way; `benchmarks/adapters_base.py` also pretrains one before adapting it.
"""

from pathlib import Path

import torch

from src.adapted.base import transformers_library
from src.tasks.tokenizer import tokenizers_library


def train_tokenizer(corpus: str | Path, vocab_size: int, eval_fraction: float = 0.1):
    """A byte-level BPE tokenizer of `vocab_size` entries trained on the first (1 - eval_fraction) of `corpus`."""
    library = tokenizers_library()
    data = Path(corpus).read_bytes()
    text = data[: int(len(data) * (1 - eval_fraction))].decode("utf-8", errors="replace")
    tokenizer = library.Tokenizer(library.models.BPE())
    tokenizer.pre_tokenizer = library.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = library.decoders.ByteLevel()
    trainer = library.trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=library.pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(text.splitlines(keepends=True), trainer)
    return tokenizer


def write_tiny_base(
    directory: str | Path,
    corpus: str | Path,
    model_type: str = "llama",
    vocab_size: int = 512,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    intermediate_size: int = 128,
    tie_word_embeddings: bool = False,
    seed: int = 0,
) -> Path:
    """Write a random `model_type` ("llama" or "qwen2") causal LM and its tokenizer to `directory`."""
    transformers = transformers_library()
    configs = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config}
    if model_type not in configs:
        raise ValueError(f"model_type must be one of {sorted(configs)}, got {model_type!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(corpus, vocab_size)
    tokenizer.save(str(directory / "tokenizer.json"))
    config = configs[model_type](
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=tie_word_embeddings,
    )
    torch.manual_seed(seed)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    return directory
