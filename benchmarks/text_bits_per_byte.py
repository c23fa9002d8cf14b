"""Bits per byte of a finished text comparison, one row per model and one column per evaluation length.

    python benchmarks/text_bits_per_byte.py runs/compare_text/compare.json [--out results/compare_text_cpu.md]

Reads the `compare.json` that `memory-models compare` writes for a `text` task and prints (and with
`--out` writes) a markdown table: parameters, held-out bits per byte at the training context and at
each `eval.settings` length, the change from the training context to the longest one, and training
tokens/s. A non-finite loss (a model that diverged on the longer window) prints as `nan`.
"""

import argparse
import json
import math
import re
from pathlib import Path

BITS = "eval_bits_per_byte"


def lengths(row: dict) -> list[int]:
    """The evaluation lengths of a row's `eval_bits_per_byte@length=N` keys, ascending."""
    return sorted(int(match[1]) for key in row if (match := re.fullmatch(rf"{BITS}@length=(\d+)", key)))


def table(rows: list[dict], train_length: int) -> str:
    longer = lengths(rows[0])
    header = ["model", "parameters", f"bits/byte @ {train_length} (train)", *(f"@ {n}" for n in longer)]
    header += [f"change {train_length} -> {longer[-1]}" if longer else "change", "train tokens/s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        values = [row[BITS], *(row[f"{BITS}@length={n}"] for n in longer)]
        change = values[-1] - values[0]
        cells = [row["model"], f"{row['parameters']:,}", *(f"{v:.3f}" for v in values)]
        cells += ["nan" if math.isnan(change) else f"{change:+.3f}", f"{row['tokens_per_s']:,.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("compare_json", type=Path)
    parser.add_argument("--train-length", type=int, required=True, help="the task's training length")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    text = table(json.loads(args.compare_json.read_text()), args.train_length)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
