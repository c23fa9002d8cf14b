"""Side-by-side comparison: several models, one task, one budget, one table (and a plot).

`memory-models compare CONFIG` trains every model of the config's `models` section with the same
task, train and eval sections, then writes `compare.md` (the table), `compare.json` (every final
metric) and, with the `plots` extra, `compare.png` (accuracy per evaluation setting) to
`train.out_dir`.
"""

import json
from pathlib import Path

from src.config import ExperimentConfig, count_parameters
from src.training import setting_label, train


def _columns(experiment: ExperimentConfig) -> list[tuple[str, str]]:
    """(metric key, column title) of the table: loss, then accuracy per evaluation setting."""
    labels = [setting_label(override) for override in experiment.eval.settings or []]
    columns = [("eval_loss", "eval loss"), ("eval_accuracy", "accuracy (train setting)")]
    return columns + [(f"eval_accuracy@{label}", f"accuracy @ {label}") for label in labels]


def format_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """A markdown table: model, parameters, the metric columns, tokens per second."""
    header = ["model", "parameters", *(title for _, title in columns), "train tokens/s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["model"], f"{row['parameters']:,}", *(f"{row[key]:.4f}" for key, _ in columns)]
        lines.append("| " + " | ".join([*cells, f"{row['tokens_per_s']:,.0f}"]) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], columns: list[tuple[str, str]], path: Path) -> bool:
    """Accuracy against evaluation setting, one line per model; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    keys = [key for key, _ in columns if key.startswith("eval_accuracy")]
    accuracy = [(key, key.partition("@")[2] or "train setting") for key in keys]
    figure, axes = plt.subplots(figsize=(7, 4))
    for row in rows:
        axes.plot([label for _, label in accuracy], [row[key] for key, _ in accuracy], marker="o", label=row["model"])
    axes.set_xlabel("evaluation setting")
    axes.set_ylabel("held-out accuracy")
    axes.set_ylim(0, 1.02)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def compare(experiments: dict[str, ExperimentConfig], out_dir: str | Path, log=print) -> list[dict]:
    """Train each experiment, then write and return the comparison rows."""
    out_dir = Path(out_dir)
    rows = []
    for name, experiment in experiments.items():
        log(f"== {name}")
        result = train(experiment, log=lambda line, name=name: log(f"[{name}] {line}"))
        rows.append({"model": name, "parameters": count_parameters(experiment.model), **result})
    columns = _columns(next(iter(experiments.values())))
    table = format_table(rows, columns)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "compare.md").write_text(table + "\n")
    (out_dir / "compare.json").write_text(json.dumps(rows, indent=2))
    log(table)
    if plot(rows, columns, out_dir / "compare.png"):
        log(f"wrote {out_dir / 'compare.md'}, compare.json and compare.png")
    else:
        log(f"wrote {out_dir / 'compare.md'} and compare.json (install the 'plots' extra for compare.png)")
    return rows
