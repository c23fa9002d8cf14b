"""Mamba's Table 2 in one run: induction heads trained at 256 tokens and tested to 2^20, ours beside the
official mamba_ssm, the same batches, loop and seeds (issue 31, item 4). GPU only.

    PYTHONPATH=. python3 benchmarks/induction_heads_official.py --out OUT --seeds 0 1 2 --deadline 420

The recipe is the paper's (Gu & Dao 2023, arXiv:2312.00752, Appendix E.1, as its text gives it): 2 layers,
d_model 64, vocabulary 16, data drawn afresh every step at batch 8, Adam without weight decay at a
constant learning rate of 1e-3 (the rate at which the paper's Mamba extrapolated best); the paper reports
Mamba after 25 "epochs" of 8,192 steps, this run as many steps as `--steps` (the same for every model).
Ours is `configs/paper/induction_heads_mamba.yaml`'s model (`PaperModel`, two Mamba blocks, tied
embeddings, scan `auto`: the Triton kernel); the official is `MambaLMHeadModel` with the same sizes
(Mamba-1 layers, no MLP, RMSNorm, tied embeddings, vocabulary not padded) and its CUDA selective scan,
built here from PyPI's source distribution (`benchmarks/official_mamba.py`). Every (model, seed) trains
in its own process, all at once on the one GPU; each is scored on held-out sequences at every length
2^6 .. 2^20 (fewer sequences at the longest lengths, one at a time) and the table gives the mean and the
spread over seeds. A job still training at `--deadline` seconds is stopped and reported as such.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.peer_training import held_out_accuracy, train_on_task
from src.config import load_comparison
from src.runs import build_model
from src.tasks.induction_heads import InductionHeads

CONFIG = Path("configs/paper/induction_heads_mamba.yaml")
LENGTHS = [2**k for k in range(6, 21)]
VOCAB, TRAIN_LENGTH = 16, 256
MODELS = ("ours", "official")


def build(model: str, seed: int) -> tuple[torch.nn.Module, object]:
    """The model on the GPU and its logits function."""
    torch.manual_seed(seed)
    if model == "ours":
        return build_model(load_comparison(CONFIG)["mamba"].model, str(CONFIG), "cuda"), None
    from benchmarks.official_mamba import official_mamba

    official_mamba()
    from mamba_ssm.models.config_mamba import MambaConfig
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

    config = MambaConfig(
        d_model=64,
        d_intermediate=0,
        n_layer=2,
        vocab_size=VOCAB,
        ssm_cfg={"layer": "Mamba1"},
        rms_norm=True,
        residual_in_fp32=True,
        fused_add_norm=True,
        pad_vocab_size_multiple=1,
        tie_embeddings=True,
    )
    return MambaLMHeadModel(config, device="cuda"), lambda module, inputs: module(inputs).logits


def job(model: str, seed: int, steps: int, out: Path) -> None:
    """Train one model on one seed, append its evaluations to `out` as JSON lines as they come."""
    network, logits = build(model, seed)
    kwargs = {"logits": logits} if logits is not None else {}
    task = InductionHeads(VOCAB, TRAIN_LENGTH)

    def record(row: dict) -> None:
        with out.open("a") as file:
            file.write(json.dumps({"model": model, "seed": seed, **row}) + "\n")

    def on_step(step: int) -> None:
        if (step + 1) % 2048 == 0:
            network.eval()
            accuracy, *_ = held_out_accuracy(network, task, 256, 256, "cuda", **kwargs)
            network.train()
            record({"step": step + 1, "length": TRAIN_LENGTH, "accuracy": accuracy})

    seconds = train_on_task(network, task, steps, 8, lambda step: 1e-3, seed, "cuda", on_step=on_step, **kwargs)
    network.eval()
    for length in LENGTHS:
        examples = 256 if length <= 2**14 else 32
        batch = max(1, min(examples, 2**16 // length))
        accuracy, *_ = held_out_accuracy(network, InductionHeads(VOCAB, length), examples, batch, "cuda", **kwargs)
        record({"step": steps, "length": length, "accuracy": accuracy, "train_seconds": seconds, "final": True})
    parameters = sum(p.numel() for p in network.parameters())
    record({"step": steps, "parameters": parameters, "done": True})


def run_all(args, deadline: float) -> list[dict]:
    """Start every (model, seed) job at once; stop those still running at `deadline` (time.monotonic)."""
    rows_file = args.out / "induction_heads_official.jsonl"
    rows_file.unlink(missing_ok=True)
    log = (args.out / "induction_heads_official.log").open("w")
    jobs = [
        subprocess.Popen(
            [sys.executable, __file__, "--job", model, str(seed), "--steps", str(args.steps), "--out", str(args.out)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        for model in MODELS
        for seed in args.seeds
    ]
    while any(process.poll() is None for process in jobs) and time.monotonic() < deadline:
        time.sleep(2)
    for process in jobs:
        if process.poll() is None:
            process.kill()
    return [json.loads(line) for line in rows_file.read_text().splitlines()] if rows_file.exists() else []


def report(rows: list[dict], steps: int) -> str:
    seeds = sorted({row["seed"] for row in rows})
    finals = {(r["model"], r["seed"], r["length"]): r["accuracy"] for r in rows if r.get("final")}
    done = {(r["model"], r["seed"]) for r in rows if r.get("done")}
    lines = [
        "# Induction heads (Mamba Table 2): ours beside the official mamba_ssm, one run",
        "",
        f"`benchmarks/induction_heads_official.py` (its docstring: the recipe). Trained at {TRAIN_LENGTH} tokens, "
        f"{steps:,} steps of batch 8, constant lr 1e-3, seeds {seeds}; accuracy of the last token on held-out "
        "sequences (256 per length up to 2^14, 32 beyond); chance 1/14. Mean over seeds, then each seed.",
        "",
        "| length | " + " | ".join(MODELS) + " | " + " | ".join(f"{m} seeds" for m in MODELS) + " |",
        "|---|" + "---|" * (2 * len(MODELS)),
    ]
    for length in LENGTHS:
        cells, spreads = [], []
        for model in MODELS:
            values = [finals[(model, s, length)] for s in seeds if (model, s, length) in finals]
            cells.append(f"{sum(values) / len(values):.3f}" if values else "-")
            spreads.append(" / ".join(f"{v:.2f}" for v in values) or "-")
        lines.append(f"| 2^{length.bit_length() - 1} | " + " | ".join(cells) + " | " + " | ".join(spreads) + " |")
    missing = [f"{m} seed {s}" for m in MODELS for s in seeds if (m, s) not in done]
    if missing:
        lines += ["", "Stopped at the deadline before their last evaluation: " + ", ".join(missing) + "."]
    curves = {}
    for r in rows:
        if "accuracy" in r and not r.get("final"):
            curves.setdefault((r["model"], r["seed"]), []).append(f"{r['step']}: {r['accuracy']:.2f}")
    lines += ["", "Accuracy at 256 during training (step: accuracy):", ""]
    lines += [f"- {m} seed {s}: " + ", ".join(points) for (m, s), points in sorted(curves.items())]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for the table, the rows and the log")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=8192)
    parser.add_argument(
        "--deadline",
        type=float,
        default=540.0,
        help="seconds from the start (the build included) before unfinished jobs are stopped",
    )
    parser.add_argument("--job", nargs=2, metavar=("MODEL", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    deadline = time.monotonic() + args.deadline
    args.out.mkdir(parents=True, exist_ok=True)
    if args.job:
        job(args.job[0], int(args.job[1]), args.steps, args.out / "induction_heads_official.jsonl")
        return
    from benchmarks.official_mamba import official_mamba

    official_mamba()  # compiled once here; the jobs find it in the build folder
    rows = run_all(args, deadline)
    (args.out / "induction_heads_official.md").write_text(report(rows, args.steps))
    print(report(rows, args.steps))


if __name__ == "__main__":
    main()
