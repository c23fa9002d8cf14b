"""Peak training memory of a MambaGPT: analytical estimate, and a measurement on a GPU.

    python benchmarks/mamba_memory.py configs/mamba_130m.yaml --batch 4 --length 2048 [--measure]

The training step is the one `memory-models train` runs (src/training.py: loss_and_accuracy with
the config's train.checkpoint_blocks and train.loss_chunk_tokens, AdamW), on random tokens.
The estimate counts, in float32 bytes, for one AdamW step with block-level activation
checkpointing and a chunked cross-entropy:
  - parameters, gradients and the two AdamW moments: 16 bytes per parameter;
  - one saved (b, l, d_model) block input per block;
  - the activations of one block while it is recomputed and differentiated: the tensors autograd
    keeps for the Mamba block (in_proj output 2E, conv/SiLU/Δ/gate tensors ~7E, norms 2 d_model per
    token) plus the scan's backward, which holds the recomputed states, one (b, l, E, N) tensor,
    and eight (b, l, E) chunked inputs and gradients;
  - the logits of one loss chunk, kept three times (logits, softmax, gradient).
The first two are held throughout; the loss chunk and the block being differentiated are never
alive together (the loss backward finishes before the first block is recomputed), so the peak
is the persistent part plus the larger of the two phases.
With --measure it runs warm-up and timed training steps on CUDA and reports
torch.cuda.max_memory_allocated and tokens per second.
"""

import argparse
import json
import math
import time
from pathlib import Path

import torch

from src.config import TrainConfig, count_parameters, load_experiment
from src.model import PaperModel
from src.training import loss_and_accuracy

GiB = 2**30


def estimate_bytes(model_section: dict, batch: int, length: int, loss_chunk: int) -> dict:
    """Analytical peak memory (bytes) of one checkpointed AdamW step, by component."""
    parameters = count_parameters(model_section)
    d_model, vocab = model_section["d_model"], model_section["vocab_size"]
    blocks = [spec for spec in model_section["blocks"] for _ in range(spec["repeat"])]
    mixer = blocks[0]["mixer"]
    E = mixer["expand"] * d_model
    N = mixer["d_state"]
    R = mixer["dt_rank"] or math.ceil(d_model / 16)
    tokens = batch * length
    per_token_block = (2 * E + 7 * E + (R + 2 * N) + 2 * d_model) * 4
    scan_backward = (tokens * E * N + 8 * tokens * E) * 4
    parts = {
        "parameters + gradients + AdamW moments": 16 * parameters,
        "checkpointed block inputs": len(blocks) * tokens * d_model * 4,
        "one block recomputed (activations)": tokens * per_token_block,
        "scan backward ((b, l, E, N) states + 8 (b, l, E))": scan_backward,
        "loss chunk logits (x3)": 3 * min(loss_chunk, tokens) * vocab * 4,
    }
    persistent = parts["parameters + gradients + AdamW moments"] + parts["checkpointed block inputs"]
    block_phase = (
        parts["one block recomputed (activations)"] + parts["scan backward ((b, l, E, N) states + 8 (b, l, E))"]
    )
    parts["total"] = persistent + max(block_phase, parts["loss chunk logits (x3)"])
    return parts


def measure(model_section: dict, train: TrainConfig, batch: int, length: int, steps: int) -> dict:
    """Peak CUDA memory and tokens/s of AdamW training steps on random tokens."""
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = PaperModel(model_section).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(model_section["vocab_size"], (batch, length + 1), device=device)

    def train_step():
        loss, _ = loss_and_accuracy(model, ids[:, :-1], ids[:, 1:], train)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    train_step()  # warm-up: allocates the AdamW state
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        loss = train_step()
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return {
        "peak_bytes": torch.cuda.max_memory_allocated(),
        "tokens_per_s": steps * batch * length / elapsed,
        "seconds_per_step": elapsed / steps,
        "loss": loss.item(),
        "device": torch.cuda.get_device_name(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--measure", action="store_true")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    experiment = load_experiment(args.config)
    section, train = experiment.model, experiment.train
    if not (train.checkpoint_blocks and train.loss_chunk_tokens):
        raise SystemExit(f"{args.config}: the estimate assumes train.checkpoint_blocks and train.loss_chunk_tokens")
    estimate = estimate_bytes(section, args.batch, args.length, train.loss_chunk_tokens)
    print(f"{args.config}: batch {args.batch} x {args.length} tokens, loss chunk {train.loss_chunk_tokens}")
    for name, value in estimate.items():
        print(f"  estimate  {name:<50} {value / GiB:8.3f} GiB")
    result = {"config": args.config, "batch": args.batch, "length": args.length, "estimate_bytes": estimate}
    if args.measure:
        measured = measure(section, train, args.batch, args.length, args.steps)
        ratio = estimate["total"] / measured["peak_bytes"]
        print(f"  measured  peak (torch.cuda.max_memory_allocated)       {measured['peak_bytes'] / GiB:8.3f} GiB")
        print(f"  estimate / measured = {ratio:.3f}; {measured['tokens_per_s']:,.0f} tokens/s on {measured['device']}")
        result.update(measured=measured, estimate_over_measured=ratio)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
