"""configs/README.md, the reference of every config key, generated from the schema.

Every key's type, range and default come from the annotations and defaults the configs are
validated against (the constructors of the mixers, MLPs and tasks, the `train` and `eval`
dataclasses, the adapted sections' dataclasses, the nested option dataclasses); its one line of
meaning from `src.config_meanings`. `python -m src.config_reference` rewrites the file;
`tests/test_config_reference.py` fails when the file and the schema disagree, or when a key has no
meaning or a meaning no key.
"""

import inspect
import types
import typing
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from src.adapted.config import BaseSection, LoRAAdapter, MemoryPlacement
from src.config import MLPS, EvalConfig, TrainConfig
from src.config_meanings import MEANINGS
from src.early_stopping import EarlyStopping
from src.layers import MIXERS
from src.layers.compressive_memory import HeadMemory
from src.layers.neural_memory import NeuralMemoryOptions
from src.schema import Range
from src.tasks import TASKS
from src.tasks.text_corpus import LocalDataset

PATH = Path(__file__).resolve().parents[1] / "configs" / "README.md"
REQUIRED = "required"


def _type(hint: Any) -> tuple[str, str]:
    """(type, range) of an annotation, as the reference writes them."""
    origin = typing.get_origin(hint)
    if origin is Annotated:
        base, *metadata = typing.get_args(hint)
        ranges = [meta for meta in metadata if isinstance(meta, Range)]
        return _type(base)[0], " and ".join(_range(r) for r in ranges)
    if origin is Literal:
        return "one of " + ", ".join(f"`{value}`" for value in typing.get_args(hint)), ""
    if origin in (typing.Union, types.UnionType):
        (inner,) = [option for option in typing.get_args(hint) if option is not type(None)]
        kind, bounds = _type(inner)
        return f"{kind} or null", bounds
    if origin is list:
        kind, bounds = _type(typing.get_args(hint)[0])
        return f"non-empty list of {kind}", bounds
    if is_dataclass(hint):
        return f"mapping (`{hint.__name__}` below)", ""
    return {dict: "mapping", list: "list"}.get(hint, getattr(hint, "__name__", str(hint))), ""


def _number(x: float) -> str:
    return f"{int(x):,}" if float(x).is_integer() else f"{x:g}"


def _range(r: Range) -> str:
    low = "(-∞" if r.low is None else f"{'(' if r.low_open else '['}{_number(r.low)}"
    high = "∞)" if r.high is None else f"{_number(r.high)}{')' if r.high_open else ']'}"
    return f"{low}, {high}"


def _default(value: Any) -> str:
    if value is inspect.Parameter.empty or value is MISSING:
        return REQUIRED
    if value is None:
        return "null"
    if is_dataclass(value):
        return "its fields' defaults"
    if isinstance(value, bool):
        return str(value).lower()
    return f"`{value}`"


def keys_of(target: Any, skip: tuple[str, ...] = ("self", "d_model")) -> list[tuple[str, Any, Any]]:
    """(name, annotation, default) of each config key `target` (a class or dataclass) takes."""
    if is_dataclass(target):
        hints = typing.get_type_hints(target, include_extras=True)
        return [
            (f.name, hints[f.name], f.default if f.default is not MISSING else MISSING)
            for f in fields(target)
            if f.name not in skip
        ]
    hints = typing.get_type_hints(target.__init__, include_extras=True)
    parameters = inspect.signature(target.__init__).parameters.items()
    return [(name, hints[name], p.default) for name, p in parameters if name not in skip]


def _table(section: str, keys: list[tuple[str, Any, Any]]) -> list[str]:
    lines = ["| key | type | range | default | meaning |", "|---|---|---|---|---|"]
    for name, hint, default in keys:
        kind, bounds = _type(hint)
        lines.append(f"| `{name}` | {kind} | {bounds} | {_default(default)} | {MEANINGS[f'{section}.{name}']} |")
    return [*lines, ""]


def sections() -> list[tuple[str, str, list[tuple[str, Any, Any]]]]:
    """(meaning prefix, heading, keys) of every table of the reference, in its order."""
    block_keys = [("mixer", dict, inspect.Parameter.empty), ("mlp", dict, inspect.Parameter.empty),
                  ("repeat", typing.Annotated[int, Range(low=1)], 1)]  # fmt: skip
    model_keys = [
        ("vocab_size", typing.Annotated[int, Range(low=1)], inspect.Parameter.empty),
        ("d_model", typing.Annotated[int, Range(low=1)], inspect.Parameter.empty),
        ("tie_embeddings", bool, inspect.Parameter.empty),
        ("norm_eps", typing.Annotated[float, Range(low=0, low_open=True)], 1e-5),
        ("blocks", list, inspect.Parameter.empty),
    ]
    tables = [("model", "## `model`: a block list (PaperModel)", model_keys),
              ("block", "### `model.blocks[i]`", block_keys)]  # fmt: skip
    for name, cls in MIXERS.items():
        tables.append((name, f"### mixer `type: {name}` (`{cls.__name__}`)", keys_of(cls)))
    for name, cls in MLPS.items():
        tables.append((f"mlp.{name}", f"### mlp `type: {name}` (`{cls.__name__}`), or `mlp: none`", keys_of(cls)))
    tables += [
        ("NeuralMemoryOptions", "### `NeuralMemoryOptions`: the `memory:` mapping of neural_memory and Titans",
         keys_of(NeuralMemoryOptions)),
        ("HeadMemory", "### `HeadMemory`: one entry of tensor_memory's `heads:` list", keys_of(HeadMemory)),
        ("base", "## `model` with `base` and `adapters`: an adapted pretrained model\n\n"
         "### `model.base` (`BaseSection`)", keys_of(BaseSection)),
        ("memory_adapter", "### `model.adapters[i]` with `type: memory` or `type: product_key_memory`: where "
         "(`MemoryPlacement`), then any memory_bank or product_key_memory key above", keys_of(MemoryPlacement)),
        ("lora_adapter", "### `model.adapters[i]` with `type: lora` (`LoRAAdapter`)", keys_of(LoRAAdapter)),
    ]  # fmt: skip
    for name, cls in TASKS.items():
        tables.append((f"task.{name}", f"### task `type: {name}` (`{cls.__name__}`)", keys_of(cls, ("self",))))
    tables.append(
        ("LocalDataset", "### `LocalDataset`: the text task's `dataset` (extra `datasets`)", keys_of(LocalDataset))
    )
    tables += [
        ("train", "## `train` (`TrainConfig`)", keys_of(TrainConfig)),
        ("early_stopping", "### `train.early_stopping` (`EarlyStopping`)", keys_of(EarlyStopping)),
        ("eval", "## `eval` (`EvalConfig`)", keys_of(EvalConfig)),
    ]
    return tables


INTRO = """# Config reference

Generated from the schema by `python -m src.config_reference` (do not edit by hand:
`tests/test_config_reference.py` fails when this file and the code disagree). A config is a YAML
mapping with four sections, `model`, `task`, `train` and `eval`; a comparison config has `models`
(name -> model section) instead of `model`. Every key below is checked on load: an unknown, missing,
wrongly typed, non-finite or out-of-range value is one error naming the key and the file, and a key
given twice is refused. `memory-models train CONFIG` prints the resolved config, defaults included.
Ranges are closed `[ ]` or open `( )`; integers are at most 4,294,967,295 in any case.

A memory bank's and a product-key memory's keys are read by a memory adapter too; `eval.settings`
entries take task keys and dotted model keys (`"model.blocks[1].mixer.top_k": 4`) that keep the
parameters' shapes.
"""


def reference() -> str:
    lines = [INTRO]
    for section, heading, keys in sections():
        lines += [heading, "", *_table(section, keys)]
    return "\n".join(lines).rstrip("\n") + "\n"


def schema_keys() -> list[str]:
    """Every key of the reference as `<table>.<key>`, the form `src.config_meanings` names them."""
    return [f"{section}.{name}" for section, _, keys in sections() for name, *_ in keys]


if __name__ == "__main__":
    PATH.write_text(reference())
    print(f"wrote {PATH}")
