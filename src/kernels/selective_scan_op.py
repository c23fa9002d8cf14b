"""The fused selective scan (Mamba Eq. 2a-2b) as torch.library operators, without importing Triton.

Paper: Mamba (Gu & Dao 2023, arXiv:2312.00752), Sec. 3.3.2 (hardware-aware scan: the state lives in
fast memory and is recomputed for backward).

`memory_models::selective_scan` is one operator per scan: its fake (meta) form allocates what the
Triton kernel of `src.kernels.selective_scan` returns (the output in the inputs' dtype, the last state,
and the states at the start of every chunk that backward rescans from, in the state's dtype), and its
autograd formula allocates what the backward kernel writes (the gradients, per-(batch, channel) partial
sums of dA, dD and d bias, and the dB, dC accumulators) before `memory_models::selective_scan_backward`
fills them in place. So a fake step (`src.estimate`) or a trace sees one operator per scan and the fused
kernel's memory, on a machine without a GPU or Triton; the kernels themselves are registered for CUDA
(and CPU, run by Triton's interpreter) when `src.kernels.selective_scan` is imported.

Dtypes as the official kernel's (`selective_scan_interface.py`): u, delta, B, C, z share one dtype
(float32, bfloat16 or float16; or float64), and A, D, delta_bias and the state are float32 (float64
with float64 inputs); the kernels compute in the state's dtype.
"""

from typing import Any

import torch

from src.layers._checks import check_shapes

# Steps per chunk at most. At 512 the kernels' tiles hold 8 values per thread without spilling registers
# (ptxas for sm_90 at 1-4 channels per program); the official kernel's chunks are 2,048 steps.
MAX_CHUNK = 512

FORWARD = "memory_models::selective_scan"
BACKWARD = "memory_models::selective_scan_backward"
_INPUTS = "Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, Tensor? delta_bias"
torch.library.define(
    FORWARD, f"({_INPUTS}, bool delta_softplus, Tensor? h0, int chunk_size) -> (Tensor, Tensor, Tensor)"
)
torch.library.define(
    BACKWARD,
    f"({_INPUTS}, bool delta_softplus, int chunk_size, Tensor states, Tensor dout, Tensor? dlast, "
    "Tensor(a!) du, Tensor(b!) ddelta, Tensor(c!)? dz, Tensor(d!) dA_part, Tensor(e!) dB, Tensor(f!) dC, "
    "Tensor(g!)? dD_part, Tensor(h!)? dbias_part, Tensor(i!) dh0) -> ()",
)

INPUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def state_dtype(input_dtype: torch.dtype) -> torch.dtype:
    """The dtype of A, D, delta_bias and the state for inputs of `input_dtype`: float64 for float64, else float32."""
    return torch.float64 if input_dtype == torch.float64 else torch.float32


def check_kernel_arguments(
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
    """Shapes as `check_selective_scan_arguments`; dtypes as the module docstring says."""
    sizes = check_shapes(u=(u, "b d l"), delta=(delta, "b d l"), B=(B, "b N l"), C=(C, "b N l"), z=(z, "b d l"))
    parameters = check_shapes(
        A=(A, "d N"), D=(D, "d"), delta_bias=(delta_bias, "d"), initial_state=(initial_state, "b d N")
    )
    for symbol, size in parameters.items():
        if sizes.get(symbol, size) != size:
            raise ValueError(
                f"A, D, delta_bias or initial_state has {symbol}={size}, but u, B or C has {sizes[symbol]}"
            )
    if u.dtype not in INPUT_DTYPES:
        raise TypeError(f"u has dtype {u.dtype}; the kernel takes {', '.join(map(str, INPUT_DTYPES))}")
    expected = state_dtype(u.dtype)
    if A.dtype != expected:
        raise TypeError(
            f"A has dtype {A.dtype}, but with u of dtype {u.dtype} A, D, delta_bias and initial_state must be "
            f"{expected} (the state's dtype)"
        )


def default_chunk_size(length: int) -> int:
    """Steps per chunk: the length's next power of two, at most MAX_CHUNK."""
    return min(MAX_CHUNK, 1 << (max(length, 1) - 1).bit_length())


def forward_outputs(
    u: torch.Tensor, A: torch.Tensor, chunk_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The forward kernel's outputs, unfilled: out (b, d, l), last state (b, d, N), chunk states (b, n_c, d, N)."""
    batch, dim, L = u.shape
    n_chunks = max(1, -(-L // chunk_size))
    last = A.new_empty(batch, dim, A.shape[1])
    return torch.empty_like(u), last, A.new_empty(batch, n_chunks, dim, A.shape[1])


@torch.library.register_fake(FORWARD)
def _forward_fake(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
    h0: torch.Tensor | None,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return forward_outputs(u, A, chunk_size)


@torch.library.register_fake(BACKWARD)
def _backward_fake(*args: object) -> None:
    return None  # it only writes into tensors its caller allocated


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0, chunk_size = inputs
    states = output[2]
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, states)
    ctx.delta_softplus, ctx.has_h0, ctx.chunk_size = delta_softplus, h0 is not None, chunk_size
    ctx.mark_non_differentiable(states)


def _backward(
    ctx: Any, dout: torch.Tensor, dlast: torch.Tensor | None, _dstates: torch.Tensor | None
) -> tuple[torch.Tensor | None, ...]:
    u, delta, A, B, C, D, z, delta_bias, states = ctx.saved_tensors
    batch, dim, L = u.shape
    N = A.shape[1]
    du, ddelta = torch.empty_like(u), torch.empty_like(delta)
    dz = torch.empty_like(z) if z is not None else None
    dA_part = A.new_empty(batch, dim, N)
    dB, dC = A.new_zeros(batch, N, L), A.new_zeros(batch, N, L)  # atomically accumulated in the state's dtype
    dD_part = A.new_empty(batch, dim) if D is not None else None
    dbias_part = A.new_empty(batch, dim) if delta_bias is not None else None
    dh0 = A.new_empty(batch, dim, N)
    torch.ops.memory_models.selective_scan_backward(
        u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, ctx.chunk_size, states, dout.contiguous(),
        dlast.contiguous() if dlast is not None else None,
        du, ddelta, dz, dA_part, dB, dC, dD_part, dbias_part, dh0,
    )  # fmt: skip
    return (
        du,
        ddelta,
        dA_part.sum(0),
        dB.to(B.dtype),
        dC.to(C.dtype),
        dD_part.sum(0) if dD_part is not None else None,
        dz,
        dbias_part.sum(0) if dbias_part is not None else None,
        None,
        dh0 if ctx.has_h0 else None,
        None,
    )


torch.library.register_autograd(FORWARD, _backward, setup_context=_setup_context)


def selective_scan_fused(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    initial_state: torch.Tensor | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    r"""Mamba Eq. (2a)-(2b) through the `memory_models::selective_scan` operator (module docstring).

    .. math::
        h_t = \exp(\Delta_t A) h_{t-1} + \Delta_t B_t x_t, \qquad
        \mathrm{out}_t = (C_t h_t + D x_t) \odot \mathrm{SiLU}(z_t)

    Same arguments, shapes and result as `selective_scan_sequential`, with the official kernel's
    dtypes (module docstring). Real tensors need the kernels registered
    (`src.kernels.selective_scan.selective_scan_triton` imports and calls this); fake ones need only
    this module.

    Args:
        u: (b, d, l) input x.
        delta: (b, d, l) Δ, or s_Δ(x) when `delta_softplus` (then Δ = softplus(delta + delta_bias)).
        A: (d, N) real diagonal state matrix.
        B, C: (b, N, l) input-dependent B_t and C_t.
        D: (d,) skip weights, or None.
        z: (b, d, l) gate input, or None.
        delta_bias: (d,) added to delta, or None.
        delta_softplus: apply softplus to delta + delta_bias.
        return_last_state: also return h_l (in the state's dtype).
        initial_state: (b, d, N) h_0, or None for zeros.
        chunk_size: steps each kernel program scans in parallel, a power of two (`default_chunk_size`
            when None); the states at chunk starts are kept for backward.

    Returns:
        (b, d, l) output in u's dtype, and (b, d, N) last state when `return_last_state`.
    """
    check_kernel_arguments(u, delta, A, B, C, D, z, delta_bias, initial_state)
    T = default_chunk_size(u.shape[-1]) if chunk_size is None else chunk_size
    if T < 1 or T & (T - 1):
        raise ValueError(f"chunk_size must be a power of two, got {chunk_size}")
    args = [None if t is None else t.contiguous() for t in (u, delta, A, B, C, D, z, delta_bias)]
    h0 = None if initial_state is None else initial_state.contiguous()
    out, last, _ = torch.ops.memory_models.selective_scan(*args, delta_softplus, h0, T)
    return (out, last) if return_last_state else out
