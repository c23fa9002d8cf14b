"""The frozen base: a local Hugging Face causal-LM directory loaded by `AutoModelForCausalLM`.

A base directory is what `save_pretrained` writes: `config.json`, the weights
(`model.safetensors`, sharded `model-*.safetensors`, or `pytorch_model*.bin`) and, for text,
the fast tokenizer `tokenizer.json`. Any architecture `AutoModelForCausalLM` reads whose decoder
layers are `model.layers`, each with `input_layernorm`, `self_attn` and `mlp` (Llama, Qwen2,
Mistral, ...), can be
adapted. Its weights are frozen (unless `freeze: false`, full fine-tuning) and the decoder layers'
linear weights can be stored in int8 or NF4 by `QuantizedLinear` (our quantization functions;
bitsandbytes is not used); the embedding, the norms and the output head stay in `dtype`.
`transformers` comes with the `hf` extra and is imported only here.
"""

import hashlib
import json
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import torch
from torch import nn

from src.layers.quantization import QuantizedLinear
from src.tasks.tokenizer import HF_EXTRA
from src.validation import ConfigError

if TYPE_CHECKING:  # transformers comes with the optional 'hf' extra; imported at run time by transformers_library
    from transformers import PreTrainedModel

WEIGHT_PATTERNS = ("model.safetensors", "model-*.safetensors", "pytorch_model.bin", "pytorch_model-*.bin")
READ_FILES = (  # besides the weights: what AutoConfig, AutoModelForCausalLM and the tokenizer read
    "config.json", "generation_config.json", "model.safetensors.index.json", "pytorch_model.bin.index.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
)  # fmt: skip
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def transformers_library() -> ModuleType:
    """The `transformers` module, or an ImportError naming the extra that provides it."""
    try:
        import transformers
    except ImportError as error:
        raise ImportError(
            f"a pretrained base model needs the 'hf' extra (transformers is missing): {HF_EXTRA}"
        ) from error
    return transformers


def weight_files(directory: Path) -> list[Path]:
    """The weight files of a base directory, in a fixed order (empty when there are none)."""
    for pattern in WEIGHT_PATTERNS:
        if files := sorted(directory.glob(pattern)):
            return files
    return []


def base_files(directory: Path) -> list[Path]:
    """Every file of a base directory that the model reads: config.json, the weight files (and their index),
    the tokenizer's and the generation config, those that exist; in a fixed order."""
    present = [directory / name for name in READ_FILES if (directory / name).is_file()]
    return sorted(present + weight_files(directory))


def files_sha256(directory: str | Path) -> dict[str, str]:
    """File name -> SHA-256 of its bytes, for every file `base_files` lists: the identity of the base.

    Every model of a comparison resolves its base's hashes; a file is read once per process for as
    long as its path, size and modification time stay the same.
    """
    hashes = {}
    for file in base_files(Path(directory)):
        stat = file.stat()
        hashes[file.name] = _file_sha256(str(file.resolve()), stat.st_size, stat.st_mtime_ns)
    return hashes


@cache
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def read_hf_config(directory: Path) -> dict:
    """The base's `config.json` as a dict (the caller checks the directory exists)."""
    return json.loads((directory / "config.json").read_text())


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers (`model.layers`) of a causal LM; a ValueError says what is missing."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList) or not layers:
        raise ValueError(f"{type(model).__name__} has no decoder layers at model.layers; it cannot be adapted here")
    for i, layer in enumerate(layers):
        for part in ("input_layernorm", "self_attn", "mlp"):
            if not isinstance(getattr(layer, part, None), nn.Module):
                raise ValueError(f"decoder layer {i} of {type(model).__name__} has no '{part}' module")
    return layers


def skeleton(directory: Path) -> "PreTrainedModel":
    """The base model built from its config on the meta device: its structure, no weights, no memory."""
    transformers = transformers_library()
    config = transformers.AutoConfig.from_pretrained(directory, local_files_only=True)
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(config)


def linear_widths(layer: nn.Module) -> dict[str, int]:
    """The `nn.Linear` modules (the projections: q_proj, v_proj, gate_proj, ...) inside a decoder layer, by
    name, each with min(in_features, out_features)."""
    return {
        name.rpartition(".")[2]: min(module.in_features, module.out_features)
        for name, module in layer.named_modules()
        if isinstance(module, nn.Linear)
    }


def quantize_linears(layers: nn.ModuleList, kind: str) -> None:
    """Replace every `nn.Linear` inside the decoder layers by a `QuantizedLinear` of `kind` (int8 or nf4)."""
    for layer in layers:
        for module in list(layer.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(module, name, QuantizedLinear(child, kind))


def load_base(section: dict, device: torch.device | str | None = "cpu", weights: bool = True) -> "PreTrainedModel":
    """The base causal LM of a resolved `model.base` section on `device`: loaded, frozen (unless freeze is
    false), then quantised there (on a GPU in a moment; NF4 on a CPU takes seconds per million weights).

    Dropout is off (`eval()` on the base): the adapters train against the deterministic frozen model.
    `device` None leaves the model where it was built. Without `weights`, the base is built from its
    config.json alone, initialised at random (what
    `src.estimate` measures under fake tensors: the sizes, not the values).
    """
    transformers = transformers_library()
    transformers.logging.disable_progress_bar()  # one line per weight file on stderr otherwise
    dtype = DTYPES[section["dtype"]]
    if weights:
        model = _read_weights(transformers, Path(section["directory"]), dtype)
    else:
        config = transformers.AutoConfig.from_pretrained(section["directory"], local_files_only=True)
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    if device is not None:  # None: built on the default device already
        model.to(device)
    model.eval().requires_grad_(not section["freeze"])
    if section["quantization"] != "none":
        quantize_linears(decoder_layers(model), section["quantization"])
    return model


def _read_weights(transformers: ModuleType, directory: Path, dtype: torch.dtype) -> "PreTrainedModel":
    """The base with its weights; damaged files, sizes that disagree with config.json, and a tensor missing
    from or unexpected in the weights are each a ConfigError naming the files and the tensor."""
    files = ", ".join(file.name for file in weight_files(directory))
    where = f"{directory}: the base's weights ({files})"
    advice = "restore the directory from where it came (save_pretrained writes it whole)"
    try:
        model, report = transformers.AutoModelForCausalLM.from_pretrained(
            directory, dtype=dtype, local_files_only=True, output_loading_info=True
        )
    except Exception as error:  # safetensors, torch and transformers raise many types for a damaged file
        reason = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
        raise ConfigError(f"{where} cannot be read with its config.json: {reason[:300]}; {advice}") from error
    for kind, what in (("missing_keys", "is missing from them"), ("unexpected_keys", "is not in the model")):
        if names := sorted(report[kind]):
            raise ConfigError(f"{where}: tensor {names[0]} {what} ({len(names)} such tensors); {advice}")
    if report["mismatched_keys"]:
        name, *shapes = sorted(report["mismatched_keys"])[0]
        raise ConfigError(f"{where}: tensor {name} is {shapes[0]} there, {shapes[1]} by config.json; {advice}")
    return model


def frozen_storage(model: nn.Module) -> dict[str, float]:
    """Bytes per frozen parameter, of the whole frozen base and of its decoder layers' linear weights.

    A quantised linear counts its d_out x d_in weights as parameters and its codes and constants
    as bytes (its floating-point bias goes with the other tensors); every other frozen tensor counts
    its elements times their size.
    """
    quantized = [m for m in model.modules() if isinstance(m, QuantizedLinear)]
    linear_bytes = sum(m.stored_bytes() for m in quantized)
    linear_parameters = sum(m.in_features * m.out_features for m in quantized)
    layers = decoder_layers(model)
    plain = {
        id(m.weight): m.weight for m in layers.modules() if isinstance(m, nn.Linear) and not m.weight.requires_grad
    }
    linear_bytes += sum(w.numel() * w.element_size() for w in plain.values())
    linear_parameters += sum(w.numel() for w in plain.values())
    others: list[torch.Tensor] = [p for p in model.parameters() if not p.requires_grad and id(p) not in plain]
    others += [m.bias for m in quantized if m.bias is not None]
    total_bytes = linear_bytes + sum(p.numel() * p.element_size() for p in others)
    total_parameters = linear_parameters + sum(p.numel() for p in others)
    return {
        "bytes_per_parameter": total_bytes / max(1, total_parameters),
        "linear_bytes_per_parameter": linear_bytes / max(1, linear_parameters),
        "frozen_parameters": total_parameters,
    }
