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

import torch
from torch import nn

from src.layers.quantization import QuantizedLinear
from src.tasks.tokenizer import HF_EXTRA

WEIGHT_PATTERNS = ("model.safetensors", "model-*.safetensors", "pytorch_model.bin", "pytorch_model-*.bin")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def transformers_library():
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


def weights_sha256(directory: str | Path) -> str:
    """SHA-256 of the bytes of the directory's weight files, in order: the identity of the frozen weights.

    Every model of a comparison resolves its base's hash; the files are read once per process for
    as long as their paths, sizes and modification times stay the same.
    """
    files = [(file.resolve(), file.stat()) for file in weight_files(Path(directory))]
    return _files_sha256(tuple((str(path), stat.st_size, stat.st_mtime_ns) for path, stat in files))


@cache
def _files_sha256(files: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for path, _, _ in files:
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


def skeleton(directory: Path) -> nn.Module:
    """The base model built from its config on the meta device: its structure, no weights, no memory."""
    transformers = transformers_library()
    config = transformers.AutoConfig.from_pretrained(directory, local_files_only=True)
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(config)


def linear_names(layer: nn.Module) -> list[str]:
    """Names of the `nn.Linear` modules (the projections: q_proj, v_proj, gate_proj, ...) inside a decoder layer."""
    return sorted({name.rpartition(".")[2] for name, module in layer.named_modules() if isinstance(module, nn.Linear)})


def quantize_linears(layers: nn.ModuleList, kind: str) -> None:
    """Replace every `nn.Linear` inside the decoder layers by a `QuantizedLinear` of `kind` (int8 or nf4)."""
    for layer in layers:
        for module in list(layer.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(module, name, QuantizedLinear(child, kind))


def load_base(section: dict, device: torch.device | str | None = "cpu", weights: bool = True) -> nn.Module:
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
        model = transformers.AutoModelForCausalLM.from_pretrained(
            section["directory"], dtype=dtype, local_files_only=True
        )
    else:
        config = transformers.AutoConfig.from_pretrained(section["directory"], local_files_only=True)
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    if device is not None:  # None: built on the default device already
        model.to(device)
    model.eval().requires_grad_(not section["freeze"])
    if section["quantization"] != "none":
        quantize_linears(decoder_layers(model), section["quantization"])
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
    others = [p for p in model.parameters() if not p.requires_grad and id(p) not in plain]
    others += [m.bias for m in quantized if m.bias is not None]
    total_bytes = linear_bytes + sum(p.numel() * p.element_size() for p in others)
    total_parameters = linear_parameters + sum(p.numel() for p in others)
    return {
        "bytes_per_parameter": total_bytes / max(1, total_parameters),
        "linear_bytes_per_parameter": linear_bytes / max(1, linear_parameters),
        "frozen_parameters": total_parameters,
    }
