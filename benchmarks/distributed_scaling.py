"""Data-parallel scaling of training: tokens/s and peak memory per GPU on 1 and G GPUs, DDP and FSDP.

    PYTHONPATH=. python3 benchmarks/distributed_scaling.py configs/mamba_130m.yaml --gpus 2 --out DIR

For `train.parallel` none (one GPU, the reference), ddp and fsdp, it starts
`torchrun --nproc-per-node n` (n = 1, and n = --gpus for ddp and fsdp); every process trains on
--batch-per-gpu sequences of --length tokens, so the global batch is n x --batch-per-gpu. The step
is `src.training.train_step`, the one `memory-models train` runs: the (seed, step) batch drawn
and split over the processes, forward and backward with the config's train.checkpoint_blocks and
train.loss_chunk_tokens, gradient averaging (DDP) or reduce-scattering (FSDP2), clipping, AdamW.
The task is the config's associative recall at num_pairs = num_queries = length / 4, so each
sequence has --length tokens. After --warmup steps, --steps steps are timed from a barrier, CUDA
synchronised; tokens/s counts the global batch over the slowest process's time. Scaling efficiency
is tokens/s on n GPUs / (n x tokens/s on one GPU of the same mode). Peak memory per GPU is
torch.cuda.max_memory_allocated of each process over its whole run. Writes
`distributed_scaling_<device>.md` and `.json` to --out. `--device cpu` (gloo, no memory numbers)
only checks that the script runs, e.g. on configs/mamba_tiny.yaml.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from src import distributed
from src.config import load_experiment, resolve_task_section
from src.tasks import build_task
from src.training import build_training, train_step

GiB = 2**30


def _experiment(args, parallel: str, world_size: int):
    """The config's model and train section at this run's batch, length and device."""
    experiment = load_experiment(args.config)
    if experiment.task["type"] != "associative_recall":
        raise SystemExit(f"{args.config}: the benchmark sets the length of an associative_recall task")
    pairs = args.length // 4
    task = {**experiment.task, "num_pairs": pairs, "num_queries": pairs, "length": 4 * pairs}
    task = resolve_task_section(task, experiment.file)
    train = replace(experiment.train, parallel=parallel, batch_size=args.batch_per_gpu * world_size, device=args.device)
    return replace(experiment, task=task, train=train)


def worker(args) -> None:
    """One process of a run (under torchrun): warm-up, timed steps, this process's numbers as JSON."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    experiment = _experiment(args, args.parallel, world_size)
    cuda = args.device == "cuda"
    synchronize = torch.cuda.synchronize if cuda else (lambda: None)
    with distributed.processes(experiment.train, experiment.file, torch.device(args.device)) as processes:
        training = build_training(experiment, processes)
        task = build_task(experiment.task)
        for step in range(args.warmup):
            train_step(training, task, step, experiment.train, processes)
        synchronize()
        processes.barrier()
        started = time.perf_counter()
        for step in range(args.warmup, args.warmup + args.steps):
            done = train_step(training, task, step, experiment.train, processes)
        synchronize()
        seconds = time.perf_counter() - started
        result = {
            "rank": processes.rank,
            "device": torch.cuda.get_device_name() if cuda else "CPU",
            "seconds": seconds,
            "tokens": args.steps * done.tokens,
            "loss": processes.mean(done.loss * done.weight),
            "peak_bytes": torch.cuda.max_memory_allocated() if cuda else 0,
            "peak_reserved_bytes": torch.cuda.max_memory_reserved() if cuda else 0,
        }
    Path(args.result).with_suffix(f".rank{processes.rank}.json").write_text(json.dumps(result))


def run(args, parallel: str, gpus: int) -> dict:
    """Start one torchrun run and collect its processes' numbers."""
    result = Path(args.out) / f"run_{parallel}_{gpus}"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(gpus), __file__, args.config]
    command += ["--worker", "--parallel", parallel, "--result", str(result)]
    forwarded = ("batch-per-gpu", "length", "warmup", "steps", "device")
    command += [f"--{name}={getattr(args, name.replace('-', '_'))}" for name in forwarded]
    print(" ".join(command), flush=True)
    subprocess.run(command, check=True, timeout=args.timeout)
    processes = [json.loads(path.read_text()) for path in sorted(result.parent.glob(f"{result.name}.rank*.json"))]
    for path in result.parent.glob(f"{result.name}.rank*.json"):
        path.unlink()
    seconds = max(p["seconds"] for p in processes)
    return {
        "device": processes[0]["device"],
        "parallel": parallel,
        "gpus": gpus,
        "tokens_per_s": processes[0]["tokens"] / seconds,
        "seconds_per_step": seconds / args.steps,
        "loss": processes[0]["loss"],
        "peak_GiB_per_gpu": [p["peak_bytes"] / GiB for p in processes],
        "peak_reserved_GiB_per_gpu": [p["peak_reserved_bytes"] / GiB for p in processes],
    }


def table(rows: list[dict], args, device: str) -> str:
    reference = {row["parallel"]: row["tokens_per_s"] for row in rows if row["gpus"] == 1}
    backend = "NCCL" if args.device == "cuda" else "gloo"
    lines = [
        f"Data-parallel training of {args.config} ({device}, torch {torch.__version__}, {backend}); "
        f"{args.batch_per_gpu} x {args.length} tokens per GPU, {args.warmup} warm-up + {args.steps} timed steps.",
        "",
        f"Command: `PYTHONPATH=. python3 benchmarks/distributed_scaling.py {' '.join(sys.argv[1:])}`",
        "",
        "| train.parallel | GPUs | global batch | tokens/s | s/step | scaling efficiency | peak GiB per GPU "
        "(allocated) | peak GiB per GPU (reserved) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        efficiency = row["tokens_per_s"] / (row["gpus"] * reference[row["parallel"]])
        allocated = ", ".join(f"{value:.2f}" for value in row["peak_GiB_per_gpu"])
        reserved = ", ".join(f"{value:.2f}" for value in row["peak_reserved_GiB_per_gpu"])
        lines.append(
            f"| {row['parallel']} | {row['gpus']} | {row['gpus'] * args.batch_per_gpu} x {args.length} | "
            f"{row['tokens_per_s']:,.0f} | {row['seconds_per_step']:.3f} | {efficiency:.3f} | "
            f"{allocated} | {reserved} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--gpus", type=int, default=2)
    parser.add_argument("--batch-per-gpu", type=int, default=4)
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--timeout", type=int, default=180, help="seconds per torchrun run")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--parallel", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    rows = []
    for parallel, gpus in [("none", 1), ("ddp", 1), ("ddp", args.gpus), ("fsdp", 1), ("fsdp", args.gpus)]:
        rows.append(run(args, parallel, gpus))
        device = rows[0]["device"]
        name = device.split()[1].lower() if device.startswith("NVIDIA ") else device.lower()
        text = table(rows, args, f"{args.gpus} x {device}")
        Path(args.out, f"distributed_scaling_{name}.md").write_text(text)  # after every run: partial results survive
        Path(args.out, f"distributed_scaling_{name}.json").write_text(json.dumps(rows, indent=2))
        print(text, flush=True)


if __name__ == "__main__":
    main()
