"""Selective state space model (S6) and the Mamba block.

Paper: Mamba: Linear-Time Sequence Modeling with Selective State Spaces (Gu & Dao 2023,
arXiv:2312.00752). Official implementation: state-spaces/mamba, `mamba_ssm/modules/mamba_simple.py`
(the block) and `mamba_ssm/ops/selective_scan_interface.py` (`selective_scan_ref`, whose
(batch, channels, length) layout and argument order `selective_scan` keeps).

Glossary (code -> paper, Algorithm 2):
    b, l            B, L: batch size and sequence length
    d               D: channels of the scan (d_inner = expand * d_model in the block)
    N               N: state size (d_state)
    u               x: the scan's input, (b, d, l)
    delta           Δ, (b, d, l); before τ_Δ when delta_softplus is set
    A               A, (d, N), real and diagonal (one row of N per channel); negative
    B, C            B, C, (b, N, l): input-dependent (selective)
    A_bar, B_bar    Ā, B̄: the discretised parameters
    h               h_t, (b, d, N): the hidden state
    D               the skip connection y += D u
    z               the gate branch: output *= SiLU(z) (Fig. 3)
    dt_rank         R, the rank of s_Δ (ceil(d_model / 16) by default, the official code's choice)

Discretisation. The paper states the zero-order hold (Eq. 4). The official code, and so this
layer, uses Ā = exp(ΔA) with the simpler B̄ = ΔB (`discretize_simplified`), which agrees with the
ZOH to first order in Δ; `discretize_zoh` is the exact Eq. (4), tested on its own.
"""

import math
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor

from src.layers._checks import check_positive, check_selective_scan_arguments, check_shapes, has_values
from src.layers.mixer import Mixer, register_mixer
from src.schema import PositiveFloat, PositiveInt

# A scan's result: the (b, d, l) output, and the (b, d, N) last state with it when `return_last_state`.
ScanOutput = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def discretize_zoh(delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Zero-order-hold discretisation of a diagonal continuous SSM.

    Paper: Mamba (Gu & Dao 2023, arXiv:2312.00752), Sec. 2, Eq. (4)

    .. math::
        \bar A = \exp(\Delta A), \qquad
        \bar B = (\Delta A)^{-1} (\exp(\Delta A) - I) \cdot \Delta B
               = \frac{\exp(\Delta A) - 1}{A} B \quad (A \text{ diagonal})

    Args:
        delta: (..., d) step sizes Δ > 0.
        A: (d, N) diagonal of A per channel, non-zero.
        B: (..., N) input matrix, same leading dimensions as `delta`.

    Returns:
        (A_bar, B_bar), each (..., d, N).
    """
    check_shapes(delta=(delta, "... d"), A=(A, "d N"), B=(B, "... N"))
    if has_values(A) and (A == 0).any():
        raise ValueError("A must be non-zero for the zero-order hold (it divides by A)")
    delta_A = delta[..., :, None] * A  # (..., d, N)
    A_bar = torch.exp(delta_A)
    B_bar = torch.expm1(delta_A) / A * B[..., None, :]
    return A_bar, B_bar


def discretize_simplified(delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The discretisation of the official code: exact Ā, first-order (Euler) B̄.

    Paper: Mamba (Gu & Dao 2023, arXiv:2312.00752), Sec. 2, Eq. (4) as the official code simplifies it

    .. math::
        \bar A = \exp(\Delta A), \qquad \bar B = \Delta B

    The paper's Eq. (4) is the zero-order hold (`discretize_zoh`); B̄ = ΔB is the official code's
    (`selective_scan_ref` and the CUDA kernel), equal to Eq. (4)'s B̄ up to O(Δ²). This project's
    scans use it, so that checkpoints of the official code give the same outputs.

    Args:
        delta: (..., d) step sizes Δ.
        A: (d, N) diagonal of A per channel.
        B: (..., N) input matrix, same leading dimensions as `delta`.

    Returns:
        (A_bar, B_bar), each (..., d, N).
    """
    check_shapes(delta=(delta, "... d"), A=(A, "d N"), B=(B, "... N"))
    A_bar = torch.exp(delta[..., :, None] * A)
    B_bar = delta[..., :, None] * B[..., None, :]
    return A_bar, B_bar


def tau_delta(s_delta: torch.Tensor, delta_bias: torch.Tensor | None = None) -> torch.Tensor:
    r"""τ_Δ: the step size from the selection projection, Δ = softplus(Parameter + s_Δ(x)).

    Paper: Mamba (Gu & Dao 2023, arXiv:2312.00752), Sec. 3.2, Algorithm 2

    .. math::
        \Delta = \tau_\Delta(\mathrm{Parameter} + s_\Delta(x)), \qquad
        \tau_\Delta = \mathrm{softplus}(v) = \log(1 + e^{v})

    Args:
        s_delta: (b, d, l) the selection projection s_Δ(x).
        delta_bias: (d,) the learned Parameter (the bias of dt_proj), or None.

    Returns:
        (b, d, l) positive step sizes.
    """
    check_shapes(s_delta=(s_delta, "b d l"), delta_bias=(delta_bias, "d"))
    if delta_bias is not None:
        s_delta = s_delta + delta_bias[:, None]
    return F.softplus(s_delta)


def _prepare(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
    initial_state: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shared argument checks of the two scans; returns Δ and h_0 (zeros when not given)."""
    check_selective_scan_arguments(u, delta, A, B, C, D, z, delta_bias, initial_state)
    if delta_softplus:
        delta = tau_delta(delta, delta_bias)
    elif delta_bias is not None:
        delta = delta + delta_bias[:, None]
    h0 = initial_state if initial_state is not None else u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    return delta, h0


def _finish(y: torch.Tensor, u: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None) -> torch.Tensor:
    """Skip connection D u and the SiLU(z) gate of Fig. 3."""
    if D is not None:
        y = y + D[:, None] * u
    if z is not None:
        y = y * F.silu(z)
    return y


def selective_scan_sequential(
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
) -> ScanOutput:
    r"""The selective scan as the literal recurrence, one time step after another (reference).

    Paper: Mamba (Gu & Dao 2023, arXiv:2312.00752), Sec. 2, Eq. (2a)-(2b)

    .. math::
        h_t = \bar A_t h_{t-1} + \bar B_t x_t, \qquad y_t = C_t h_t (+ D x_t),
        \qquad \bar A_t, \bar B_t = \mathrm{discretize}(\Delta_t, A, B_t)

    with the simplified discretisation of the official code and, when given, the SiLU(z) gate:
    out = y ⊙ SiLU(z). Same layout and arguments as the official `selective_scan_ref` (real A).

    Args:
        u: (b, d, l) input x.
        delta: (b, d, l) Δ, or s_Δ(x) when `delta_softplus` (then Δ = softplus(delta + delta_bias)).
        A: (d, N) real diagonal state matrix (negative for a stable scan).
        B: (b, N, l) input-dependent B_t.
        C: (b, N, l) input-dependent C_t.
        D: (d,) skip weights, or None.
        z: (b, d, l) gate input, or None.
        delta_bias: (d,) added to delta, or None.
        delta_softplus: apply τ_Δ = softplus to delta + delta_bias.
        return_last_state: also return h_l.
        initial_state: (b, d, N) h_0 (zeros when None); not in the official signature, it lets a
            model continue a sequence from its state.

    Returns:
        (b, d, l) output, and (b, d, N) last state when `return_last_state`.
    """
    delta, h = _prepare(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state)
    batch, d, length = u.shape
    ys = []
    for t in range(length):
        A_bar, B_bar = discretize_simplified(delta[:, :, t], A, B[:, :, t])  # (b, d, N) each
        h = A_bar * h + B_bar * u[:, :, t, None]  # Eq. (2a)
        ys.append((h * C[:, None, :, t]).sum(-1))  # Eq. (2b): y_t = C_t h_t, (b, d)
    y = _finish(torch.stack(ys, dim=-1) if ys else u.new_zeros(batch, d, 0), u, D, z)
    return (y, h) if return_last_state else y


def _chunks(x: torch.Tensor, n_c: int, T: int) -> torch.Tensor:
    """(b, k, l) -> (b, n_c, T, k), zero-padded at the end: [:, c, t] is step t of chunk c."""
    chunked = F.pad(x, (0, n_c * T - x.shape[-1])).view(x.shape[0], x.shape[1], n_c, T)
    return chunked.permute(0, 2, 3, 1).contiguous()


def _unchunk(x: torch.Tensor, length: int) -> torch.Tensor:
    """(b, n_c, T, k) -> (b, k, length): the inverse of `_chunks`."""
    return x.flatten(1, 2)[:, :length].transpose(1, 2)  # flatten, not reshape(b, -1, k): b may be 0


def _decay(delta_t: torch.Tensor, A_log2: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Ā_t = exp(Δ_t A) (Eq. 4) for all chunks, as 2^{Δ_t A log2 e} into `out`: exp2 is ~2x faster than exp on CPUs."""
    return torch.exp2(torch.mul(delta_t[..., None], A_log2, out=out), out=out)


def _run_chunks(
    h: torch.Tensor,
    delta_c: torch.Tensor,
    delta_u_c: torch.Tensor,
    B_c: torch.Tensor,
    A_log2: torch.Tensor,
    readout: tuple[torch.Tensor, torch.Tensor] | None = None,
    states: torch.Tensor | None = None,
) -> torch.Tensor:
    """h_t = Ā_t h_{t-1} + (Δ_t x_t) B_t (Eq. 2a with B̄ = ΔB) over the T steps of all chunks at once.

    h (b, n_c, d, N) is the chunks' start state and is updated in place (no graph is built inside
    the autograd.Function, and reused buffers keep this loop memory-bound rather than
    allocation-bound). With `readout` (C_c, y), y[:, :, t] = C_t h_t (Eq. 2b); with states
    (T, b, n_c, d, N), states[t] = h_t. Returns the end states.
    """
    A_bar, B_bar_x = torch.empty_like(h), torch.empty_like(h)
    for t in range(delta_c.shape[2]):
        _decay(delta_c[:, :, t], A_log2, A_bar)
        torch.mul(delta_u_c[:, :, t, :, None], B_c[:, :, t, None, :], out=B_bar_x)
        h.mul_(A_bar).add_(B_bar_x)
        if readout is not None:
            C_c, y = readout
            y[:, :, t] = torch.einsum("bcdn,bcn->bcd", h, C_c[:, :, t])
        if states is not None:
            states[t] = h
    return h


def _adjoints(
    lam: torch.Tensor, gy_c: torch.Tensor, C_c: torch.Tensor, delta_c: torch.Tensor, A_log2: torch.Tensor
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Yield (t, λ_t, Ā_t) for t = T-1, ..., 0 of all chunks: λ_t = C_t^T gy_t + Ā_{t+1} λ_{t+1}.

    `lam` (b, n_c, d, N) is the adjoint reaching each chunk's last state from after the chunk; it
    is updated in place, and the yielded tensors are reused buffers, valid until the next step.
    """
    A_bar_later, spare = torch.empty_like(lam), torch.empty_like(lam)
    for t in reversed(range(delta_c.shape[2])):
        if t + 1 < delta_c.shape[2]:
            lam.mul_(A_bar_later)
        lam.add_(gy_c[:, :, t, :, None] * C_c[:, :, t, None, :])
        A_bar_t = _decay(delta_c[:, :, t], A_log2, spare)
        yield t, lam, A_bar_t
        spare, A_bar_later = A_bar_later, A_bar_t


class _ChunkedScan(torch.autograd.Function):
    """Core of `selective_scan`: y_t = C_t h_t, h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t, chunked.

    Forward keeps only the chunk-start states H (b, n_c, d, N). Backward recomputes the states
    and runs the adjoint recurrence λ_t = C_t^T gy_t + Ā_{t+1} λ_{t+1} with the same chunked
    scheme, so neither direction loops over all l steps.
    """

    @staticmethod
    def forward(
        ctx: Any,  # torch's FunctionCtx, given attribute T here
        u: torch.Tensor,
        delta: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        h0: torch.Tensor,
        T: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        length = u.shape[-1]
        n_c = max(1, math.ceil(length / T))
        delta_c, delta_u_c, B_c, C_c = (_chunks(x, n_c, T) for x in (delta, delta * u, B, C))
        A_log2 = A * math.log2(math.e)
        # 1. Local scans from h = 0, all chunks at once: each chunk's end state h^local_T.
        h_local = _run_chunks(u.new_zeros(u.shape[0], n_c, *A.shape), delta_c, delta_u_c, B_c, A_log2)
        # 2. True chunk-start states from the chunk summaries: H_{c+1} = e^{A ΣΔ} H_c + h^local_T.
        decay = torch.exp(delta_c.sum(dim=2)[..., None] * A)
        H = [h0]
        for c in range(n_c):
            H.append(decay[:, c] * H[c] + h_local[:, c])
        H_start = torch.stack(H[:-1], dim=1)
        # 3. Every chunk again, now from its true start state, reading y_t = C_t h_t.
        y = u.new_empty(u.shape[0], n_c, T, A.shape[0])
        _run_chunks(H_start.clone(), delta_c, delta_u_c, B_c, A_log2, readout=(C_c, y))
        ctx.save_for_backward(u, delta, A, B, C, H_start)
        ctx.T = T
        return _unchunk(y, length), H[-1]

    @staticmethod
    def backward(ctx: Any, *grad_outputs: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        gy, g_last = grad_outputs  # of y and of the last state (None when the last state had no gradient)
        if gy is None:
            raise RuntimeError("the chunked scan's backward needs the gradient of its output y")
        u, delta, A, B, C, H_start = ctx.saved_tensors
        T, length = ctx.T, u.shape[-1]
        n_c = H_start.shape[1]
        u_c, delta_c, delta_u_c, B_c, C_c, gy_c = (_chunks(x, n_c, T) for x in (u, delta, delta * u, B, C, gy))
        A_log2 = A * math.log2(math.e)
        # True states h_t of every step, recomputed from the chunk starts.
        states = H_start.new_empty(T, *H_start.shape)
        _run_chunks(H_start.clone(), delta_c, delta_u_c, B_c, A_log2, states=states)
        # 1. Local adjoints from zero at each chunk's end; keep what reaches each chunk's start, Ā_0 λ_0.
        ((_, lam_0, A_bar_0),) = deque(_adjoints(torch.zeros_like(H_start), gy_c, C_c, delta_c, A_log2), maxlen=1)
        local_into_start = A_bar_0 * lam_0
        # 2. E_c, the adjoint reaching chunk c's last state from later chunks (or from the last state):
        #    E_{c-1} = Ā_0 λ^local_0 + e^{A ΣΔ} E_c over the chunk summaries.
        decay = torch.exp(delta_c.sum(dim=2)[..., None] * A)
        E = torch.empty_like(H_start)
        incoming = g_last if g_last is not None else torch.zeros_like(H_start[:, 0])
        for c in reversed(range(n_c)):
            E[:, c] = incoming
            incoming = local_into_start[:, c] + decay[:, c] * incoming
        # 3. True adjoints from E_c, and the gradients of step t from (h_{t-1}, λ_t, Ā_t).
        grads = {name: u_c.new_empty(u_c.shape) for name in ("u", "delta")}
        grads |= {name: B_c.new_empty(B_c.shape) for name in ("B", "C")}
        d_A_terms = torch.zeros_like(H_start)
        for t, lam, A_bar_t in _adjoints(E, gy_c, C_c, delta_c, A_log2):
            h_prev = states[t - 1] if t else H_start
            decay_term = lam * A_bar_t * h_prev  # λ_t ∂h_t/∂(Δ_t A)
            lam_B = torch.einsum("bcdn,bcn->bcd", lam, B_c[:, :, t])
            grads["delta"][:, :, t] = torch.einsum("bcdn,dn->bcd", decay_term, A) + lam_B * u_c[:, :, t]
            grads["u"][:, :, t] = lam_B * delta_c[:, :, t]
            grads["B"][:, :, t] = torch.einsum("bcdn,bcd->bcn", lam, delta_u_c[:, :, t])
            grads["C"][:, :, t] = torch.einsum("bcdn,bcd->bcn", states[t], gy_c[:, :, t])
            d_A_terms.addcmul_(decay_term, delta_c[:, :, t, :, None])
        d_u, d_delta, d_B, d_C = (_unchunk(grads[name], length) for name in ("u", "delta", "B", "C"))
        return d_u, d_delta, d_A_terms.sum(dim=(0, 1)), d_B, d_C, incoming, None


def selective_scan(
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
) -> ScanOutput:
    r"""The selective scan of Eq. (2a)-(2b) as a chunked scan (fast form of `selective_scan_sequential`).

    Paper: Mamba (Gu & Dao 2023, arXiv:2312.00752), Sec. 3.3.2, Eq. (2a)-(2b) chunked

    The length is cut into n_c chunks of T steps. With S_t = \sum_{r \le t} Δ_r A the log-decay
    inside a chunk and H_c the true state at the start of chunk c,

    .. math::
        h_t = \underbrace{\textstyle\sum_{s \le t} e^{S_t - S_s} \bar B_s x_s}_{\text{local, } h_0 = 0}
              + e^{S_t} H_c, \qquad H_{c+1} = e^{S_T} H_c + h^{\text{local}}_T

    1. the local scans of all chunks run together, one step of T at a time;
    2. the chunk-start states H_c follow from the n_c chunk summaries;
    3. y_t gets the correction C_t e^{S_t} H_c, again all chunks at once.

    That is 2T + n_c steps on (b, n_c, d, N) tensors instead of l steps on (b, d, N). Forward
    keeps only the chunk-start states for backward, which recomputes the states and runs the
    adjoint recurrence with the same scheme (a hand-written backward, tested against autograd of
    the literal loop); the backward pass holds the states of all steps while it runs. S_t ≤ 0
    because A < 0 and Δ > 0, so every exponential is at most 1: nothing overflows however long
    the sequence.

    Args:
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, initial_state:
            as in `selective_scan_sequential`: u, delta, z (b, d, l); A (d, N); B, C (b, N, l);
            D, delta_bias (d,); initial_state (b, d, N).
        chunk_size: T; default ceil(sqrt(l)), which minimises the step count 2T + l / T.

    Returns:
        (b, d, l) output, and (b, d, N) last state when `return_last_state`.
    """
    delta, h0 = _prepare(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state)
    length = u.shape[-1]
    T = chunk_size if chunk_size is not None else max(1, math.ceil(math.sqrt(length)))
    check_positive("chunk_size", T)
    y, last_state = _ChunkedScan.apply(u, delta, A, B, C, h0, T)
    y = _finish(y, u, D, z)
    return (y, last_state) if return_last_state else y


def ssm_convolution_kernel(A_bar: torch.Tensor, B_bar: torch.Tensor, C: torch.Tensor, length: int) -> torch.Tensor:
    r"""The SSM convolution kernel of a time-invariant (non-selective, S4D-style) SSM.

    Paper: Mamba (Gu & Dao 2023, arXiv:2312.00752), Sec. 2, Eq. (3a)

    .. math::
        \bar K = (C\bar B, C\bar A\bar B, \dots, C\bar A^{k}\bar B, \dots), \qquad
        \bar K_k[d] = \sum_n C[d, n]\, \bar A[d, n]^k\, \bar B[d, n]

    Args:
        A_bar: (d, N) diagonal of Ā per channel, |Ā| <= 1.
        B_bar: (d, N) B̄ per channel.
        C: (d, N) output matrix per channel.
        length: number of kernel taps L.

    Returns:
        (d, L) kernel.
    """
    check_shapes(A_bar=(A_bar, "d N"), B_bar=(B_bar, "d N"), C=(C, "d N"))
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    k = torch.arange(length, dtype=A_bar.dtype, device=A_bar.device)
    powers = A_bar[..., None] ** k  # (d, N, L): Ā^k
    return torch.einsum("dn,dnk->dk", C * B_bar, powers)


def ssm_convolution(u: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    r"""Causal convolution of the input with the SSM kernel, computed with the FFT.

    Paper: Mamba (Gu & Dao 2023, arXiv:2312.00752), Sec. 2, Eq. (3b)

    .. math::
        y = x * \bar K, \qquad y_t = \sum_{k=0}^{t} \bar K_k\, x_{t-k}

    Zero-padding to 2L turns the FFT's circular convolution into the causal linear one.

    Args:
        u: (b, d, L) input.
        K: (d, L) kernel from `ssm_convolution_kernel`.

    Returns:
        (b, d, L) output.
    """
    sizes = check_shapes(u=(u, "b d L"), K=(K, "d L"))
    L = sizes["L"]
    n = 2 * L
    y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(K, n=n), n=n)
    return y[..., :L]


def selection_functions(
    x: torch.Tensor, W_x: torch.Tensor, W_delta: torch.Tensor, d_state: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""The selection functions: B, C and the pre-activation of Δ as projections of the input.

    Paper: Mamba (Gu & Dao 2023, arXiv:2312.00752), Sec. 3.2, Algorithm 2

    .. math::
        B = s_B(x) = \mathrm{Linear}_N(x), \quad C = s_C(x) = \mathrm{Linear}_N(x), \quad
        s_\Delta(x) = \mathrm{Linear}_D(\mathrm{Linear}_R(x))

    s_Δ is the rank-R projection of Sec. 3.6 (Algorithm 2 writes Broadcast_D(Linear_1(x)), its
    R = 1 case). One matrix W_x produces [Linear_R(x), B, C] as in the official `x_proj`;
    Δ = τ_Δ(Parameter + s_Δ(x)) follows in `tau_delta`.

    Args:
        x: (b, d, l) the scan input (after conv and SiLU in the block).
        W_x: (R + 2N, d) the joint projection (`x_proj.weight`).
        W_delta: (d, R) the up-projection of s_Δ (`dt_proj.weight`).
        d_state: N.

    Returns:
        s_delta (b, d, l), B (b, N, l), C (b, N, l).
    """
    sizes = check_shapes(x=(x, "b d l"), W_x=(W_x, "P d"), W_delta=(W_delta, "d R"))
    if sizes["P"] != sizes["R"] + 2 * d_state:
        raise ValueError(f"W_x must have R + 2N = {sizes['R'] + 2 * d_state} rows, got {sizes['P']}")
    projected = torch.einsum("pd,bdl->bpl", W_x, x)
    low_rank, B, C = projected.split([sizes["R"], d_state, d_state], dim=1)
    s_delta = torch.einsum("dr,brl->bdl", W_delta, low_rank)
    return s_delta, B, C


def s4d_real_init(d: int, N: int) -> torch.Tensor:
    r"""S4D-Real initialisation of the diagonal A: every channel gets A = -(1, 2, ..., N).

    Paper: Mamba (Gu & Dao 2023, arXiv:2312.00752), Sec. 3.6, S4D-Real initialisation

    .. math::
        A_{d, n} = -(n + 1), \qquad n = 0, \dots, N - 1

    The layer stores log(-A) (`A_log`) so that A = -exp(A_log) stays negative while training.

    Args:
        d: number of channels.
        N: state size.

    Returns:
        (d, N) float32 tensor.
    """
    if d < 1 or N < 1:
        raise ValueError(f"d and N must be >= 1, got d={d}, N={N}")
    return -torch.arange(1, N + 1, dtype=torch.float32).repeat(d, 1)


def delta_bias_init(
    d: int, dt_min: float, dt_max: float, dt_init_floor: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    r"""Initial bias of Δ: inverse softplus of a step size drawn log-uniformly in [dt_min, dt_max].

    Paper: Mamba (Gu & Dao 2023, arXiv:2312.00752), Sec. 3.6, Δ initialisation as the official code draws it

    .. math::
        \Delta_0 = \max(e^{U(\log \Delta_{min}, \log \Delta_{max})}, \Delta_{floor}), \qquad
        b = \mathrm{softplus}^{-1}(\Delta_0) = \Delta_0 + \log(1 - e^{-\Delta_0})

    so that τ_Δ(b) = softplus(b) = Δ_0 at initialisation (official code: `dt_proj.bias`). The paper
    asks for Δ ~ Uniform([0.001, 0.1]); the log-uniform draw and the floor are the official code's.

    Args:
        d: number of channels.
        dt_min, dt_max: range of the initial step sizes, 0 < dt_min <= dt_max.
        dt_init_floor: lower clamp of Δ_0.
        generator: optional random generator.

    Returns:
        (d,) float32 bias.
    """
    check_positive("dt_min", dt_min)
    check_positive("dt_init_floor", dt_init_floor)
    if dt_max < dt_min:
        raise ValueError(f"dt_max must be >= dt_min, got dt_min={dt_min}, dt_max={dt_max}")
    log_dt = torch.rand(d, generator=generator) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
    dt = torch.exp(log_dt).clamp(min=dt_init_floor)
    return dt + torch.log(-torch.expm1(-dt))


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    r"""Causal depthwise 1-D convolution of the Mamba block (before the SSM).

    Paper: Mamba (Gu & Dao 2023, arXiv:2312.00752), Sec. 3.4, Figure 3

    .. math::
        y_t[d] = \mathrm{bias}[d] + \sum_{i=0}^{k-1} w[d, i]\, x_{t - (k - 1) + i}[d],
        \qquad x_{s < 0} = 0

    Same weights and result as `nn.Conv1d(d, d, k, groups=d, padding=k-1)` truncated to the first
    l outputs (the official block); no output depends on a later input.

    Args:
        x: (b, d, l) input.
        weight: (d, k) per-channel filter.
        bias: (d,) or None.

    Returns:
        (b, d, l) output.
    """
    sizes = check_shapes(x=(x, "b d l"), weight=(weight, "d k"), bias=(bias, "d"))
    y = F.conv1d(F.pad(x, (sizes["k"] - 1, 0)), weight[:, None, :], bias, groups=sizes["d"])
    return y


@dataclass(frozen=True)
class GatedSSMState:
    """The last k - 1 conv inputs (b, d_inner, k - 1) and the SSM state h (b, d_inner, N)."""

    conv: torch.Tensor
    ssm: torch.Tensor


class GatedSSMBlock(Mixer, ABC):
    """The block of Fig. 3 around an SSM: in-projection to x and z, causal depthwise conv, SiLU,
    the SSM with D skip, the SiLU(z) gate, out-projection. Subclasses supply `_ssm`.

    The state keeps the last k - 1 conv inputs and the SSM state, so the model generates in
    constant memory per token. Under autocast the projections and the conv run in the autocast dtype
    and the SSM in float32 (`_scan_input_dtype`; the Triton scan of `MambaMixer` takes its inputs in
    the autocast dtype and keeps a float32 state, as the official kernel).
    """

    autocast = True
    no_weight_decay = ("A_log", "D")  # as the official Mamba module marks them (src.optimizer)

    def __init__(self, d_model: int, d_state: int, d_conv: int, expand: int):
        super().__init__(d_model)
        self.d_inner = expand * d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        self.A_log = nn.Parameter(torch.log(-s4d_real_init(self.d_inner, d_state)))
        self.D = nn.Parameter(torch.ones(self.d_inner))

    def _conv_silu(self, history: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """SiLU of the causal conv at the positions after the k - 1 earlier inputs that `history` begins with."""
        return F.silu(causal_conv1d(history, weight, bias)[..., self.d_conv - 1 :])

    def _scan_input_dtype(self, u: torch.Tensor) -> torch.dtype:
        """The dtype the SSM takes u and z in: float32 at least (the state is float32 or wider)."""
        return torch.promote_types(u.dtype, torch.float32)

    @abstractmethod
    def _ssm(self, u: torch.Tensor, z: torch.Tensor, h0: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(b, d_inner, T) conv output and gate -> gated SSM output (b, d_inner, T) and last state."""

    def _step(self, x: torch.Tensor, state: GatedSSMState | None) -> tuple[torch.Tensor, GatedSSMState]:
        batch = x.shape[0]
        xz = self.in_proj(x).transpose(1, 2)  # (b, 2 d_inner, T)
        u, z = xz.chunk(2, dim=1)
        conv_history = u.new_zeros(batch, self.d_inner, self.d_conv - 1) if state is None else state.conv
        history = torch.cat((conv_history, u), dim=-1)  # earlier conv inputs, then the new ones
        # in autocast's dtype; nn.Conv1d types its bias Optional (this one has one, bias=True)
        weight = self.conv1d.weight[:, 0, :].to(u.dtype)
        bias = None if self.conv1d.bias is None else self.conv1d.bias.to(u.dtype)
        u = self._conv_silu(history, weight, bias)
        with torch.autocast(x.device.type, enabled=False):  # the scan's own dtypes from here
            dtype = self._scan_input_dtype(u)
            y, ssm_state = self._ssm(u.to(dtype), z.to(dtype), None if state is None else state.ssm)
        new_state = self.State(history[..., history.shape[-1] - (self.d_conv - 1) :], ssm_state)
        return self.out_proj(y.transpose(1, 2)), new_state


class MambaState(GatedSSMState):
    """The state of `MambaMixer`."""


class S4DState(GatedSSMState):
    """The state of `S4DMixer`."""


@register_mixer("selective_ssm")
class MambaMixer(GatedSSMBlock):
    """The Mamba block of Fig. 3, built from the functions above.

    Parameter names follow the official `Mamba` module (in_proj, conv1d, x_proj, dt_proj, A_log,
    D, out_proj) so checkpoints map one to one. `scan` picks the form of Eq. (2): "triton" (the fused
    kernel of `src.kernels.selective_scan`, CUDA), "chunked" (the PyTorch fast form), "sequential"
    (the literal loop, the reference, to time or check the others inside the block), or "auto":
    triton on CUDA tensors, chunked on other real ones. Fake tensors (`src.estimate`) take the
    triton form's operator (`src.kernels.selective_scan_op`), so an estimate on any machine prices
    the fused kernel's memory in one operator per scan. `step` keeps the last k - 1 conv inputs and the SSM
    state, so a MambaGPT generates in constant memory per token; on the triton form a single token without
    gradients (decoding) takes the one-step kernel of `src.kernels.selective_state_update`, and the conv
    and its SiLU are one kernel (`src.kernels.causal_conv1d`).
    """

    State = MambaState
    no_weight_decay = (*GatedSSMBlock.no_weight_decay, "dt_proj.bias")  # the Δ bias

    def __init__(
        self,
        d_model: int,
        d_state: PositiveInt = 16,
        d_conv: PositiveInt = 4,
        expand: PositiveInt = 2,
        dt_rank: PositiveInt | None = None,
        dt_min: PositiveFloat = 0.001,
        dt_max: PositiveFloat = 0.1,
        dt_init_floor: PositiveFloat = 1e-4,
        scan: Literal["auto", "triton", "chunked", "sequential"] = "auto",
    ):
        super().__init__(d_model, d_state, d_conv, expand)
        self.scan = scan
        self.dt_rank = dt_rank if dt_rank is not None else math.ceil(d_model / 16)  # the official code's dt_rank='auto'
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        nn.init.uniform_(self.dt_proj.weight, -(self.dt_rank**-0.5), self.dt_rank**-0.5)
        with torch.no_grad():
            self.dt_proj.bias.copy_(delta_bias_init(self.d_inner, dt_min, dt_max, dt_init_floor))

    def _scan_kind(self, u: torch.Tensor) -> str:
        if self.scan != "auto":
            return self.scan
        return "triton" if u.device.type == "cuda" or not has_values(u) else "chunked"

    def _scan_input_dtype(self, u: torch.Tensor) -> torch.dtype:
        # the kernel takes bfloat16 and float16 inputs with a float32 state, as the official one
        return u.dtype if self._scan_kind(u) == "triton" else super()._scan_input_dtype(u)

    def _conv_silu(self, history: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self._scan_kind(history) != "triton":
            return super()._conv_silu(history, weight, bias)
        if isinstance(history, FakeTensor):  # the operator's fake form, as for the scan
            from src.kernels.causal_conv1d_op import causal_conv1d_silu

            return causal_conv1d_silu(history, weight, bias)
        from src.kernels.causal_conv1d import causal_conv1d_silu_triton  # fused conv + SiLU, one kernel

        return causal_conv1d_silu_triton(history, weight, bias)

    def _scan_function(self, u: torch.Tensor) -> Callable[..., ScanOutput]:
        fake = isinstance(u, FakeTensor)
        kind = self._scan_kind(u)
        if kind == "triton" and fake:  # a fake step (src.estimate) needs the operator's fake form, not Triton
            from src.kernels.selective_scan_op import selective_scan_fused  # imports src.layers: not at the top

            return selective_scan_fused
        if kind == "triton":
            # Imported when picked: triton comes with torch's Linux CUDA builds only, not everywhere torch runs.
            from src.kernels.selective_scan import selective_scan_triton

            return selective_scan_triton
        return selective_scan if kind == "chunked" else selective_scan_sequential

    def _ssm(self, u: torch.Tensor, z: torch.Tensor, h0: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        # x_proj and dt_proj in u's dtype (autocast's, as the official block), A, D, Δ bias in the state's
        W_x, W_delta = self.x_proj.weight.to(u.dtype), self.dt_proj.weight.to(u.dtype)
        s_delta, B, C = selection_functions(u, W_x, W_delta, self.d_state)
        state = torch.promote_types(u.dtype, torch.float32)
        A, D, bias = -torch.exp(self.A_log.to(state)), self.D.to(state), self.dt_proj.bias.to(state)
        if u.shape[-1] == 1 and self._decodes_with_kernel(u):
            from src.kernels.selective_state_update import selective_state_update  # as the scan kernel: lazily

            h = h0 if h0 is not None else u.new_zeros(u.shape[0], self.d_inner, self.d_state, dtype=state)
            x, delta, B, C, z = (t[..., 0] for t in (u, s_delta, B, C, z))
            y, h = selective_state_update(h, x, delta, A, B, C, D, z, bias, delta_softplus=True)
            return y[..., None], h
        y, h = self._scan_function(u)(  # a pair: return_last_state
            u, s_delta, A, B, C, D, z, bias, delta_softplus=True, return_last_state=True, initial_state=h0
        )
        return y, h

    def _decodes_with_kernel(self, u: torch.Tensor) -> bool:
        """One token without gradients on the Triton path: `selective_state_update`, one kernel per step."""
        return not torch.is_grad_enabled() and self._scan_kind(u) == "triton" and not isinstance(u, FakeTensor)


@register_mixer("lti_ssm")
class S4DMixer(GatedSSMBlock):
    """The non-selective (LTI) baseline of the same block: Δ, B, C do not depend on the input.

    Mamba's S4-style comparison (Sec. 4.1.1, Table 1): Δ = softplus(Δ bias) per channel, B = 1
    and a learned C per channel and state (S4D-Real A, ZOH, Eq. 4), computed as the convolution of
    Eq. (3) (`ssm_convolution_kernel`, `ssm_convolution`); a carried state h_0 adds C Ā^{t+1} h_0.
    It has no `scan` option: the Triton selective scan takes C_t shared by the channels, this C is
    per channel, and the FFT convolution is already one pass over the sequence.
    """

    State = S4DState
    no_weight_decay = (*GatedSSMBlock.no_weight_decay, "delta_bias")  # the Δ bias

    def __init__(
        self,
        d_model: int,
        d_state: PositiveInt = 16,
        d_conv: PositiveInt = 4,
        expand: PositiveInt = 2,
        dt_min: PositiveFloat = 0.001,
        dt_max: PositiveFloat = 0.1,
        dt_init_floor: PositiveFloat = 1e-4,
    ):
        super().__init__(d_model, d_state, d_conv, expand)
        self.delta_bias = nn.Parameter(delta_bias_init(self.d_inner, dt_min, dt_max, dt_init_floor))
        self.C = nn.Parameter(torch.randn(self.d_inner, d_state) / math.sqrt(d_state))

    def _ssm(self, u: torch.Tensor, z: torch.Tensor, h0: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        length = u.shape[-1]
        A = -torch.exp(self.A_log)
        delta = tau_delta(self.delta_bias[None, :, None])[0, :, 0]  # (d,): one step size per channel
        A_bar, B_bar = discretize_zoh(delta, A, torch.ones_like(A[0]))  # (d, N)
        y = ssm_convolution(u, ssm_convolution_kernel(A_bar, B_bar, self.C, length))
        steps = torch.arange(length, device=u.device, dtype=u.dtype)
        decay = A_bar[..., None] ** steps  # (d, N, T): Ā^t
        h_last = torch.einsum("bdt,dnt->bdn", u, decay.flip(-1)) * B_bar  # Σ_t Ā^{T-1-t} B̄ u_t
        if h0 is not None:
            y = y + torch.einsum("bdn,dnt,dn->bdt", h0, decay * A_bar[..., None], self.C)
            h_last = h_last + h0 * A_bar**length
        return _finish(y, u, self.D, z), h_last
