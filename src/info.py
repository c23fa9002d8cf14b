"""`memory-models info CONFIG`: a model's size and its step state, without training or allocating it.

Parameters per block of the config and in total (for an adapted model: trained and frozen), and
the bytes of the state `LanguageModel.step` carries per sequence after `length` tokens, with the
bytes it grows by per further token where it grows (attention's KV cache, an adapted base's). The
model is built and stepped under torch's FakeTensorMode, as `src.estimate` does: every tensor has
its shape and dtype and no memory, so a model of any size is described in seconds.
"""

from collections.abc import Iterable

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from src.config import ExperimentConfig
from src.language_model import LanguageModel, ModelState
from src.layers.mixer import state_tensors
from src.model import PaperModel, PaperModelState
from src.runs import build_model


def _size(count: int) -> str:
    """Bytes as `1,536 B (1.5 KiB)`."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= scale:
            return f"{count:,} B ({count / scale:.1f} {unit})"
    return f"{count:,} B"


def _nbytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def model_info(experiment: ExperimentConfig, length: int) -> str:
    """The `info` report of `experiment`'s model, its state measured after `length` tokens (>= 1)."""
    with FakeTensorMode(), torch.device("cpu"), torch.no_grad():
        model = build_model(experiment.model, experiment.file, None, base_weights=False)
        ids = torch.zeros(1, length, dtype=torch.long)
        _, state = model.step(ids, None)
        parts = [_nbytes(tensors) for tensors in _state_parts(state)]
        _, longer = model.step(ids[:, :1], state)  # one token more (an adapted base's cache grows in place)
        grown = [
            _nbytes(tensors) - before if growing else 0
            for tensors, before, growing in zip(_state_parts(longer), parts, _growing(model))
        ]
        if isinstance(model, PaperModel):
            lines = _paper_lines(experiment, model, parts, grown, length)
        else:
            lines = _adapted_lines(experiment)
    total, trained = model.num_parameters(), model.trainable_parameters()
    frozen = f", {total - trained:,} frozen" if trained < total else ""
    lines.append(f"parameters: {total:,} ({trained:,} trained{frozen})")
    lines.append(f"step state per sequence after {length} tokens: {_size(sum(parts))}")
    if growth := sum(grown):
        lines.append(f"it grows by {_size(growth)} per further token (KV cache)")
    else:
        lines.append("its size stays the same however many tokens follow (at most a partial segment or chunk more)")
    return "\n".join(lines)


def _state_parts(state: ModelState) -> list[list[torch.Tensor]]:
    """The state's tensors, one list per block of a PaperModel, one list for an adapted model."""
    if isinstance(state, PaperModelState):
        return [[tensor for _, tensor in state_tensors(block_state)] for block_state in state.blocks]
    return [state.tensors()]


def _growing(model: LanguageModel) -> list[bool]:
    """Per part of `_state_parts`: whether it grows with every token (a KV cache), not only up to a segment."""
    if isinstance(model, PaperModel):
        return [not block.mixer.constant_state for block in model.block_list]
    return [not model.constant_state]


def _paper_lines(
    experiment: ExperimentConfig, model: PaperModel, parts: list[int], grown: list[int], length: int
) -> list[str]:
    section = experiment.model
    lines = [
        f"{experiment.file}: PaperModel of {len(model.blocks)} blocks, d_model {section['d_model']}, "
        f"vocabulary {section['vocab_size']}"
    ]
    header = ["block", "mixer", "mlp", "repeat", "parameters each", "parameters", f"state after {length} tokens",
              "per further token"]  # fmt: skip
    rows, first = [], 0
    for i, spec in enumerate(section["blocks"]):
        block = model.block_list[first]
        each = sum(p.numel() for p in block.parameters())
        repeat = spec["repeat"]
        state = sum(parts[first : first + repeat])
        growth = sum(grown[first : first + repeat])
        mlp = spec["mlp"] if spec["mlp"] == "none" else spec["mlp"]["type"]
        rows.append([f"model.blocks[{i}]", spec["mixer"]["type"], mlp, str(repeat), f"{each:,}", f"{each * repeat:,}",
                     _size(state), _size(growth) if growth else "–"])  # fmt: skip
        first += repeat
    embedding = model.embedding.weight.numel()
    tied = section["tie_embeddings"]
    rows.append([f"embedding{' (the head tied to it)' if tied else ''}", "", "", "", "", f"{embedding:,}", "", ""])
    if not tied:
        rows.append(["head", "", "", "", "", f"{sum(p.numel() for p in model.head.parameters()):,}", "", ""])
    rows.append(["final norm", "", "", "", "", f"{sum(p.numel() for p in model.norm.parameters()):,}", "", ""])
    return lines + _table(header, rows)


def _adapted_lines(experiment: ExperimentConfig) -> list[str]:
    base = experiment.model["base"]
    adapters = ", ".join(adapter["type"] for adapter in experiment.model["adapters"])
    return [
        f"{experiment.file}: the pretrained base {base['directory']} ({base.get('quantization') or 'not quantised'}, "
        f"frozen: {base.get('freeze', True)}) with adapters: {adapters}"
    ]
