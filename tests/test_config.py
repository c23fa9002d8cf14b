"""Config validation: every error names the key and the file."""

import re
from dataclasses import asdict, dataclass
from typing import Literal

import pytest
import yaml

from src.config import load_comparison, load_experiment
from src.layers.neural_memory import NeuralMemoryOptions
from src.model import PaperModel
from src.schema import PositiveInt
from src.validation import ConfigError, arguments_for, build, read_yaml
from tests.conftest import ROOT

QUICKSTART = ROOT / "configs" / "transformer_mqar.yaml"


def with_change(tmp_path, change) -> str:
    raw = read_yaml(QUICKSTART)
    change(raw)
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_quickstart_config_loads_and_echoes_defaults():
    experiment = load_experiment(QUICKSTART)
    echoed = yaml.safe_load(experiment.to_yaml())
    assert echoed["model"]["blocks"][0]["mixer"] == {"type": "attention", "n_heads": 4, "rope_base": 10000.0}
    assert echoed["model"]["norm_eps"] == 1e-5
    assert echoed["train"]["min_lr_ratio"] == 0.1
    assert experiment.train.lr == 3e-3 and experiment.train.precision == "float32"


def test_misspelled_key_is_named_with_the_file(tmp_path):
    path = with_change(tmp_path, lambda raw: raw["train"].update(learning_rate=raw["train"].pop("lr")))
    with pytest.raises(ConfigError, match=rf"^{path}: unknown key 'train.learning_rate'"):
        load_experiment(path)


def test_misspelled_mixer_key(tmp_path):
    path = with_change(tmp_path, lambda raw: raw["model"]["blocks"][0]["mixer"].update(n_head=4))
    with pytest.raises(ConfigError, match=rf"{path}: unknown key 'model.blocks\[0\].mixer.n_head'"):
        load_experiment(path)


def test_missing_key(tmp_path):
    path = with_change(tmp_path, lambda raw: raw["task"].pop("num_pairs"))
    with pytest.raises(ConfigError, match=rf"{path}: missing key 'task.num_pairs'"):
        load_experiment(path)


def test_wrong_type(tmp_path):
    path = with_change(tmp_path, lambda raw: raw["train"].update(steps="many"))
    with pytest.raises(ConfigError, match=rf"{path}: key 'train.steps' must be of type int, got 'many'"):
        load_experiment(path)


def test_bool_is_not_an_int(tmp_path):
    path = with_change(tmp_path, lambda raw: raw["model"].update(d_model=True))
    with pytest.raises(ConfigError, match=r"key 'model\.d_model' must be of type int"):
        load_experiment(path)


def test_out_of_range(tmp_path):
    path = with_change(tmp_path, lambda raw: raw["train"].update(lr=-1.0))
    with pytest.raises(ConfigError, match=rf"{path}: key 'train.lr' must be > 0, got -1.0"):
        load_experiment(path)


def test_unknown_mixer_type(tmp_path):
    path = with_change(tmp_path, lambda raw: raw["model"]["blocks"][0]["mixer"].update(type="lstm"))
    with pytest.raises(ConfigError, match=r"key 'model.blocks\[0\].mixer.type' must be one of"):
        load_experiment(path)


def test_unknown_section_and_task_constraint(tmp_path):
    path = with_change(tmp_path, lambda raw: raw.update(extra={}))
    with pytest.raises(ConfigError, match=r"unknown key '<top>\.extra'"):
        load_experiment(path)
    path = with_change(tmp_path, lambda raw: raw["task"].update(num_queries=20))
    with pytest.raises(ConfigError, match="key 'task': num_queries=20 must be <= num_pairs=4"):
        load_experiment(path)


def test_model_vocab_must_cover_task_vocab(tmp_path):
    path = with_change(tmp_path, lambda raw: raw["model"].update(vocab_size=16))
    with pytest.raises(ConfigError, match=r"key 'model\.vocab_size' \(16\) must be >= the task's vocabulary \(64\)"):
        load_experiment(path)


def test_scientific_notation_is_a_float(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("a: 3e-4\nb: 12\nc: 1.5\n")
    assert read_yaml(path) == {"a": 3e-4, "b": 12, "c": 1.5}


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_experiment(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match=f"{bad}: not valid YAML"):
        load_experiment(bad)


@pytest.mark.parametrize(
    "key, change, message",
    [
        ("train.lr", lambda raw: raw["train"].update(lr=float("inf")), "must be a finite number, got inf"),
        ("train.lr", lambda raw: raw["train"].update(lr=float("nan")), "must be a finite number, got nan"),
        ("model.norm_eps", lambda raw: raw["model"].update(norm_eps=float("nan")), "must be a finite number"),
        ("train.betas[1]", lambda raw: raw["train"].update(betas=[0.9, 1.0]), "must be < 1, got 1.0"),
        ("train.seed", lambda raw: raw["train"].update(seed=2**70), "must lie in [0, 4294967295], got"),
        ("train.steps", lambda raw: raw["train"].update(steps=2**40), "must lie in [1, 4294967295], got"),
        ("train.steps", lambda raw: raw["train"].update(steps=-(2**40)), "must lie in [1, 4294967295], got"),
        ("model.d_model", lambda raw: raw["model"].update(d_model=2**33), "must lie in [1, 4294967295], got"),
        ("train.warmup_steps", lambda raw: raw["train"].update(warmup_steps=2**40), "must lie in [0, 4294967295]"),
        ("train.out_dir", lambda raw: raw["train"].update(out_dir=""), "must name a directory, got ''"),
        ("train.out_dir", lambda raw: raw["train"].update(out_dir="  "), "must name a directory, got '  '"),
        (
            "train.warmup_steps",
            lambda raw: raw["train"].update(steps=50, warmup_steps=51),
            "(51) must be <= train.steps (50)",
        ),
        ("eval.seed", lambda raw: raw["eval"].update(seed=-1), "must be >= 0"),
        (
            "model.blocks[0].mlp.d_hidden",
            lambda raw: raw["model"]["blocks"][0].update(mlp={"type": "swiglu", "d_hidden": 0}),
            "must be >= 1",
        ),
    ],
)
def test_non_finite_and_out_of_range_values_are_named(tmp_path, key, change, message):
    path = with_change(tmp_path, change)
    with pytest.raises(ConfigError, match=rf"^{path}: key '{re.escape(key)}' {re.escape(message)}"):
        load_experiment(path)


def test_a_duplicated_key_is_refused_with_its_line(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("train:\n  lr: 0.1\n  steps: 5\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match=rf"^{path}: not valid YAML: the key 'lr' appears twice in one mapping"):
        read_yaml(path)
    path.write_text("a: 1\nb: 2\na: 3\n")
    with pytest.raises(ConfigError, match=r"(?s)the key 'a' appears twice.*line 3"):
        read_yaml(path)


def test_a_binary_file_is_named_not_decoded(tmp_path):
    path = tmp_path / "weights.yaml"
    path.write_bytes(bytes(range(128, 256)) * 4)
    with pytest.raises(ConfigError, match=rf"^{path}: not a YAML text file \(not UTF-8: byte 0 is 0x80\)"):
        load_experiment(path)


def test_a_huge_repeat_is_refused_before_anything_is_built(tmp_path):
    path = with_change(tmp_path, lambda raw: raw["model"]["blocks"][0].update(repeat=10_000_000))
    with pytest.raises(ConfigError, match=rf"{path}: key 'model.blocks\[0\].repeat' makes 10000000 blocks"):
        load_experiment(path)


def test_a_model_over_the_parameter_bound_is_refused_with_its_count(tmp_path):
    path = with_change(tmp_path, lambda raw: raw["model"].update(vocab_size=2_000_000, d_model=1024))
    with pytest.raises(ConfigError, match=rf"{path}: key 'model' describes a model of [\d,]+ parameters, more than"):
        load_experiment(path)


@pytest.mark.parametrize("name", ["../../x", "a/b", ".hidden", "", "with space"])
def test_comparison_model_names_must_be_safe_directory_names(tmp_path, name):
    raw = read_yaml(ROOT / "configs" / "compare_mqar.yaml")
    raw["models"] = {name: next(iter(raw["models"].values()))}
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=rf"{path}: key 'models.{re.escape(name)}': a model name becomes a directory"):
        load_comparison(path)


def tensor_memory_heads(raw, heads, **layer):
    raw["model"]["blocks"][0]["mixer"] = {"type": "tensor_memory", "n_heads": 4, "heads": heads, **layer}


def test_per_head_memories_are_validated_and_echoed(tmp_path):
    heads = [{"update": "delta", "max_norm": 2}, {}, {"max_delta": 0.5}, {"update": "linear"}]
    experiment = load_experiment(with_change(tmp_path, lambda raw: tensor_memory_heads(raw, heads)))
    echoed = yaml.safe_load(experiment.to_yaml())["model"]["blocks"][0]["mixer"]
    default = {"update": "linear", "max_delta": None, "max_memory": None, "max_norm": None}
    assert echoed["heads"][0] == {**default, "update": "delta", "max_norm": 2.0}
    assert echoed["heads"][1] == default and echoed["heads"][2] == {**default, "max_delta": 0.5}
    assert echoed["max_norm"] is None and echoed["normalize_qkv"] is False and echoed["bias"] is False


@pytest.mark.parametrize(
    ("heads", "layer", "message"),
    [
        ([{"update": "delta", "max_nrm": 1.0}] * 4, {}, r"unknown key 'model\.blocks\[0\]\.mixer\.heads\[0\]\.max_nrm"),
        ([{}, {"max_norm": -1.0}, {}, {}], {}, r"key 'model\.blocks\[0\]\.mixer\.heads\[1\]\.max_norm' must be > 0"),
        ([{}, {}, {"update": "hebbian"}, {}], {}, r"key 'model\.blocks\[0\]\.mixer\.heads\[2\]\.update' must be one"),
        ([{}, {}, {}, "delta"], {}, r"key 'model\.blocks\[0\]\.mixer\.heads\[3\]' must be a mapping"),
        ([{}, {}], {}, r"key 'model\.blocks\[0\]\.mixer': heads must list one memory per head \(4\), got 2"),
        ([{}] * 4, {"max_memory": 3.0}, r"key 'model\.blocks\[0\]\.mixer': with heads, give update"),
        (None, {"max_delta": 0}, r"key 'model\.blocks\[0\]\.mixer\.max_delta' must be > 0"),
        (None, {"normalize_qkv": "yes"}, r"key 'model\.blocks\[0\]\.mixer\.normalize_qkv' must be of type bool"),
    ],
)
def test_bad_tensor_memory_settings_are_named(tmp_path, heads, layer, message):
    path = with_change(tmp_path, lambda raw: tensor_memory_heads(raw, heads, **layer))
    with pytest.raises(ConfigError, match=rf"^{re.escape(path)}: {message}"):
        load_experiment(path)


TITANS_MAG = ROOT / "configs" / "titans_mag_mqar.yaml"


def titans_memory(tmp_path, memory) -> str:
    raw = read_yaml(TITANS_MAG)
    raw["model"]["blocks"][0]["mixer"]["memory"] = memory
    path = tmp_path / "titans.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_neural_memory_options_are_one_nested_mapping_validated_echoed_and_built(tmp_path):
    experiment = load_experiment(titans_memory(tmp_path, {"kind": "mlp", "chunk_size": 8, "depth": 3}))
    echoed = yaml.safe_load(experiment.to_yaml())["model"]["blocks"][0]["mixer"]["memory"]
    assert echoed == {
        **asdict(NeuralMemoryOptions()),
        "kind": "mlp",
        "chunk_size": 8,
        "depth": 3,
    }
    layer = PaperModel(experiment.model).blocks[0].mixer
    assert layer.neural_memory.options == NeuralMemoryOptions("mlp", chunk_size=8, depth=3)
    assert list(layer.neural_memory.initial) == ["W1", "W2", "W3"]


def test_default_neural_memory_options_are_echoed(tmp_path):
    raw = read_yaml(TITANS_MAG)
    del raw["model"]["blocks"][0]["mixer"]["memory"]
    path = tmp_path / "titans.yaml"
    path.write_text(yaml.safe_dump(raw))
    echoed = yaml.safe_load(load_experiment(path).to_yaml())["model"]["blocks"][0]["mixer"]
    assert echoed["memory"] == asdict(NeuralMemoryOptions())


@pytest.mark.parametrize(
    ("memory", "message"),
    [
        ({"chunk_size": 0}, r"key 'model\.blocks\[0\]\.mixer\.memory\.chunk_size' must be >= 1, got 0"),
        ({"chunk": 4}, r"unknown key 'model\.blocks\[0\]\.mixer\.memory\.chunk'; allowed keys are \['chunk_size'"),
        ({"kind": "transformer"}, r"key 'model\.blocks\[0\]\.mixer\.memory\.kind' must be one of \['linear', 'mlp'\]"),
        ({"theta_max": -0.5}, r"key 'model\.blocks\[0\]\.mixer\.memory\.theta_max' must be > 0"),
        ({"output_gate": "yes"}, r"key 'model\.blocks\[0\]\.mixer\.memory\.output_gate' must be of type bool"),
        ({"depth": 3}, r"key 'model\.blocks\[0\]\.mixer\.memory': depth 3 needs kind: mlp"),
        ("mlp", r"key 'model\.blocks\[0\]\.mixer\.memory' must be a mapping, got 'mlp'"),
    ],
)
def test_bad_neural_memory_options_name_the_dotted_key_and_the_file(tmp_path, memory, message):
    path = titans_memory(tmp_path, memory)
    with pytest.raises(ConfigError, match=rf"^{re.escape(path)}: {message}"):
        load_experiment(path)


@dataclass(frozen=True)
class Inner:
    size: PositiveInt = 2
    name: Literal["a", "b"] = "a"


def with_options(width: PositiveInt, options: Inner = Inner(), more: list[Inner] | None = None) -> tuple:
    return width, options, more


def test_any_dataclass_typed_argument_is_validated_field_by_field_and_built():
    resolved = arguments_for(with_options, {"width": 3, "more": [{"name": "b"}]}, "x", "f.yaml")
    assert resolved == {"width": 3, "options": {"size": 2, "name": "a"}, "more": [{"size": 2, "name": "b"}]}
    assert build(with_options, resolved, "x", "f.yaml") == (3, Inner(), [Inner(name="b")])
    with pytest.raises(ConfigError, match=r"^f\.yaml: key 'x\.more\[0\]\.size' must be >= 1, got 0"):
        arguments_for(with_options, {"width": 3, "more": [{"size": 0}]}, "x", "f.yaml")
