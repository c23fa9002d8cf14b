"""Data-parallel training over processes started by torchrun: process group, wrapping, sharded checkpoints.

`train.parallel` picks the mode: `none` (one process), `ddp` (DistributedDataParallel: each process
holds the whole model, gradients are averaged) or `fsdp` (FSDP2 `fully_shard` on every block and on
the root: parameters, gradients and AdamW moments are sharded over the processes). torchrun's
environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) gives the processes; `ddp` or
`fsdp` started without torchrun runs as one process of a group of one, so its checkpoints have the
same format. The global batch `train.batch_size` is split evenly: every process draws the same
(seed, step) batch and keeps its own rows, so the data equal the single-process run's.

Checkpoints: `none` and `ddp` write one file from rank 0 (`src.checkpoints`, atomically), the same
file at any number of processes. `fsdp` writes its shards with torch.distributed.checkpoint (DCP)
into `checkpoint-step<N>/` beside `checkpoint.pt`; rank 0 then writes `checkpoint.pt` atomically
with the step, metrics, config and the name of that directory, so a kill at any moment leaves a
checkpoint.pt naming complete shards. DCP reshards on load, so an `fsdp` run resumes at another
number of processes, and `evaluate`/`generate` read its model in one process.
"""

import os
import shutil
import warnings
from collections.abc import Generator, Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from src.checkpoints import CheckpointError
from src.config import TrainConfig
from src.validation import ConfigError

SHARDS_PREFIX = "checkpoint-step"  # + the step: the DCP directory of an fsdp checkpoint


def launched_rank() -> int:
    """This process's rank as torchrun set it (0 when not started by torchrun)."""
    return int(os.environ.get("RANK", 0))


@dataclass(frozen=True)
class Processes:
    """The processes of one run, seen from one of them."""

    parallel: str
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, writes metrics and writes checkpoint files."""
        return self.rank == 0

    def rows(self, batch: torch.Tensor) -> torch.Tensor:
        """This process's share of a global batch: rows [rank * b / n, (rank + 1) * b / n)."""
        size = batch.shape[0] // self.world_size
        return batch[self.rank * size : (self.rank + 1) * size]

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of `tensor` over the processes (the tensor itself in one process)."""
        if self.parallel == "none":
            return tensor
        total = tensor.detach().clone()
        dist.all_reduce(total)
        return total

    def mean(self, tensor: torch.Tensor) -> float:
        """The mean of a scalar over the processes."""
        return (self.sum(tensor) / self.world_size).item()

    def all_finite(self, parameters: Iterable[torch.Tensor]) -> bool:
        """Whether every parameter is finite on every process (each process checks its own shards)."""
        if self.parallel == "fsdp":
            from torch.distributed.tensor import DTensor

            parameters = (p.to_local() if isinstance(p, DTensor) else p for p in parameters)
        non_finite = sum(not torch.isfinite(parameter).all() for parameter in parameters)
        return self.sum(torch.tensor(float(non_finite), device=self.device)).item() == 0

    def wrap(self, objective: nn.Module, blocks: Iterable[nn.Module]) -> nn.Module:
        """The module to train: `objective` itself, in DDP, or sharded by FSDP2 (each block, then the root).

        Under FSDP2 the module is changed in place: its parameters become DTensor shards, so the
        optimizer must be built after this call.
        """
        if self.parallel == "ddp":
            device_ids = [self.device] if self.device.type == "cuda" else None
            return DistributedDataParallel(objective, device_ids=device_ids)
        if self.parallel == "fsdp":
            from torch.distributed.fsdp import fully_shard

            for block in blocks:
                fully_shard(block)
            fully_shard(objective)
        return objective

    def barrier(self) -> None:
        if self.parallel != "none":
            dist.barrier()


def _torchrun_environment() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) from torchrun's variables, None when they are not set."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    rank = int(os.environ["RANK"])
    return rank, int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", rank))


def _device(device: torch.device, local_rank: int, file: str) -> torch.device:
    """The device of this process: on CUDA, GPU number LOCAL_RANK."""
    if device.type != "cuda":
        return device
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise ConfigError(
            f"{file}: key 'train.device' is 'cuda', but this is process {local_rank} of this machine, "
            f"which has {count} GPUs (start at most {count} processes per machine)"
        )
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


@contextmanager
def processes(train: TrainConfig, file: str, device: torch.device) -> Generator[Processes]:
    """Join the run's processes (the process group for `ddp`/`fsdp`); leave the group on exit.

    Refused before anything is communicated: several processes with `train.parallel: none` (each
    would train alone and write the same files), and a `train.batch_size` that the number of
    processes does not divide.
    """
    environment = _torchrun_environment()
    rank, world_size, local_rank = environment or (0, 1, 0)
    if train.parallel == "none":
        if world_size > 1:
            raise ConfigError(
                f"{file}: key 'train.parallel' is 'none', but torchrun started {world_size} processes; "
                "set it to 'ddp' or 'fsdp'"
            )
        yield Processes("none", 0, 1, device)
        return
    if train.batch_size % world_size:
        raise ConfigError(
            f"{file}: key 'train.batch_size' ({train.batch_size}) must be divisible by the number of "
            f"processes ({world_size}): it is the global batch, split evenly over them"
        )
    device = _device(device, local_rank, file)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if environment is None:  # a group of one, without torchrun's rendezvous
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    else:
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    try:
        yield Processes(train.parallel, rank, world_size, device)
        dist.barrier()  # every process is done with the run's files before any leaves
    finally:
        dist.destroy_process_group()


def shards_name(step: int) -> str:
    """The DCP directory of the fsdp checkpoint of `step`, relative to the run directory."""
    return f"{SHARDS_PREFIX}{step}"


def _dcp_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Model and optimizer state keyed by parameter name (DTensor shards), as DCP saves and loads it."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optimizer": optimizer_state}


def save_shards(out_dir: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, main: bool) -> str:
    """Every process writes its shards of model and optimizer to `out_dir/checkpoint-step<step>`; returns the name.

    A directory of that name left by a killed run is removed first (by rank 0, `main`).
    """
    import torch.distributed.checkpoint as dcp

    name = shards_name(step)
    if main:
        shutil.rmtree(out_dir / name, ignore_errors=True)
    dist.barrier()
    dcp.save(_dcp_state(model, optimizer), checkpoint_id=out_dir / name)
    return name


def remove_other_shards(out_dir: Path, keep: set[str]) -> None:
    """Delete the shard directories of earlier checkpoints (and of killed runs), all but those named in `keep`."""
    for path in out_dir.glob(f"{SHARDS_PREFIX}*"):
        if path.is_dir() and path.name not in keep:
            shutil.rmtree(path)


def _shards_path(checkpoint_path: Path, checkpoint: dict) -> Path:
    shards = checkpoint_path.parent / checkpoint["shards"]
    if not (shards / ".metadata").is_file():
        raise CheckpointError(f"{checkpoint_path}: its shards {shards} are missing (no DCP .metadata there)")
    return shards


def load_shards(model: nn.Module, optimizer: torch.optim.Optimizer, checkpoint: dict, checkpoint_path: Path) -> None:
    """Load the fsdp checkpoint that `checkpoint` (read from `checkpoint_path`) names, at any number of processes."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    shards = _shards_path(checkpoint_path, checkpoint)
    state = _dcp_state(model, optimizer)
    try:
        dcp.load(state, checkpoint_id=shards)
    except Exception as error:  # DCP raises CheckpointException (wrapping each rank's) for any misfit
        raise CheckpointError(f"{shards}: its shards do not fit the model and optimizer: {error}") from error
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def load_sharded_model(model: nn.Module, checkpoint: dict, checkpoint_path: Path) -> None:
    """Load only the model of an fsdp checkpoint into an unsharded model, in one process (DCP reshards)."""
    import torch.distributed.checkpoint as dcp

    shards = _shards_path(checkpoint_path, checkpoint)
    state = {"model": model.state_dict()}
    try:
        with warnings.catch_warnings():  # DCP warns that it loads in one process, which is the intent here
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(state, checkpoint_id=shards)
    except Exception as error:
        raise CheckpointError(f"{shards}: its shards do not fit the model: {error}") from error
    model.load_state_dict(state["model"])
