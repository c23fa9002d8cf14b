"""Needle tables: passkey cells parsed from compare rows, the depth x length table, heat maps, a real run."""

import importlib.util
import json

import pytest
import yaml

from src.compare import compare
from src.config import load_comparison
from src.needle import main, needle_cells, needle_table

HAS_PLOTS = importlib.util.find_spec("matplotlib") is not None


def rows():
    return [
        {
            "model": "attention",
            "eval_accuracy": 0.9,
            "eval_accuracy@length=64,depth=0.0": 1.0,
            "eval_accuracy@length=64,depth=1.0": 0.5,
            "eval_accuracy@length=1024,depth=0.0": 0.25,
            "eval_accuracy@length=1024,depth=1.0": 0.0,
            "eval_accuracy@length=64": 0.7,  # not a needle cell: no depth
            "eval_loss@length=64,depth=0.0": 3.0,  # not an accuracy
        },
        {"model": "mamba", "eval_accuracy@length=64,depth=0.5": 0.75},
        {"model": "no_needles", "eval_accuracy": 0.1},
    ]


def test_cells_are_the_accuracies_of_settings_with_length_and_depth():
    assert needle_cells(rows()[0]) == {(0.0, 64): 1.0, (1.0, 64): 0.5, (0.0, 1024): 0.25, (1.0, 1024): 0.0}
    assert needle_cells(rows()[2]) == {}


def test_table_has_means_per_length_and_a_grid_per_model():
    assert needle_table(rows()).splitlines() == [
        "Mean accuracy over depths, per context length:",
        "",
        "| model | 64 | 1K |",
        "|---|---|---|",
        "| attention | 0.75 | 0.12 |",
        "| mamba | 0.75 | – |",
        "",
        "**attention** (rows: key depth, columns: context length)",
        "",
        "| depth | 64 | 1K |",
        "|---|---|---|",
        "| 0 | 1.00 | 0.25 |",
        "| 1 | 0.50 | 0.00 |",
        "",
        "**mamba** (rows: key depth, columns: context length)",
        "",
        "| depth | 64 |",
        "|---|---|",
        "| 0.5 | 0.75 |",
    ]
    assert needle_table([rows()[2]]) == ""


def test_command_writes_table_and_heat_maps_beside_compare_json(tmp_path, capsys):
    path = tmp_path / "compare.json"
    path.write_text(json.dumps(rows()))
    assert main([str(path)]) == 0
    assert (tmp_path / "needle.md").read_text() == needle_table(rows()) + "\n"
    assert (tmp_path / "needle.png").is_file() == HAS_PLOTS
    assert "| attention | 0.75 | 0.12 |" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("content", "message"),
    [("not json", "cannot read a comparison's rows"), ('{"a": 1}', "not a compare.json"), ("[]", "no passkey")],
)
def test_command_errors_are_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "compare.json"
    path.write_text(content)
    assert main([str(path)]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert main([]) == 2


def test_a_real_passkey_comparison_fills_the_grid(tmp_path):
    block = {"mixer": {"type": "tensor_memory", "n_heads": 2, "update": "delta"}, "mlp": "none"}
    raw = {
        "models": {"memory": {"vocab_size": 16, "d_model": 8, "tie_embeddings": True, "blocks": [block]}},
        "task": {"type": "passkey", "vocab_size": 16, "length": 24, "depth": None, "num_digits": 2},
        "train": {
            "steps": 2, "batch_size": 4, "lr": 1e-3, "warmup_steps": 0, "weight_decay": 0.0, "grad_clip": 1.0,
            "seed": 0, "out_dir": str(tmp_path / "run"), "eval_every": 2,
        },
        "eval": {
            "num_examples": 4, "batch_size": 4, "seed": 1,
            "settings": [{"length": n, "depth": d} for n in (24, 96) for d in (0.0, 0.5, 1.0)],
        },
    }  # fmt: skip
    config = tmp_path / "passkey.yaml"
    config.write_text(yaml.safe_dump(raw))
    result = compare(load_comparison(config), tmp_path / "run", log=lambda line: None)  # writes needle.md
    assert sorted(needle_cells(result[0])) == [(d, n) for d in (0.0, 0.5, 1.0) for n in (24, 96)]
    grid = (tmp_path / "run" / "needle.md").read_text()
    assert "| model | 24 | 96 |" in grid and "| 0.5 |" in grid
