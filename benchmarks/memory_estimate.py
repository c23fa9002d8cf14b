"""`memory-models estimate` against torch.cuda.max_memory_allocated, for every config in configs/.

    PYTHONPATH=. python3 benchmarks/memory_estimate.py measure --out measured.jsonl   # on a GPU
    PYTHONPATH=. python3 benchmarks/memory_estimate.py table --measured measured.jsonl --out table.md   # anywhere

`measure` runs one training step of each experiment (each model of a comparison config, and
MambaGPT-130m also at 4 x 2048) on CUDA: two warm-up steps (the first allocates the AdamW moments),
the peak statistics reset, two measured steps; one JSON line per experiment as it finishes. Its first
line is the bytes the CUDA libraries keep allocated after their first matrix products (cuBLAS and
cuBLASLt workspaces), which `src.estimate.CUDA_LIBRARY_BYTES` adds to a CUDA estimate.
`table` estimates each measured experiment priced for CUDA on this machine (a CPU-only one runs the
step on fake CPU tensors, `src/estimate.py`), timing each estimate, and writes the table; without
`--measured`, every experiment at its config's batch and length (how long each estimate takes).
"""

import argparse
import json
import os
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

from src.config import load_comparison, load_experiment
from src.estimate import estimate_training_memory
from src.runs import build_model
from src.tasks import build_task
from src.training import TrainingObjective, training_step
from src.validation import ConfigError, read_yaml

MIB = 2**20


def experiments() -> list[tuple[str, object, int | None, int | None]]:
    """(label, experiment, batch, length) for every config; None = the config's own. A config that does not
    load here (an adapted model's base directory is made by another run) is its ConfigError."""
    rows = []
    for path in sorted(Path("configs").glob("*.yaml")) + sorted(Path("configs/paper").glob("*.yaml")):
        raw = read_yaml(path)
        if "model" not in raw and "models" not in raw:  # a serve config
            continue
        try:
            if "models" in raw:
                rows += [(f"{path.stem}/{name}", exp, None, None) for name, exp in load_comparison(path).items()]
            else:
                rows.append((path.stem, load_experiment(path), None, None))
        except ConfigError as error:
            rows.append((path.stem, error, None, None))
    rows.append(("mamba_130m @ 4 x 2048", load_experiment("configs/mamba_130m.yaml"), 4, 2048))
    return rows


def library_workspace_bytes() -> int:
    """Bytes the CUDA libraries keep allocated after a float32 and a bfloat16 linear layer's forward and backward."""
    x = torch.randn(256, 512, device="cuda")
    weight = torch.randn(512, 512, device="cuda", requires_grad=True)
    bias = torch.zeros(512, device="cuda", requires_grad=True)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    F.linear(x, weight, bias).sum().backward()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        F.linear(x, weight, bias).float().sum().backward()
    weight.grad = bias.grad = None
    torch.cuda.synchronize()
    return torch.cuda.memory_allocated() - before


def measure_step(experiment, batch: int | None, length: int | None) -> dict:
    """Peak CUDA bytes and tokens/s of the training step at `batch` x `length` (default: the config's)."""
    inputs, targets = build_task(experiment.task).sample(
        batch or experiment.train.batch_size, seed=experiment.train.seed
    )
    length = length or inputs.shape[1]
    repeats = -(-length // inputs.shape[1])
    inputs = inputs.repeat(1, repeats)[:, :length].cuda()
    targets = targets.repeat(1, repeats)[:, :length].cuda()
    torch.manual_seed(0)
    model = build_model(experiment.model, experiment.file, "cuda", base_weights=False)
    optimizer = torch.optim.AdamW(model.parameter_groups(experiment.train.weight_decay), lr=experiment.train.lr)
    objective = TrainingObjective(model, experiment.train)
    for _ in range(2):  # the first allocates the AdamW moments
        training_step(objective, optimizer, inputs, targets, experiment.train)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(2):
        training_step(objective, optimizer, inputs, targets, experiment.train)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {
        "batch": inputs.shape[0],
        "length": length,
        "peak_bytes": torch.cuda.max_memory_allocated(),
        "tokens_per_s": 2 * inputs.numel() / seconds,
    }


def failure(error: Exception) -> str:
    """The error and the innermost frames of this project where it happened."""
    frames = [f"{f.filename.split('/')[-1]}:{f.lineno}" for f in traceback.extract_tb(error.__traceback__)]
    return f"{type(error).__name__}: {str(error).splitlines()[0][:200]} at {' < '.join(frames[-3:][::-1])}"


def measure(out: Path, shard: int, shards: int) -> None:
    """Every `shards`-th experiment from the `shard`-th: processes measuring side by side (the peaks are
    each process's own; their tokens/s then share the GPU)."""
    with out.open("w") as log:

        def write(record: dict) -> None:
            log.write(json.dumps(record) + "\n")
            log.flush()

        write({"device": torch.cuda.get_device_name(), "torch": torch.__version__})
        write({"library_workspace_bytes": library_workspace_bytes()})
        for label, experiment, batch, length in experiments()[shard::shards]:
            if isinstance(experiment, ConfigError):
                write({"label": label, "error": str(experiment)})
                continue
            try:
                write({"label": label, **measure_step(experiment, batch, length)})
            except Exception as error:  # recorded: which experiment, and why it did not run here
                write({"label": label, "error": failure(error)})
            torch.cuda.empty_cache()


def table(measured_files: list[Path], out: Path) -> None:
    """Every experiment's estimate priced for CUDA and its CPU seconds, beside what `measure` measured (the
    measured experiments only, at their batch and length) or, without measured files, at the config's own."""
    records = [json.loads(line) for file in measured_files for line in file.read_text().splitlines()]
    measured = {record["label"]: record for record in records if "label" in record}
    here = (
        f"{'CUDA present' if torch.cuda.is_available() else 'no GPU: the CUDA code paths on fake CPU tensors'}, "
        f"torch {torch.__version__}, {os.cpu_count()} CPU cores; one process, seconds of its CPU per estimate"
    )
    command = "`PYTHONPATH=. python3 benchmarks/memory_estimate.py table" + (
        f" --measured {' '.join(map(str, measured_files))}`" if measured_files else "`"
    )
    if records:
        header = records[0]
        workspace = next(record for record in records if "library_workspace_bytes" in record)
        lines = [
            f"# memory-models estimate vs torch.cuda.max_memory_allocated "
            f"({header['device']}, torch {header['torch']})",
            "",
            command,
            "",
            f"CUDA libraries' workspaces there: {workspace['library_workspace_bytes'] / MIB:,.1f} MiB"
            f" ({workspace.get('source', 'measured')}). Estimates computed here ({here}).",
        ]
    else:
        lines = [f"# memory-models estimate priced for CUDA, every config ({here})", "", command]
    lines += [
        "",
        "| config | batch x length | estimate (MiB) | measured (MiB) | estimate / measured | estimate's CPU s |",
        "|---|---|---|---|---|---|",
    ]
    for label, experiment, batch, length in experiments():
        row = measured.get(label, {}) if records else {"batch": batch, "length": length}
        if not row or isinstance(experiment, ConfigError):
            if not records:
                lines.append(f"| {label} | – | not estimated here: {experiment} | | | |")
            continue
        if "error" in row:
            lines.append(f"| {label} | – | | not measured: {row['error']} | | |")
            continue
        start = time.process_time()
        try:
            estimate = estimate_training_memory(experiment, row["batch"], row["length"], device="cuda")
        except Exception as error:  # recorded: where the fake run stopped
            lines.append(f"| {label} | {row['batch']} x {row['length']} | estimate failed: {failure(error)} | | | |")
            continue
        seconds = time.process_time() - start
        peak = f"{row['peak_bytes'] / MIB:,.1f} | {estimate.peak_bytes / row['peak_bytes']:.3f}" if records else " | "
        lines.append(
            f"| {label} | {estimate.batch} x {estimate.length} | {estimate.peak_bytes / MIB:,.1f} | {peak} | "
            f"{seconds:.1f} |"
        )
        print(lines[-1], flush=True)
    out.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    measuring = commands.add_parser("measure", help="on a GPU: measured peaks, one JSON line each")
    measuring.add_argument("--out", required=True, type=Path)
    measuring.add_argument("--shard", default="0/1", help="I/N: every N-th experiment from the I-th")
    tabling = commands.add_parser("table", help="estimate what `measure` measured; write the table")
    tabling.add_argument("--measured", type=Path, nargs="+", default=[], help="measure's files (default: none)")
    tabling.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    if args.command == "measure":
        shard, shards = (int(part) for part in args.shard.split("/"))
        measure(args.out, shard, shards)
    else:
        table(args.measured, args.out)


if __name__ == "__main__":
    main()
