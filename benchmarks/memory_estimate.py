"""`memory-models estimate` against torch.cuda.max_memory_allocated, for every config in configs/.

    PYTHONPATH=. python3 benchmarks/memory_estimate.py [--out benchmarks/results/memory_estimate_<gpu>.md]

For each experiment (each model of a comparison config) it estimates the peak of one training
step (src/estimate.py: FakeTensorMode, no allocation) on the CPU code paths (what a machine without
a GPU computes) and on the CUDA ones (fused attention, the Triton scan), then runs the step on CUDA: two
warm-up steps (the first allocates the AdamW moments), the peak statistics reset, two measured
steps; the table gives both peaks, their ratio and tokens/s. MambaGPT-130m is also measured at
batch 4 x 2048, the budget the design states (< 12 GB).
"""

import argparse
import time
import traceback
from pathlib import Path

import torch

from src.config import load_comparison, load_experiment
from src.estimate import estimate_training_memory
from src.model import PaperModel
from src.tasks import build_task
from src.training import TrainingObjective, training_step
from src.validation import read_yaml

GiB = 2**30


def experiments() -> list[tuple[str, object, int | None, int | None]]:
    """(label, experiment, batch, length) for every config; None = the config's own."""
    rows = []
    for path in sorted(Path("configs").glob("*.yaml")):
        if "models" in read_yaml(path):
            rows += [(f"{path.stem}/{name}", exp, None, None) for name, exp in load_comparison(path).items()]
        else:
            rows.append((path.stem, load_experiment(path), None, None))
    rows.append(("mamba_130m @ 4 x 2048", load_experiment("configs/mamba_130m.yaml"), 4, 2048))
    return rows


def measure(experiment, batch: int, length: int) -> tuple[int, float]:
    """Peak CUDA bytes and tokens/s of the training step on the estimate's batch."""
    inputs, targets = build_task(experiment.task).sample(batch, seed=experiment.train.seed)
    repeats = -(-length // inputs.shape[1])
    inputs = inputs.repeat(1, repeats)[:, :length].cuda()
    targets = targets.repeat(1, repeats)[:, :length].cuda()
    torch.manual_seed(0)
    model = PaperModel(experiment.model, experiment.file).cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=experiment.train.lr)
    objective = TrainingObjective(model, experiment.train)

    for _ in range(2):  # the first allocates the AdamW moments
        training_step(objective, optimizer, inputs, targets, experiment.train)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(2):
        training_step(objective, optimizer, inputs, targets, experiment.train)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated(), 2 * batch * length / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also write the table here")
    args = parser.parse_args()
    lines = [
        f"# memory-models estimate vs torch.cuda.max_memory_allocated ({torch.cuda.get_device_name()}, "
        f"torch {torch.__version__})",
        "",
        "`PYTHONPATH=. python3 benchmarks/memory_estimate.py`",
        "",
        "| config | batch x length | estimate, CPU paths (MiB) | estimate, CUDA paths (MiB) | measured (MiB) | "
        "CPU-path estimate / measured | CUDA-path estimate / measured | tokens/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, experiment, batch, length in experiments():
        try:
            estimate = estimate_training_memory(experiment, batch, length)
            on_cuda = estimate_training_memory(experiment, batch, length, device="cuda")
        except Exception as error:  # recorded in the table: which config, and where the fake run stopped
            frames = [f"{f.filename.split('/')[-1]}:{f.lineno}" for f in traceback.extract_tb(error.__traceback__)]
            inside = [frame for frame in frames if not frame.startswith(("_", "fake", "eval_frame", "_ops"))]
            lines.append(
                f"| {label} | – | estimate failed: {type(error).__name__} at {' < '.join(inside[-4:][::-1])} | |||"
            )
            print(lines[-1], flush=True)
            continue
        measured, tokens_per_s = measure(experiment, estimate.batch, estimate.length)
        torch.cuda.empty_cache()
        mib = [value / 2**20 for value in (estimate.peak_bytes, on_cuda.peak_bytes, measured)]
        lines.append(
            f"| {label} | {estimate.batch} x {estimate.length} | {mib[0]:,.1f} | {mib[1]:,.1f} | {mib[2]:,.1f} | "
            f"{mib[0] / mib[2]:.3f} | {mib[1] / mib[2]:.3f} | {tokens_per_s:,.0f} |"
        )
        print(lines[-1], flush=True)
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
