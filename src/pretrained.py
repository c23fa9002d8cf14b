"""Hugging Face-format Mamba checkpoints (`MambaForCausalLM.save_pretrained`), read and written.

A checkpoint directory holds `config.json` (model_type "mamba") and the weights as
`model.safetensors`, a sharded `model.safetensors.index.json`, or `pytorch_model.bin`. The
config becomes a `PaperModel` model section (one `selective_ssm` block repeated, no MLP, as in the
paper's language model) and the weights are renamed by `hf_mamba_parameter_name`; anything the
config sets that our Mamba block does not compute, and any weight that has no place, is an error.
The other way, `hf_mamba_config` and `paper_parameter_hf_name` give the config keys and weight
names of a model section of that shape (written by `src.hf_directory`).
"""

import importlib
import json
import re
from pathlib import Path
from types import ModuleType

import torch

from src.config import NO_MLP
from src.validation import ConfigError

# Hugging Face MambaConfig keys whose value changes the computation, and the value we compute.
_REQUIRED_VALUES = {"hidden_act": "silu", "use_bias": False, "use_conv_bias": True}


def _read_config(path: Path) -> dict:
    file = path / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{path}: no config.json; expected a Hugging Face Mamba checkpoint directory")
    hf = json.loads(file.read_text())
    if hf.get("model_type") != "mamba":
        raise ConfigError(
            f"{file}: key 'model_type' must be 'mamba' (or 'memory_models' with its model section), "
            f"got {hf.get('model_type')!r}"
        )
    for key in ("vocab_size", "hidden_size", "state_size", "num_hidden_layers", "expand", "conv_kernel"):
        if key not in hf:
            raise ConfigError(f"{file}: missing key '{key}'")
    for key, value in _REQUIRED_VALUES.items():
        if hf.get(key, value) != value:
            raise ConfigError(f"{file}: key '{key}' is {hf[key]!r}; the Mamba block here computes {key}={value!r}")
    return hf


def model_section_from_hf_config(path: str | Path) -> dict:
    """The raw `model` section equal to a checkpoint's `config.json` (validated by the caller)."""
    path = Path(path)
    hf = _read_config(path)
    d_model, expand = hf["hidden_size"], hf["expand"]
    if hf.get("intermediate_size", expand * d_model) != expand * d_model:
        raise ConfigError(
            f"{path / 'config.json'}: key 'intermediate_size' is {hf['intermediate_size']}, "
            f"expected expand * hidden_size = {expand * d_model}"
        )
    rank = hf.get("time_step_rank", "auto")
    mixer = {
        "type": "selective_ssm",
        "d_state": hf["state_size"],
        "d_conv": hf["conv_kernel"],
        "expand": expand,
        "dt_rank": None if rank == "auto" else rank,
    }
    return {
        "vocab_size": hf["vocab_size"],
        "d_model": d_model,
        "tie_embeddings": hf.get("tie_word_embeddings", True),
        "norm_eps": hf.get("layer_norm_epsilon", 1e-5),
        "blocks": [{"mixer": mixer, "mlp": "none", "repeat": hf["num_hidden_layers"]}],
    }


_LAYER = re.compile(r"^backbone\.layers\.(\d+)\.(norm|mixer)\.(.+)$")
_BLOCK = re.compile(r"^blocks\.(\d+)\.(mixer_norm|mixer)\.(.+)$")
_FIXED_NAMES = {  # Hugging Face name -> PaperModel name, outside the blocks
    "backbone.embeddings.weight": "embedding.weight",
    "backbone.norm_f.weight": "norm.weight",
    "lm_head.weight": "head.weight",
}


def hf_mamba_parameter_name(name: str) -> str:
    """Map one `MambaForCausalLM` parameter name to its `PaperModel` name.

    backbone.embeddings.weight -> embedding.weight; backbone.layers.i.norm.weight ->
    blocks.i.mixer_norm.weight; backbone.layers.i.mixer.* -> blocks.i.mixer.* (same names);
    backbone.norm_f.weight -> norm.weight; lm_head.weight -> head.weight.
    """
    if name in _FIXED_NAMES:
        return _FIXED_NAMES[name]
    match = _LAYER.match(name)
    if match is None:
        raise KeyError(f"{name!r} is not a Mamba checkpoint parameter")
    index, part, rest = match.groups()
    return f"blocks.{index}.{'mixer_norm' if part == 'norm' else 'mixer'}.{rest}"


def paper_parameter_hf_name(name: str) -> str:
    """The inverse of `hf_mamba_parameter_name`: a Mamba `PaperModel`'s parameter name in `MambaForCausalLM`."""
    fixed = {ours: theirs for theirs, ours in _FIXED_NAMES.items()}
    if name in fixed:
        return fixed[name]
    match = _BLOCK.match(name)
    if match is None:
        raise KeyError(f"{name!r} is not a parameter of a Mamba PaperModel")
    index, part, rest = match.groups()
    return f"backbone.layers.{index}.{'norm' if part == 'mixer_norm' else 'mixer'}.{rest}"


def hf_mamba_config(model: dict) -> dict | None:
    """The Hugging Face `MambaConfig` keys of a resolved model section, or None when it has another shape.

    `MambaForCausalLM`'s shape: every block the same `selective_ssm` mixer and no MLP. The mixer's
    `scan` (how Eq. 2 is computed) has no key there; `src.hf_directory` keeps the whole section beside.
    """
    blocks = model["blocks"]
    mixer = blocks[0]["mixer"]
    if mixer["type"] != "selective_ssm" or any(b["mixer"] != mixer or b["mlp"] != NO_MLP for b in blocks):
        return None
    return {
        "model_type": "mamba",
        "architectures": ["MambaForCausalLM"],
        "vocab_size": model["vocab_size"],
        "hidden_size": model["d_model"],
        "state_size": mixer["d_state"],
        "num_hidden_layers": sum(block["repeat"] for block in blocks),
        "expand": mixer["expand"],
        "intermediate_size": mixer["expand"] * model["d_model"],
        "conv_kernel": mixer["d_conv"],
        "time_step_rank": "auto" if mixer["dt_rank"] is None else mixer["dt_rank"],  # ceil(d_model / 16) both sides
        "time_step_min": mixer["dt_min"],
        "time_step_max": mixer["dt_max"],
        "time_step_floor": mixer["dt_init_floor"],
        "layer_norm_epsilon": model["norm_eps"],
        "tie_word_embeddings": model["tie_embeddings"],
        **_REQUIRED_VALUES,
    }


def safetensors_torch(purpose: str) -> ModuleType:
    """The `safetensors.torch` module; without it an ImportError naming the extra (`purpose` says what needs it)."""
    try:
        return importlib.import_module("safetensors.torch")
    except ImportError as error:
        raise ImportError(
            f"{purpose} needs the safetensors package: install the extra with "
            "`uv sync --extra pretrained` (or pip install 'memory-models[pretrained]')"
        ) from error


def _load_safetensors(file: Path) -> dict[str, torch.Tensor]:
    return safetensors_torch(f"reading {file}").load_file(str(file))


def read_hf_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors under their Hugging Face names."""
    path = Path(path)
    if (path / "model.safetensors").is_file():
        return _load_safetensors(path / "model.safetensors")
    if (path / "model.safetensors.index.json").is_file():
        shards = sorted(set(json.loads((path / "model.safetensors.index.json").read_text())["weight_map"].values()))
        return {name: tensor for shard in shards for name, tensor in _load_safetensors(path / shard).items()}
    if (path / "pytorch_model.bin").is_file():
        return torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{path}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def tie_head(state: dict[str, torch.Tensor], tie_embeddings: bool) -> dict[str, torch.Tensor]:
    """A PaperModel state dict with a tied head taken from the embedding (a checkpoint stores it once)."""
    if tie_embeddings and "embedding.weight" in state:
        return {**state, "head.weight": state["embedding.weight"]}
    return state


def state_dict_from_hf(weights: dict[str, torch.Tensor], tie_embeddings: bool) -> dict[str, torch.Tensor]:
    """Rename a checkpoint's tensors; a tied head is taken from the embedding."""
    return tie_head({hf_mamba_parameter_name(name): tensor for name, tensor in weights.items()}, tie_embeddings)
