"""PaperModel: token embedding -> blocks -> RMSNorm -> vocabulary head, built from a config.

A block is a pre-norm residual pair (Vaswani et al. 2017 with the pre-norm placement that GPT-2
and Mamba use): x <- x + mixer(norm(x)), then x <- x + mlp(norm(x)) when the block has an MLP.
The mixer is any sequence layer of `MIXERS` (attention, selective SSM, memories, ...). Every
mixer has `forward(x)` and `step(x, state) -> (y, state)`, so the model can run a whole sequence
at once or continue it a few tokens at a time from per-block state.
"""

from pathlib import Path

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from src.config import ConfigError, arguments_for, build, check_keys, check_value, read_yaml
from src.layers.attention import CausalSelfAttention
from src.layers.compressive_memory import InfiniAttention, TensorMemory
from src.layers.feedforward import SwiGLU
from src.layers.memory_bank import MemoryBankAttention
from src.layers.neural_memory import NeuralMemory, TitansMAG
from src.layers.normalization import RMSNorm
from src.layers.selective_ssm import MambaMixer, S4DMixer
from src.pretrained import model_section_from_hf_config, read_hf_weights, state_dict_from_hf
from src.schema import PositiveFloat, PositiveInt

MIXERS: dict[str, type[nn.Module]] = {
    "attention": CausalSelfAttention,
    "selective_ssm": MambaMixer,
    "lti_ssm": S4DMixer,
    "tensor_memory": TensorMemory,
    "infini_attention": InfiniAttention,
    "neural_memory": NeuralMemory,
    "titans_mag": TitansMAG,
    "memory_bank": MemoryBankAttention,
}
MLPS: dict[str, type[nn.Module]] = {
    "swiglu": SwiGLU,
}
NO_MLP = "none"


class Block(nn.Module):
    """Pre-norm residual block: a sequence mixer, then an optional MLP."""

    def __init__(self, d_model: int, mixer: nn.Module, mlp: nn.Module | None, norm_eps: float):
        super().__init__()
        self.mixer_norm = RMSNorm(d_model, norm_eps)
        self.mixer = mixer
        self.mlp_norm = RMSNorm(d_model, norm_eps) if mlp is not None else None
        self.mlp = mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mixer(self.mixer_norm(x))
        if self.mlp is not None:
            x = x + self.mlp(self.mlp_norm(x))
        return x

    def step(self, x: torch.Tensor, state):
        y, state = self.mixer.step(self.mixer_norm(x), state)
        x = x + y
        if self.mlp is not None:
            x = x + self.mlp(self.mlp_norm(x))
        return x, state


def _resolve_component(raw, registry: dict[str, type], where: str, file: str) -> dict:
    if not isinstance(raw, dict) or "type" not in raw:
        raise ConfigError(f"{file}: key '{where}' must be a mapping with a 'type' key, one of {sorted(registry)}")
    kind = raw["type"]
    if kind not in registry:
        raise ConfigError(f"{file}: key '{where}.type' must be one of {sorted(registry)}, got {kind!r}")
    rest = {key: value for key, value in raw.items() if key != "type"}
    return {"type": kind, **arguments_for(registry[kind], rest, where, file, provided=("d_model",))}


def resolve_model_section(raw, file: str, section: str = "model") -> dict:
    """Validate a model section (key `section` of the file) and return it with every default filled in."""
    check_keys(
        raw,
        {"vocab_size": True, "d_model": True, "tie_embeddings": True, "blocks": True, "norm_eps": False},
        section,
        file,
    )
    blocks = raw["blocks"]
    if not isinstance(blocks, list) or not blocks:
        raise ConfigError(f"{file}: key '{section}.blocks' must be a non-empty list of blocks")
    resolved_blocks = []
    for i, block in enumerate(blocks):
        where = f"{section}.blocks[{i}]"
        check_keys(block, {"mixer": True, "mlp": True, "repeat": False}, where, file)
        mlp = block["mlp"]
        resolved_blocks.append(
            {
                "mixer": _resolve_component(block["mixer"], MIXERS, f"{where}.mixer", file),
                "mlp": NO_MLP if mlp == NO_MLP else _resolve_component(mlp, MLPS, f"{where}.mlp", file),
                "repeat": check_value(block.get("repeat", 1), PositiveInt, f"{where}.repeat", file),
            }
        )
    return {
        "vocab_size": check_value(raw["vocab_size"], PositiveInt, f"{section}.vocab_size", file),
        "d_model": check_value(raw["d_model"], PositiveInt, f"{section}.d_model", file),
        "tie_embeddings": check_value(raw["tie_embeddings"], bool, f"{section}.tie_embeddings", file),
        "norm_eps": check_value(raw.get("norm_eps", 1e-5), PositiveFloat, f"{section}.norm_eps", file),
        "blocks": resolved_blocks,
    }


def _build_component(spec: dict, registry: dict[str, type], where: str, file: str, d_model: int) -> nn.Module:
    kwargs = {key: value for key, value in spec.items() if key != "type"}
    return build(registry[spec["type"]], kwargs, where, file, d_model=d_model)


class PaperModel(nn.Module):
    """A language model whose block list comes from a config; see the module docstring."""

    def __init__(self, config: dict, file: str = "<config>"):
        """Build from a resolved model section (the output of `resolve_model_section`)."""
        super().__init__()
        self.config = config
        d_model = config["d_model"]
        self.embedding = nn.Embedding(config["vocab_size"], d_model)
        blocks = []
        for i, spec in enumerate(config["blocks"]):
            for _ in range(spec["repeat"]):
                where = f"model.blocks[{i}]"
                mixer = _build_component(spec["mixer"], MIXERS, f"{where}.mixer", file, d_model)
                mlp = None
                if spec["mlp"] != NO_MLP:
                    mlp = _build_component(spec["mlp"], MLPS, f"{where}.mlp", file, d_model)
                blocks.append(Block(d_model, mixer, mlp, config["norm_eps"]))
        self.blocks = nn.ModuleList(blocks)
        self.norm = RMSNorm(d_model, config["norm_eps"])
        self.head = nn.Linear(d_model, config["vocab_size"], bias=False)
        nn.init.normal_(self.embedding.weight, std=0.02)  # GPT-2 / Mamba embedding init
        if config["tie_embeddings"]:
            self.head.weight = self.embedding.weight

    @classmethod
    def from_config(cls, path: str | Path) -> "PaperModel":
        """Build the model declared in the `model` section of a YAML file."""
        raw = read_yaml(path)
        if "model" not in raw:
            raise ConfigError(f"{path}: missing key 'model'")
        return cls(resolve_model_section(raw["model"], str(path)), str(path))

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "PaperModel":
        """A MambaGPT from a Hugging Face `MambaForCausalLM.save_pretrained` directory.

        The config and weight names are translated by `src.pretrained`; parameters are float32
        (a half-precision checkpoint is widened exactly). Every checkpoint tensor must find its
        parameter and every parameter its tensor.
        """
        path = Path(path)
        file = str(path / "config.json")
        model = cls(resolve_model_section(model_section_from_hf_config(path), file), file)
        state = state_dict_from_hf(read_hf_weights(path), model.config["tie_embeddings"])
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise ValueError(f"{path}: the weights do not fit the model its config.json describes: {error}") from error
        return model

    def _check_ids(self, input_ids: torch.Tensor) -> None:
        if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"input_ids must be an int64 or int32 tensor, got {getattr(input_ids, 'dtype', input_ids)}")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, length), got {tuple(input_ids.shape)}")
        vocab_size = self.config["vocab_size"]
        if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= vocab_size):
            raise ValueError(
                f"input_ids must lie in [0, {vocab_size}), got range [{input_ids.min()}, {input_ids.max()}]"
            )

    def hidden_states(self, input_ids: torch.Tensor, checkpoint_blocks: bool = False) -> torch.Tensor:
        """(batch, length) token ids -> (batch, length, d_model) final normalised hidden states.

        With `checkpoint_blocks`, each block keeps only its input for backward and is recomputed
        there (block-level activation checkpointing): peak activation memory becomes one block's
        activations plus one (batch, length, d_model) tensor per block.
        """
        self._check_ids(input_ids)
        x = self.embedding(input_ids)
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False) if checkpoint_blocks else block(x)
        return self.norm(x)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(batch, length) token ids -> (batch, length, vocab_size) logits."""
        return self.head(self.hidden_states(input_ids))

    def step(self, input_ids: torch.Tensor, state: list | None) -> tuple[torch.Tensor, list]:
        """Continue each sequence with the next token(s).

        Args:
            input_ids: (batch, T) the next T >= 1 tokens of each sequence.
            state: the state returned by the previous call, or None at the start.

        Returns:
            logits (batch, T, vocab_size) and the new state (one entry per block).
        """
        self._check_ids(input_ids)
        if state is None:
            state = [None] * len(self.blocks)
        if len(state) != len(self.blocks):
            raise ValueError(f"state has {len(state)} entries, the model has {len(self.blocks)} blocks")
        x = self.embedding(input_ids)
        new_state = []
        for block, block_state in zip(self.blocks, state):
            x, block_state = block.step(x, block_state)
            new_state.append(block_state)
        return self.head(self.norm(x)), new_state

    def auxiliary_losses(self) -> dict[str, torch.Tensor]:
        """The auxiliary losses the last forward pass recorded (router losses), summed by name over blocks.

        Each already carries its coefficient from the config; the training loop adds their sum.
        """
        totals: dict[str, torch.Tensor] = {}
        for block in self.blocks:
            for name, value in getattr(block.mixer, "aux_losses", {}).items():
                totals[name] = totals[name] + value if name in totals else value
        return totals

    def num_parameters(self) -> int:
        """Number of distinct parameters (a tied head counts once)."""
        return sum(p.numel() for p in self.parameters())


def count_parameters(config: dict) -> int:
    """Parameters of the model a resolved model section describes, counted on the meta device (no memory)."""
    with torch.device("meta"):
        return PaperModel(config).num_parameters()
