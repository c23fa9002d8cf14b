"""The mixer contract: what every sequence mixer of a block provides, and the registry configs name.

A mixer maps (batch, T, d_model) inputs to outputs of the same shape, causally, and can continue a
sequence from a recurrent state. Every mechanism of `src/layers/` (attention, selective SSM,
compressive and neural memories, memory banks, ...) derives from `Mixer`:

- `_step(x, state) -> (y, state)` is the one method a mixer writes: the next T tokens given the
  state after the previous ones (None at the start). `step` checks the input and the state's type
  and calls it; `forward(x)` is `step(x, None)` without the state, written once here, so a
  sequence run at once and run piece by piece cannot disagree.
- `State` is the mixer's state type, a small frozen dataclass of tensors, one type per mixer class
  (two mixers with the same fields subclass one dataclass), so another mixer's state is refused.
  Its size does not grow with the sequence, except where `constant_state` is False (attention's
  KV cache).
- `autocast`: whether the mixer computes under an enclosing `torch.autocast` (mixed precision,
  `train.precision: bfloat16`). Those that do not (the default) run in float32 with autocast off:
  their recurrences and equation functions keep one dtype. Those that do cast their parameters to
  the activations' dtype where an equation function needs one dtype, and keep recurrent states and
  reductions in float32.
- A state continues only the sequences it came from: `step` refuses one whose tensors hold another
  number of sequences than x, or whose sizes are not the ones this mixer's settings give (a state of
  the same mixer type at another width or head count), naming the state's field.
- `aux_losses` holds the auxiliary losses of the last call (router losses), each already scaled by
  its coefficient; empty for most mixers. The training loop adds their sum to the loss.
- `no_weight_decay` names the mixer's parameters (relative to the mixer, e.g. "dt_proj.bias") that
  AdamW never decays, whatever their dimensions (`src.optimizer.parameter_groups`, which also
  leaves every tensor of fewer than two dimensions undecayed): the SSMs' A_log, D and Δ bias.
  Empty by default.
- `lr_scale` maps the mixer's parameter names to a factor of the learning rate
  (`src.optimizer.parameter_groups`): a product-key memory's values train faster. Empty by default.

A mixer joins `MIXERS` where it is defined, with `@register_mixer("name")`; that name is the
`type:` a config's block uses, and `tests/test_mixer_contract.py` checks every registered mixer for
causality, step == forward, batch independence, float64, state size and input errors.
"""

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

MIXERS: dict[str, type["Mixer"]] = {}


_MixerClass = TypeVar("_MixerClass", bound="type[Mixer]")


def register_mixer(name: str) -> Callable[[_MixerClass], _MixerClass]:
    """Class decorator: make a Mixer subclass available to configs as `type: name`."""

    def register(cls: _MixerClass) -> _MixerClass:
        if not (isinstance(cls, type) and issubclass(cls, Mixer)):
            raise TypeError(f"register_mixer({name!r}) needs a Mixer subclass, got {cls!r}")
        if name in MIXERS:
            raise ValueError(f"a mixer named {name!r} is already registered ({MIXERS[name].__qualname__})")
        MIXERS[name] = cls
        return cls

    return register


class Mixer(nn.Module, ABC):
    """Base of every sequence mixer; see the module docstring for the contract."""

    State: ClassVar[type]
    constant_state: ClassVar[bool] = True
    autocast: ClassVar[bool] = False
    no_weight_decay: ClassVar[tuple[str, ...]] = ()

    def __init__(self, d_model: int):
        super().__init__()
        self.d_model = d_model
        self.aux_losses: dict[str, torch.Tensor] = {}
        self.lr_scale: dict[str, float] = {}

    @abstractmethod
    def _step(self, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, object]:  # state: the mixer's `State`
        """The next T tokens x (batch, T, d_model) after `state` (None at the start) -> (y, new state)."""

    def step(self, x: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, object]:
        """Continue the sequence: x (batch, T >= 1, d_model), state of type `State` or None -> (y, state)."""
        self._check_input(x)
        if state is not None and type(state) is not self.State:
            raise TypeError(
                f"state must be a {self.State.__name__} (the state of {type(self).__name__}) or None, "
                f"got {type(state).__name__}"
            )
        if state is not None:
            self._check_state_shapes(state, x)
        if not self.autocast and torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                return self._step(x, state)
        return self._step(x, state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, L, d_model) -> (batch, L, d_model), the whole sequence from no state."""
        y, _ = self.step(x, None)
        return y

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must have shape (batch, length, d_model={self.d_model}), got {tuple(x.shape)}")
        if x.shape[1] == 0:
            raise ValueError("x must hold at least one position (length >= 1), got length 0")
        parameter = next(self.parameters(), None)
        if parameter is not None and x.dtype != parameter.dtype:
            raise TypeError(f"x has dtype {x.dtype} but {type(self).__name__}'s parameters are {parameter.dtype}")

    def _check_state_shapes(self, state: Any, x: torch.Tensor) -> None:
        """Refuse a state whose tensors do not fit x's batch or this mixer's sizes (see the module docstring).

        The sizes are those of the states this mixer returns for one sequence after one and after two
        tokens (computed once; one sequence, not an empty batch, whose FFT cuFFT refuses in S4D's Eq. 3b):
        a size that differs between the two grows with the sequence (a KV cache, a segment in progress)
        and may be anything; every other size must match.
        """
        if not hasattr(self, "_state_sizes"):
            with torch.no_grad():
                after = [dict(state_tensors(self._step(x.new_zeros(1, n, self.d_model), None)[1])) for n in (1, 2)]
            self._state_sizes = {
                path: tuple(a if a == b else None for a, b in zip(one.shape, after[1][path].shape))
                for path, one in after[0].items()
            }
        batch = x.shape[0]
        for path, tensor in state_tensors(state):
            expected = self._state_sizes.get(path)
            if tensor.dim() == 0 or tensor.shape[0] != batch:
                raise ValueError(
                    f"state.{path} has shape {tuple(tensor.shape)}: it holds {tensor.shape[0] if tensor.dim() else 0} "
                    f"sequences, x holds {batch}"
                )
            if expected is not None and (
                len(expected) != tensor.dim() or any(e not in (None, n) for e, n in zip(expected[1:], tensor.shape[1:]))
            ):
                sizes = ", ".join("*" if e is None else str(e) for e in expected[1:])
                raise ValueError(
                    f"state.{path} has shape {tuple(tensor.shape)}, but {type(self).__name__} with these settings "
                    f"keeps (batch, {sizes}) there: a state of the same mixer type with other sizes"
                )


def state_tensors(tree: Any, path: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """(dotted path, tensor) of every tensor of a state (dataclasses, dicts, lists and tuples walked)."""
    if isinstance(tree, torch.Tensor):
        yield path, tree
    elif isinstance(tree, dict):
        for key, value in tree.items():
            yield from state_tensors(value, f"{path}.{key}" if path else str(key))
    elif isinstance(tree, (list, tuple)):
        for index, value in enumerate(tree):
            yield from state_tensors(value, f"{path}[{index}]")
    elif dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        for field in dataclasses.fields(tree):
            yield from state_tensors(getattr(tree, field.name), f"{path}.{field.name}" if path else field.name)
