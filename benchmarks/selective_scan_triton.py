"""The Triton selective scan beside the chunked PyTorch scan and mambapy's parallel scan, on a GPU.

    PYTHONPATH=.:<mambapy> python3 benchmarks/selective_scan_triton.py   # writes results/selective_scan_triton_cuda.md

Forward + backward of the scan of one MambaGPT-130m layer (d 1536, N 16, L 2048), batch 1 and 4,
float32, every input requiring a gradient: ours computes softplus(Δ + bias), the scan, the D skip
and the SiLU(z) gate; mambapy's `MambaBlock.selective_scan` (pscan) gets the same work around it
(softplus and gate in PyTorch). The HBM floor counts reading u, Δ, z, B, C and writing the output
(forward), then reading them and dout and writing their gradients (backward), at 3.35 TB/s.
Medians of `triton.testing.do_bench`.
"""

from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from mambapy.mamba import MambaBlock

from src.kernels.selective_scan import selective_scan_triton
from src.layers.selective_ssm import selective_scan

D_INNER, N, L, HBM_BYTES_PER_S = 1536, 16, 2048, 3.35e12


def inputs(batch: int) -> dict:
    g = torch.Generator(device="cuda").manual_seed(0)

    def randn(*shape, scale=1.0, shift=0.0):
        return (scale * torch.randn(*shape, generator=g, device="cuda") + shift).requires_grad_()

    return {
        "u": randn(batch, D_INNER, L), "delta": randn(batch, D_INNER, L, scale=0.5, shift=-4.0),
        "A": (-torch.rand(D_INNER, N, device="cuda", generator=g) * 15 - 1).requires_grad_(),
        "B": randn(batch, N, L), "C": randn(batch, N, L), "D": randn(D_INNER), "z": randn(batch, D_INNER, L),
        "delta_bias": randn(D_INNER, scale=0.1),
    }  # fmt: skip


def ours(scan, x: dict):
    return scan(**x, delta_softplus=True)


def mambapy(x: dict):
    delta = F.softplus(x["delta"] + x["delta_bias"][:, None]).transpose(1, 2)
    y = MambaBlock.selective_scan(
        None, x["u"].transpose(1, 2), delta, x["A"], x["B"].transpose(1, 2), x["C"].transpose(1, 2), x["D"]
    )
    return y * F.silu(x["z"].transpose(1, 2))


def forward_backward_ms(fn, x: dict) -> float:
    def run():
        out = fn(x)
        out.backward(torch.ones_like(out))

    return triton.testing.do_bench(run, warmup=5, rep=50)


def main() -> None:
    lines = [
        f"# Selective scan forward + backward ({torch.cuda.get_device_name()}, torch {torch.__version__}, "
        f"triton {triton.__version__})",
        "",
        "`PYTHONPATH=.:<mambapy> python3 benchmarks/selective_scan_triton.py`: d 1536, N 16, L 2048, float32.",
        "",
        "| batch | Triton (ms) | chunked PyTorch (ms) | mambapy pscan (ms) | HBM floor (ms) | mambapy / Triton | "
        "Triton / floor |",
        "|---|---|---|---|---|---|---|",
    ]
    for batch in (1, 4):
        x = inputs(batch)
        triton_ms = forward_backward_ms(lambda x: ours(selective_scan_triton, x), x)
        chunked_ms = forward_backward_ms(lambda x: ours(selective_scan, x), x)
        peer_ms = forward_backward_ms(mambapy, x)
        io = batch * L * (4 * D_INNER + 2 * N) * 4  # u, Δ, z, out and B, C per step, float32
        floor_ms = 1000 * (io + 2 * io) / HBM_BYTES_PER_S  # forward once, backward reads and writes each
        lines.append(
            f"| {batch} | {triton_ms:.2f} | {chunked_ms:.2f} | {peer_ms:.2f} | {floor_ms:.2f} | "
            f"{peer_ms / triton_ms:.1f}x | {triton_ms / floor_ms:.0f}x |"
        )
        print(lines[-1], flush=True)
    out = Path(__file__).parent / "results" / "selective_scan_triton_cuda.md"
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
