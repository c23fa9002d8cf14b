"""Files that survive a kill: atomic writes, and loads whose every failure names the file.

`save` writes any torch-serialisable object, `load` reads a mapping back (`check_entries` checks
its entries); `load_state` puts a state dict into a module or optimizer. Every failure of reading
is a `CheckpointError` naming the path.

`write_atomically` writes to a temporary file beside the target, flushes and fsyncs it, renames it
onto the target with `os.replace` (atomic on POSIX and Windows) and fsyncs the directory so the
rename itself is durable. A process killed at any moment leaves the previous file or the new one,
never a partial one; at most a partial `.<name>.tmp` is left beside it, overwritten by the next
write. A write that fails (a full disk, no permission) removes its temporary file and raises a
`CheckpointError` naming the path and the free space. One writer per target at a time.
"""

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or not the structure asked for; the message names its path."""


def temporary_path(path: str | Path) -> Path:
    """Where `write_atomically` writes before the rename: `.<name>.tmp` in the same directory."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp")


def write_atomically(path: str | Path, write: Callable[[IO[bytes]], object]) -> None:
    """Replace `path` by what `write` puts into a binary file, atomically (see the module docstring)."""
    path = Path(path)
    temporary = temporary_path(path)
    try:
        with temporary.open("wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if isinstance(error, OSError | RuntimeError):  # torch.save reports a full disk as a RuntimeError
            raise CheckpointError(_not_written(path, error)) from error
        raise
    if os.name == "posix":  # a directory cannot be opened for fsync on Windows
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def _not_written(path: Path, error: BaseException) -> str:
    free = shutil.disk_usage(path.parent).free / 2**20
    return (
        f"{path}: could not be written ({_first_line(error)}; {free:,.0f} MiB free on its disk); the file "
        "there before is unchanged: make room (or fix the permissions), then run again (train: --resume)"
    )


def save(obj: Any, path: str | Path) -> None:
    """`torch.save(obj)` to `path` atomically."""
    write_atomically(path, lambda file: torch.save(obj, file))


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def load(path: str | Path, structure: dict[str, type], map_location: str | torch.device = "cpu") -> dict:
    """A dict saved by `save`, with at least the keys of `structure`, each of its type.

    Loaded with `weights_only=True` (tensors and plain containers; no code runs). A missing, empty,
    truncated or foreign file, or one of another structure, raises `CheckpointError` naming `path`.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint file there")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many types for a damaged file; each means "unreadable"
        raise CheckpointError(
            f"{path}: not a readable checkpoint (empty, truncated or not written by torch.save): {_first_line(error)}"
        ) from error
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: a checkpoint must hold a mapping, this one holds {type(obj).__name__}")
    check_entries(obj, structure, path)
    return obj


def check_entries(obj: dict, structure: dict[str, type], path: str | Path) -> None:
    """Require the keys of `structure` in a loaded checkpoint, each of its type (errors name `path`)."""
    for key, kind in structure.items():
        if key not in obj:
            raise CheckpointError(f"{path}: checkpoint has no '{key}' entry (it has {sorted(map(str, obj))})")
        if not isinstance(obj[key], kind) or (kind is int and isinstance(obj[key], bool)):
            raise CheckpointError(f"{path}: checkpoint entry '{key}' must be a {kind.__name__}")


def load_state(target: torch.nn.Module | torch.optim.Optimizer, state: dict, path: str | Path, what: str) -> None:
    """`target.load_state_dict(state)`; a state that does not fit raises `CheckpointError` naming `path`."""
    try:
        target.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{path}: its {what} state does not fit the {what}: {_first_line(error)}") from error
