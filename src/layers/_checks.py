"""Argument validation shared by the equation functions.

Every equation function checks its tensors through `check_shapes`, so a wrong shape or dtype
fails with an error that names the argument, the dimension and the expected layout, instead of
surfacing later as a broadcasting accident.
"""

import torch
from torch._subclasses.fake_tensor import FakeTensor


def check_shapes(**arguments: tuple[torch.Tensor | None, str]) -> dict[str, int]:
    """Check tensors against symbolic shapes and return the size bound to each symbol.

    Each keyword is an argument name mapped to `(tensor, spec)`; `spec` is a space-separated
    list of dimension symbols such as `"b d l"`, a literal size such as `"2"`, or a leading
    `"..."` that matches any number of leading dimensions (the same for every argument that
    uses it). A symbol must have the same size wherever it appears. `None` tensors are skipped
    (optional arguments). All tensors must be floating point and share one dtype.
    """
    sizes: dict[str, int] = {}
    leading: tuple[int, ...] | None = None
    dtype: tuple[str, torch.dtype] | None = None
    for name, (x, spec) in arguments.items():
        if x is None:
            continue
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not torch.is_floating_point(x):
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
        if dtype is None:
            dtype = (name, x.dtype)
        elif x.dtype != dtype[1]:
            raise TypeError(f"{name} has dtype {x.dtype} but {dtype[0]} has dtype {dtype[1]}")
        dims = spec.split()
        if dims and dims[0] == "...":
            dims = dims[1:]
            if x.dim() < len(dims):
                raise ValueError(f"{name} must have shape (..., {' '.join(dims)}), got {tuple(x.shape)}")
            head = tuple(x.shape[: x.dim() - len(dims)])
            if leading is None:
                leading = head
            elif head != leading:
                raise ValueError(f"{name} has leading dimensions {head}, expected {leading}")
            tail = x.shape[x.dim() - len(dims) :]
        else:
            if x.dim() != len(dims):
                raise ValueError(f"{name} must have shape ({spec}), got {tuple(x.shape)}")
            tail = x.shape
        for symbol, size in zip(dims, tail):
            if symbol.isdigit():
                if size != int(symbol):
                    raise ValueError(f"{name} must have shape ({spec}), got {tuple(x.shape)}")
            elif sizes.setdefault(symbol, size) != size:
                raise ValueError(
                    f"{name} has {symbol}={size} (shape {tuple(x.shape)}, expected ({spec})), "
                    f"but an earlier argument has {symbol}={sizes[symbol]}"
                )
    return sizes


def check_selective_scan_arguments(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    initial_state: torch.Tensor | None,
) -> None:
    """The argument checks every form of the selective scan shares: the PyTorch scans of
    `src.layers.selective_ssm` and the Triton kernel of `src.kernels.selective_scan` (Mamba,
    Algorithm 2's shapes in the official `selective_scan_ref` layout; None skips an optional one)."""
    check_shapes(
        u=(u, "b d l"),
        delta=(delta, "b d l"),
        A=(A, "d N"),
        B=(B, "b N l"),
        C=(C, "b N l"),
        D=(D, "d"),
        z=(z, "b d l"),
        delta_bias=(delta_bias, "d"),
        initial_state=(initial_state, "b d N"),
    )


def check_positive(name: str, value: float) -> None:
    """Raise a ValueError naming `name` unless `value` is a positive number."""
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {value}")


def has_values(x: torch.Tensor) -> bool:
    """False for a fake tensor (shapes without values, as `src.estimate` runs a model) and for any tensor
    while a CUDA graph is captured (reading a value would synchronise, which capture forbids): a check
    of the values, not the shape, is skipped then."""
    capturing = torch.cuda.is_initialized() and torch.cuda.is_current_stream_capturing()  # never initialises CUDA
    return not isinstance(x, FakeTensor) and not capturing
