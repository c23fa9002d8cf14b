"""Config fuzzing: mutations of every shipped config give a ConfigError naming the key and file.

Each example takes one config of `configs/`, applies one mutation at a random place (a key
deleted, misspelled, given a value of the wrong type, set out of range or to a non-finite number,
or wrongly nested one level deeper) and loads it. Loading either succeeds (some mutations are
valid, e.g. deleting a key that has a default) or raises `ConfigError` whose message names the
file and a key; any other exception is a bug.
"""

import math

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from src.config import load_comparison, load_experiment
from src.validation import ConfigError, read_yaml
from tests.conftest import ROOT

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
WRONG_VALUES = ["text", [1, 2], {"nested": 1}, None, True, -3, 0, 1e30, math.inf, -math.inf, math.nan, 2**70]


def paths(node, prefix=()):
    """Every (key or index) path of a loaded YAML tree, parents before children."""
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in children:
        yield (*prefix, key)
        yield from paths(child, (*prefix, key))


def parent_of(raw, path):
    for key in path[:-1]:
        raw = raw[key]
    return raw


def mutate(raw, path, kind, value):
    parent, key = parent_of(raw, path), path[-1]
    if kind == "delete" and isinstance(parent, dict):
        del parent[key]
    elif kind == "misspell" and isinstance(parent, dict):
        parent[f"{key}x"] = parent.pop(key)
    elif kind == "nest":
        parent[key] = {"value": parent[key]}
    else:
        parent[key] = value


@pytest.mark.parametrize("config", CONFIGS, ids=[path.stem for path in CONFIGS])
@settings(max_examples=15, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_config_is_a_named_config_error_or_loads(config, tmp_path, data):
    raw = read_yaml(config)
    path = data.draw(st.sampled_from(list(paths(raw))), label="path")
    kind = data.draw(st.sampled_from(["delete", "misspell", "wrong value", "nest"]), label="mutation")
    mutate(raw, path, kind, data.draw(st.sampled_from(WRONG_VALUES), label="value"))
    file = tmp_path / config.name
    file.write_text(yaml.safe_dump(raw))
    load = load_comparison if "models" in read_yaml(config) else load_experiment
    try:
        load(file)
    except ConfigError as error:
        message = str(error)
        assert message.startswith(f"{file}: "), message
        assert "key '" in message, message
