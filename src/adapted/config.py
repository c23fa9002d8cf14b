"""The `model` section of an adapted pretrained model: a `base` and a list of `adapters`.

    model:
      base:
        directory: runs/bases/tiny-llama   # a save_pretrained directory (config.json, weights, tokenizer.json)
        freeze: true                       # false: full fine-tuning (no adapters needed, no quantization)
        quantization: nf4                  # none | int8 | nf4: the decoder layers' frozen linear weights
        dtype: float32                     # float32 | bfloat16: the frozen weights' dtype
      adapters:
        - {type: memory, layers: [1, 3], variant: A, n_heads: 4, n_memory: 256}   # + memory_bank keys
        - {type: product_key_memory, layers: [2], variant: B, n_keys: 64, top_k: 8, value_dim: 16}
        - {type: lora, targets: [q_proj, v_proj], rank: 8, alpha: 16}             # layers: all by default

Validated like every section (`src.config`): unknown, missing, wrong-typed and out-of-range keys,
and also a missing directory, a layer index beyond the base's decoder layers, a projection name
the decoder layers do not have, two memory adapters at one place, quantization under full
fine-tuning, nothing to train, a LoRA rank above a projection's width; each error names the key and
the file. The resolved section adds `base.files_sha256`, the SHA-256 of every file the model reads
(config.json, the weights, the tokenizer's and generation files): a config or checkpoint that
states them refuses a directory where any of them changed, was added or is gone, naming the file.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from src.adapted.base import (
    decoder_layers,
    files_sha256,
    linear_widths,
    read_hf_config,
    skeleton,
    weight_files,
)
from src.layers.memory_adapter import MemoryAdapter
from src.layers.mixer import MIXERS
from src.schema import NonNegativeInt, PositiveFloat, PositiveInt
from src.validation import ConfigError, arguments_for, build, check_keys


@dataclass(frozen=True)
class BaseSection:
    """`model.base`: the pretrained directory and how its weights are held."""

    directory: str
    freeze: bool = True
    quantization: Literal["none", "int8", "nf4"] = "none"
    dtype: Literal["float32", "bfloat16"] = "float32"
    files_sha256: dict | None = None  # file name -> SHA-256: filled in when the section is resolved


@dataclass(frozen=True)
class MemoryPlacement:
    """Where a memory adapter goes: after each listed decoder layer's self-attention (A) or MLP (B)."""

    layers: list[NonNegativeInt]
    variant: Literal["A", "B"] = "A"


@dataclass(frozen=True)
class LoRAAdapter:
    """A LoRA adapter (rank, α) on the named projections of the listed decoder layers (None: all)."""

    targets: list[str]
    rank: PositiveInt
    alpha: PositiveFloat
    layers: list[NonNegativeInt] | None = None


MEMORY_ADAPTERS = {"memory": "memory_bank", "product_key_memory": "product_key_memory"}  # type -> its mixer
ADAPTERS = (*MEMORY_ADAPTERS, "lora")
PLACEMENT_KEYS = ("type", "layers", "variant")  # a memory adapter's keys that are not the memory's


def memory_arguments(spec: dict) -> dict:
    """A resolved memory adapter's `MemoryAdapter` arguments: its mixer's type and keys (besides type and placement)."""
    memory = {key: value for key, value in spec.items() if key not in PLACEMENT_KEYS}
    return {"memory_type": MEMORY_ADAPTERS[spec["type"]], **memory}


def lora_layers(spec: dict, n_layers: int) -> list[int] | range:
    """The decoder layers a resolved LoRA adapter wraps: those it lists, else all of them."""
    return spec["layers"] if spec["layers"] is not None else range(n_layers)


def resolve_base(raw: object, where: str, file: str) -> dict:
    """A `BaseSection` mapping at key `where` checked (directory, config.json, weights, hash), with its hash."""
    base = arguments_for(BaseSection, raw, where, file)
    directory = Path(base["directory"])
    if not directory.is_dir():
        raise ConfigError(f"{file}: key '{where}.directory': no directory {directory} (a save_pretrained directory)")
    if not (directory / "config.json").is_file():
        raise ConfigError(f"{file}: key '{where}.directory': {directory} has no config.json")
    if not weight_files(directory):
        raise ConfigError(f"{file}: key '{where}.directory': {directory} has no weight files (model.safetensors, ...)")
    if base["quantization"] != "none" and not base["freeze"]:
        raise ConfigError(f"{file}: key '{where}.quantization': quantized weights cannot train; set freeze: true")
    digests, recorded = files_sha256(directory), base["files_sha256"]
    if recorded is not None:
        if not all(isinstance(name, str) and isinstance(digest, str) for name, digest in recorded.items()):
            raise ConfigError(f"{file}: key '{where}.files_sha256' must map file names to SHA-256 hex digests")
        if changed := [
            name for name in sorted(set(recorded) | set(digests)) if recorded.get(name) != digests.get(name)
        ]:
            name = changed[0]
            what = "is gone" if name not in digests else "was added" if name not in recorded else "changed"
            more = f" (and {len(changed) - 1} more file(s))" if len(changed) > 1 else ""
            raise ConfigError(
                f"{file}: key '{where}.files_sha256': {directory / name} {what}{more} since this config or "
                "checkpoint was written: the base model differs; restore its files, or train anew on this base"
            )
    return {**base, "files_sha256": digests}


def _check_layers(layers: list[int] | None, n_layers: int, where: str, file: str) -> None:
    for index in layers or []:
        if index >= n_layers:
            raise ConfigError(
                f"{file}: key '{where}.layers' names layer {index}, but the base has {n_layers} decoder layers "
                f"(0 to {n_layers - 1})"
            )


def _resolve_adapter(raw: object, where: str, file: str, n_layers: int, widths: dict[str, int], d_model: int) -> dict:
    """One adapter; `widths` maps each projection of the decoder layers to min(d_in, d_out), LoRA's largest rank."""
    if not isinstance(raw, dict) or raw.get("type") not in ADAPTERS:
        raise ConfigError(f"{file}: key '{where}' must be a mapping with 'type' one of {list(ADAPTERS)}, got {raw!r}")
    rest = {key: value for key, value in raw.items() if key != "type"}
    if raw["type"] == "lora":
        adapter = arguments_for(LoRAAdapter, rest, where, file)
        _check_layers(adapter["layers"], n_layers, where, file)
        for name in adapter["targets"]:
            if name not in widths:
                raise ConfigError(
                    f"{file}: key '{where}.targets' names projection {name!r}, which the decoder layers do not have; "
                    f"they have {sorted(widths)}"
                )
            if adapter["rank"] > widths[name]:  # B A would have the rank of min(d_in, d_out) at most
                raise ConfigError(
                    f"{file}: key '{where}.rank' is {adapter['rank']}, more than {name}'s width: a LoRA rank is "
                    f"at most min(d_in, d_out) = {widths[name]}"
                )
        return {"type": "lora", **adapter}
    placement_keys = {key: rest.pop(key) for key in ("layers", "variant") if key in rest}
    placement = arguments_for(MemoryPlacement, placement_keys, where, file)
    _check_layers(placement["layers"], n_layers, where, file)
    memory_type = MEMORY_ADAPTERS[raw["type"]]
    memory = arguments_for(MIXERS[memory_type], rest, where, file, provided=("d_model",))
    with torch.device("meta"):  # the memory's cross-field constraints (n_heads divides the width, ...)
        build(MemoryAdapter, memory, where, file, d_model=d_model, norm_eps=1e-5, memory_type=memory_type)
    return {"type": raw["type"], **placement, **memory}


def resolve_adapted_section(raw: Any, file: str, section: str = "model") -> dict:
    """Validate an adapted model section (see the module docstring); return it with defaults and the hash."""
    check_keys(raw, {"base": True, "adapters": True}, section, file)
    base = resolve_base(raw["base"], f"{section}.base", file)
    try:
        model = skeleton(Path(base["directory"]))
        layers = decoder_layers(model)
    except ImportError as error:
        raise ConfigError(f"{file}: key '{section}.base': {error}") from error
    except (ValueError, OSError, KeyError) as error:
        raise ConfigError(f"{file}: key '{section}.base.directory': {str(error).splitlines()[0]}") from error
    if not isinstance(raw["adapters"], list):
        raise ConfigError(f"{file}: key '{section}.adapters' must be a list of adapters (memory, lora)")
    d_model, widths = int(model.config.hidden_size), linear_widths(layers[0])
    adapters = [
        _resolve_adapter(adapter, f"{section}.adapters[{i}]", file, len(layers), widths, d_model)
        for i, adapter in enumerate(raw["adapters"])
    ]
    places = [(index, a["variant"]) for a in adapters if a["type"] in MEMORY_ADAPTERS for index in a["layers"]]
    if len(places) != len(set(places)):
        (index, variant), *_ = [place for place in places if places.count(place) > 1]
        raise ConfigError(
            f"{file}: key '{section}.adapters' puts two memory adapters at layer {index}, variant {variant}"
        )
    if base["freeze"] and not adapters:
        raise ConfigError(f"{file}: key '{section}.adapters' is empty and the base is frozen: nothing would train")
    return {"base": base, "adapters": adapters}


def is_adapted_section(section: Any) -> bool:
    """Whether a model section (raw or resolved) is an adapted pretrained model: a mapping with a `base`."""
    return isinstance(section, Mapping) and "base" in section


def base_vocab_size(model: dict) -> int:
    """The vocabulary of an adapted section's base (its config.json)."""
    return read_hf_config(Path(model["base"]["directory"]))["vocab_size"]


def count_adapted_parameters(model: dict) -> tuple[int, int]:
    """(all, trained) parameters of a resolved adapted section, counted on the meta device without its weights.

    The base counts every weight (a quantised one by its d_out x d_in entries, a tied head once);
    each memory adapter (bank or product keys) is built on the meta device and counted; each LoRA adapter adds r (d_in +
    d_out) per wrapped projection. Equal to `AdaptedModel.num_parameters` and
    `trainable_parameters` (tested).
    """
    base = skeleton(Path(model["base"]["directory"]))
    layers = decoder_layers(base)
    d_model, eps = int(base.config.hidden_size), getattr(base.config, "rms_norm_eps", 1e-5)
    frozen = sum(p.numel() for p in base.parameters())
    adapters = 0
    for spec in model["adapters"]:
        if spec["type"] in MEMORY_ADAPTERS:
            with torch.device("meta"):
                adapter = MemoryAdapter(d_model, eps, **memory_arguments(spec))
            adapters += len(spec["layers"]) * sum(p.numel() for p in adapter.parameters())
        else:
            for index in lora_layers(spec, len(layers)):
                for path, module in layers[index].named_modules():
                    if path.rpartition(".")[2] in spec["targets"] and isinstance(module, torch.nn.Linear):
                        adapters += spec["rank"] * (module.in_features + module.out_features)
    return frozen + adapters, adapters + (0 if model["base"]["freeze"] else frozen)
