"""The papers' headline results side by side (issue 31): the experiments of configs/paper/, each model
a process of its own on one GPU, then one report with the published number beside ours.

    PYTHONPATH=. python3 benchmarks/paper_results.py run mqar --runs /tmp/paper --summary OUT --deadline 420  # GPU
    PYTHONPATH=. python3 benchmarks/paper_results.py run long --runs /tmp/paper --summary OUT --deadline 500
    PYTHONPATH=. python3 benchmarks/paper_results.py run recipes --runs /tmp/paper --summary OUT --deadline 385
    uv run --extra plots python benchmarks/paper_results.py report OUT/paper_results_*.json  # -> results/

`run` starts every job of the group at once (`mqar`: MQAR where attention cannot reach; `long`: passkey
beyond the window, selective copying at 4,096 and induction heads; `recipes`: the longer runs of issue 31
item 4) and stops the ones still training
at the deadline: a stopped job keeps its last evaluation (every `train.eval_every` steps) and the
report says at which step it stopped. The group's rows and learning curves go to one JSON file and
every job's output to one log (few files, as a GPU machine's output folder allows). Start CUDA's MPS
daemon first (`nvidia-cuda-mps-control -d`): without it the jobs' processes time-slice the GPU, and a
group of 15 tiny jobs ran about 5x slower per job than under MPS (H200, 2026-12-03). `report` writes
one table per experiment from those files, its learning curves (matplotlib, extra `plots`), and the
MQAR accuracy by query position and key-query distance.
"""

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from src.compare import compare, learning_curves, plot, write_recall_tables
from src.config import load_comparison
from src.recall_splits import SPLITS

RESULTS = Path(__file__).parent / "results"
PAPER = Path("configs/paper")


@dataclasses.dataclass(frozen=True)
class Job:
    """One model of one config, with train-section overrides (seed, learning rate)."""

    config: str
    model: str
    name: str
    train: dict = dataclasses.field(default_factory=dict)


def _every_model(config: str) -> list[Job]:
    return [Job(config, model, model) for model in load_comparison(PAPER / f"{config}.yaml")]


def _seeds(config: str, model: str, seeds: range, lr: float) -> list[Job]:
    return [Job(config, model, f"{model}_lr{lr:g}_seed{seed}", {"seed": seed, "lr": lr}) for seed in seeds]


GROUPS = {
    "mqar": lambda: _every_model("mqar_beyond_attention"),
    "long": lambda: (
        _every_model("passkey_beyond_window")
        + _every_model("selective_copying_4096")
        + _seeds("induction_heads_mamba", "mamba", range(3), 1e-3)
        + _seeds("induction_heads", "transformer", range(2), 1e-3)
        + _seeds("induction_heads", "transformer", range(1), 3e-4)
    ),
    # Issue 31, item 4: longer recipes where the first run stayed at chance (attention at the paper's
    # constant learning rate, Mamba paper Appendix E.1).
    "recipes": lambda: (
        [
            Job(
                "passkey_beyond_window",
                "mamba",
                "mamba_20k_steps_lr1e-3",
                {"steps": 20000, "lr": 1e-3, "eval_every": 2000},
            )
        ]
        + [
            Job(
                "induction_heads",
                "transformer",
                f"transformer_20k_steps_lr3e-4_seed{seed}",
                {
                    "steps": 20000,
                    "lr": 3e-4,
                    "warmup_steps": 500,
                    "min_lr_ratio": 1.0,
                    "eval_every": 2500,
                    "seed": seed,
                },
            )
            for seed in range(3)
        ]
    ),
}

# What each paper reports, for the report's header of each experiment (quoted from the papers' tables).
PUBLISHED = {
    "selective_copying_4096": (
        "Mamba (Gu & Dao 2023, arXiv:2312.00752), Table 1: selective copying, 4,096 positions, 16 tokens "
        "to copy, 2-layer models. Published accuracy: S6 layer in the Mamba block 99.8%, S4 (LTI) 18.3%."
    ),
    "induction_heads": (
        "Mamba (arXiv:2312.00752), Table 2: induction heads trained at 2^8 = 256 tokens, tested up to 2^20. "
        "Published: Mamba 100% at every tested length; the attention rows (absolute, RoPE, xPos positions) "
        "solve the task at the training length and fall beyond it."
    ),
    "induction_heads_mamba": "The Mamba rows of Table 2 (above), evaluated to 2^20 tokens.",
    "mqar_beyond_attention": (
        "Zoology (Arora et al. 2023, arXiv:2312.04927), MQAR: attention solves it at every width tested; "
        "here every hybrid's window or segment is shorter than its key-query distances, so the memory is "
        "what is measured (Titans, Behrouz et al. 2024, arXiv:2501.00663; DeltaNet, Yang et al. 2024, "
        "arXiv:2406.06484)."
    ),
    "passkey_beyond_window": (
        "Infini-attention (Munkhdalai et al. 2024, arXiv:2404.07143), Table 3: passkey retrieval up to 1M "
        "tokens after fine-tuning on 5K-token inputs; Titans (arXiv:2501.00663), S-NIAH: the memory "
        "retrieves beyond the attention window at 16x-64x its context. Here: trained at 256 tokens, tested "
        "at 16x and 64x."
    ),
}

# Headline rows whose runs have their own committed tables (not re-run by this script).
ELSEWHERE = [
    "Mamba Table 2 beside the official mamba_ssm (its CUDA scan built on the device) in one loop, three seeds, "
    "the paper's batch 8 and constant lr 1e-3, trained at 256 and tested at 2^6 .. 2^20 (H200): "
    "`induction_heads_official.md` (`benchmarks/induction_heads_official.py`).",
    "The memory bank against attention alone on MQAR (Zoology's task, 4 pairs in 16 tokens, H200): "
    "`compare_mqar_h200.md` (`memory-models compare configs/compare_mqar_gpu.yaml`).",
    "Memory adapters against LoRA at about equal trained parameters on fact recall over a frozen Llama (CPU): "
    "`compare_adapters_facts_cpu.md` (`benchmarks/adapters_base.py`, then "
    "`memory-models compare configs/compare_adapters_facts.yaml`).",
    "Passkey needle tables (depth x length) at CPU and GPU scale: `passkey_needle_cpu.md`, `passkey_needle_h100.md`.",
]


def _experiment(job: Job, runs: Path):
    experiment = load_comparison(PAPER / f"{job.config}.yaml")[job.model]
    run_dir = runs / job.config / job.name
    train = dataclasses.replace(experiment.train, out_dir=str(run_dir), **job.train)
    return dataclasses.replace(experiment, train=train), run_dir


def run_job(job: Job, runs: Path) -> None:
    experiment, run_dir = _experiment(job, runs)
    compare({job.name: experiment}, run_dir, log=lambda line: print(line, flush=True), overwrite=True)


def _result(run_dir: Path, name: str, status: str) -> dict:
    """The job's compare row (for a stopped job: its last evaluation in metrics.jsonl) and learning curves."""
    curves = learning_curves(run_dir)
    table = run_dir / "compare.json"
    if table.is_file():
        row = json.loads(table.read_text())[0]
    elif curves.get("eval_loss"):
        row = {"model": name, **{key: values[-1] for key, values in curves.items()}}
    else:
        row = {"model": name, "error": f"no evaluation ({status})"}
    row["step"], row["status"] = (curves["step"][-1] if curves else 0), status
    return {"row": row, "curves": curves}


def run_group(group: str, runs: Path, summary: Path, deadline: float) -> None:
    """Every job of the group as its own process; the ones still running at the deadline are stopped.

    Runs (checkpoints, logs) go under `runs`; `summary/paper_results_<group>.json` (every job's row and
    learning curves) and `.log` (every job's output) are what the report reads.
    """
    runs.mkdir(parents=True, exist_ok=True)
    summary.mkdir(parents=True, exist_ok=True)
    jobs, processes = GROUPS[group](), []
    for job in jobs:
        log = runs / f"{job.config}.{job.name}.log"
        command = [sys.executable, __file__, "job", job.config, job.model, job.name, "--runs", str(runs)]
        command += ["--train", json.dumps(job.train)]
        processes.append(subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT))
    started = time.monotonic()
    while any(p.poll() is None for p in processes) and time.monotonic() - started < deadline:
        time.sleep(2)
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
    grace = time.monotonic() + 20  # one grace period for all of them: the summary must be written in time
    while any(p.poll() is None for p in processes) and time.monotonic() < grace:
        time.sleep(1)
    results, logs = {}, []
    for job, process in zip(jobs, processes):
        if process.poll() is None:
            process.kill()
            process.wait()
        stopped = process.returncode != 0 and time.monotonic() - started >= deadline
        status = "finished" if process.returncode == 0 else f"exit {process.returncode}"
        status = f"stopped at the deadline ({deadline:.0f} s)" if stopped else status
        results[f"{job.config}/{job.name}"] = _result(runs / job.config / job.name, job.name, status)
        logs.append(f"== {job.config}/{job.name}\n" + (runs / f"{job.config}.{job.name}.log").read_text())
    (summary / f"paper_results_{group}.json").write_text(json.dumps(results, indent=1))
    (summary / f"paper_results_{group}.log").write_text("\n".join(logs))
    print(json.dumps({key: result["row"]["status"] for key, result in results.items()}, indent=2))


def _table(rows: list[dict]) -> list[str]:
    keys = list(dict.fromkeys(k for row in rows for k in row if k.startswith("eval_accuracy")))
    header = ["job", "steps", *(key.removeprefix("eval_") for key in keys), "status"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['model']} | – | failed: {row['error']} |")
            continue
        cells = [f"{row[key]:.4f}" if key in row else "–" for key in keys]
        lines.append(f"| {row['model']} | {row['step']:,} | " + " | ".join(cells) + f" | {row['status']} |")
    return lines


def report(summaries: list[Path]) -> str:
    results = {}
    for path in summaries:
        results |= json.loads(path.read_text())
    lines = [
        "# The papers' headline results, side by side",
        "",
        "Made by `benchmarks/paper_results.py` (commands in its docstring) from the configs in `configs/paper/`;",
        "every model trains in its own process, all of a group at once on one GPU, until it finishes or the",
        "group's deadline stops it (its last evaluation is then reported with the step it reached). Raw rows",
        "and learning curves: `paper_results_<group>.json`; every job's output: `paper_results_<group>.log`.",
        "",
    ]
    for config in dict.fromkeys(key.split("/")[0] for key in results):
        jobs = {key.split("/")[1]: result for key, result in results.items() if key.split("/")[0] == config}
        rows = [result["row"] for result in jobs.values()]
        experiment = next(iter(load_comparison(PAPER / f"{config}.yaml").values()))
        train, task = experiment.train, ", ".join(f"{k} {v}" for k, v in experiment.task.items())
        budget = f"{train.steps:,} steps of {train.batch_size} sequences, lr {train.lr:g} (per job overrides in GROUPS)"
        lines += [f"## {config}", "", PUBLISHED[config], ""]
        lines += [f"Config: `configs/paper/{config}.yaml`; task: {task}; budget: {budget}.", ""]
        lines += [*_table(rows), ""]
        if recalled := [row for row in rows if any(k.startswith(SPLITS) for k in row)]:
            with tempfile.TemporaryDirectory() as directory:
                write_recall_tables(recalled, Path(directory), lambda line: None)
                recall = (Path(directory) / "recall.md").read_text()
            (RESULTS / f"paper_results_{config}_recall.md").write_text(recall)
            lines += [f"Accuracy by query position and key-query distance: `paper_results_{config}_recall.md`.", ""]
        columns = [(k, k) for k in dict.fromkeys(k for row in rows for k in row if k.startswith("eval_accuracy"))]
        curves = {name: result["curves"] for name, result in jobs.items() if "error" not in result["row"]}
        picture = RESULTS / f"paper_results_{config}.png"
        if plot([row for row in rows if "error" not in row], columns, curves, picture) is not None:
            lines += [f"Learning curves: `{picture.name}`.", ""]
    lines += ["## Measured elsewhere", "", *(f"- {row}" for row in ELSEWHERE), ""]
    text = "\n".join(lines)
    (RESULTS / "paper_results.md").write_text(text + "\n")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    group = commands.add_parser("run")
    group.add_argument("group", choices=sorted(GROUPS))
    group.add_argument("--runs", type=Path, required=True, help="where the runs train (checkpoints, logs)")
    group.add_argument("--summary", type=Path, required=True, help="where the group's JSON and log go")
    group.add_argument("--deadline", type=float, default=500.0, help="seconds before running jobs are stopped")
    one = commands.add_parser("job")
    for argument in ("config", "model", "name"):
        one.add_argument(argument)
    one.add_argument("--runs", type=Path, required=True)
    one.add_argument("--train", type=json.loads, default={})
    summary = commands.add_parser("report")
    summary.add_argument("summaries", type=Path, nargs="+", help="paper_results_<group>.json files")
    args = parser.parse_args()
    if args.command == "run":
        run_group(args.group, args.runs, args.summary, args.deadline)
    elif args.command == "job":
        run_job(Job(args.config, args.model, args.name, args.train), args.runs)
    else:
        print(report(args.summaries))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
