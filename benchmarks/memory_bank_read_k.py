"""A trained routed memory bank read with k = 1, 2, 4, 8 of its 8 chapters and as int8 / 4-bit codes.

    python benchmarks/memory_bank_read_k.py [--threads 1]

Trains `configs/memory_bank_read_k.yaml` (MQAR, 2 of 8 chapters per token, 1,600 steps) on the CPU and
writes `results/memory_bank_read_k_cpu.md`: held-out loss and accuracy of the one trained checkpoint
read with each top_k and quantisation (the config's `eval.settings` model overrides).
"""

import argparse
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from src.config import load_experiment
from src.training import train

ROOT = Path(__file__).resolve().parents[1]
READS = [("top_k 1", "model.blocks[1].mixer.top_k=1,model.blocks[3].mixer.top_k=1"), ("top_k 2 (trained)", ""),
         ("top_k 4", "model.blocks[1].mixer.top_k=4,model.blocks[3].mixer.top_k=4"),
         ("top_k 8 (the whole bank)", "model.blocks[1].mixer.top_k=8,model.blocks[3].mixer.top_k=8"),
         ("top_k 2, bank as int8", "model.blocks[1].mixer.quantize=8,model.blocks[3].mixer.quantize=8"),
         ("top_k 2, bank as 4-bit", "model.blocks[1].mixer.quantize=4,model.blocks[3].mixer.quantize=4")]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    experiment = load_experiment(ROOT / "configs" / "memory_bank_read_k.yaml")
    with tempfile.TemporaryDirectory() as out_dir:
        experiment = replace(experiment, train=replace(experiment.train, out_dir=out_dir))
        started = time.perf_counter()
        final = train(experiment)
        seconds = time.perf_counter() - started
    rows = [
        f"| {name} | {final['eval_loss' + (f'@{label}' if label else '')]:.4f} | "
        f"{final['eval_accuracy' + (f'@{label}' if label else '')]:.4f} |"
        for name, label in READS
    ]
    text = "\n".join([
        f"# A trained memory bank read with k chapters ({platform.processor() or platform.machine()}, "
        f"{args.threads} thread, torch {torch.__version__})",
        "",
        "`python benchmarks/memory_bank_read_k.py` trains `configs/memory_bank_read_k.yaml` (MQAR, 4 pairs in "
        "16 tokens, chance 0.25; two memory-bank blocks of 8 chapters of 16 rows, each token reading 2; "
        f"{experiment.train.steps} steps at batch {experiment.train.batch_size}, {seconds:.0f} s) and evaluates "
        f"the one checkpoint on {experiment.eval.num_examples} held-out examples, read with each setting "
        "(`eval.settings` model overrides, "
        "the same as `memory-models evaluate CONFIG CHECKPOINT --set model.blocks[1].mixer.top_k=4 ...`).",
        "",
        "| read with | held-out loss | held-out accuracy |",
        "|---|---|---|",
        *rows,
        "",
    ])  # fmt: skip
    path = ROOT / "benchmarks" / "results" / "memory_bank_read_k_cpu.md"
    path.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
