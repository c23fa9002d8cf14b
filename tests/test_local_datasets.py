"""The text task on local dataset files (extra `datasets`): JSON, JSON lines, Parquet, CSV, text, a directory."""

import csv
import json
import sys

import pytest
import torch
import yaml

from src.cli import main
from src.config import load_experiment
from src.tasks import build_task
from src.validation import ConfigError, read_yaml
from tests.test_cli import tiny_experiment

pytest.importorskip("datasets")
pyarrow_parquet = pytest.importorskip("pyarrow.parquet")

TEXTS = [f"{i}: to be, or not to be, that is the question; ay, there's the rub." for i in range(60)]


def write(directory, fmt: str, name: str = "corpus") -> str:
    """The TEXTS as one file of `fmt` in `directory` (a column `text` beside another column)."""
    rows = [{"id": i, "text": text} for i, text in enumerate(TEXTS)]
    path = directory / f"{name}.{ {'text': 'txt'}.get(fmt, fmt) }"
    if fmt == "json":
        path.write_text(json.dumps(rows))
    elif fmt == "jsonl":
        path.write_text("\n".join(json.dumps(row) for row in rows))
    elif fmt == "csv":
        with path.open("w", newline="") as file:
            writer = csv.DictWriter(file, ["id", "text"])
            writer.writeheader()
            writer.writerows(rows)
    elif fmt == "text":
        path.write_text("\n".join(TEXTS))
    else:
        import pyarrow

        pyarrow_parquet.write_table(pyarrow.table({"id": list(range(len(TEXTS))), "text": TEXTS}), path)
    return str(path)


def text_config(tmp_path, task: dict) -> str:
    raw = read_yaml(tiny_experiment(tmp_path, steps=2, eval_every=2, warmup_steps=0))
    raw["model"]["vocab_size"] = 256
    raw["task"] = {"type": "text", "length": 32, **task}
    path = tmp_path / "text.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


@pytest.fixture(scope="module")
def plain_text(tmp_path_factory):
    """The same text as a plain file, read through `path`: what every dataset format must equal."""
    tmp_path = tmp_path_factory.mktemp("plain")
    (tmp_path / "plain.txt").write_text("\n".join(TEXTS))
    return build_task(load_experiment(text_config(tmp_path, {"path": str(tmp_path / "plain.txt")})).task)


@pytest.mark.parametrize("fmt", ["json", "jsonl", "parquet", "csv", "text"])
def test_each_format_gives_the_texts_joined_by_newlines(tmp_path, plain_text, fmt):
    dataset = {"path": write(tmp_path, fmt), "format": fmt, "column": "text"}
    experiment = load_experiment(text_config(tmp_path, {"dataset": dataset}))
    assert experiment.task["dataset"] == dataset and experiment.task["path"] is None
    task = build_task(experiment.task)
    assert torch.equal(task.data, plain_text.data) and torch.equal(task.held_out().data, plain_text.held_out().data)


def test_a_directory_reads_its_files_of_the_format_in_name_order(tmp_path, plain_text):
    half = len(TEXTS) // 2
    for name, texts in (("b", TEXTS[half:]), ("a", TEXTS[:half])):
        (tmp_path / f"{name}.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in texts))
    (tmp_path / "notes.txt").write_text("not part of the dataset")
    task = build_task(
        load_experiment(text_config(tmp_path, {"dataset": {"path": str(tmp_path), "format": "jsonl"}})).task
    )
    assert torch.equal(task.data, plain_text.data)


def test_train_on_a_dataset(tmp_path, capsys):
    config = text_config(tmp_path, {"dataset": {"path": write(tmp_path, "parquet"), "format": "parquet"}})
    assert main(["train", config]) == 0
    assert "eval_bits_per_byte" in (tmp_path / "run" / "metrics.jsonl").read_text()


@pytest.mark.parametrize(
    ("task", "message"),
    [
        (lambda d: {"dataset": {"path": write(d, "csv"), "format": "csv", "column": "body"}},
         "dataset.column 'body' is not a column of"),
        (lambda d: {"dataset": {"path": write(d, "csv"), "format": "csv", "column": "id"}},
         "dataset.column 'id' must hold text, it holds int values"),
        (lambda d: {"dataset": {"path": str(d / "none"), "format": "json"}}, "is neither a file nor a directory"),
        (lambda d: {"dataset": {"path": str(d), "format": "parquet"}}, "holds no .parquet file"),
        (lambda d: {"dataset": {"path": write(d, "text"), "format": "parquet"}}, "is not readable as parquet"),
        (lambda d: {"dataset": {"path": "x.csv", "format": "xlsx"}}, "key 'task.dataset.format' must be one of"),
        (lambda d: {"dataset": {"format": "csv"}}, "missing key 'task.dataset.path'"),
        (lambda d: {}, "give the text as path (a text file) or as dataset"),
        (lambda d: {"path": write(d, "text"), "dataset": {"path": write(d, "text"), "format": "text"}},
         "give the text as path (a text file) or as dataset"),
    ],
)  # fmt: skip
def test_a_bad_dataset_is_named(tmp_path, task, message):
    with pytest.raises(ConfigError, match=r"key 'task'|key 'task\.dataset") as error:
        load_experiment(text_config(tmp_path, task(tmp_path)))
    assert message in str(error.value)


def test_without_the_extra_the_error_names_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # what `import datasets` meets without the extra
    config = text_config(tmp_path, {"dataset": {"path": write(tmp_path, "jsonl", "other"), "format": "jsonl"}})
    with pytest.raises(ConfigError, match=r"task\.dataset needs the 'datasets' extra: uv sync --extra datasets"):
        load_experiment(config)
