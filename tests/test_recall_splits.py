"""A comparison on MQAR splits each model's accuracy by query position and key-query distance."""

import json

import pytest
import yaml

from src.cli import main
from src.recall_splits import recall_tables
from src.validation import read_yaml
from tests.test_compare import comparison


def test_a_mqar_comparison_writes_the_splits_of_the_evaluated_examples(tmp_path, capsys):
    raw = read_yaml(comparison(tmp_path, names=("a", "b")))
    raw["task"].update(num_pairs=4, num_queries=3, length=20)
    raw["eval"]["settings"] = [{"num_pairs": 6, "num_queries": 6, "length": 24}]
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert main(["compare", str(path)]) == 0
    assert "recall.md" in capsys.readouterr().out
    rows = json.loads((tmp_path / "run" / "compare.json").read_text())
    for row in rows:
        for suffix, queries in (("", 3), ("@num_pairs=6,num_queries=6,length=24", 6)):
            splits = row[f"accuracy_splits{suffix}"]
            assert len(splits["accuracy_by_position"]) == queries
            # the evaluation's own examples: the splits average to its accuracy
            mean = sum(splits["accuracy_by_position"]) / queries
            assert mean == pytest.approx(row[f"eval_accuracy{suffix}"], abs=1e-6)
            counts = splits["queries_by_distance"]
            assert sum(counts.values()) == 20 * queries  # eval.num_examples x queries
            weighted = sum(splits["accuracy_by_distance"][bucket] * n for bucket, n in counts.items())
            assert weighted / (20 * queries) == pytest.approx(mean, abs=1e-9)
    text = (tmp_path / "run" / "recall.md").read_text()
    assert text == recall_tables(rows)
    assert text.startswith("### train setting\n") and "### num_pairs=6,num_queries=6,length=24" in text
    assert "| model | q1 | q2 | q3 |" in text and text.count("| a | ") == 4


def test_tasks_without_splits_write_no_recall_table(tmp_path):
    assert recall_tables([{"model": "a", "eval_accuracy": 0.5}]) == ""
