"""memory-models compare: a failing model gets an error row and the others still run; the table is
rewritten after every model; learning curves; bits per byte for text."""

import json

import pytest
import yaml

from src.cli import main
from src.compare import _columns, compare, learning_curves, plot
from src.config import load_comparison
from src.validation import read_yaml
from tests.conftest import ROOT
from tests.test_cli import tiny_experiment


def comparison(tmp_path, names=("first", "second", "third"), **train_changes) -> str:
    """Three copies of the tiny transformer of test_cli under different names."""
    raw = read_yaml(tiny_experiment(tmp_path, **train_changes))
    raw = {"models": dict.fromkeys(names, raw["model"]), **{key: raw[key] for key in ("task", "train", "eval")}}
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return str(path)


def test_a_failing_model_gets_an_error_row_and_the_others_still_run(tmp_path, capsys):
    config = comparison(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "second").write_text("not a directory")  # the second model cannot write its run
    assert main(["compare", config]) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and "1 of 3 models failed (second)" in err and "Traceback" not in err
    rows = json.loads((tmp_path / "run" / "compare.json").read_text())
    assert [row["model"] for row in rows] == ["first", "second", "third"]
    assert "error" not in rows[0] and "error" not in rows[2] and rows[2]["eval_accuracy"] >= 0
    assert rows[1]["error"].startswith("RunError: ") and "is a file" in rows[1]["error"]
    table = (tmp_path / "run" / "compare.md").read_text().splitlines()
    assert table[3].startswith("| second | ") and "failed: RunError" in table[3] and table[3].endswith("– |")
    assert (tmp_path / "run" / "third" / "checkpoint.pt").is_file()
    assert "[second] failed: RunError" in out


def test_every_model_diverging_is_reported_row_by_row(tmp_path, capsys):
    config = comparison(tmp_path, names=("a", "b"), lr=1e20)
    assert main(["compare", config]) == 2
    assert "2 of 2 models failed (a, b)" in capsys.readouterr().err
    rows = json.loads((tmp_path / "run" / "compare.json").read_text())
    assert all("non-finite" in row["error"] and "step" in row["error"] for row in rows)


def test_the_table_is_written_after_each_model(tmp_path):
    experiments = load_comparison(comparison(tmp_path))
    tables = []

    def log(line: str) -> None:  # read the files at the moment the second model starts
        if line == "== second":
            tables.append((tmp_path / "run" / "compare.md").read_text())

    compare(experiments, tmp_path / "run", log=log)
    assert len(tables) == 1 and tables[0].count("\n") == 3  # header, rule and the first model's row
    assert tables[0].splitlines()[2].startswith("| first | ")


def test_resume_reads_finished_models_instead_of_training_them_again(tmp_path, capsys):
    config = comparison(tmp_path, names=("a", "b"))
    assert main(["compare", config]) == 0
    first = (tmp_path / "run" / "compare.json").read_text()
    checkpoint = (tmp_path / "run" / "a" / "checkpoint.pt").read_bytes()
    assert main(["compare", config]) == 2  # the runs exist: refused without --resume or --overwrite
    assert main(["compare", config, "--resume"]) == 0
    assert (tmp_path / "run" / "a" / "checkpoint.pt").read_bytes() == checkpoint
    assert json.loads((tmp_path / "run" / "compare.json").read_text()) == json.loads(first)


def test_resume_trains_the_models_that_never_reached_a_checkpoint(tmp_path):
    config = comparison(tmp_path, names=("a", "b"))
    assert main(["compare", config]) == 0
    first = json.loads((tmp_path / "run" / "compare.json").read_text())
    (tmp_path / "run" / "b" / "checkpoint.pt").unlink()  # b was stopped before its first evaluation
    assert main(["compare", config, "--resume"]) == 0
    again = json.loads((tmp_path / "run" / "compare.json").read_text())
    assert [(row["eval_loss"], row["eval_accuracy"]) for row in again] == [
        (row["eval_loss"], row["eval_accuracy"]) for row in first
    ]  # b trained again from its seed: the same model


def test_learning_curves_plot_one_line_per_model(tmp_path):
    pytest.importorskip("matplotlib")
    experiments = load_comparison(comparison(tmp_path, names=("a", "b")))
    rows = compare(experiments, tmp_path / "run", log=lambda line: None)
    curves = {name: learning_curves(tmp_path / "run" / name) for name in experiments}
    assert curves["a"]["step"] == [3, 6] and curves["a"]["tokens"][1] == 2 * curves["a"]["tokens"][0]
    figure = plot(rows, _columns(experiments["a"]), curves, tmp_path / "plot.png")
    loss_axes, accuracy_axes, setting_axes = figure.axes
    assert loss_axes.get_xlabel() == "training tokens" and accuracy_axes.get_ylabel() == "held-out accuracy"
    assert [line.get_label() for line in loss_axes.get_lines()] == ["a", "b"]
    assert list(loss_axes.get_lines()[0].get_xdata()) == curves["a"]["tokens"]
    assert list(loss_axes.get_lines()[1].get_ydata()) == curves["b"]["eval_loss"]
    assert [line.get_label() for line in setting_axes.get_lines()] == ["a", "b"]
    assert list(setting_axes.get_lines()[0].get_ydata()) == [rows[0]["eval_accuracy"]]
    assert (tmp_path / "plot.png").stat().st_size > 0 and (tmp_path / "run" / "compare.png").is_file()


def test_a_text_comparison_reports_bits_per_byte(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_bytes((ROOT / "data" / "tinyshakespeare.txt").read_bytes()[:20_000])
    raw = read_yaml(comparison(tmp_path, names=("a",)))
    raw["models"]["a"]["vocab_size"] = 256
    raw["task"] = {"type": "text", "path": str(text), "length": 32}
    raw["eval"]["settings"] = [{"length": 64}]
    path = tmp_path / "text.yaml"
    path.write_text(yaml.safe_dump(raw))
    rows = compare(load_comparison(path), tmp_path / "run", log=lambda line: None)
    header = (tmp_path / "run" / "compare.md").read_text().splitlines()[0]
    assert "| bits per byte | bits per byte @ length=64 |" in header
    assert rows[0]["eval_bits_per_byte"] == pytest.approx(rows[0]["eval_loss"] / 0.6931471805599453)
