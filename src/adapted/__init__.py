"""Adapting frozen pretrained causal LMs: memory adapters and LoRA over a Hugging Face base.

`base` loads a local `save_pretrained` directory (frozen, its decoder linears optionally int8 or
NF4), `config` validates a model section with `base` and `adapters`, `model` is the adapted model
the training harness runs, and `tiny_base` writes small random bases with a trained tokenizer.
"""
