"""Token-level delta-rule memory: the chunked WY / UT form vs the token-by-token recurrence (CPU).

    python benchmarks/delta_rule_speed.py [--lengths 2048 8192] [--repeats 3] [--batch 1]

Infini-attention's Eq. (3), (5) at token level (segment_size = 1), float32, 8 heads, d_k = d_v = 64:
`delta_memory_chunked` (chunk 64, DeltaNet's WY representation / UT transform) and
`compressive_memory_recurrent(update="delta", segment_size=1)` timed side by side in one run,
forward and forward + backward, with the largest difference of the float32 chunked output from
the float64 recurrence. Writes results/delta_rule_cpu.md.
"""

import argparse
import sys
from pathlib import Path

import torch
from timing import ratio_row

from src.layers.compressive_memory import compressive_memory_recurrent, delta_memory_chunked, elu_plus_one

HEADS, D_HEAD, CHUNK = 8, 64, 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    rows = [
        "| L | pass | token loop (s) | chunked (s) | speed-up |",
        "|---|---|---|---|---|",
    ]
    errors = ["| L | max abs difference, chunked float32 vs loop float64 | max abs output |", "|---|---|---|"]
    for length in args.lengths:
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(args.batch, HEADS, length, D_HEAD, generator=g).requires_grad_() for _ in range(3))
        for name, backward in (("forward", False), ("forward+backward", True)):

            def run(chunked, backward=backward, q=q, k=k, v=v):
                with torch.set_grad_enabled(backward):
                    sq, sk = elu_plus_one(q), elu_plus_one(k)
                    if chunked:
                        A, _, _ = delta_memory_chunked(sq, sk, v, CHUNK)
                    else:
                        A, _, _ = compressive_memory_recurrent(sq, sk, v, "delta", 1)
                    if backward:
                        A.sum().backward()

            rows.append(ratio_row(f"{length} | {name}", lambda: run(False), lambda: run(True), "cpu", args.repeats))
        with torch.no_grad():
            A, _, _ = delta_memory_chunked(elu_plus_one(q), elu_plus_one(k), v, CHUNK)
            A_ref, _, _ = compressive_memory_recurrent(
                elu_plus_one(q.double()), elu_plus_one(k.double()), v.double(), "delta", 1
            )
        errors.append(f"| {length} | {(A.double() - A_ref).abs().max().item():.2e} | {A_ref.abs().max().item():.2f} |")
        print(errors[-1], flush=True)
    header = (
        f"# Delta-rule memory, token level: chunked (WY / UT) vs token loop (CPU, {torch.get_num_threads()} threads, "
        f"batch {args.batch}, {HEADS} heads, d_k = d_v = {D_HEAD}, chunk {CHUNK}, float32)\n\n"
        f"`uv run python benchmarks/delta_rule_speed.py {' '.join(sys.argv[1:])}`".rstrip()
        + "\n\nBoth forms run side by side in one process; on a CPU shared with other processes only the ratios "
        "are meaningful, and a ratio still moves with the load.\n\n"
    )
    out = Path(__file__).parent / "results" / "delta_rule_cpu.md"
    out.write_text(header + "\n".join(rows) + "\n\n" + "\n".join(errors) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
