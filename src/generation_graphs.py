"""Decoding one token at a time under a CUDA graph: `LanguageModel.step` captured once, replayed per token.

A step of a small model at batch 1 launches hundreds of short kernels, so decoding is bound by their
launch cost on the CPU, not by the GPU; replaying a captured graph launches them all at once (as the
official Mamba's `decode(..., cg=True)`). A graph replays fixed addresses and shapes, so it applies to
a model whose state keeps its structure from token to token: every tensor of the same shape, dtype and
device, every other field (positions, counters) the same value. `graph_step` checks exactly that
(`state_structure`) on the state one warm-up step returns and gives None otherwise (a KV cache grows,
a segment fills, a position counts), and the caller steps eagerly.

The state lives in buffers the graph reads and, at its end, overwrites with the next state; the
token is copied into a buffer before each replay, and the logits come back in the graph's own
buffer, valid until the next replay. Captured steps are kept per model, batch and state structure,
and reused while the model's parameters and buffers stay where they were.
"""

import weakref
from collections.abc import Callable

import torch

from src.language_model import LanguageModel, ModelState, map_tensors

_CAPTURED: "weakref.WeakKeyDictionary[LanguageModel, dict]" = weakref.WeakKeyDictionary()
WARMUP_STEPS = 2  # before capture, on a side stream: lazy initialisation and autotuning happen there


def state_structure(state: ModelState) -> str:
    """The state with each tensor replaced by its (shape, dtype, device), as text: equal for states a graph
    can carry from one token to the next."""
    return repr(map_tensors(state, lambda tensor: (tuple(tensor.shape), tensor.dtype, tensor.device)))


def _addresses(model: LanguageModel) -> tuple:
    return tuple(tensor.data_ptr() for tensor in (*model.parameters(), *model.buffers()))


class CapturedStep:
    """`model.step(token, state)` for one token per row, captured in a CUDA graph over static buffers."""

    def __init__(self, model: LanguageModel, state: ModelState, token: torch.Tensor):
        self.token = token.clone()
        self.state = map_tensors(state, torch.clone)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):  # other threads may use the GPU
            self.logits, captured_state = model.step(self.token, self.state)
            for static, new in zip(self.state.tensors(), captured_state.tensors(), strict=True):
                static.copy_(new)

    def load(self, state: ModelState) -> None:
        """Start from `state` (same structure as the captured one)."""
        for static, value in zip(self.state.tensors(), state.tensors(), strict=True):
            static.copy_(value)

    def __call__(self, token: torch.Tensor, _state: ModelState) -> tuple[torch.Tensor, ModelState]:
        """The logits (batch, 1, vocab) of `token` (batch, 1) and the state after it (the graph's buffers)."""
        self.token.copy_(token)
        self.graph.replay()
        return self.logits, self.state


def graph_step(model: LanguageModel, state: ModelState, token: torch.Tensor) -> CapturedStep | None:
    """A `CapturedStep` started from `state` for tokens shaped as `token` (batch, 1) on a CUDA device, or
    None when the model's state changes structure from one token to the next (module docstring)."""
    key = (tuple(token.shape), state_structure(state), _addresses(model))
    captured = _CAPTURED.setdefault(model, {})
    if key not in captured:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                _, new_state = model.step(token, state)
        torch.cuda.current_stream().wait_stream(side)
        if state_structure(new_state) != key[1]:
            captured[key] = None
        else:
            captured.clear()  # one graph per model: an earlier one's buffers and pool are freed
            captured[key] = CapturedStep(model, state, token)
    step = captured[key]
    if step is not None:
        step.load(state)
    return step


Step = Callable[[torch.Tensor, ModelState], tuple[torch.Tensor, ModelState]]  # (token, state) -> (logits, state)


def decoding_step(model: LanguageModel, state: ModelState, token: torch.Tensor, cuda_graphs: bool) -> Step:
    """The step for the tokens after the prompt, given the first (batch, 1): the captured graph where one
    applies (`cuda_graphs`, a CUDA device, a state of constant size that keeps its structure), else
    `model.step`. Both are called as `step(token, state) -> (logits, state)`."""
    if cuda_graphs and token.device.type == "cuda" and model.constant_state:
        return graph_step(model, state, token) or model.step
    return model.step
