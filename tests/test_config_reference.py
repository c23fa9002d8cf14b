"""configs/README.md is the schema's reference: regenerated, it equals the committed file."""

from src.config_meanings import MEANINGS
from src.config_reference import PATH, reference, schema_keys


def test_every_key_has_one_meaning_and_every_meaning_a_key():
    keys = schema_keys()
    assert [key for key in keys if key not in MEANINGS] == []
    assert sorted(set(MEANINGS) - set(keys)) == []


def test_the_committed_reference_equals_the_schema():
    assert PATH.read_text() == reference(), "configs/README.md is stale: run `uv run python -m src.config_reference`"


def test_the_reference_names_every_mixer_task_and_section():
    text = reference()
    for heading in ("`type: memory_bank`", "`type: titans_mac`", "task `type: text`", "## `train`", "## `eval`",
                    "`train.early_stopping`", "`NeuralMemoryOptions`", "`model.base`"):  # fmt: skip
        assert heading in text
    assert "| `seed` | int | [0, 4,294,967,295] | required |" in text
