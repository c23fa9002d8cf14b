"""The selective scan (Mamba Eq. 2a-2b) as two fused Triton kernels, forward and backward.

Paper: Mamba (Gu & Dao 2023, arXiv:2312.00752), Sec. 2, Eq. (2a)-(2b) and Sec. 3.3.2 (hardware-aware
scan: the state is kept in fast memory, never written per step, and recomputed for backward).
Design as the official CUDA kernel (state-spaces/mamba, `csrc/selective_scan`): one program per
(batch, block of channels) holds h (block x N) in registers and streams over the sequence with
softplus(Δ + bias), the discretisation exp(ΔA) and B̄ = ΔB, y = C h, the D skip and the SiLU(z)
gate fused; it writes h only at chunk boundaries. The backward kernel walks the chunks in reverse:
it recomputes the chunk's states from its boundary state into a small per-program buffer, then
runs the adjoint recurrence g_{t-1} = Ā_t g_t (+ C_t dy_{t-1}) backwards through the chunk.
Reductions over channels (dB, dC) are written per program and summed afterwards, so the result
does not depend on the order programs run in. The kernels are the CUDA (and interpreted CPU)
implementations of the `memory_models::selective_scan` operators of `src.kernels.selective_scan_op`,
which allocates their outputs and holds the fake forms and the autograd formula.

Tensors on a CUDA device run the compiled kernels. With TRITON_INTERPRET=1 in the environment before
triton is imported, the same kernels run in Triton's interpreter on CPU tensors, which is how the
tests check them without a GPU (tests/conftest.py sets it on machines without CUDA).
`selective_scan_triton` equals `src.layers.selective_ssm.selective_scan_sequential` (the literal
recurrence, the reference) in value and in every gradient.
"""

import os

import torch
import triton
import triton.language as tl

from src.kernels.selective_scan_op import BACKWARD, CHUNK, FORWARD, forward_outputs, launch_sizes, selective_scan_fused


@triton.jit
def _scan_forward(
    u, delta, A, B, C, D, z, bias, h0, out, states, last,
    L, dim, N, n_chunks,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, CHUNK_SIZE: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    d_in, n_in = d < dim, n < N
    dn_in = d_in[:, None] & n_in[None, :]
    dn = d[:, None] * N + n[None, :]
    A_dn = tl.load(A + dn, mask=dn_in, other=0.0)
    if HAS_D:
        D_d = tl.load(D + d, mask=d_in, other=0.0)
    if HAS_BIAS:
        bias_d = tl.load(bias + d, mask=d_in, other=0.0)
    if HAS_H0:
        h = tl.load(h0 + b * dim * N + dn, mask=dn_in, other=0.0)
    else:
        h = tl.zeros((BLOCK_D, BLOCK_N), dtype=A_dn.dtype)
    row_d = b * dim * L + d * L  # u, delta, z, out: (b, d, l)
    row_n = b * N * L + n * L  # B, C: (b, N, l)
    for t in range(0, L):
        if t % CHUNK_SIZE == 0:  # the state at the start of each chunk, for backward
            tl.store(states + (b * n_chunks + t // CHUNK_SIZE) * dim * N + dn, h, mask=dn_in)
        u_t = tl.load(u + row_d + t, mask=d_in, other=0.0)
        dt = tl.load(delta + row_d + t, mask=d_in, other=0.0)
        if HAS_BIAS:
            dt += bias_d
        if SOFTPLUS:  # τ_Δ = softplus, linear above 20 as torch's
            dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(dt)))
        B_t = tl.load(B + row_n + t, mask=n_in, other=0.0)
        C_t = tl.load(C + row_n + t, mask=n_in, other=0.0)
        h = tl.exp(dt[:, None] * A_dn) * h + (dt * u_t)[:, None] * B_t[None, :]  # Eq. (2a)
        y = tl.sum(h * C_t[None, :], axis=1)  # Eq. (2b)
        if HAS_D:
            y += D_d * u_t
        if HAS_Z:
            z_t = tl.load(z + row_d + t, mask=d_in, other=0.0)
            y = y * z_t * tl.sigmoid(z_t)
        tl.store(out + row_d + t, y, mask=d_in)
    tl.store(last + b * dim * N + dn, h, mask=dn_in)


@triton.jit
def _scan_backward(
    u, delta, A, B, C, D, z, bias, states, dout, dlast,
    du, ddelta, dz, dA_part, dB_part, dC_part, dD_part, dbias_part, dh0, buffer,
    L, dim, N, n_chunks, n_blocks,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_DLAST: tl.constexpr, CHUNK_SIZE: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    block = tl.program_id(1)
    d = block * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    d_in, n_in = d < dim, n < N
    dn_in = d_in[:, None] & n_in[None, :]
    dn = d[:, None] * N + n[None, :]
    local = tl.arange(0, BLOCK_D)[:, None] * BLOCK_N + n[None, :]  # a tile's place in the buffer
    buffer_base = (b * n_blocks + block) * (CHUNK_SIZE + 1) * BLOCK_D * BLOCK_N
    A_dn = tl.load(A + dn, mask=dn_in, other=0.0)
    if HAS_D:
        D_d = tl.load(D + d, mask=d_in, other=0.0)
    if HAS_BIAS:
        bias_d = tl.load(bias + d, mask=d_in, other=0.0)
    if HAS_DLAST:
        g = tl.load(dlast + b * dim * N + dn, mask=dn_in, other=0.0)  # dL/dh_L
    else:
        g = tl.zeros((BLOCK_D, BLOCK_N), dtype=A_dn.dtype)
    dA_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=A_dn.dtype)
    dD_acc = tl.zeros((BLOCK_D,), dtype=A_dn.dtype)
    dbias_acc = tl.zeros((BLOCK_D,), dtype=A_dn.dtype)
    row_d = b * dim * L + d * L
    row_n = b * N * L + n * L
    part_n = ((b * n_blocks + block) * N + n) * L  # dB_part, dC_part: (b, blocks, N, l)
    for c_reversed in range(0, n_chunks):
        c = n_chunks - 1 - c_reversed
        t0 = c * CHUNK_SIZE
        steps = tl.minimum(L - t0, CHUNK_SIZE)
        # recompute the chunk's states: buffer[k] = h_{t0 + k - 1}, buffer[0] the saved boundary state
        h = tl.load(states + (b * n_chunks + c) * dim * N + dn, mask=dn_in, other=0.0)
        tl.store(buffer + buffer_base + local, h)
        for k in range(0, steps):
            t = t0 + k
            u_t = tl.load(u + row_d + t, mask=d_in, other=0.0)
            dt = tl.load(delta + row_d + t, mask=d_in, other=0.0)
            if HAS_BIAS:
                dt += bias_d
            if SOFTPLUS:
                dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(dt)))
            B_t = tl.load(B + row_n + t, mask=n_in, other=0.0)
            h = tl.exp(dt[:, None] * A_dn) * h + (dt * u_t)[:, None] * B_t[None, :]
            tl.store(buffer + buffer_base + (k + 1) * BLOCK_D * BLOCK_N + local, h)
        # the adjoint recurrence, backwards through the chunk
        for k_reversed in range(0, steps):
            k = steps - 1 - k_reversed
            t = t0 + k
            h_prev = tl.load(buffer + buffer_base + k * BLOCK_D * BLOCK_N + local)
            h_t = tl.load(buffer + buffer_base + (k + 1) * BLOCK_D * BLOCK_N + local)
            u_t = tl.load(u + row_d + t, mask=d_in, other=0.0)
            raw = tl.load(delta + row_d + t, mask=d_in, other=0.0)
            if HAS_BIAS:
                raw += bias_d
            if SOFTPLUS:  # noqa: SIM108 (a constexpr branch, compiled away)
                dt = tl.where(raw > 20.0, raw, tl.log(1.0 + tl.exp(raw)))
            else:
                dt = raw
            B_t = tl.load(B + row_n + t, mask=n_in, other=0.0)
            C_t = tl.load(C + row_n + t, mask=n_in, other=0.0)
            dy = tl.load(dout + row_d + t, mask=d_in, other=0.0)
            if HAS_Z:  # out = (y + D u) SiLU(z)
                y = tl.sum(h_t * C_t[None, :], axis=1)
                if HAS_D:
                    y += D_d * u_t
                z_t = tl.load(z + row_d + t, mask=d_in, other=0.0)
                sig = tl.sigmoid(z_t)
                tl.store(dz + row_d + t, dy * y * sig * (1.0 + z_t * (1.0 - sig)), mask=d_in)
                dy = dy * z_t * sig
            du_t = tl.zeros((BLOCK_D,), dtype=A_dn.dtype)
            if HAS_D:
                dD_acc += dy * u_t
                du_t += dy * D_d
            tl.store(dC_part + part_n + t, tl.sum(dy[:, None] * h_t, axis=0), mask=n_in)
            g += dy[:, None] * C_t[None, :]  # dL/dh_t
            A_bar = tl.exp(dt[:, None] * A_dn)
            g_h = g * h_prev * A_bar
            gB = tl.sum(g * B_t[None, :], axis=1)
            ddt = tl.sum(g_h * A_dn, axis=1) + gB * u_t
            dA_acc += g_h * dt[:, None]
            du_t += gB * dt
            tl.store(dB_part + part_n + t, tl.sum(g * (dt * u_t)[:, None], axis=0), mask=n_in)
            if SOFTPLUS:
                ddt = ddt * tl.sigmoid(raw)
            dbias_acc += ddt
            tl.store(du + row_d + t, du_t, mask=d_in)
            tl.store(ddelta + row_d + t, ddt, mask=d_in)
            g = g * A_bar  # dL/dh_{t-1}, through h_t = Ā_t h_{t-1} + ...
    tl.store(dh0 + b * dim * N + dn, g, mask=dn_in)
    tl.store(dA_part + b * dim * N + dn, dA_acc, mask=dn_in)
    if HAS_D:
        tl.store(dD_part + b * dim + d, dD_acc, mask=d_in)
    if HAS_BIAS:
        tl.store(dbias_part + b * dim + d, dbias_acc, mask=d_in)


def _check_device(device: torch.device) -> None:
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    if device.type != "cuda" and not (device.type == "cpu" and interpreted):
        raise ValueError(
            f"selective_scan_triton needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1 set before "
            f"triton is imported, for Triton's interpreter), got tensors on {device}"
        )


@torch.library.register_kernel(FORWARD, ("cuda", "cpu"))
def _forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0):
    _check_device(u.device)
    batch, dim, L = u.shape
    N = A.shape[1]
    out, last, states = forward_outputs(u, A)
    BLOCK_D, BLOCK_N, num_warps = launch_sizes(batch, dim, N)
    _scan_forward[(batch, triton.cdiv(dim, BLOCK_D))](
        u, delta, A, B, C, D, z, delta_bias, h0, out, states, last, L, dim, N, states.shape[1],
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
        HAS_H0=h0 is not None, CHUNK_SIZE=CHUNK, BLOCK_D=BLOCK_D, BLOCK_N=BLOCK_N, num_warps=num_warps,
    )  # fmt: skip
    return out, last, states


@torch.library.register_kernel(BACKWARD, ("cuda", "cpu"))
def _backward(
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, states, dout, dlast,
    du, ddelta, dz, dA_part, dB_part, dC_part, dD_part, dbias_part, dh0, buffer,
):  # fmt: skip
    _check_device(u.device)
    batch, dim, L = u.shape
    N = A.shape[1]
    BLOCK_D, BLOCK_N, num_warps = launch_sizes(batch, dim, N)
    n_blocks = dB_part.shape[1]
    _scan_backward[(batch, n_blocks)](
        u, delta, A, B, C, D, z, delta_bias, states, dout, dlast,
        du, ddelta, dz, dA_part, dB_part, dC_part, dD_part, dbias_part, dh0, buffer,
        L, dim, N, states.shape[1], n_blocks,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
        HAS_DLAST=dlast is not None, CHUNK_SIZE=CHUNK, BLOCK_D=BLOCK_D, BLOCK_N=BLOCK_N, num_warps=num_warps,
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
):
    """Fast form of Mamba Eq. (2a)-(2b): `selective_scan_fused` (same arguments, shapes and result) run by
    the kernels above, on CUDA tensors or, under Triton's interpreter, CPU ones. Tested equal to
    `selective_scan_sequential` (the literal recurrence) in value and in every gradient."""
    _check_device(u.device)
    return selective_scan_fused(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, initial_state
    )  # fmt: skip
