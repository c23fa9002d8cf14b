"""A small random Llama or Qwen2 with a BPE tokenizer trained on a text file, saved as a base directory.

No checkpoint can be downloaded here, so the adapters are tried on bases made locally: the
tokenizer is a byte-level BPE (the Llama 3 / Qwen2 kind) trained with the `tokenizers` library on
the training split of a text file, and the model is `LlamaConfig` / `Qwen2Config` with small sizes
and random weights, written with `save_pretrained` beside its `tokenizer.json`. With `chat_template`
the tokenizer also holds the special tokens of its family's chat format (Llama 3's header and
end-of-turn tokens, Qwen2's ChatML) and `tokenizer_config.json` carries the template, as a chat
model's directory does. The tests build theirs this way; `benchmarks/adapters_base.py` also
pretrains one before adapting it.
"""

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from src.adapted.base import transformers_library
from src.tasks.tokenizer import tokenizers_library

if TYPE_CHECKING:
    import tokenizers  # the optional 'hf' extra

# Chat templates in the layout of Meta-Llama-3-Instruct and Qwen2-Instruct, and the special tokens they use.
CHAT_FORMATS = {
    "llama": (
        "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
        "{{ message['content'] }}<|eot_id|>{% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}",
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
        ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    ),
    "qwen2": (
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
        {"eos_token": "<|im_end|>"},
        ["<|im_start|>", "<|im_end|>"],
    ),
}


def train_tokenizer(
    corpus: str | Path, vocab_size: int, eval_fraction: float = 0.1, special_tokens: Sequence[str] = ()
) -> "tokenizers.Tokenizer":
    """A byte-level BPE tokenizer of `vocab_size` entries trained on the first (1 - eval_fraction) of `corpus`
    (`special_tokens` first: ids 0, 1, ..., never split)."""
    library = tokenizers_library()
    data = Path(corpus).read_bytes()
    text = data[: int(len(data) * (1 - eval_fraction))].decode("utf-8", errors="replace")
    tokenizer = library.Tokenizer(library.models.BPE())
    tokenizer.pre_tokenizer = library.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = library.decoders.ByteLevel()
    trainer = library.trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=library.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        special_tokens=list(special_tokens),
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
    chat_template: bool = False,
) -> Path:
    """Write a random `model_type` ("llama" or "qwen2") causal LM and its tokenizer to `directory` (with its
    family's chat template and special tokens when `chat_template`)."""
    transformers = transformers_library()
    configs = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config}
    if model_type not in configs:
        raise ValueError(f"model_type must be one of {sorted(configs)}, got {model_type!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    template, named_tokens, special = CHAT_FORMATS[model_type] if chat_template else (None, {}, [])
    tokenizer = train_tokenizer(corpus, vocab_size, special_tokens=special)
    tokenizer.save(str(directory / "tokenizer.json"))
    if chat_template:
        settings = {"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": template, **named_tokens}
        (directory / "tokenizer_config.json").write_text(json.dumps(settings, indent=2))
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
