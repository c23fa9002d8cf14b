"""The fused selective scan (Mamba Eq. 2a-2b) as torch.library operators, without importing Triton.

Paper: Mamba (Gu & Dao 2023, arXiv:2312.00752), Sec. 3.3.2 (hardware-aware scan: the state lives in
fast memory and is recomputed for backward).

`memory_models::selective_scan` is one operator per scan: its fake (meta) form allocates what the
Triton kernel of `src.kernels.selective_scan` returns (the output, the last state, and the states at
every CHUNK-th step that backward recomputes from), and its autograd formula allocates what the
backward kernel writes (the gradients, per-program partial sums of dA, dB, dC, dD and d bias, and the
recomputation buffer) before `memory_models::selective_scan_backward` fills them in place. So a fake
step (`src.estimate`) or a trace sees one operator per scan and the fused kernel's memory, on a machine
without a GPU or Triton; the kernels themselves are registered for CUDA (and CPU, run by Triton's
interpreter) when `src.kernels.selective_scan` is imported.
"""

import torch

from src.layers._checks import check_selective_scan_arguments

CHUNK = 64  # steps between saved states: backward recomputes at most CHUNK states per program

FORWARD = "memory_models::selective_scan"
BACKWARD = "memory_models::selective_scan_backward"
_INPUTS = "Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, Tensor? delta_bias"
torch.library.define(FORWARD, f"({_INPUTS}, bool delta_softplus, Tensor? h0) -> (Tensor, Tensor, Tensor)")
torch.library.define(
    BACKWARD,
    f"({_INPUTS}, bool delta_softplus, Tensor states, Tensor dout, Tensor? dlast, Tensor(a!) du, "
    "Tensor(b!) ddelta, Tensor(c!)? dz, Tensor(d!) dA_part, Tensor(e!) dB_part, Tensor(f!) dC_part, "
    "Tensor(g!)? dD_part, Tensor(h!)? dbias_part, Tensor(i!) dh0, Tensor(j!) buffer) -> ()",
)


def _next_power_of_2(n: int) -> int:
    return 1 << (n - 1).bit_length()


def launch_sizes(batch: int, dim: int, N: int) -> tuple[int, int, int]:
    """(BLOCK_D, BLOCK_N, num_warps): channels and states per program of the kernels, and its warps.

    Each program walks the sequence step after step, so many small programs hide each other's
    latency. Chosen from a sweep on an H100 at d 1536, N 16, L 2048 (fastest forward + backward:
    4 channels and 1 warp at batch 1, 8 channels and 2 warps at batch 4); unrolling the step loop
    by 8 gave nothing there.
    """
    BLOCK_D, num_warps = (4, 1) if batch * dim <= 2048 else (8, 2)
    return min(BLOCK_D, _next_power_of_2(dim)), _next_power_of_2(N), num_warps


def forward_outputs(u: torch.Tensor, A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The forward kernel's outputs, unfilled: out (b, d, l), last state (b, d, N), chunk states (b, n_c, d, N)."""
    batch, dim, L = u.shape
    n_chunks = -(-L // CHUNK)
    return torch.empty_like(u), u.new_empty(batch, dim, A.shape[1]), u.new_empty(batch, n_chunks, dim, A.shape[1])


@torch.library.register_fake(FORWARD)
def _forward_fake(u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0):
    return forward_outputs(u, A)


@torch.library.register_fake(BACKWARD)
def _backward_fake(*args):
    return None  # it only writes into tensors its caller allocated


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0 = inputs
    states = output[2]
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, states)
    ctx.delta_softplus, ctx.has_h0 = delta_softplus, h0 is not None
    ctx.mark_non_differentiable(states)


def _backward(ctx, dout, dlast, _dstates):
    u, delta, A, B, C, D, z, delta_bias, states = ctx.saved_tensors
    batch, dim, L = u.shape
    N = A.shape[1]
    BLOCK_D, BLOCK_N, _ = launch_sizes(batch, dim, N)
    n_blocks = -(-dim // BLOCK_D)
    du, ddelta = torch.empty_like(u), torch.empty_like(delta)
    dz = torch.empty_like(z) if z is not None else None
    dA_part = u.new_empty(batch, dim, N)
    dB_part, dC_part = u.new_zeros(batch, n_blocks, N, L), u.new_zeros(batch, n_blocks, N, L)
    dD_part = u.new_empty(batch, dim) if D is not None else None
    dbias_part = u.new_empty(batch, dim) if delta_bias is not None else None
    dh0 = u.new_empty(batch, dim, N)
    buffer = u.new_empty(batch, n_blocks, CHUNK + 1, BLOCK_D, BLOCK_N)
    torch.ops.memory_models.selective_scan_backward(
        u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, states, dout.contiguous(),
        dlast.contiguous() if dlast is not None else None,
        du, ddelta, dz, dA_part, dB_part, dC_part, dD_part, dbias_part, dh0, buffer,
    )  # fmt: skip
    return (
        du,
        ddelta,
        dA_part.sum(0),
        dB_part.sum(1),
        dC_part.sum(1),
        dD_part.sum(0) if D is not None else None,
        dz,
        dbias_part.sum(0) if delta_bias is not None else None,
        None,
        dh0 if ctx.has_h0 else None,
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
):
    r"""Mamba Eq. (2a)-(2b) through the `memory_models::selective_scan` operator (module docstring).

    .. math::
        h_t = \exp(\Delta_t A) h_{t-1} + \Delta_t B_t x_t, \qquad
        \mathrm{out}_t = (C_t h_t + D x_t) \odot \mathrm{SiLU}(z_t)

    Same arguments, shapes and result as `selective_scan_sequential`. Real tensors need the kernels
    registered (`src.kernels.selective_scan.selective_scan_triton` imports and calls this); fake ones
    need only this module.

    Args:
        u: (b, d, l) input x.
        delta: (b, d, l) Δ, or s_Δ(x) when `delta_softplus` (then Δ = softplus(delta + delta_bias)).
        A: (d, N) real diagonal state matrix.
        B, C: (b, N, l) input-dependent B_t and C_t.
        D: (d,) skip weights, or None.
        z: (b, d, l) gate input, or None.
        delta_bias: (d,) added to delta, or None.
        delta_softplus: apply softplus to delta + delta_bias.
        return_last_state: also return h_l.
        initial_state: (b, d, N) h_0, or None for zeros.

    Returns:
        (b, d, l) output, and (b, d, N) last state when `return_last_state`.
    """
    check_selective_scan_arguments(u, delta, A, B, C, D, z, delta_bias, initial_state)
    args = [None if t is None else t.contiguous() for t in (u, delta, A, B, C, D, z, delta_bias)]
    h0 = None if initial_state is None else initial_state.contiguous()
    out, last, _ = torch.ops.memory_models.selective_scan(*args, delta_softplus, h0)
    return (out, last) if return_last_state else out
