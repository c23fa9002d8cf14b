"""Speed of the chunked `selective_scan` against the literal `selective_scan_sequential`.

    python benchmarks/selective_scan_speed.py [--device cpu|cuda] [--lengths 512 2048 8192]

Batch 1, d 1536 (mamba-130m's d_inner), N 16, float32, with D, z, Δ bias and softplus as in the
Mamba block. Both forms are timed side by side in one run (median of --repeats), forward alone and
forward + backward; then forward + backward of one whole Mamba block (d_model 768, as in
mamba-130m) with each scan inside. The table goes to stdout and to benchmarks/results/.
"""

import argparse
from pathlib import Path

import torch
from timing import ratio_row

from src.layers.selective_ssm import MambaMixer, selective_scan, selective_scan_sequential


def inputs(length: int, device: str, d: int = 1536, N: int = 16) -> list:
    g = torch.Generator().manual_seed(0)
    tensors = [
        torch.randn(1, d, length, generator=g),  # u
        torch.randn(1, d, length, generator=g) - 4,  # s_Δ: softplus(-4 + bias) ~ Mamba's initial Δ
        -torch.arange(1.0, N + 1).repeat(d, 1),  # A (S4D-Real)
        torch.randn(1, N, length, generator=g),  # B
        torch.randn(1, N, length, generator=g),  # C
        torch.ones(d),  # D
        torch.randn(1, d, length, generator=g),  # z
        torch.zeros(d),  # Δ bias
    ]
    return [t.to(device).requires_grad_() for t in tensors]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 8192])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = [
        "| L | pass | sequential (s) | chunked (s) | speed-up |",
        "|---|---|---|---|---|",
    ]
    for length in args.lengths:
        x = inputs(length, args.device)
        for name, backward in (("forward", False), ("forward+backward", True)):

            def run(scan, backward=backward, x=x):
                y = scan(*x, delta_softplus=True)
                if backward:
                    y.sum().backward()

            reference, fast = (lambda: run(selective_scan_sequential)), (lambda: run(selective_scan))
            rows.append(ratio_row(f"{length} | {name}", reference, fast, args.device, args.repeats))
        blocks = {scan: MambaMixer(768, scan=scan).to(args.device) for scan in ("sequential", "chunked")}
        blocks["sequential"].load_state_dict(blocks["chunked"].state_dict())
        hidden = torch.randn(1, length, 768, device=args.device)

        def block_step(block, hidden=hidden):
            block(hidden).sum().backward()

        reference, fast = (lambda b=blocks[s]: block_step(b) for s in ("sequential", "chunked"))
        rows.append(ratio_row(f"{length} | Mamba block forward+backward", reference, fast, args.device, args.repeats))
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    header = f"# selective_scan vs selective_scan_sequential ({device}, batch 1, d 1536, N 16, float32)\n\n"
    out = Path(__file__).parent / "results" / f"selective_scan_speed_{args.device}.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(header + "\n".join(rows) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
