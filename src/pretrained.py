"""Reading Hugging Face-format Mamba checkpoints (`MambaForCausalLM.save_pretrained`).

A checkpoint directory holds `config.json` (model_type "mamba") and the weights as
`model.safetensors`, a sharded `model.safetensors.index.json`, or `pytorch_model.bin`. The
config becomes a `PaperModel` model section (one `selective_ssm` block repeated, no MLP, as in the
paper's language model) and the weights are renamed by `hf_mamba_parameter_name`; anything the
config sets that our Mamba block does not compute, and any weight that has no place, is an error.
"""

import json
import re
from pathlib import Path

import torch

from src.config import ConfigError

# Hugging Face MambaConfig keys whose value changes the computation, and the value we compute.
_REQUIRED_VALUES = {"hidden_act": "silu", "use_bias": False, "use_conv_bias": True}


def _read_config(path: Path) -> dict:
    file = path / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{path}: no config.json; expected a Hugging Face Mamba checkpoint directory")
    hf = json.loads(file.read_text())
    if hf.get("model_type") != "mamba":
        raise ConfigError(f"{file}: key 'model_type' must be 'mamba', got {hf.get('model_type')!r}")
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


def hf_mamba_parameter_name(name: str) -> str:
    """Map one `MambaForCausalLM` parameter name to its `PaperModel` name.

    backbone.embeddings.weight -> embedding.weight; backbone.layers.i.norm.weight ->
    blocks.i.mixer_norm.weight; backbone.layers.i.mixer.* -> blocks.i.mixer.* (same names);
    backbone.norm_f.weight -> norm.weight; lm_head.weight -> head.weight.
    """
    fixed = {
        "backbone.embeddings.weight": "embedding.weight",
        "backbone.norm_f.weight": "norm.weight",
        "lm_head.weight": "head.weight",
    }
    if name in fixed:
        return fixed[name]
    match = _LAYER.match(name)
    if match is None:
        raise KeyError(f"{name!r} is not a Mamba checkpoint parameter")
    index, part, rest = match.groups()
    return f"blocks.{index}.{'mixer_norm' if part == 'norm' else 'mixer'}.{rest}"


def _load_safetensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError as error:
        raise ImportError(
            f"reading {file} needs the safetensors package: install the extra with "
            "`uv sync --extra pretrained` (or pip install 'memory-models[pretrained]')"
        ) from error
    return load_file(str(file))


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


def state_dict_from_hf(weights: dict[str, torch.Tensor], tie_embeddings: bool) -> dict[str, torch.Tensor]:
    """Rename a checkpoint's tensors; a tied head is taken from the embedding."""
    state = {hf_mamba_parameter_name(name): tensor for name, tensor in weights.items()}
    if tie_embeddings and "embedding.weight" in state:
        state["head.weight"] = state["embedding.weight"]
    return state
