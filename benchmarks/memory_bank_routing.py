"""A 100K-token memory bank: chapter routing (top-k of N chapters) against reading the whole bank,
and the bank's storage and read error when quantised.

    python benchmarks/memory_bank_routing.py [--device cpu|cuda] [--repeats 3]

d_model 256, 4 heads, bank of 102,400 tokens in 100 chapters of 1,024, top-2 routing per
sequence, batch 2 x 128 tokens, float32, forward without gradients. Both layers share weights and
run side by side in one run: time (median of --repeats) and, on CUDA, peak memory
(torch.cuda.max_memory_allocated above the weights). Then the bank quantised to int8 and 4-bit:
bytes stored and the largest change of the layer's output.
"""

import argparse
from pathlib import Path

import torch
from timing import timed

from src.layers.memory_bank import MemoryBankAttention

D_MODEL, HEADS, CHAPTERS, ROWS, TOP_K, BATCH, LENGTH = 256, 4, 100, 1024, 2, 2, 128


def peak_bytes(fn, device: str) -> int | None:
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    n_memory = CHAPTERS * ROWS
    routed = MemoryBankAttention(D_MODEL, HEADS, n_memory, chapters=CHAPTERS, top_k=TOP_K, routing="sequence")
    whole = MemoryBankAttention(D_MODEL, HEADS, n_memory)
    whole.load_state_dict({k: v for k, v in routed.state_dict().items() if not k.startswith("router")})
    routed, whole = routed.to(args.device), whole.to(args.device)
    x = torch.randn(BATCH, LENGTH, D_MODEL, device=args.device)
    rows = ["| read | time (s) | peak memory (MiB) |", "|---|---|---|"]
    results = {}
    with torch.no_grad():
        for name, layer in ((f"routed: top-{TOP_K} of {CHAPTERS} chapters", routed), ("whole bank", whole)):
            seconds = timed(lambda layer=layer: layer(x), args.device, args.repeats)
            peak = peak_bytes(lambda layer=layer: layer(x), args.device)
            results[name] = (seconds, peak)
            rows.append(f"| {name} | {seconds:.4f} | {'-' if peak is None else f'{peak / 2**20:,.0f}'} |")
            print(rows[-1], flush=True)
        (t_routed, m_routed), (t_whole, m_whole) = results.values()
        ratio = f"whole / routed: time {t_whole / t_routed:.1f}x"
        if m_routed:
            ratio += f", peak memory {m_whole / m_routed:.1f}x"
        print(ratio)
        reference = routed(x)
        float_bytes = n_memory * D_MODEL * 4
        storage = ["| bank storage | bytes | saving vs float32 | max abs output change |", "|---|---|---|---|"]
        storage.append(f"| float32 | {float_bytes:,} | 1.0x | 0 |")
        for bits in (8, 4):
            layer = MemoryBankAttention(D_MODEL, HEADS, n_memory, chapters=CHAPTERS, top_k=TOP_K, routing="sequence")
            layer.load_state_dict(routed.state_dict())
            layer = layer.to(args.device)
            layer.quantize(bits)
            q = layer.quantized
            stored = sum(t.numel() * t.element_size() for t in (q["codes"], q["scale"]))
            change = (layer(x) - reference).abs().max().item()
            storage.append(f"| {bits}-bit | {stored:,} | {float_bytes / stored:.2f}x | {change:.2e} |")
            print(storage[-1], flush=True)
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    header = (
        f"# Memory bank of {n_memory:,} tokens: routed vs whole-bank read ({device}; d_model {D_MODEL}, "
        f"{HEADS} heads, batch {BATCH} x {LENGTH}, float32, forward)\n\n"
    )
    out = Path(__file__).parent / "results" / f"memory_bank_routing_{args.device}.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(header + "\n".join(rows) + f"\n\n{ratio}\n\n" + "\n".join(storage) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
