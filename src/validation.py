"""Validation of config values against the callables they feed: the rules every section of every config shares.

A mapping is checked against the signature of the callable it builds (a mixer, a task, a dataclass
section): `check_keys` refuses unknown and missing keys, `check_value` checks one value against its
annotation (`src.schema`'s bounded types, `Literal`, lists, optional values, nested dataclasses),
`arguments_for` does both for a whole mapping and `build` calls the callable, a failure inside it
named by the key. Every error is a `ConfigError` naming the key and the file. `read_yaml` reads a
file as YAML 1.2 numbers. The sections themselves (`model`, `task`, `train`, `eval`) are
`src.config`'s and `src.adapted.config`'s.
"""

import inspect
import math
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from yaml.constructor import ConstructorError

from src.schema import Range

MAX_INT = 2**32 - 1  # no size, count or seed of an experiment is larger


class ConfigError(ValueError):
    """A config file is invalid; the message names the file and the key."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `3e-4` as a float (YAML 1.2), not as the string PyYAML 1.1 makes, and refuses
    a key given twice in one mapping (YAML 1.2 requires unique keys; PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, typing.Hashable) and key in seen:
                raise ConstructorError(None, None, f"the key {key!r} appears twice in one mapping", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:(?:\d+\.\d*|\.\d+)(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+)$"),
    list("-+0123456789."),
)


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))


def check_value(value: Any, hint: Any, key: str, file: str) -> Any:
    """Validate one config value against a type hint; return it (ints accepted for floats).

    A dataclass hint (a layer's options, e.g. the neural memory's or a memory's per-head settings)
    takes a nested mapping checked field by field against the dataclass's annotations, keys named
    `key.field`, and returns it as a mapping with the fields' defaults filled in (`build` makes the
    instance); the dataclass's own checks (its `__post_init__`) run here, named by `key`.
    """
    origin = typing.get_origin(hint)
    if origin is Annotated:
        base, *metadata = typing.get_args(hint)
        ranges = [meta for meta in metadata if isinstance(meta, Range)]
        if base is int and type(value) is int and abs(value) > MAX_INT:  # the key's own range, capped
            low = max([-MAX_INT, *(r.low for r in ranges if r.low is not None)])
            high = min([MAX_INT, *(r.high for r in ranges if r.high is not None)])
            raise ConfigError(f"{file}: key '{key}' must lie in [{int(low)}, {int(high)}], got {value}")
        value = check_value(value, base, key, file)
        for meta in metadata:
            if isinstance(meta, Range) and (problem := meta.violation(value)):
                raise ConfigError(f"{file}: key '{key}' {problem}")
        return value
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise ConfigError(f"{file}: key '{key}' must be one of {list(typing.get_args(hint))}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        (inner,) = [option for option in options if option is not type(None)]
        return check_value(value, inner, key, file)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list) or not value:
            raise ConfigError(f"{file}: key '{key}' must be a non-empty list, got {value!r}")
        return [check_value(v, item, f"{key}[{i}]", file) for i, v in enumerate(value)]
    if is_dataclass(hint):  # a nested mapping, validated against the dataclass's fields
        resolved = arguments_for(hint, value, key, file)
        try:
            instantiate(resolved, hint)
        except ValueError as error:
            raise ConfigError(f"{file}: key '{key}': {error}") from error
        return resolved
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and type(value) is float and not math.isfinite(value):
        raise ConfigError(f"{file}: key '{key}' must be a finite number, got {value!r}")
    if hint is int and type(value) is int and abs(value) > MAX_INT:
        raise ConfigError(f"{file}: key '{key}' must lie in [-{MAX_INT}, {MAX_INT}], got {value}")
    if hint in (int, float, str, bool, dict) and (type(value) is hint):
        return value
    raise ConfigError(f"{file}: key '{key}' must be of type {_type_name(hint)}, got {value!r}")


def instantiate(value: Any, hint: Any) -> Any:
    """A resolved config value as the argument its hint declares: each mapping resolved for a
    dataclass hint (through lists and optional values) becomes that dataclass; other values pass."""
    origin = typing.get_origin(hint)
    if origin is Annotated:
        return instantiate(value, typing.get_args(hint)[0])
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        (inner,) = [option for option in typing.get_args(hint) if option is not type(None)]
        return instantiate(value, inner)
    if origin is list:
        (item,) = typing.get_args(hint)
        return [instantiate(v, item) for v in value]
    if is_dataclass(hint) and isinstance(value, Mapping):
        fields = typing.get_type_hints(hint, include_extras=True)
        return hint(**{name: instantiate(v, fields[name]) for name, v in value.items()})
    return value


def _hints(target: Callable) -> dict[str, Any]:
    """The annotations of `target`'s parameters (a class's constructor's)."""
    return typing.get_type_hints(target.__init__ if inspect.isclass(target) else target, include_extras=True)


def check_keys(raw: Any, allowed: Mapping[str, bool], where: str, file: str) -> None:
    """Require `raw` to be a mapping whose keys are in `allowed` (name -> required)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{file}: key '{where}' must be a mapping, got {raw!r}")
    for key in raw:
        if key not in allowed:
            raise ConfigError(f"{file}: unknown key '{where}.{key}'; allowed keys are {sorted(allowed)}")
    for key, required in allowed.items():
        if required and key not in raw:
            raise ConfigError(f"{file}: missing key '{where}.{key}'")


def arguments_for(target: Callable, raw: Any, where: str, file: str, provided: tuple[str, ...] = ()) -> dict:
    """Validate `raw` against the keyword parameters of `target` and return the resolved kwargs.

    Parameters named in `provided` (such as d_model, set by the model section) are not read from
    the config. Parameters with defaults are optional; the defaults are filled in (a dataclass
    default as the mapping of its fields, so the resolved config stays plain YAML).
    """
    signature, hints = inspect.signature(target), _hints(target)
    parameters = {name: p for name, p in signature.parameters.items() if name not in ("self", *provided)}
    check_keys(raw, {name: p.default is inspect.Parameter.empty for name, p in parameters.items()}, where, file)
    resolved = {}
    for name, parameter in parameters.items():
        key = f"{where}.{name}"
        if name in raw:
            resolved[name] = check_value(raw[name], hints[name], key, file)
        elif is_dataclass(parameter.default):
            resolved[name] = asdict(parameter.default)
        else:
            resolved[name] = parameter.default
    return resolved


def build(target: Callable, kwargs: dict, where: str, file: str, **provided: Any) -> Any:
    """Call `target` with resolved `kwargs` (dataclass-typed ones made instances, `instantiate`;
    those `target` passes on through **kwargs unchanged), turning its own argument errors
    (cross-field constraints) into ConfigErrors."""
    hints = _hints(target)
    kwargs = {name: instantiate(value, hints.get(name)) for name, value in kwargs.items()}
    try:
        return target(**provided, **kwargs)
    except ValueError as error:
        raise ConfigError(f"{file}: key '{where}': {error}") from error


def yaml_value(text: str) -> Any:
    """One value written as YAML (`8`, `3e-4`, `sequence`, `null`), read as a config file's values are."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as error:
        raise ConfigError(f"not a YAML value: {error}") from error


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{path}: not a YAML text file (not UTF-8: byte {error.start} is {error.object[error.start]:#04x})"
        ) from error
    try:
        raw = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return raw
