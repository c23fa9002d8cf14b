"""The selective scan (Mamba Eq. 2a-2b) as two time-parallel Triton kernels, forward and backward.

Paper: Mamba (Gu & Dao 2023, arXiv:2312.00752), Sec. 2, Eq. (2a)-(2b) and Sec. 3.3.2 (hardware-aware
scan: the state is kept in fast memory, never written per step, and recomputed for backward).
Design as the official CUDA kernel (state-spaces/mamba, `csrc/selective_scan`): one program per
(batch, block of channels) walks the sequence in chunks of CHUNK_SIZE steps and, for each state n,
scans the chunk in parallel: h_t = Ā_t h_{t-1} + B̄_t x_t is the composition of the affine maps
(Ā_t, B̄_t x_t), an associative operation (Blelloch 1990, "Prefix sums and their applications",
Sec. 1.4: first-order recurrences), so `tl.associative_scan` gives every h_t of the chunk from zero and
h_t = (Π Ā) h_start + (scanned input) adds the state carried from the previous chunk. softplus(Δ + bias),
exp(ΔA), B̄ = ΔB, y = C h, the D skip and the SiLU(z) gate are fused; h is written only at chunk
starts. The backward kernel walks the chunks in reverse: it rescans the chunk's states from its saved
start state and runs the adjoint recurrence λ_t = C_t dy_t + Ā_{t+1} λ_{t+1} as a reverse scan of the
same kind, carrying dL/dh at the chunk's start into the chunk before. Ā_t h_{t-1} = h_t - B̄_t x_t, so
no shifted state is needed. dB and dC are summed over the program's channels and added atomically
(as the official kernel does), so their last bits depend on the order programs finish in.

Inputs u, Δ, B, C, z may be float32, bfloat16 or float16 with float32 A, D, Δ bias and state (the
official kernel's dtype rules), or all float64; everything is computed in the state's dtype and the
output is written in the inputs' dtype. The kernels are the CUDA (and interpreted CPU) implementations
of the `memory_models::selective_scan` operators of `src.kernels.selective_scan_op`, which allocates
their outputs and holds the fake forms and the autograd formula. Channels per program and warps are
autotuned on CUDA (the CHUNK_SIZE, which fixes the saved states' shape, is not).

Tensors on a CUDA device run the compiled kernels. With TRITON_INTERPRET=1 in the environment before
triton is imported, the same kernels run in Triton's interpreter on CPU tensors, which is how the
tests check them without a GPU (tests/conftest.py sets it on machines without CUDA).
`selective_scan_triton` equals `src.layers.selective_ssm.selective_scan_sequential` (the literal
recurrence, the reference) in value and in every gradient.
"""

import os
from collections.abc import Callable
from typing import Any

import torch
import triton
import triton.language as tl

from src.kernels.selective_scan_op import BACKWARD, FORWARD, MAX_CHUNK, forward_outputs, selective_scan_fused

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def _configs() -> list[triton.Config]:
    """Channels per program and warps to autotune: at the full chunk each holds 8 values of a tile per
    thread, within the registers without spilling; from many small programs to few large ones. One
    under the interpreter, where timing means nothing."""
    if INTERPRETED:
        return [triton.Config({"BLOCK_D": 2}, num_warps=1)]
    return [triton.Config({"BLOCK_D": d}, num_warps=w) for d, w in ((1, 2), (2, 4), (4, 8))]


def _prune(configs: list[triton.Config], named_args: dict[str, Any], **kwargs: Any) -> list[triton.Config]:
    """All configs at the full chunk (training, long prompts); the first alone for a shorter sequence,
    whose chunk is its length: no compile and timing per new prompt length."""
    return configs if kwargs["CHUNK_SIZE"] == MAX_CHUNK else configs[:1]


@triton.jit
def _compose(a_first, b_first, a_then, b_then):
    """The affine map x -> a_then (a_first x + b_first) + b_then: one step of h = Ā h + B̄ x after another."""
    return a_first * a_then, a_then * b_first + b_then


@triton.jit
def _column(tile, columns, j):
    """tile[:, j] of a (rows, columns) tile, by a masked sum (register tiles cannot be indexed)."""
    return tl.sum(tl.where(columns[None, :] == j, tile, 0.0), axis=1)


@triton.jit
def _step_sizes(raw, mask, bias_d, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """(Δ before τ_Δ, Δ) of a tile of delta; Δ = 0 where masked, so Ā = 1 and B̄ = 0 there."""
    if HAS_BIAS:
        raw += bias_d[:, None]
    # τ_Δ = softplus, linear above 20 as torch's
    dt = tl.where(raw > 20.0, raw, tl.log(1.0 + tl.exp(raw))) if SOFTPLUS else raw
    return raw, tl.where(mask, dt, 0.0)


# Tuned per batch too (an argument only for that): the best tile differs with the number of programs.
TUNED_FOR = ["batch", "dim", "N", "CHUNK_SIZE"]


@triton.autotune(configs=_configs(), key=TUNED_FOR, prune_configs_by={"early_config_prune": _prune})
@triton.jit(do_not_specialize=["batch"])
def _scan_forward(
    u, delta, A, B, C, D, z, bias, h0, out, states, last,
    batch, L, dim, N, n_chunks,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, CHUNK_SIZE: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    n_idx = tl.arange(0, BLOCK_N)
    steps = tl.arange(0, CHUNK_SIZE)
    d_in = d < dim
    dn_in = d_in[:, None] & (n_idx < N)[None, :]
    dn = d[:, None] * N + n_idx[None, :]
    A_dn = tl.load(A + dn, mask=dn_in, other=0.0)
    f = A_dn.dtype  # the state's dtype: float32, or float64
    # zeros, never read, without D (HAS_D is a compile-time constant: the branch is compiled out), so that D_d is
    # a (BLOCK_D,) tile on both branches and its uses under `if HAS_D:` type-check
    D_d = tl.load(D + d, mask=d_in, other=0.0) if HAS_D else tl.zeros((BLOCK_D,), dtype=f)
    bias_d = tl.load(bias + d, mask=d_in, other=0.0) if HAS_BIAS else None
    h = tl.load(h0 + b * dim * N + dn, mask=dn_in, other=0.0) if HAS_H0 else tl.zeros((BLOCK_D, BLOCK_N), dtype=f)
    for c in range(0, n_chunks):
        t = c * CHUNK_SIZE + steps
        t_in = t < L
        mask = d_in[:, None] & t_in[None, :]
        offsets = (b * dim + d)[:, None] * L + t[None, :]  # u, delta, z, out: (b, d, l)
        u_t = tl.load(u + offsets, mask=mask, other=0.0).to(f)
        _, dt = _step_sizes(tl.load(delta + offsets, mask=mask, other=0.0).to(f), mask, bias_d, HAS_BIAS, SOFTPLUS)
        dt_u = dt * u_t
        tl.store(states + (b * n_chunks + c) * dim * N + dn, h, mask=dn_in)  # for backward
        y = tl.zeros((BLOCK_D, CHUNK_SIZE), dtype=f)
        for n in range(0, N):
            A_n = tl.load(A + d * N + n, mask=d_in, other=0.0)
            B_n = tl.load(B + (b * N + n) * L + t, mask=t_in, other=0.0).to(f)
            C_n = tl.load(C + (b * N + n) * L + t, mask=t_in, other=0.0).to(f)
            decay, h_local = tl.associative_scan((tl.exp(dt * A_n[:, None]), dt_u * B_n[None, :]), 1, _compose)
            h_n = decay * _column(h, n_idx, n)[:, None] + h_local  # Eq. (2a), all steps of the chunk
            y += h_n * C_n[None, :]  # Eq. (2b)
            h = tl.where(n_idx[None, :] == n, _column(h_n, steps, CHUNK_SIZE - 1)[:, None], h)
        if HAS_D:
            y += D_d[:, None] * u_t
        if HAS_Z:
            z_t = tl.load(z + offsets, mask=mask, other=0.0).to(f)
            y = y * z_t * tl.sigmoid(z_t)
        tl.store(out + offsets, y, mask=mask)
    tl.store(last + b * dim * N + dn, h, mask=dn_in)


@triton.autotune(
    configs=_configs(),
    key=TUNED_FOR,
    prune_configs_by={"early_config_prune": _prune},
    reset_to_zero=["dB", "dC"],  # atomically accumulated: each timing run starts from zero
)
@triton.jit(do_not_specialize=["batch"])
def _scan_backward(
    u, delta, A, B, C, D, z, bias, states, dout, dlast,
    du, ddelta, dz, dA_part, dB, dC, dD_part, dbias_part, dh0,
    batch, L, dim, N, n_chunks,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_DLAST: tl.constexpr, CHUNK_SIZE: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    n_idx = tl.arange(0, BLOCK_N)
    steps = tl.arange(0, CHUNK_SIZE)
    d_in = d < dim
    dn_in = d_in[:, None] & (n_idx < N)[None, :]
    dn = d[:, None] * N + n_idx[None, :]
    A_dn = tl.load(A + dn, mask=dn_in, other=0.0)
    f = A_dn.dtype
    # zeros, never read, without D (HAS_D is a compile-time constant: the branch is compiled out), so that D_d is
    # a (BLOCK_D,) tile on both branches and its uses under `if HAS_D:` type-check
    D_d = tl.load(D + d, mask=d_in, other=0.0) if HAS_D else tl.zeros((BLOCK_D,), dtype=f)
    bias_d = tl.load(bias + d, mask=d_in, other=0.0) if HAS_BIAS else None
    # carried: dL/dh at the state before the chunk (from later chunks, or the last state's gradient)
    carried = tl.load(dlast + b * dim * N + dn, mask=dn_in, other=0.0) if HAS_DLAST else tl.zeros_like(A_dn)
    dA_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=f)
    dD_acc = tl.zeros((BLOCK_D,), dtype=f)
    dbias_acc = tl.zeros((BLOCK_D,), dtype=f)
    for c_reversed in range(0, n_chunks):
        c = n_chunks - 1 - c_reversed
        t = c * CHUNK_SIZE + steps
        t_in = t < L
        mask = d_in[:, None] & t_in[None, :]
        offsets = (b * dim + d)[:, None] * L + t[None, :]
        u_t = tl.load(u + offsets, mask=mask, other=0.0).to(f)
        raw, dt = _step_sizes(tl.load(delta + offsets, mask=mask, other=0.0).to(f), mask, bias_d, HAS_BIAS, SOFTPLUS)
        # Δ_{t+1} inside the chunk; 0 (Ā = 1) at its last step, where the carried adjoint enters
        next_in = mask & (steps < CHUNK_SIZE - 1)[None, :] & (t + 1 < L)[None, :]
        raw_next = tl.load(delta + offsets + 1, mask=next_in, other=0.0).to(f)
        _, dt_next = _step_sizes(raw_next, next_in, bias_d, HAS_BIAS, SOFTPLUS)
        dt_u = dt * u_t
        dy = tl.load(dout + offsets, mask=mask, other=0.0).to(f)
        if HAS_Z:  # out = (y + D u) SiLU(z)
            z_t = tl.load(z + offsets, mask=mask, other=0.0).to(f)
            sig = tl.sigmoid(z_t)
            gate_grad = dy * sig * (1.0 + z_t * (1.0 - sig))
            dy = dy * z_t * sig
        y = tl.zeros((BLOCK_D, CHUNK_SIZE), dtype=f)
        ddt = tl.zeros((BLOCK_D, CHUNK_SIZE), dtype=f)
        du_t = tl.zeros((BLOCK_D, CHUNK_SIZE), dtype=f)
        for n in range(0, N):
            A_n = tl.load(A + d * N + n, mask=d_in, other=0.0)
            B_n = tl.load(B + (b * N + n) * L + t, mask=t_in, other=0.0).to(f)
            C_n = tl.load(C + (b * N + n) * L + t, mask=t_in, other=0.0).to(f)
            h_start = tl.load(states + ((b * n_chunks + c) * dim + d) * N + n, mask=d_in, other=0.0)
            A_bar = tl.exp(dt * A_n[:, None])
            input_n = dt_u * B_n[None, :]  # B̄_t x_t
            decay, h_local = tl.associative_scan((A_bar, input_n), 1, _compose)
            h_n = decay * h_start[:, None] + h_local
            # λ_t = C_t dy_t + Ā_{t+1} λ_{t+1}: the same composition, scanned from the chunk's end
            decay_back, lam_local = tl.associative_scan(
                (tl.exp(dt_next * A_n[:, None]), dy * C_n[None, :]), 1, _compose, reverse=True
            )
            lam = lam_local + decay_back * _column(carried, n_idx, n)[:, None]
            through_decay = lam * (h_n - input_n)  # λ_t Ā_t h_{t-1}
            dA_acc += tl.where(n_idx[None, :] == n, tl.sum(through_decay * dt, axis=1)[:, None], 0.0)
            lam_B = lam * B_n[None, :]
            ddt += through_decay * A_n[:, None] + lam_B * u_t
            du_t += lam_B * dt
            tl.atomic_add(dB + (b * N + n) * L + t, tl.sum(lam * dt_u, axis=0), mask=t_in)
            tl.atomic_add(dC + (b * N + n) * L + t, tl.sum(dy * h_n, axis=0), mask=t_in)
            if HAS_Z:
                y += h_n * C_n[None, :]
            into_start = _column(A_bar * lam, steps, 0)  # dL/dh before the chunk: Ā_{t0} λ_{t0}
            carried = tl.where(n_idx[None, :] == n, into_start[:, None], carried)
        if HAS_D:
            dD_acc += tl.sum(dy * u_t, axis=1)
            du_t += dy * D_d[:, None]
        if HAS_Z:
            if HAS_D:
                y += D_d[:, None] * u_t
            tl.store(dz + offsets, gate_grad * y, mask=mask)
        if SOFTPLUS:
            ddt = ddt * tl.sigmoid(raw)
        ddt = tl.where(mask, ddt, 0.0)
        dbias_acc += tl.sum(ddt, axis=1)
        tl.store(du + offsets, du_t, mask=mask)
        tl.store(ddelta + offsets, ddt, mask=mask)
    tl.store(dh0 + b * dim * N + dn, carried, mask=dn_in)
    tl.store(dA_part + b * dim * N + dn, dA_acc, mask=dn_in)
    if HAS_D:
        tl.store(dD_part + b * dim + d, dD_acc, mask=d_in)
    if HAS_BIAS:
        tl.store(dbias_part + b * dim + d, dbias_acc, mask=d_in)


def check_device(device: torch.device) -> None:
    if device.type != "cuda" and not (device.type == "cpu" and INTERPRETED):
        raise ValueError(
            f"selective_scan_triton needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1 set before "
            f"triton is imported, for Triton's interpreter), got tensors on {device}"
        )


def _grid(batch: int, dim: int) -> Callable[[dict[str, Any]], tuple[int, int]]:
    return lambda meta: (batch, triton.cdiv(dim, meta["BLOCK_D"]))


@torch.library.register_kernel(FORWARD, ("cuda", "cpu"))
def _forward(
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
    check_device(u.device)
    batch, dim, L = u.shape
    N = A.shape[1]
    out, last, states = forward_outputs(u, A, chunk_size)
    _scan_forward[_grid(batch, dim)](
        u, delta, A, B, C, D, z, delta_bias, h0, out, states, last, batch, L, dim, N, states.shape[1],
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
        HAS_H0=h0 is not None, CHUNK_SIZE=chunk_size, BLOCK_N=triton.next_power_of_2(N),
    )  # fmt: skip
    return out, last, states


@torch.library.register_kernel(BACKWARD, ("cuda", "cpu"))
def _backward(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
    chunk_size: int,
    states: torch.Tensor,
    dout: torch.Tensor,
    dlast: torch.Tensor | None,
    du: torch.Tensor,
    ddelta: torch.Tensor,
    dz: torch.Tensor | None,
    dA_part: torch.Tensor,
    dB: torch.Tensor,
    dC: torch.Tensor,
    dD_part: torch.Tensor | None,
    dbias_part: torch.Tensor | None,
    dh0: torch.Tensor,
) -> None:
    check_device(u.device)
    batch, dim, L = u.shape
    N = A.shape[1]
    _scan_backward[_grid(batch, dim)](
        u, delta, A, B, C, D, z, delta_bias, states, dout, dlast,
        du, ddelta, dz, dA_part, dB, dC, dD_part, dbias_part, dh0,
        batch, L, dim, N, states.shape[1],
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
        HAS_DLAST=dlast is not None, CHUNK_SIZE=chunk_size, BLOCK_N=triton.next_power_of_2(N),
    )  # fmt: skip


def selective_scan_triton(
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
    """Fast form of Mamba Eq. (2a)-(2b): `selective_scan_fused` (same arguments, shapes and result) run by
    the kernels above, on CUDA tensors or, under Triton's interpreter, CPU ones. Tested equal to
    `selective_scan_sequential` (the literal recurrence) in value and in every gradient."""
    check_device(u.device)
    return selective_scan_fused(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, initial_state, chunk_size
    )  # fmt: skip
