"""Recall tables: a comparison's accuracy split by query position and by key-query distance.

An overall MQAR accuracy hides how it is made: a model that answers only the queries near their
keys, or only the last query, can reach the same number as one that recalls a little everywhere.
For a task that offers `accuracy_splits(inputs, predictions, targets)` (`associative_recall`),
`recall_splits(experiment)` reads the trained model back from its run's checkpoint, predicts the
held-out examples the evaluation scores (the same seeds, `eval.num_examples` of them, for the
training task and each `eval.settings` entry) and returns the splits; `src.compare` adds them to
each model's row of `compare.json` and `write_recall_tables` writes `recall.md` beside
`compare.md`: per setting, one table by query position and one by distance.
"""

from collections.abc import Callable
from pathlib import Path

import torch

from src.config import ExperimentConfig
from src.runs import CHECKPOINT, load_trained_model, select_device
from src.tasks.associative_recall import AssociativeRecall
from src.training import evaluation_batches, evaluation_tasks, precision, setting_model

SPLITS = "accuracy_splits"  # row key; a setting's splits under f"{SPLITS}@{label}"


@torch.no_grad()
def recall_splits(experiment: ExperimentConfig) -> dict:
    """`{SPLITS: splits, SPLITS@<setting>: ...}` of the model in the experiment's run; {} when the task has none."""
    tasks = evaluation_tasks(experiment)
    recall_tasks = [setting.task for setting in tasks if isinstance(setting.task, AssociativeRecall)]
    if len(recall_tasks) < len(tasks):
        return {}
    device = select_device(experiment.train.device, f"{experiment.file}: train.device")
    model = load_trained_model(Path(experiment.train.out_dir) / CHECKPOINT, device, experiment.model).model
    result = {}
    for setting, task in zip(tasks, recall_tasks):
        reader, batches = setting_model(model, setting), []
        for inputs, targets in evaluation_batches(task, experiment):
            with precision(experiment.train, device):
                predictions = reader(inputs.to(device)).argmax(-1).cpu()
            batches.append((inputs, predictions, targets))
        result[f"{SPLITS}{setting.suffix}"] = task.accuracy_splits(*(torch.cat(part) for part in zip(*batches)))
    return result


def _by_position(splits: dict) -> dict:
    return {f"q{j + 1}": accuracy for j, accuracy in enumerate(splits["accuracy_by_position"])}


def _table(title: str, named: list[tuple[str, dict]]) -> list[str]:
    """A markdown table of (model, column -> accuracy) rows, under `title`."""
    columns = list(dict.fromkeys(column for _, cells in named for column in cells))
    lines = [f"{title}:", "", f"| model | {' | '.join(columns)} |", "|---|" + "---|" * len(columns)]
    for model, cells in named:
        lines.append(f"| {model} | " + " | ".join(f"{cells[c]:.3f}" if c in cells else "–" for c in columns) + " |")
    return [*lines, ""]


def recall_tables(rows: list[dict]) -> str:
    """Markdown: per evaluation setting, accuracy by query position, then by key-query distance."""
    keys = list(dict.fromkeys(key for row in rows for key in row if key.startswith(SPLITS)))
    lines = []
    for key in keys:
        splits = [(row["model"], row[key]) for row in rows if key in row]
        counts = splits[0][1]["queries_by_distance"]  # the same held-out examples for every model
        lines += [f"### {key.partition('@')[2] or 'train setting'}", ""]
        by_position = [(model, _by_position(split)) for model, split in splits]
        lines += _table("Accuracy by query position (first to last in the sequence)", by_position)
        by_distance = [(model, split["accuracy_by_distance"]) for model, split in splits]
        lines += _table("Accuracy by key-query distance (tokens)", by_distance)
        lines += ["Queries per distance: " + ", ".join(f"{bucket}: {n:,}" for bucket, n in counts.items()), ""]
    return "\n".join(lines)


def write_recall_tables(rows: list[dict], out_dir: Path, log: Callable[[str], object] = print) -> None:
    """Write `recall.md` when any row has splits."""
    if text := recall_tables(rows):
        (out_dir / "recall.md").write_text(text)
        log(f"wrote {out_dir / 'recall.md'}")
