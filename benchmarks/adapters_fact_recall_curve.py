"""Fact recall against trained parameters: LoRA at several ranks and memory adapters read sparsely, on one core.

    uv run --extra hf python benchmarks/adapters_base.py                       # the base, runs/bases/tiny-llama
    uv run --extra hf --extra plots python benchmarks/adapters_fact_recall_curve.py [--models NAME ...]
    uv run --extra hf --extra plots python benchmarks/adapters_fact_recall_curve.py --report   # from the runs so far

Every model of `configs/adapters_fact_recall_curve.yaml` (LoRA at ranks 1 to 16 on all seven
projections; a reduced memory bank in every layer, a routed bank of 4,096 slots, product-key
memories of 1,024 to 16,384 values at other placements and value learning rates) is trained by
`src.compare.compare` on the frozen tiny Llama, with torch limited to one thread. The held-out
accuracy is the task's own: other orders and company of the same 200 facts (`src.tasks.fact_recall`),
never a setting chosen on them. Writes `--out` .md (the table, by family and trained parameters),
.json (the rows) and, with matplotlib (extra `plots`), .png (accuracy against trained parameters,
one line per family); the runs (checkpoints, learning curves, compare.md) stay under train.out_dir.
Each model's row is read from its own run (its last evaluation in metrics.jsonl), so `--models`
re-runs some models and keeps the others' rows; `--report` only writes the files from the runs so far.
"""

import argparse
import json
import time
from pathlib import Path

import torch

from src.compare import ComparisonError, compare, learning_curves
from src.config import load_comparison, parameter_counts
from src.layers.product_keys import product_key_candidates, sub_key_top_k, top_k_keys
from src.runs import CHECKPOINT, build_model, load_model, read_checkpoint
from src.tasks import IGNORE, build_task, held_out
from src.training import evaluation_batches

CONFIG = Path("configs/adapters_fact_recall_curve.yaml")
FAMILIES = {"lora": "LoRA", "memory": "memory bank", "product_key_memory": "product-key memory"}


def family(experiment) -> str:
    """The adapter family of a model: its adapters' one type."""
    (kind,) = {adapter["type"] for adapter in experiment.model["adapters"]}
    return FAMILIES[kind]


def describe(experiment) -> str:
    """One adapter list in a few words (type, layers, sizes)."""
    parts = []
    for adapter in experiment.model["adapters"]:
        if adapter["type"] == "lora":
            parts.append(f"rank {adapter['rank']}, {len(adapter['targets'])} projections, every layer")
        elif adapter["type"] == "memory":
            routed = f", {adapter['chapters']} chapters top-{adapter['top_k']}" if adapter["chapters"] > 1 else ""
            parts.append(f"{adapter['bank']} bank {adapter['n_memory']} slots{routed}, rank {adapter['rank']}, "
                         f"layers {adapter['layers']} {adapter['variant']}")  # fmt: skip
        else:
            lr = f", values lr x{adapter['value_lr_scale']:g}" if adapter["value_lr_scale"] != 1 else ""
            lr += ", query batch norm" if adapter["query_batchnorm"] else ""
            where = f"layers {adapter['layers']} {adapter['variant']}{lr}"
            parts.append(f"{adapter['n_keys'] ** 2} values of width {adapter['value_dim']}, "
                         f"top-{adapter['top_k']} x {adapter['heads']} heads, {where}")  # fmt: skip
    return "; ".join(parts)


def last_evaluation(name: str, experiment) -> dict | None:
    """A model's row: its parameters and its run's last evaluation (None before its first)."""
    curves = learning_curves(Path(experiment.train.out_dir))
    if not curves:
        return None
    total, trained = parameter_counts(experiment.model, experiment.file)
    last = {key: values[-1] for key, values in curves.items()}
    return {"model": name, "parameters": total, "trained_parameters": trained, **last}


def slots_read(experiment) -> tuple[int, int, int]:
    """Product-key memories' use of their values on the held-out examples' digit positions (Lample et al.
    Sec. 5 report the share of keys used): (distinct rows read by any head in its top k, distinct best rows
    of the first head, rows in all), summed over the model's memories."""
    model = build_model(experiment.model, experiment.file)
    checkpoint = Path(experiment.train.out_dir) / CHECKPOINT
    load_model(checkpoint, read_checkpoint(checkpoint), model)
    model.eval()
    inputs = {}
    for name, adapter in model.memory_adapters.items():  # the memory reads the adapter's normalised stream
        adapter.norm.register_forward_hook(lambda module, args, out, name=name: inputs.__setitem__(name, out))
    read, best = (
        {name: set() for name in inputs or model.memory_adapters},
        {name: set() for name in model.memory_adapters},
    )
    with torch.no_grad():
        for batch, targets in evaluation_batches(held_out(build_task(experiment.task)), experiment):
            model(batch)
            for name, adapter in model.memory_adapters.items():
                memory, scored = adapter.memory, targets != IGNORE
                q = memory.W_q(inputs[name])
                q = q if memory.query_norm is None else memory.query_norm(q.flatten(0, 1)).view_as(q)
                q = q.unflatten(-1, (memory.heads, memory.key_dim))[scored]
                halves = sub_key_top_k(q, memory.sub_keys[:, 0], memory.sub_keys[:, 1], memory.top_k)
                _, rows = top_k_keys(*product_key_candidates(*halves, memory.n_keys), memory.top_k)
                read[name].update(rows.flatten().tolist())
                best[name].update(rows[:, 0, 0].tolist())
    total = sum(adapter.memory.n_keys**2 for adapter in model.memory_adapters.values())
    return sum(map(len, read.values())), sum(map(len, best.values())), total


def table(rows: list[dict]) -> str:
    lines = ["| family | model | adapters | trained parameters | steps | eval loss | accuracy (held-out) "
             "| train tokens/s | values read at digits (best of head 1) |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in sorted(rows, key=lambda r: (r["family"], r["trained_parameters"])):
        lines.append(f"| {row['family']} | {row['model']} | {row['adapters']} | {row['trained_parameters']:,} | "
                     f"{row['step']} | {row['eval_loss']:.4f} | {row['eval_accuracy']:.4f} | "
                     f"{row['tokens_per_s']:,.0f} | {row.get('slots', '')} |")  # fmt: skip
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> bool:
    """Accuracy against trained parameters, one line per family; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, axes = plt.subplots(figsize=(8, 5))
    for name in FAMILIES.values():
        points = sorted((r["trained_parameters"], r["eval_accuracy"], r["model"]) for r in rows if r["family"] == name)
        if points:
            line = "-" if name == FAMILIES["lora"] else "none"  # the memories' variants share parameter counts
            axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", linestyle=line, label=name)
            for x, y, model in points:
                axes.annotate(model, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    axes.axhline(0.1, color="grey", linestyle="--", linewidth=0.8, label="chance (1 of 10 digits)")
    axes.set_xscale("log")
    axes.set_xlabel("trained parameters")
    axes.set_ylabel("held-out digit accuracy")
    axes.set_ylim(0, 1.02)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", help="train only these models of the config")
    parser.add_argument("--out", default="benchmarks/results/adapters_fact_recall_curve_cpu")
    parser.add_argument("--report", action="store_true", help="only write the report from the runs so far")
    args = parser.parse_args()
    torch.set_num_threads(1)
    experiments = load_comparison(CONFIG)
    chosen = {name: experiments[name] for name in args.models} if args.models else experiments
    runs = Path(next(iter(experiments.values())).train.out_dir).parent  # each model's is train.out_dir/<name>
    started = time.perf_counter()
    if not args.report:
        try:
            compare(chosen, runs, log=lambda line: print(line, flush=True), overwrite=True)
        except ComparisonError as error:  # a failed model has no evaluation: it is left out of the rows
            print(error)
    rows = [row for name, experiment in experiments.items() if (row := last_evaluation(name, experiment))]
    training = sum(row["tokens"] / row["tokens_per_s"] for row in rows) / 60
    took = f"{training:.1f} minutes of training" + ("" if args.report else
                                                    f", {(time.perf_counter() - started) / 60:.1f} in all")  # fmt: skip
    for row in rows:
        experiment = experiments[row["model"]]
        row["family"], row["adapters"] = family(experiment), describe(experiment)
        if row["family"] == FAMILIES["product_key_memory"]:
            read, best, total = slots_read(experiment)
            row["slots"] = f"{read:,} of {total:,} ({best:,})"
    out = Path(args.out)
    train = next(iter(experiments.values())).train
    header = (f"# Fact recall against trained parameters: LoRA and memory adapters (CPU, one thread)\n\n"
              f"```\nuv run --extra hf python benchmarks/adapters_base.py\n"
              f"uv run --extra hf --extra plots python benchmarks/adapters_fact_recall_curve.py   "
              f"# {took}\n```\n\n"
              f"Config `{CONFIG}`: {train.steps} steps x {train.batch_size} x 128 tokens, AdamW lr {train.lr:g}, "
              f"one train section for every model; accuracy on 128 held-out examples (digits only).\n\n")  # fmt: skip
    out.with_suffix(".md").write_text(header + table(rows) + "\n")
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2))
    drawn = plot(rows, out.with_suffix(".png"))
    print(f"wrote {out}.md, .json{' and .png' if drawn else ' (install the plots extra for the .png)'}")


if __name__ == "__main__":
    main()
