"""Side-by-side comparison: several models, one task, one budget, one table (and a plot).

`memory-models compare CONFIG` trains every model of the config's `models` section with the same
task, train and eval sections (each in `train.out_dir/<name>`), and after every model rewrites
`compare.md` (the table) and `compare.json` (every final metric) in `train.out_dir`, so a run
stopped half-way keeps the table of the models done. A model that fails (a config its mixer
rejects at run time, a diverging loss, running out of memory: then with the settings the estimator
finds to fit, ...) gets a row with its error and
the comparison goes on; at the end `ComparisonError` names the failed models. With the `plots`
extra it also writes `compare.png`: learning curves (held-out loss and accuracy, or bits per byte
for text, against training tokens) beside the accuracy per evaluation setting. For MQAR,
`recall.md` splits each model's accuracy by query position and key-query distance (src.recall_splits).
"""

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from src.config import ExperimentConfig, parameter_counts
from src.estimate import out_of_memory_advice
from src.needle import write_needles
from src.recall_splits import recall_splits, write_recall_tables
from src.runs import CHECKPOINT, METRICS
from src.training import OutOfMemory, setting_label, train

if TYPE_CHECKING:
    from matplotlib.figure import Figure  # the optional 'plots' extra


class ComparisonError(RuntimeError):
    """Some models of a comparison failed; the table and JSON of all of them are written."""


def _columns(experiment: ExperimentConfig) -> list[tuple[str, str]]:
    """(metric key, column title) of the table: loss (and bits per byte for text), then accuracy per setting."""
    labels = [setting_label(override) for override in experiment.eval.settings or []]
    columns = [("eval_loss", "eval loss")]
    if experiment.task["type"] == "text":
        columns += [("eval_bits_per_byte", "bits per byte")]
        columns += [(f"eval_bits_per_byte@{label}", f"bits per byte @ {label}") for label in labels]
    columns += [("eval_accuracy", "accuracy (train setting)")]
    return columns + [(f"eval_accuracy@{label}", f"accuracy @ {label}") for label in labels]


def format_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """A markdown table: model, parameters, the metric columns, tokens per second; failures say why.

    A model that trains only part of its parameters (an adapted pretrained base) shows both counts.
    """
    header = ["model", "parameters", *(title for _, title in columns), "train tokens/s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        trained = row.get("trained_parameters", row["parameters"])
        size = f"{row['parameters']:,}" + (f" ({trained:,} trained)" if trained != row["parameters"] else "")
        if "error" in row:
            cells = [row["model"], size, f"failed: {row['error']}", *["–"] * len(columns)]
        else:
            metrics = [f"{row[key]:.4f}" for key, _ in columns]
            cells = [row["model"], size, *metrics, f"{row['tokens_per_s']:,.0f}"]
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
    return "\n".join(lines)


def learning_curves(run_dir: Path) -> dict[str, list[float]]:
    """Training tokens and every metric of each evaluation, from a run's metrics log."""
    path = run_dir / METRICS
    lines = path.read_text().splitlines() if path.is_file() else []
    records = [json.loads(line) for line in lines]
    return {key: [record[key] for record in records] for key in (records[0] if records else {})}


def plot(rows: list[dict], columns: list[tuple[str, str]], curves: dict[str, dict], path: Path) -> "Figure | None":
    """Learning curves and accuracy per evaluation setting, one line per model.

    Returns the matplotlib figure (already saved to `path`), or None when matplotlib is missing.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    text = any(key == "eval_bits_per_byte" for key, _ in columns)
    second = ("eval_bits_per_byte", "held-out bits per byte") if text else ("eval_accuracy", "held-out accuracy")
    figure, (loss_axes, second_axes, setting_axes) = plt.subplots(1, 3, figsize=(16, 4.5))
    for name, curve in curves.items():
        if curve:
            loss_axes.plot(curve["tokens"], curve["eval_loss"], marker=".", label=name)
            second_axes.plot(curve["tokens"], curve[second[0]], marker=".", label=name)
    for axes, ylabel in ((loss_axes, "held-out loss (nats)"), (second_axes, second[1])):
        axes.set_xlabel("training tokens")
        axes.set_ylabel(ylabel)
    keys = [key for key, _ in columns if key.startswith("eval_accuracy")]
    settings = [key.partition("@")[2] or "train setting" for key in keys]
    for row in rows:
        if "error" not in row:
            setting_axes.plot(settings, [row[key] for key in keys], marker="o", label=row["model"])
    setting_axes.set_xlabel("evaluation setting")
    setting_axes.set_ylabel("held-out accuracy")
    setting_axes.set_ylim(0, 1.02)
    setting_axes.tick_params(axis="x", labelrotation=15)
    for axes in figure.axes:
        if axes.get_lines():  # every model may have failed
            axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return figure


def _write(path: Path, text: str) -> None:
    """Replace `path` atomically, so a reader or a kill never sees half a table."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def _error_line(error: BaseException) -> str:
    """One line for a model's failure; running out of memory says what the estimator finds to fit."""
    text = out_of_memory_advice(error) if isinstance(error, OutOfMemory) else str(error)
    message = " ".join(line.strip() for line in text.splitlines() if line.strip())
    return f"{type(error).__name__}: {message}"


def compare(
    experiments: dict[str, ExperimentConfig], out_dir: str | Path, log: Callable[[str], object] = print,
    resume: bool = False, overwrite: bool = False,
) -> list[dict]:  # fmt: skip
    """Train each experiment, writing the table and JSON after each; return the rows.

    `resume` and `overwrite` are passed to each model's `train` (a finished model's run is then
    read back, not trained again); under `resume`, a model whose run has no checkpoint yet (never
    started, or stopped before its first evaluation) is trained from the start. Raises
    `ComparisonError` after writing everything when any model failed.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = _columns(next(iter(experiments.values())))
    rows = []
    for name, experiment in experiments.items():
        log(f"== {name}")
        total, trained = parameter_counts(experiment.model, experiment.file)
        row = {"model": name, "parameters": total, "trained_parameters": trained}
        try:
            started = (Path(experiment.train.out_dir) / CHECKPOINT).exists()
            fresh = resume and not started  # nothing to resume: its partial run (if any) holds no step
            result = train(
                experiment, lambda line, name=name: log(f"[{name}] {line}"), resume and started, overwrite or fresh
            )
            result |= recall_splits(experiment)  # MQAR: accuracy by query position and key-query distance
        except Exception as error:  # any failure of one model; the comparison goes on
            row["error"] = _error_line(error)
            log(f"[{name}] failed: {row['error']}")
        else:
            row |= result
        rows.append(row)
        _write(out_dir / "compare.md", format_table(rows, columns) + "\n")
        _write(out_dir / "compare.json", json.dumps(rows, indent=2))
    log(format_table(rows, columns))
    curves = {name: learning_curves(Path(experiment.train.out_dir)) for name, experiment in experiments.items()}
    if plot(rows, columns, curves, out_dir / "compare.png") is not None:
        log(f"wrote {out_dir / 'compare.md'}, compare.json and compare.png")
    else:
        log(f"wrote {out_dir / 'compare.md'} and compare.json (install the 'plots' extra for compare.png)")
    write_needles(rows, out_dir, log)  # passkey settings with both length and depth: the needle grid
    write_recall_tables(rows, out_dir, log)
    if failed := [str(row["model"]) for row in rows if "error" in row]:
        raise ComparisonError(f"{len(failed)} of {len(rows)} models failed ({', '.join(failed)}); see {out_dir}")
    return rows
