"""PaperModel: token embedding -> blocks -> RMSNorm -> vocabulary head, built from a config.

A block (`src.layers.block.Block`) is a pre-norm residual pair: x <- x + mixer(norm(x)), then
x <- x + mlp(norm(x)) when the block has an MLP. The mixer is any registered `Mixer` (attention,
selective SSM, memories, ...; `src.layers.mixer.MIXERS`); each has `forward(x)` and
`step(x, state) -> (y, state)`, so the model can run a whole sequence at once or continue it a few
tokens at a time from per-block state. The model section is validated by `src.config`.
"""

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from src.config import build_block, resolve_model_section
from src.hf_directory import read_directory, save_directory
from src.language_model import (
    LanguageModel,
    ModelState,
    bytes_payload,
    map_tensors,
    restore_states,
    state_bytes,
)
from src.layers._checks import has_values
from src.layers.block import Block
from src.layers.mixer import Mixer, state_tensors
from src.layers.normalization import RMSNorm
from src.layers.selective_ssm import GatedSSMBlock
from src.tasks.tokenizer import ByteTokenizer, Tokenizer
from src.validation import ConfigError, read_yaml


def check_token_ids(input_ids: torch.Tensor, vocab_size: int) -> None:
    """A language model's input: an int64 / int32 (batch, length >= 1) tensor of ids in [0, vocab_size)."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"input_ids must be an int64 or int32 tensor, got {getattr(input_ids, 'dtype', input_ids)}")
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must have shape (batch, length >= 1), got {tuple(input_ids.shape)}")
    if has_values(input_ids) and input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= vocab_size):
        raise ValueError(f"input_ids must lie in [0, {vocab_size}), got range [{input_ids.min()}, {input_ids.max()}]")


def sum_auxiliary_losses(mixers: Iterable[Mixer]) -> dict[str, torch.Tensor]:
    """The auxiliary losses the mixers' last calls recorded (`Mixer.aux_losses`), summed by name."""
    totals: dict[str, torch.Tensor] = {}
    for mixer in mixers:
        for name, value in mixer.aux_losses.items():
            totals[name] = totals[name] + value if name in totals else value
    return totals


@dataclass(frozen=True)
class PaperModelState(ModelState):
    """A PaperModel's state: one entry per block, its mixer's `State` (a frozen dataclass of batch-first tensors)."""

    blocks: tuple

    def select(self, rows: torch.Tensor) -> "PaperModelState":
        return PaperModelState(map_tensors(self.blocks, lambda tensor: tensor.index_select(0, rows)))

    def to_bytes(self) -> bytes:
        return state_bytes("PaperModel", blocks=self.blocks)

    def tensors(self) -> list[torch.Tensor]:
        return [tensor for _, tensor in state_tensors(self.blocks)]


class PaperModel(LanguageModel):
    """A language model whose block list comes from a config; see the module docstring."""

    def __init__(self, config: dict, file: str = "<config>"):
        """Build from a resolved model section (the output of `resolve_model_section`)."""
        super().__init__()
        self.config = config
        d_model = config["d_model"]
        self.embedding = nn.Embedding(config["vocab_size"], d_model)
        self.blocks = nn.ModuleList(
            build_block(spec, f"model.blocks[{i}]", file, d_model, config["norm_eps"])
            for i, spec in enumerate(config["blocks"])
            for _ in range(spec["repeat"])
        )
        self.norm = RMSNorm(d_model, config["norm_eps"])
        self.head = nn.Linear(d_model, config["vocab_size"], bias=False)
        nn.init.normal_(self.embedding.weight, std=0.02)  # GPT-2 / Mamba embedding init
        self._rescale_ssm_out_proj()
        if config["tie_embeddings"]:
            self.head.weight = self.embedding.weight

    @property
    def block_list(self) -> list[Block]:
        """The blocks (iterating the nn.ModuleList types them as nn.Module)."""
        return cast(list[Block], list(self.blocks))

    def _rescale_ssm_out_proj(self) -> None:
        """The official Mamba initialisation's residual rescaling (not in the paper).

        state-spaces/mamba's `_init_weights` (GPT-2's scheme) divides each block's `out_proj`
        weight, after PyTorch's default init, by sqrt(n_residuals_per_layer x n_layer): one residual
        per Mamba block, two when the block also has an MLP. Applied to the gated SSM blocks
        (Mamba and its LTI twin); the other mixers keep their own initialisation.
        """
        for block in self.block_list:
            if isinstance(block.mixer, GatedSSMBlock):
                residuals = 1 if block.mlp is None else 2
                with torch.no_grad():
                    block.mixer.out_proj.weight /= math.sqrt(residuals * len(self.blocks))

    @classmethod
    def from_config(cls, path: str | Path) -> "PaperModel":
        """Build the model declared in the `model` section of a YAML file."""
        raw = read_yaml(path)
        if "model" not in raw:
            raise ConfigError(f"{path}: missing key 'model'")
        return cls(resolve_model_section(raw["model"], str(path)), str(path))

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "PaperModel":
        """The model of a `save_pretrained` directory, or a MambaGPT from a Hugging Face
        `MambaForCausalLM.save_pretrained` one (config and weight names translated by `src.pretrained`).

        Parameters are float32 (a half-precision checkpoint is widened exactly). Every checkpoint
        tensor must find its parameter and every parameter its tensor.
        """
        path = Path(path)
        section, state = read_directory(path)
        model = cls(section, str(path / "config.json"))
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise ValueError(f"{path}: the weights do not fit the model its config.json describes: {error}") from error
        return model

    def save_pretrained(self, directory: str | Path, overwrite: bool = False) -> None:
        """Write `config.json` + `model.safetensors` that `from_pretrained` reads back (`src.hf_directory`);
        a pure Mamba model's directory is also one transformers' `MambaForCausalLM.from_pretrained` reads.

        A non-empty `directory` is refused unless `overwrite` and it holds an earlier export.
        """
        save_directory(directory, self.config, self.state_dict(), overwrite)

    def hidden_states(self, input_ids: torch.Tensor, checkpoint_blocks: bool = False) -> torch.Tensor:
        """(batch, length) token ids -> (batch, length, d_model) final normalised hidden states.

        With `checkpoint_blocks`, each block keeps only its input for backward and is recomputed
        there (block-level activation checkpointing): peak activation memory becomes one block's
        activations plus one (batch, length, d_model) tensor per block.
        """
        check_token_ids(input_ids, self.vocab_size)
        x = self.embedding(input_ids)
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False) if checkpoint_blocks else block(x)
        return self.norm(x)

    def step(self, input_ids: torch.Tensor, state: ModelState | None) -> tuple[torch.Tensor, PaperModelState]:
        """Continue each sequence with the next token(s).

        Args:
            input_ids: (batch, T) the next T >= 1 tokens of each sequence.
            state: the state returned by the previous call, or None at the start.

        Returns:
            logits (batch, T, vocab_size) and the new state (one entry per block).
        """
        check_token_ids(input_ids, self.vocab_size)
        if state is not None and not isinstance(state, PaperModelState):
            raise TypeError(f"state must be a PaperModelState or None, got {type(state).__name__}")
        blocks = (None,) * len(self.blocks) if state is None else state.blocks
        if len(blocks) != len(self.blocks):
            raise ValueError(f"state has {len(blocks)} entries, the model has {len(self.blocks)} blocks")
        x = self.embedding(input_ids)
        new_state = []
        for block, block_state in zip(self.block_list, blocks):
            x, block_state = block.step(x, block_state)
            new_state.append(block_state)
        return self.head(self.norm(x)), PaperModelState(tuple(new_state))

    @property
    def constant_state(self) -> bool:
        """Every block's mixer keeps a state of constant size (`Mixer.constant_state`: all but attention)."""
        return all(block.mixer.constant_state for block in self.block_list)

    def state_from_bytes(self, data: bytes) -> PaperModelState:
        blocks = bytes_payload(data, "PaperModel").get("blocks")
        return PaperModelState(
            restore_states(blocks, [block.mixer.State for block in self.block_list], self.device, "block")
        )

    def auxiliary_losses(self) -> dict[str, torch.Tensor]:
        """The auxiliary losses the last forward pass recorded (router losses), summed by name over blocks.

        Each already carries its coefficient from the config; the training loop adds their sum.
        """
        return sum_auxiliary_losses(block.mixer for block in self.block_list)

    def sharding_units(self) -> list[nn.Module]:
        return list(self.blocks)

    @property
    def vocab_size(self) -> int:
        return self.config["vocab_size"]

    @property
    def hidden_size(self) -> int:
        return self.config["d_model"]

    @property
    def tokenizer(self) -> Tokenizer:
        """UTF-8 bytes (a model trained on another task reads ids that are not text)."""
        return ByteTokenizer()
