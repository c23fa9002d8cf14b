"""Peak memory of one training step for any config, computed without allocating a tensor.

`memory-models estimate CONFIG [--batch B --length L]` runs the training step of
`memory-models train` (`src.training.training_step`: the config's `train.checkpoint_blocks` and
`train.loss_chunk_tokens`, clipped AdamW)
twice under torch's FakeTensorMode: every tensor, the token ids included, has its shape, dtype and
storage but no memory, so a CPU-only machine estimates a GPU run of any batch. A Mamba block's
selective scan is one operator on fake tensors (`memory_models::selective_scan`, whose fake form
allocates what the fused Triton kernel does), on CPU and CUDA code paths alike, so a Mamba step at
any length takes seconds; the layers that loop over chunks in Python (the memory layers' chunked
forms) still take time that grows with the length. A chunked loss (`train.loss_chunk_tokens`) runs
three of its chunks (`distinct_loss_chunks`), whatever the batch and length. A dispatch mode records
each storage when an operation creates it and forgets it when Python frees it (autograd's saved
tensors, recomputation under checkpointing and the optimizer's state are all honoured), so the
largest sum of live storages is the peak a step's tensors reach. The second step is the one
reported: AdamW allocates its moments during the first.

For a CUDA run (`device="cuda"`) the peak is priced as `torch.cuda.max_memory_allocated` counts it,
whether or not a GPU is present: each storage rounded up as the caching allocator rounds a block
(`cuda_block_bytes`), and the cuBLAS workspaces that the allocator holds for the rest of the process
added (`cuda_library_bytes`). Without a GPU the fake tensors live on the CPU: the only code paths
that differ by device (Mamba's fused scan and conv) already take their kernels' fake forms on fake
tensors, and the tensor memory's `backend: auto` prices its PyTorch form, the one a GPU without
flash-linear-attention runs.
"""

import os
import re
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch._ops import OpOverload
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

from src.config import ExperimentConfig, parameter_counts
from src.runs import build_model
from src.tasks import build_task
from src.training import LossChunks, OutOfMemory, TrainingObjective, training_step

GIB = 2**30
CUDA_BLOCK = 512  # bytes: the CUDA caching allocator's smallest block and rounding (kMinBlockSize)
LOSS_CHUNK_TOKENS = 1024  # the value advised for train.loss_chunk_tokens (configs/mamba_130m.yaml's)


_MAX_ELEMENTS = 2**63 - 1  # torch's sizes are int64
_OVERFLOW = re.compile(r"overflow|too large|int64|exceeds", re.IGNORECASE)


class EstimateError(ValueError):
    """A step the estimate cannot run (a size torch cannot represent); the message names the sizes."""


def _unrepresentable(batch: int, length: int, cause: str) -> str:
    return (
        f"batch {batch:,} x length {length:,}: a tensor of this training step would have more elements or "
        f"bytes than torch can represent (2**63 - 1): {cause}"
    )


def distinct_loss_chunks(tokens: int, chunk_tokens: int) -> list[int]:
    """The first, second and last chunk of a chunked loss, the only ones whose storages differ.

    `chunked_loss_and_accuracy` sums as it goes and frees each chunk's logits before the next, and
    backward takes the chunks from the last to the first, the first of them creating the gradient
    buffers of the hidden states and the head that the others add to: every chunk between the second
    and the last allocates and frees what the second does, from the same live bytes. Leaving them out
    leaves the step's peak unchanged to the byte (tests/test_estimate.py checks it against every chunk)
    and the loss's value wrong, which a fake step does not have.
    """
    starts = range(0, tokens, chunk_tokens)
    return list(starts) if len(starts) <= 3 else [starts[0], starts[1], starts[-1]]


def cuda_block_bytes(nbytes: int) -> int:
    """The bytes `torch.cuda.max_memory_allocated` counts for one storage of `nbytes`: the caching
    allocator rounds every request up to a multiple of 512 bytes, at least 512 (c10's CUDACachingAllocator,
    `round_size`); an empty storage allocates nothing."""
    return 0 if nbytes == 0 else -(-nbytes // CUDA_BLOCK) * CUDA_BLOCK


def cuda_library_bytes(capability: tuple[int, int]) -> int:
    """The cuBLAS workspaces a training step leaves allocated, on a GPU of compute `capability`.

    torch gives each cuBLAS handle and stream one workspace from the caching allocator, kept for the
    process (ATen's CublasHandlePool.cpp): by default 32 MiB (`:4096:8`) from compute capability 9.0
    (Hopper) on and 8.125 MiB (`:4096:2:16:8`) before, or the sum that `CUBLAS_WORKSPACE_CONFIG`
    gives; cuBLASLt shares it. A training step runs matrix products on two threads, each with its
    own handle: the forward's and autograd's device thread for the backward. Measured on an H100
    (torch 2.11): every small config's peak 64.0-64.4 MiB above its estimate without it
    (benchmarks/results/memory_estimate_h100.md).
    """
    config = os.environ.get("CUBLAS_WORKSPACE_CONFIG", "")
    if sizes := re.findall(r":(\d+):(\d+)", config):
        workspace = sum(int(kib) * 1024 * int(count) for kib, count in sizes)
    else:
        workspace = 4096 * 1024 * 8 if capability >= (9, 0) else 4096 * 1024 * 2 + 16 * 1024 * 8
    return 2 * workspace


def priced_device(name: str) -> str:
    """The device an estimate prices for a run on `name` (a `train.device` or a torch device type): a GPU for
    "cuda" and "auto", the CPU for "cpu" and "mps" (the estimate has no model of Apple's allocator)."""
    return "cuda" if name in ("cuda", "auto") else "cpu"


class _LiveStorage(TorchDispatchMode):
    """Bytes of the storages created inside the mode that are still alive, and their maximum; each
    storage counted as `allocated(nbytes)` (its own bytes, or what a device's allocator takes for it)."""

    def __init__(self, allocated: Callable[[int], int] = int) -> None:
        super().__init__()
        self.live = self.peak = 0
        self.allocated = allocated
        self._seen = WeakIdKeyDictionary()

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        if storage in self._seen:  # a view of a storage already counted
            return
        size = self.allocated(storage.nbytes())
        self._seen[storage] = size
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, size)

    def _free(self, size: int) -> None:
        self.live -= size

    def __torch_dispatch__(
        self, func: OpOverload, types: Sequence[type], args: tuple = (), kwargs: dict | None = None
    ) -> object:
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor):
                self._track(value)
        return out


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of one training step: the persistent parts, and the peak with activations on top."""

    device: str  # whose code paths and allocator are priced
    batch: int
    length: int
    parameters: int  # count
    parameter_bytes: int
    gradient_bytes: int
    optimizer_bytes: int
    peak_bytes: int  # the whole peak, library workspaces included
    library_bytes: int = 0  # the CUDA libraries' workspaces (cuda_library_bytes)

    @property
    def activation_bytes(self) -> int:
        """Activations and temporaries at the peak: the peak less parameters, gradients, AdamW state and workspaces."""
        persistent = self.parameter_bytes + self.gradient_bytes + self.optimizer_bytes + self.library_bytes
        return self.peak_bytes - persistent

    def table(self) -> str:
        gib = GIB
        rows = [
            ("parameters", f"{self.parameters:,}", self.parameter_bytes),
            ("gradients", "", self.gradient_bytes),
            ("AdamW moments", "", self.optimizer_bytes),
            *([("cuBLAS workspaces", "", self.library_bytes)] if self.device == "cuda" else []),
            ("activations and temporaries at the peak", "", self.activation_bytes),
            ("peak of one training step", "", self.peak_bytes),
        ]
        lines = [f"training step at batch {self.batch} x length {self.length} (priced for {self.device}):"]
        lines += [f"  {name:<42} {count:>14}  {size / gib:8.3f} GiB" for name, count, size in rows]
        return "\n".join(lines)


def estimate_training_memory(
    experiment: ExperimentConfig,
    batch: int | None = None,
    length: int | None = None,
    device: str | None = None,
    loss_chunks: LossChunks = distinct_loss_chunks,
    capability: tuple[int, int] | None = None,
) -> MemoryEstimate:
    """The peak memory of one AdamW training step of `experiment` (default: its batch and task length).

    Everything is fake, the token ids included (their values never decide a size): no batch is
    allocated, and the time does not depend on the batch (the length sets the steps of chunked loops).
    A size torch cannot represent is an EstimateError naming batch and length.
    `device` is the device priced: "cpu" (the CPU forms, except Mamba's selective scan and conv,
    priced as the fused kernels a GPU runs: CPU training takes the chunked scan, whose backward holds
    every step's state) or "cuda" (the CUDA allocator's blocks and the cuBLAS workspaces of a GPU of
    compute `capability`: the present GPU's, else 9.0), on any machine; by default the config's
    `train.device` ("cpu" and "mps" price the CPU, "cuda" and "auto" a GPU). `loss_chunks` picks the
    chunks a chunked loss computes (`src.training.every_loss_chunk` runs them all: the same peak, slower).
    """
    batch = batch or experiment.train.batch_size
    device = device or priced_device(experiment.train.device)
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    on_gpu = device == "cuda" and torch.cuda.is_available()  # else CUDA is priced on fake CPU tensors
    library_bytes = 0  # the cuBLAS workspaces, on CUDA only
    if device == "cuda":
        if capability is None:
            capability = torch.cuda.get_device_capability() if on_gpu else (9, 0)
        library_bytes = cuda_library_bytes(capability)
    task_length = build_task(experiment.task).sample(1, seed=experiment.train.seed)[0].shape[1]
    length = length or task_length
    if batch * length > _MAX_ELEMENTS:
        raise EstimateError(_unrepresentable(batch, length, f"the batch alone has {batch * length:,} token ids"))
    fake_device = torch.device("cuda" if on_gpu else "cpu")
    with FakeTensorMode():
        tracker = _LiveStorage(cuda_block_bytes if device == "cuda" else int)
        with tracker:
            with fake_device:  # built where it trains (moving it after would copy every parameter)
                model = build_model(experiment.model, experiment.file, None, base_weights=False)
            parameter_bytes = tracker.live
            optimizer = torch.optim.AdamW(model.parameter_groups(experiment.train.weight_decay), lr=experiment.train.lr)
            # The first step only makes AdamW's moments (their size does not depend on the batch's), so it
            # runs at the task's length; the second is the one reported.
            for step_length in (min(length, task_length), length):
                tracker.peak = tracker.live
                ids = torch.zeros(batch, step_length, dtype=torch.long, device=fake_device)  # fake: no memory
                try:
                    objective = TrainingObjective(model, experiment.train, loss_chunks)
                    training_step(objective, optimizer, ids, ids, experiment.train)
                except RuntimeError as error:
                    if not _OVERFLOW.search(str(error)):
                        raise
                    raise EstimateError(_unrepresentable(batch, length, str(error).splitlines()[0])) from error
            gradients = [p.grad for p in model.parameters() if p.grad is not None]
            moments = [value for state in optimizer.state.values() for value in state.values()]
            gradient_bytes, optimizer_bytes = (
                sum(tracker.allocated(t.untyped_storage().nbytes()) for t in tensors if isinstance(t, torch.Tensor))
                for tensors in (gradients, moments)
            )
    return MemoryEstimate(
        device=device,
        batch=batch,
        length=length,
        parameters=parameter_counts(experiment.model, experiment.file)[0],
        parameter_bytes=parameter_bytes,
        gradient_bytes=gradient_bytes,
        optimizer_bytes=optimizer_bytes,
        peak_bytes=tracker.peak + library_bytes,
        library_bytes=library_bytes,
    )


def device_capacity(device: torch.device) -> int:
    """Bytes of memory of `device`: a GPU's total memory, or the machine's physical memory for the CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _memory_settings(experiment: ExperimentConfig) -> list[tuple[str, dict]]:
    """(as a config line, TrainConfig changes) of each memory setting the config does not use yet."""
    train, settings = experiment.train, []
    if not train.checkpoint_blocks:
        settings.append(("train.checkpoint_blocks: true", {"checkpoint_blocks": True}))
    if train.loss_chunk_tokens is None:
        settings.append((f"train.loss_chunk_tokens: {LOSS_CHUNK_TOKENS}", {"loss_chunk_tokens": LOSS_CHUNK_TOKENS}))
    if train.precision == "float32":
        settings.append(("train.precision: bfloat16", {"precision": "bfloat16"}))
    return settings


def out_of_memory_advice(error: OutOfMemory) -> str:
    """The one line a command prints for an out-of-memory error: where, the estimate, what would fit.

    For a training step, the estimator (`estimate_training_memory`, priced for the device) prices
    the config, each memory setting it does not use yet, half the batch, and all the settings
    together at smaller and smaller batches until one fits the device; the line lists what fits.
    An evaluation holds no gradients or optimizer state: its lever is `eval.batch_size`.
    """
    experiment, device = error.experiment, error.device
    capacity = device_capacity(device)
    where = f"{error}; the device has {capacity / GIB:.2f} GiB"
    if error.phase == "evaluation":
        size = experiment.eval.batch_size
        smaller = f"eval.batch_size: {max(1, size // 2)}" if size > 1 else "a shorter evaluation setting"
        return f"{where}; the evaluation runs eval.batch_size {size} examples at once: try {smaller}"
    local = max(1, experiment.train.batch_size // error.processes)  # each process's rows

    def peak(changes: dict, batch: int) -> int:
        changed = replace(experiment, train=replace(experiment.train, **changes))
        return estimate_training_memory(changed, batch, device=priced_device(device.type)).peak_bytes

    def batch_label(batch: int) -> str:
        return f"train.batch_size: {batch * error.processes}"

    base, settings = peak({}, local), _memory_settings(experiment)
    tried = [(label, peak(changes, local)) for label, changes in settings]  # (what, estimated peak)
    if local > 1:
        tried.append((batch_label(local // 2), peak({}, local // 2)))
    if len(settings) > 1 and all(bytes_ > capacity for _, bytes_ in tried):  # then all of them together
        together = {key: value for _, changes in settings for key, value in changes.items()}
        batch = local
        while batch >= 1 and (not tried or tried[-1][1] > capacity):
            labels = [label for label, _ in settings] + ([batch_label(batch)] if batch < local else [])
            tried.append((" and ".join(labels), peak(together, batch)))
            batch //= 2
    estimate = f"the estimate for this config is {base / GIB:.2f} GiB at batch {local}" + (
        " (below the device's memory: other processes, the allocator's cache or kernel workspaces hold the rest)"
        if base <= capacity
        else ""
    )
    if fitting := [f"{label} ({bytes_ / GIB:.2f} GiB)" for label, bytes_ in tried if bytes_ <= capacity]:
        return f"{where}; {estimate}; estimated to fit: {'; '.join(fitting)}"
    label, smallest = min(tried, key=lambda entry: entry[1], default=("this config", base))
    return (
        f"{where}; {estimate}; no setting fits by the estimate (the smallest, {smallest / GIB:.2f} GiB, "
        f"with {label}): a model this size needs a larger device or train.parallel: fsdp"
    )
