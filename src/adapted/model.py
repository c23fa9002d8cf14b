"""AdaptedModel: a frozen pretrained causal LM with memory adapters and LoRA, as the harness trains it.

Built from a resolved `model` section with `base` and `adapters` (`src.adapted.config`):

- a memory adapter (`src.layers.memory_adapter.MemoryAdapter`: a memory bank, `type: memory`, or a
  product-key memory, `type: product_key_memory`) is inserted at each listed decoder layer, in
  variant A after the self-attention (the memory reads the stream s = h + attn(h) and its gated
  read joins the stream before the MLP) or in variant B after the MLP (it reads and updates the
  layer's output). It is attached with forward hooks, so the base's modules, their names and
  its forward are unchanged; in variant A the gated read is added to the attention's output, which
  the layer then adds to its input, so with the gate at 0 every sum is the base's, bit for bit;
- a LoRA adapter wraps the named projections of the listed layers (all by default) in `LoRALinear`.

It implements the language-model contract (`src.language_model.LanguageModel`); its step state is
the base's KV cache and the adapters' routing states (`AdaptedModelState`), its tokenizer the
base's `tokenizer.json`, its FSDP units the decoder layers. Its `state_dict` holds only the
trainable parameters (the adapters', or every parameter under full fine-tuning) and the adapters'
buffers: a checkpoint never copies the frozen base, which the config names by directory and weight
hash.
"""

from collections.abc import Generator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.modules.module import _IncompatibleKeys

from src.adapted.base import decoder_layers, frozen_storage, load_base, transformers_library
from src.adapted.config import (
    MEMORY_ADAPTERS,
    is_adapted_section,
    lora_layers,
    memory_arguments,
    resolve_adapted_section,
)
from src.language_model import (
    LanguageModel,
    ModelState,
    StateError,
    bytes_payload,
    map_tensors,
    restore_states,
    state_bytes,
)
from src.layers.lora import LoRALinear
from src.layers.memory_adapter import MemoryAdapter
from src.layers.mixer import state_tensors
from src.layers.quantization import QuantizedLinear
from src.model import check_token_ids, sum_auxiliary_losses
from src.tasks.tokenizer import DirectoryTokenizer, Tokenizer
from src.validation import ConfigError, read_yaml

if TYPE_CHECKING:  # transformers comes with the optional 'hf' extra (src.adapted.base imports it at run time)
    from transformers import DynamicCache, PretrainedConfig, PreTrainedModel


def _kv_cache(config: "PretrainedConfig", keys: list[torch.Tensor], values: list[torch.Tensor]) -> "DynamicCache":
    """A transformers `DynamicCache` for `config` holding each layer's keys and values (batch, heads, T, d)."""
    cache = transformers_library().DynamicCache(config=config)
    for index, (key, value) in enumerate(zip(keys, values)):
        cache.update(key, value, index)
    return cache


@dataclass(frozen=True)
class AdaptedModelState(ModelState):
    """An adapted model's state: the base's KV cache (a transformers `Cache`) and each memory adapter's state.

    The base extends its cache in place, so a state is spent by the `step` it is given to (as the
    cache of `transformers.generate` is); `select` and `state_from_bytes` give independent copies.
    """

    # A transformers Cache: `_kv_cache`'s DynamicCache or the one the base's forward returns, each layer's keys and
    # values filled. Any, not Cache: Cache types its layers as a union with kinds that hold no keys and values.
    cache: Any
    memories: tuple  # each memory adapter's routing state (its mixer's `State`) or None
    config: "PretrainedConfig"  # the base's transformers config, which lays out its cache

    def _layers(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        layers = self.cache.layers
        return [layer.keys for layer in layers], [layer.values for layer in layers]

    def select(self, rows: torch.Tensor) -> "AdaptedModelState":
        keys, values = self._layers()
        pick = lambda tensor: tensor.index_select(0, rows)  # noqa: E731
        cache = _kv_cache(self.config, [pick(k) for k in keys], [pick(v) for v in values])
        return AdaptedModelState(cache, map_tensors(self.memories, pick), self.config)

    def to_bytes(self) -> bytes:
        keys, values = self._layers()
        return state_bytes("AdaptedModel", keys=keys, values=values, memories=self.memories)

    def tensors(self) -> list[torch.Tensor]:
        keys, values = self._layers()
        return [*keys, *values, *(tensor for _, tensor in state_tensors(self.memories))]


class _Insertion:
    """One memory adapter's hooks on one decoder layer, and its routing state while stepping."""

    def __init__(self, adapter: MemoryAdapter, layer: nn.Module, variant: str):
        self.adapter, self.variant = adapter, variant
        self.stepping = False
        self.state: object = None  # the memory's routing state while stepping (its mixer's `State`, or None)
        self.stream: torch.Tensor | None = None  # the layer's input, kept by the input norm's hook (variant A)
        if variant == "A":
            self.handles = [  # the layer's input is its input norm's; both hooks run inside the layer's forward,
                # so a checkpointed layer recomputes them together
                layer.get_submodule("input_layernorm").register_forward_hook(self._keep_input),
                layer.get_submodule("self_attn").register_forward_hook(self._after_attention),
            ]
        else:
            self.handles = [layer.register_forward_hook(self._after_layer)]

    def _read(self, stream: torch.Tensor, into: torch.Tensor) -> torch.Tensor:
        state = self.state if self.stepping else None
        y, state = self.adapter.step(stream, state, into)
        if self.stepping:
            self.state = state
        return y

    def _keep_input(self, norm: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
        self.stream = args[0]

    def _after_attention(
        self, attention: nn.Module, args: tuple[Any, ...], output: torch.Tensor | tuple[Any, ...]
    ) -> torch.Tensor | tuple[Any, ...]:
        attended, *rest = output if isinstance(output, tuple) else (output,)
        stream, self.stream = self.stream, None
        if stream is None:  # the input norm's hook runs first in every decoder layer's forward
            raise RuntimeError("the memory adapter's attention hook ran before the layer's input norm")
        updated = self._read(stream + attended, into=attended)
        return (updated, *rest) if isinstance(output, tuple) else updated

    def _after_layer(
        self, layer: nn.Module, args: tuple[Any, ...], output: torch.Tensor | tuple[Any, ...]
    ) -> torch.Tensor | tuple[Any, ...]:
        hidden, *rest = output if isinstance(output, tuple) else (output,)
        updated = self._read(hidden, into=hidden)
        return (updated, *rest) if isinstance(output, tuple) else updated


class AdaptedModel(LanguageModel):
    """A frozen Hugging Face causal LM with memory and LoRA adapters; see the module docstring."""

    base: "PreTrainedModel"

    def __init__(
        self, config: dict, file: str = "<config>", device: torch.device | str | None = "cpu", base_weights: bool = True
    ):
        """Build on `device` from a resolved model section with `base` and `adapters` (see `src.adapted.config`);
        without `base_weights` the base is built from its config alone (`src.adapted.base.load_base`)."""
        super().__init__()
        self.config, self.file = config, file
        self.base = load_base(config["base"], device, base_weights)
        self.storage = frozen_storage(self.base) if config["base"]["freeze"] else None
        hf: PretrainedConfig = self.base.config
        layers = decoder_layers(self.base)
        eps = getattr(hf, "rms_norm_eps", 1e-5)
        self.memory_adapters = nn.ModuleDict()
        self._insertions: list[_Insertion] = []
        for spec in config["adapters"]:
            if spec["type"] in MEMORY_ADAPTERS:
                for i in spec["layers"]:
                    adapter = MemoryAdapter(int(hf.hidden_size), eps, **memory_arguments(spec))
                    if adapter.alpha.device != self.base.device:  # built there already under src.estimate's fakes
                        adapter.to(self.base.device)
                    self.memory_adapters[f"layer{i}{spec['variant']}"] = adapter
                    self._insertions.append(_Insertion(adapter, layers[i], spec["variant"]))
            else:
                for i in lora_layers(spec, len(layers)):
                    LoRALinear.add_to(layers[i], spec["targets"], spec["rank"], spec["alpha"])
        self.head = self.base.get_output_embeddings()
        self._checkpointing = False
        self._trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        self._kept = self._trainable | {f"memory_adapters.{name}" for name, _ in self.memory_adapters.named_buffers()}

    @classmethod
    def from_config(cls, path: str | Path, device: torch.device | str = "cpu") -> "AdaptedModel":
        """Build the adapted model declared in the `model` section (`base`, `adapters`) of a YAML file."""
        raw = read_yaml(path)
        if not is_adapted_section(raw.get("model")):
            raise ConfigError(f"{path}: key 'model.base' is missing: not an adapted pretrained model")
        return cls(resolve_adapted_section(raw["model"], str(path)), str(path), device)

    def hidden_states(self, input_ids: torch.Tensor, checkpoint_blocks: bool = False) -> torch.Tensor:
        """(batch, length) ids -> (batch, length, hidden) final normalised hidden states.

        `checkpoint_blocks` turns on the base's own gradient checkpointing of its decoder layers
        (the adapters' hooks run inside them and are recomputed with them).
        """
        check_token_ids(input_ids, self.vocab_size)
        if checkpoint_blocks != self._checkpointing:
            base = self.base  # transformers 5 renames gradient_checkpointing_* to activation_checkpointing_*
            if checkpoint_blocks:
                (getattr(base, "activation_checkpointing_enable", None) or base.gradient_checkpointing_enable)(
                    {"use_reentrant": False}
                )
            else:
                (getattr(base, "activation_checkpointing_disable", None) or base.gradient_checkpointing_disable)()
            self._checkpointing = checkpoint_blocks
        return self.base.model(input_ids=input_ids, use_cache=False).last_hidden_state

    @contextmanager
    def _stepping(self, states: Sequence[object]) -> Generator[None]:
        for insertion, state in zip(self._insertions, states):
            insertion.stepping, insertion.state = True, state
        try:
            yield
        finally:
            for insertion in self._insertions:
                insertion.stepping = False

    def step(self, input_ids: torch.Tensor, state: ModelState | None) -> tuple[torch.Tensor, AdaptedModelState]:
        """Continue each sequence with the next token(s): logits (batch, T, vocab) and the new state.

        The state is the base's KV cache and each memory adapter's routing state (None at the start).
        """
        check_token_ids(input_ids, self.vocab_size)
        if state is not None and not isinstance(state, AdaptedModelState):
            raise TypeError(f"state must be an AdaptedModelState or None, got {type(state).__name__}")
        cache = _kv_cache(self.base.config, [], []) if state is None else state.cache
        memories: tuple = (None,) * len(self._insertions) if state is None else state.memories
        with self._stepping(memories):
            output = self.base(input_ids=input_ids, past_key_values=cache, use_cache=True)
            memories = tuple(insertion.state for insertion in self._insertions)
        return output.logits, AdaptedModelState(output.past_key_values, memories, self.base.config)

    @property
    def constant_state(self) -> bool:
        """False: the base's KV cache grows with every token."""
        return False

    def state_from_bytes(self, data: bytes) -> AdaptedModelState:
        payload = bytes_payload(data, "AdaptedModel")
        keys, values, memories = payload.get("keys"), payload.get("values"), payload.get("memories")
        layers = len(decoder_layers(self.base))
        if not (isinstance(keys, list) and isinstance(values, list) and len(keys) == len(values) == layers):
            raise StateError(f"the state's KV cache is not one of {layers} decoder layers")
        device = self.device
        kinds = [insertion.adapter.memory.State for insertion in self._insertions]
        memories = restore_states(memories, kinds, device, "memory adapter")
        cache = _kv_cache(self.base.config, [k.to(device) for k in keys], [v.to(device) for v in values])
        return AdaptedModelState(cache, memories, self.base.config)

    def auxiliary_losses(self) -> dict[str, torch.Tensor]:
        """The memory adapters' router losses of the last forward pass, summed by name."""
        return sum_auxiliary_losses(insertion.adapter.memory for insertion in self._insertions)

    def sharding_units(self) -> list[nn.Module]:
        return list(decoder_layers(self.base))

    @property
    def vocab_size(self) -> int:
        return int(self.base.config.vocab_size)

    @property
    def hidden_size(self) -> int:
        return int(self.base.config.hidden_size)

    @property
    def max_positions(self) -> int | None:
        """The base's `max_position_embeddings` (config.json): its position embeddings or RoPE range."""
        return getattr(self.base.config, "max_position_embeddings", None)

    @property
    def tokenizer(self) -> Tokenizer:
        """The base directory's `tokenizer.json`."""
        return DirectoryTokenizer(self.config["base"]["directory"])

    def num_parameters(self) -> int:
        """Distinct parameters, frozen and trainable (a tied head counts once; a quantised linear counts its
        d_out x d_in weights and its bias)."""
        quantized = [m for m in self.base.modules() if isinstance(m, QuantizedLinear)]
        stored = sum(m.in_features * m.out_features + (0 if m.bias is None else m.bias.numel()) for m in quantized)
        return sum(p.numel() for p in self.parameters()) + stored

    def state_dict(self, *args: Any, **kwargs: Any) -> dict:
        """The trainable parameters and the adapters' buffers only (see the module docstring)."""
        return {key: value for key, value in super().state_dict(*args, **kwargs).items() if key in self._kept}

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> _IncompatibleKeys:
        """Load what `state_dict` saved; with `strict`, its keys must be exactly the trainable ones."""
        if strict and (missing := self._kept - set(state_dict)) | (unexpected := set(state_dict) - self._kept):
            raise RuntimeError(
                f"adapter state does not fit: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
            )
        return super().load_state_dict(state_dict, strict=False, assign=assign)
