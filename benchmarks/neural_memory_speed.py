"""Titans linear neural memory: chunked (mini-batch, Sec. 3.2) form vs the token-by-token recurrence.

    python benchmarks/neural_memory_speed.py [--lengths 512 2048] [--chunk 16] [--repeats 3]

Batch 4, d_k = d_v = 64, float32, random gates as the layer produces them. The chunked
form at chunk size b takes each gradient at the chunk's starting memory (its own definition, not
the recurrence, for b > 1); both run side by side in one run, forward and forward + backward.
"""

import argparse
from pathlib import Path

import torch
from timing import ratio_row

from src.layers.neural_memory import neural_memory_chunked, neural_memory_recurrent

BATCH, D = 4, 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--chunk", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = ["| L | pass | recurrence (s) | chunked (s) | speed-up |", "|---|---|---|---|---|"]
    for length in args.lengths:
        g = torch.Generator().manual_seed(0)
        q = torch.randn(BATCH, length, D, generator=g).requires_grad_()
        k = torch.nn.functional.normalize(torch.randn(BATCH, length, D, generator=g), dim=-1).requires_grad_()
        v = torch.randn(BATCH, length, D, generator=g).requires_grad_()
        alpha, eta, theta = (torch.rand(BATCH, length, generator=g) * s for s in (0.1, 0.9, 0.3))
        M0 = torch.zeros(BATCH, D, D, requires_grad=True)
        for name, backward in (("forward", False), ("forward+backward", True)):

            def run(chunked, backward=backward, q=q, k=k, v=v, gates=(alpha, eta, theta), M0=M0):
                with torch.set_grad_enabled(backward):
                    if chunked:
                        y, _, _ = neural_memory_chunked(q, k, v, *gates, args.chunk, {"M": M0})
                    else:
                        y, _, _ = neural_memory_recurrent(q, k, v, *gates, M0)
                    if backward:
                        y.sum().backward()

            rows.append(ratio_row(f"{length} | {name}", lambda: run(False), lambda: run(True), "cpu", args.repeats))
    header = (
        f"# Titans linear memory: chunked (b = {args.chunk}) vs recurrence "
        f"(CPU, {torch.get_num_threads()} threads, batch {BATCH}, d_k = d_v = {D}, float32)\n\n"
    )
    out = Path(__file__).parent / "results" / "neural_memory_cpu.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(header + "\n".join(rows) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
