"""The language-model contract: what every command, the training loop and the chat service use of a model.

Two kinds of model implement it: `PaperModel` (`src.model`, blocks of registered mixers built from a
config) and `AdaptedModel` (`src.adapted.model`, a frozen Hugging Face causal LM with memory and LoRA
adapters). Code outside the two models sees only `LanguageModel`:

- `hidden_states(ids)` and `head` (the training loss is computed from them, chunked or not),
  `forward(ids)` = logits, `vocab_size`, `hidden_size`;
- `step(ids, state) -> (logits, state)`: continue each sequence from a `ModelState` (None at the
  start). A state reorders its batch (`select`, beam search) and travels as bytes (`to_bytes`,
  `LanguageModel.state_from_bytes`), so a chat session's state can be stored and resumed;
  `constant_state` says whether its size stays the same however many tokens it has read (every
  mixer but attention's KV cache), which is when carrying it costs the same at every turn;
- `auxiliary_losses()`: the losses the last forward recorded (router losses), coefficients applied;
- `parameter_groups(weight_decay)`: AdamW's groups of the trainable parameters (`src.optimizer`);
  `num_parameters()`, `trainable_parameters()`;
- `tokenizer`: text <-> ids (UTF-8 bytes for a PaperModel, the base's `tokenizer.json` for an
  adapted model); `max_positions`: the longest sequence it takes (an adapted base's
  `max_position_embeddings`; None for a PaperModel, whose RoPE and states have no such limit);
- `sharding_units()`: the modules FSDP2 shards one by one (the blocks, the decoder layers);
- `state_dict()`: what trains (every parameter of a PaperModel; an adapted model's adapters), the
  content of a checkpoint.

`tests/test_language_model_contract.py` checks every property over both kinds.
"""

import dataclasses
import io
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from src.optimizer import parameter_groups
from src.tasks.tokenizer import Tokenizer

if TYPE_CHECKING:
    from _typeshed import DataclassInstance  # any dataclass type, for dataclasses.fields

_DATACLASS = "__dataclass__"


class StateError(ValueError):
    """Bytes that are not a state of this model (another model's, damaged, or not a state at all)."""


def map_tensors(tree: Any, function: Callable[[torch.Tensor], object]) -> Any:
    """`tree` with `function` applied to every tensor in it (lists, tuples, dicts and dataclasses are walked); what
    `function` returns replaces the tensor, a tensor or not (`src.generation_graphs.state_structure` describes each)."""
    if isinstance(tree, torch.Tensor):
        return function(tree)
    if isinstance(tree, (list, tuple)):
        return type(tree)(map_tensors(entry, function) for entry in tree)
    if isinstance(tree, dict):
        return {key: map_tensors(value, function) for key, value in tree.items()}
    if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        fields = {field.name: map_tensors(getattr(tree, field.name), function) for field in dataclasses.fields(tree)}
        return dataclasses.replace(tree, **fields)
    return tree  # positions and other scalars


def to_plain(tree: Any) -> Any:
    """A state tree as containers `torch.load(weights_only=True)` reads: each dataclass becomes a tagged dict.

    Each tensor is copied into storage of its own size: a state's tensor is often a view of a larger
    one (a convolution's last inputs sliced from the whole sequence), whose storage `torch.save` would write.
    """
    if isinstance(tree, torch.Tensor):
        return tree.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)
    if isinstance(tree, (list, tuple)):
        return [to_plain(entry) for entry in tree]
    if isinstance(tree, dict):
        return {key: to_plain(value) for key, value in tree.items()}
    if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        fields = {field.name: to_plain(getattr(tree, field.name)) for field in dataclasses.fields(tree)}
        return {_DATACLASS: type(tree).__qualname__, "fields": fields}
    return tree


def from_plain(plain: Any, types: dict[str, type["DataclassInstance"]], device: torch.device) -> Any:
    """The inverse of `to_plain`; a tagged dict becomes the dataclass of that name in `types` (none other)."""
    if isinstance(plain, torch.Tensor):
        return plain.to(device)
    if isinstance(plain, list):
        return [from_plain(entry, types, device) for entry in plain]
    if isinstance(plain, dict) and _DATACLASS in plain:
        if plain[_DATACLASS] not in types:
            raise StateError(f"the state holds a {plain[_DATACLASS]}, which no part of this model uses")
        kind = types[plain[_DATACLASS]]
        fields = {name: from_plain(value, types, device) for name, value in plain["fields"].items()}
        names = {field.name for field in dataclasses.fields(kind)}
        if set(fields) != names:
            raise StateError(f"the state's {kind.__qualname__} has fields {sorted(fields)}, expected {sorted(names)}")
        return kind(**fields)
    if isinstance(plain, dict):
        return {key: from_plain(value, types, device) for key, value in plain.items()}
    return plain


def state_types(roots: Iterable[type]) -> dict[str, type["DataclassInstance"]]:
    """The dataclasses a state of these types can hold: the roots (each mixer's `State` is one) and the
    dataclasses their fields name."""
    found: dict[str, type[DataclassInstance]] = {}
    pending = [kind for kind in roots if dataclasses.is_dataclass(kind)]
    while pending:
        kind = pending.pop()
        if kind.__qualname__ in found:
            continue
        found[kind.__qualname__] = kind
        for hint in typing.get_type_hints(kind).values():
            pending += [arg for arg in (hint, *typing.get_args(hint)) if dataclasses.is_dataclass(arg)]
    return found


def state_bytes(kind: str, **parts: Any) -> bytes:
    """A state of model kind `kind` as bytes: its parts as plain containers (`to_plain`), `torch.save`d."""
    buffer = io.BytesIO()
    torch.save({"kind": kind, **{name: to_plain(part) for name, part in parts.items()}}, buffer)
    return buffer.getvalue()


def restore_states(entries: Any, kinds: list[type], device: torch.device, what: str) -> tuple:
    """Entries of a payload read back as the state types `kinds`, one each (`what` names an entry in errors)."""
    if not isinstance(entries, list) or len(entries) != len(kinds):
        raise StateError(f"the state is not one of {len(kinds)} {what}s")
    types = state_types(kinds)
    restored = tuple(from_plain(entry, types, device) for entry in entries)
    for i, (entry, kind) in enumerate(zip(restored, kinds)):
        if not isinstance(entry, kind):
            raise StateError(f"{what} {i}'s state is a {type(entry).__name__}, not a {kind.__name__}")
    return restored


def bytes_payload(data: bytes, kind: str) -> dict:
    """The dict `state_bytes` wrote, read without running code; it must be a state of `kind`."""
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for bytes it cannot read
        raise StateError(f"not a saved model state: {type(error).__name__}") from error
    if not isinstance(payload, dict) or payload.get("kind") != kind:
        found = payload.get("kind") if isinstance(payload, dict) else type(payload).__name__
        raise StateError(f"the bytes hold a state of {found!r}, not of {kind!r}")
    return payload


class ModelState(ABC):
    """A model's state after the tokens it has read: typed per model kind, immutable from outside."""

    @abstractmethod
    def select(self, rows: torch.Tensor) -> "ModelState":
        """The state of sequences `rows` (int64 indices into the batch, repeats allowed): beam search's reordering."""

    @abstractmethod
    def to_bytes(self) -> bytes:
        """The state as bytes (`LanguageModel.state_from_bytes` of the same model restores it)."""

    @abstractmethod
    def tensors(self) -> list[torch.Tensor]:
        """Every tensor the state holds (its size: `memory-models info`)."""


class LanguageModel(nn.Module, ABC):
    """The contract of the module docstring; `PaperModel` and `AdaptedModel` implement it."""

    head: nn.Module

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """The number of token ids."""

    @property
    @abstractmethod
    def hidden_size(self) -> int:
        """The width of `hidden_states`."""

    @property
    @abstractmethod
    def tokenizer(self) -> Tokenizer:
        """Text <-> token ids as the model reads them."""

    @abstractmethod
    def hidden_states(self, input_ids: torch.Tensor, checkpoint_blocks: bool = False) -> torch.Tensor:
        """(batch, length) ids -> (batch, length, hidden_size) final normalised hidden states."""

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(batch, length) token ids -> (batch, length, vocab_size) logits."""
        return self.head(self.hidden_states(input_ids))

    @abstractmethod
    def step(self, input_ids: torch.Tensor, state: ModelState | None) -> tuple[torch.Tensor, ModelState]:
        """The next T >= 1 tokens (batch, T) after `state` (None at the start) -> logits (batch, T, vocab), state."""

    @property
    @abstractmethod
    def constant_state(self) -> bool:
        """True when a state's size does not grow with the tokens it has read (no KV cache anywhere)."""

    @abstractmethod
    def state_from_bytes(self, data: bytes) -> ModelState:
        """A state written by `ModelState.to_bytes` of this model, on the model's device (StateError otherwise)."""

    @abstractmethod
    def auxiliary_losses(self) -> dict[str, torch.Tensor]:
        """The auxiliary losses the last forward pass recorded, summed by name, coefficients applied."""

    @abstractmethod
    def sharding_units(self) -> list[nn.Module]:
        """The submodules FSDP2 shards one by one before the root (`src.distributed`)."""

    def parameter_groups(self, weight_decay: float) -> list[dict]:
        """AdamW's parameter groups of the trainable parameters: decayed, then not (`src.optimizer`)."""
        return parameter_groups(self, weight_decay)

    def num_parameters(self) -> int:
        """Distinct parameters, frozen and trainable (a tied head counts once)."""
        return sum(p.numel() for p in self.parameters())

    def trainable_parameters(self) -> int:
        """Parameters the optimizer updates."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def max_positions(self) -> int | None:
        """The most tokens (prompt and generated) one sequence may hold; None when only memory bounds it."""
        return None
