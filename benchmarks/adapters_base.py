"""Write and pretrain the small Llama base that the adapter comparisons adapt, then save it as a base directory.

1. A random Llama and a byte-level BPE tokenizer trained on the corpus's training split are written
   to the directory `configs/adapters_pretrain_base.yaml` names (`src.adapted.tiny_base`).
2. That config trains it with full fine-tuning (`freeze: false`) through the ordinary harness.
3. The trained weights are saved with `save_pretrained`, beside the tokenizer, in `--out`.

    uv run --extra hf python benchmarks/adapters_base.py            # runs/bases/tiny-llama (about 5 minutes on 2 cores)
"""

import argparse
import shutil
from pathlib import Path

from src import training
from src.adapted.tiny_base import write_tiny_base
from src.config import load_experiment
from src.runs import CHECKPOINT, build_model, load_model, read_checkpoint

CONFIG = Path("configs/adapters_pretrain_base.yaml")
LLAMA = {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
         "intermediate_size": 384, "vocab_size": 1024}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bases/tiny-llama")
    args = parser.parse_args()
    initial = Path("runs/bases/tiny-llama-init")
    write_tiny_base(initial, "data/tinyshakespeare.txt", "llama", **LLAMA)
    experiment = load_experiment(CONFIG)
    result = training.train(experiment, overwrite=True)
    model = build_model(experiment.model, experiment.file)
    checkpoint = Path(experiment.train.out_dir) / CHECKPOINT
    load_model(checkpoint, read_checkpoint(checkpoint), model)
    out = Path(args.out)
    model.base.save_pretrained(out)
    shutil.copy(initial / "tokenizer.json", out / "tokenizer.json")
    print(f"wrote {out}: held-out {result['eval_bits_per_byte']:.3f} bits per byte after {result['step']} steps")


if __name__ == "__main__":
    main()
