"""Token-level compressive memory: chunked form vs the token-by-token recurrence, and state size.

    python benchmarks/compressive_memory_speed.py [--lengths 512 2048 8192] [--repeats 3]

Batch 1, 8 heads, d_k = d_v = 64, float32, linear update (Infini-attention Eq. 3-4, token level).
`linear_memory_chunked` (chunk 64) and `compressive_memory_recurrent(segment_size=1)` are timed
side by side in one run: forward, and forward + backward up to L = 2048 (the recurrence's autograd
graph grows with L). Then the state a layer carries between `step` calls, measured from the state
tensors after L - 1 tokens (d_model 512, 8 heads, one layer, float32): the memory-only layer, gated
Infini-attention (segment 64) and the KV cache of causal self-attention.
"""

import argparse
import dataclasses
from pathlib import Path

import torch
from timing import ratio_row

from src.layers.attention import CausalSelfAttention
from src.layers.compressive_memory import (
    InfiniAttention,
    TensorMemory,
    compressive_memory_recurrent,
    elu_plus_one,
    linear_memory_chunked,
)

HEADS, D_HEAD, CHUNK, SEGMENT = 8, 64, 64, 64


def state_bytes(layer, length: int) -> int:
    """Bytes of the state after `length` - 1 tokens (the gated layer's segment buffer is then fullest)."""
    with torch.no_grad():
        _, state = layer.step(torch.randn(1, length - 1, HEADS * D_HEAD), None)
    tensors = [getattr(state, field.name) for field in dataclasses.fields(state)]  # M, z and the segment's k, v
    return sum(t.numel() * t.element_size() for t in tensors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 8192])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-backward-length", type=int, default=2048)
    args = parser.parse_args()
    rows = ["| L | pass | recurrence (s) | chunked (s) | speed-up |", "|---|---|---|---|---|"]
    for length in args.lengths:
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, HEADS, length, D_HEAD, generator=g).requires_grad_() for _ in range(3))
        passes = [("forward", False)] + ([("forward+backward", True)] if length <= args.max_backward_length else [])
        for name, backward in passes:

            def run(chunked, backward=backward, q=q, k=k, v=v):
                with torch.set_grad_enabled(backward):
                    sq, sk = elu_plus_one(q), elu_plus_one(k)
                    if chunked:
                        A, _, _ = linear_memory_chunked(sq, sk, v, CHUNK)
                    else:
                        A, _, _ = compressive_memory_recurrent(sq, sk, v, "linear", 1)
                    if backward:
                        A.sum().backward()

            rows.append(ratio_row(f"{length} | {name}", lambda: run(False), lambda: run(True), "cpu", args.repeats))
    d_model = HEADS * D_HEAD
    layers = {
        "memory-only (M, z)": TensorMemory(d_model, HEADS),
        f"gated Infini-attention (M, z, segment of {SEGMENT})": InfiniAttention(d_model, HEADS, SEGMENT),
        "attention KV cache": CausalSelfAttention(d_model, HEADS),
    }
    size_rows = ["| L | " + " | ".join(layers) + " |", "|---|" + "---|" * len(layers)]
    for length in args.lengths:
        sizes = [state_bytes(layer, length) / 2**10 for layer in layers.values()]
        size_rows.append(f"| {length} | " + " | ".join(f"{kib:,.0f} KiB" for kib in sizes) + " |")
        print(size_rows[-1], flush=True)
    header = (
        f"# Compressive memory: chunked vs recurrence (CPU, {torch.get_num_threads()} threads, batch 1, "
        f"{HEADS} heads, d_k = d_v = {D_HEAD}, chunk {CHUNK}, float32)\n\n"
    )
    sizes_header = f"\n\n## State carried between steps, one layer (d_model {d_model}, {HEADS} heads, float32)\n\n"
    out = Path(__file__).parent / "results" / "compressive_memory_cpu.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(header + "\n".join(rows) + sizes_header + "\n".join(size_rows) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
