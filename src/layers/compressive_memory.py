"""Tensor-product compressive memory: Infini-attention and its memory-only variant.

Papers: Leave No Context Behind: Efficient Infinite Context Transformers with Infini-attention
(Munkhdalai, Faruqui, Gopal 2024, arXiv:2404.07143); Transformers are RNNs (Katharopoulos et al.
2020, arXiv:2006.16236); Linear Transformers Are Secretly Fast Weight Programmers (Schlag et al.
2021, arXiv:2102.11174); Parallelizing Linear Transformers with the Delta Rule over Sequence Length
(Yang et al. 2024, arXiv:2406.06484).

Equation numbers are those of Infini-attention's first arXiv version (arXiv:2404.07143v1, April
2024), which the docstrings below cite as Eq. (n).

Glossary (code -> paper):
    sigma_q, sigma_k   σ(Q), σ(K) with σ = ELU + 1, (..., n, d_k)
    v                  V, (..., n, d_v)
    M, z               memory M_s (..., d_k, d_v) and normaliser z_s (..., d_k)
    beta               β, one gate scalar per head
    segment_size       N, the tokens of one segment (1 = token-level memory)
    beta_t             1 / σ(k_t) z_{t-1}, the delta rule's step size once its retrieval is normalised
    U, W               the chunk's pseudo-values and WY factor of the chunked delta rule (Yang et al.)
    max_delta, max_memory, max_norm   the stability clamps of a write (this project's, default off)

Order (paper Sec. 2.1.2): every segment first retrieves from M_{s-1}, then writes itself into
M_s, so no token reads itself through memory. M_0 = 0 and z_0 = 0 (the paper leaves them open):
the first segment retrieves exactly zero, because eps only guards the 0 / 0.
"""

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from src.kernels.fla_memory import delta_memory_shifted, fla_available, fla_delta, fla_linear, linear_memory_shifted
from src.layers._checks import check_positive, check_shapes
from src.layers._heads import HeadProjections
from src.layers.attention import concat_heads, fused_attention, rotary_embedding
from src.layers.mixer import register_mixer
from src.layers.selective_ssm import causal_conv1d
from src.schema import PositiveFloat, PositiveInt

Update = Literal["linear", "delta"]


def elu_plus_one(x: torch.Tensor) -> torch.Tensor:
    r"""The positive feature map of linear attention, σ(x) = ELU(x) + 1.

    Paper: Transformers are RNNs (Katharopoulos et al. 2020, arXiv:2006.16236), Sec. 3.2.1, Eq. (7)

    .. math::
        \sigma(x) = \mathrm{elu}(x) + 1 = \begin{cases} x + 1 & x > 0 \\ e^{x} & x \le 0 \end{cases}

    Infini-attention (Sec. 2.1.2) uses it for σ(Q) and σ(K). It is computed piecewise, not as
    elu(x) + 1 = expm1(x) + 1, which cancels to exactly 0 below x ≈ -17 in float32 (-37 in
    float64) and so breaks σ > 0; min(x, 0) keeps the unused branch's gradient finite.

    Args:
        x: (...) any floating-point tensor.

    Returns:
        (...) σ(x) > 0.
    """
    check_shapes(x=(x, "..."))
    return torch.where(x > 0, x + 1, torch.exp(x.clamp_max(0)))


def memory_retrieve(sigma_q: torch.Tensor, M: torch.Tensor, z: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    r"""Read the compressive memory with the queries of a segment.

    Paper: Infini-attention (Munkhdalai et al. 2024, arXiv:2404.07143), Sec. 2.1.2, Eq. (3)

    .. math::
        A_{mem} = \frac{\sigma(Q) M_{s-1}}{\sigma(Q) z_{s-1}}

    eps only guards the division: the denominator is max(σ(Q) z, eps), which equals σ(Q) z
    whenever the memory holds anything (σ > 0, so σ(Q) z = 0 only for z = 0, and then M = 0).

    Args:
        sigma_q: (..., n, d_k) σ(Q).
        M: (..., d_k, d_v) memory M_{s-1}.
        z: (..., d_k) normaliser z_{s-1}.
        eps: lower bound of the denominator.

    Returns:
        (..., n, d_v) A_mem.
    """
    check_shapes(sigma_q=(sigma_q, "... n d_k"), M=(M, "... d_k d_v"), z=(z, "... d_k"))
    check_positive("eps", eps)
    return (sigma_q @ M) / (sigma_q @ z[..., None]).clamp_min(eps)


def memory_update_linear(
    M: torch.Tensor, z: torch.Tensor, sigma_k: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Linear memory update: add the segment's key-value outer products.

    Paper: Infini-attention (Munkhdalai et al. 2024, arXiv:2404.07143), Sec. 2.1.2, Eq. (4)

    .. math::
        M_s = M_{s-1} + \sigma(K)^\top V, \qquad z_s = z_{s-1} + \sum_{t=1}^{N} \sigma(K_t)

    Args:
        M: (..., d_k, d_v) M_{s-1}.
        z: (..., d_k) z_{s-1}.
        sigma_k: (..., N, d_k) σ(K) of the segment.
        v: (..., N, d_v) V of the segment.

    Returns:
        (M_s, z_s) with the shapes of (M, z).
    """
    check_shapes(M=(M, "... d_k d_v"), z=(z, "... d_k"), sigma_k=(sigma_k, "... N d_k"), v=(v, "... N d_v"))
    return M + sigma_k.transpose(-2, -1) @ v, z + sigma_k.sum(dim=-2)


def memory_update_delta(
    M: torch.Tensor, z: torch.Tensor, sigma_k: torch.Tensor, v: torch.Tensor, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Delta-rule memory update: write only what the memory does not already return for the keys.

    Paper: Infini-attention (Munkhdalai et al. 2024, arXiv:2404.07143), Sec. 2.1.2, Eq. (5)

    .. math::
        M_s = M_{s-1} + \sigma(K)^\top \Big(V - \frac{\sigma(K) M_{s-1}}{\sigma(K) z_{s-1}}\Big),
        \qquad z_s = z_{s-1} + \sum_{t=1}^{N} \sigma(K_t)

    The retrieved term is `memory_retrieve` with the keys as queries (Schlag et al. 2021, Sec. 4.2,
    with β = 1). The normaliser is updated as in Eq. (4), z_s = z_{s-1} + Σ_t σ(K_t), as the paper
    specifies for both update rules.

    Args:
        M: (..., d_k, d_v) M_{s-1}.
        z: (..., d_k) z_{s-1}.
        sigma_k: (..., N, d_k) σ(K) of the segment.
        v: (..., N, d_v) V of the segment.
        eps: lower bound of the retrieval's denominator.

    Returns:
        (M_s, z_s) with the shapes of (M, z).
    """
    check_shapes(M=(M, "... d_k d_v"), z=(z, "... d_k"), sigma_k=(sigma_k, "... N d_k"), v=(v, "... N d_v"))
    retrieved = memory_retrieve(sigma_k, M, z, eps)
    return M + sigma_k.transpose(-2, -1) @ (v - retrieved), z + sigma_k.sum(dim=-2)


def _update(
    update: str, M: torch.Tensor, z: torch.Tensor, sigma_k: torch.Tensor, v: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    if update == "linear":
        return memory_update_linear(M, z, sigma_k, v)
    if update == "delta":
        return memory_update_delta(M, z, sigma_k, v, eps)
    raise ValueError(f"update must be 'linear' or 'delta', got {update!r}")


def _initial_memory(
    M0: torch.Tensor | None, z0: torch.Tensor | None, like_k: torch.Tensor, like_v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """M_0, z_0 when given, else zeros shaped (..., d_k, d_v) and (..., d_k)."""
    if M0 is None:
        M0 = like_k.new_zeros(*like_k.shape[:-2], like_k.shape[-1], like_v.shape[-1])
    if z0 is None:
        z0 = like_k.new_zeros(*like_k.shape[:-2], like_k.shape[-1])
    return M0, z0


def _sequence_and_initial_memory(
    sigma_q: torch.Tensor, sigma_k: torch.Tensor, v: torch.Tensor, M0: torch.Tensor | None, z0: torch.Tensor | None
) -> tuple[int, torch.Tensor, torch.Tensor]:
    """Check a sequence's σ(Q), σ(K), V and (M_0, z_0); return its length n and the starting memory."""
    sizes = check_shapes(
        sigma_q=(sigma_q, "... n d_k"), sigma_k=(sigma_k, "... n d_k"), v=(v, "... n d_v"),
        M0=(M0, "... d_k d_v"), z0=(z0, "... d_k"),
    )  # fmt: skip
    return (sizes["n"], *_initial_memory(M0, z0, sigma_k, v))


def compressive_memory_recurrent(
    sigma_q: torch.Tensor,
    sigma_k: torch.Tensor,
    v: torch.Tensor,
    update: Update = "linear",
    segment_size: int = 1,
    M0: torch.Tensor | None = None,
    z0: torch.Tensor | None = None,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""The compressive memory over a sequence, segment by segment: retrieve, then update (literal loop).

    Paper: Infini-attention (Munkhdalai et al. 2024, arXiv:2404.07143), Sec. 2.1.2, Eq. (3)-(5)

    .. math::
        A_{mem, s} = \frac{\sigma(Q_s) M_{s-1}}{\sigma(Q_s) z_{s-1}}, \qquad
        (M_s, z_s) = \mathrm{update}(M_{s-1}, z_{s-1}, \sigma(K_s), V_s)

    for s = 1, 2, ... over segments of `segment_size` tokens (the last may be shorter), with the
    update of Eq. (4) (linear) or Eq. (5) (delta). segment_size = 1 is token-level memory: token
    t reads the memory of tokens 1 .. t-1. This is the reference the chunked form is tested against.

    Args:
        sigma_q, sigma_k: (..., n, d_k) σ(Q), σ(K).
        v: (..., n, d_v) V.
        update: "linear" (Eq. 4) or "delta" (Eq. 5).
        segment_size: tokens per segment, >= 1.
        M0, z0: (..., d_k, d_v), (..., d_k) the memory before the sequence; zeros when None.
        eps: lower bound of the retrieval's denominator.

    Returns:
        A_mem (..., n, d_v) and the final (M, z).
    """
    check_positive("segment_size", segment_size)
    n, M, z = _sequence_and_initial_memory(sigma_q, sigma_k, v, M0, z0)
    outputs = []
    for start in range(0, n, segment_size):
        segment = slice(start, start + segment_size)
        outputs.append(memory_retrieve(sigma_q[..., segment, :], M, z, eps))
        M, z = _update(update, M, z, sigma_k[..., segment, :], v[..., segment, :], eps)
    return torch.cat(outputs, dim=-2), M, z


def linear_memory_chunked(
    sigma_q: torch.Tensor,
    sigma_k: torch.Tensor,
    v: torch.Tensor,
    chunk_size: int = 64,
    M0: torch.Tensor | None = None,
    z0: torch.Tensor | None = None,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Token-level memory with the linear update, a chunk at a time (fast form of the recurrence).

    Paper: Infini-attention (Munkhdalai et al. 2024, arXiv:2404.07143), Sec. 2.1.2, Eq. (3)-(4) chunked

    Token t of a chunk that starts with memory (M_c, z_c) reads everything before it: M_c and the
    earlier tokens of its own chunk. With P = \mathrm{tril}_{-1}(\sigma(Q_c)\sigma(K_c)^\top) the
    strictly lower-triangular scores (a token never scores itself),

    .. math::
        A_{mem, c} = \frac{\sigma(Q_c) M_c + P V_c}{\sigma(Q_c) z_c + P \mathbf{1}}, \qquad
        M_{c+1} = M_c + \sigma(K_c)^\top V_c, \quad z_{c+1} = z_c + \textstyle\sum_t \sigma(K_{c,t})

    which equals `compressive_memory_recurrent(..., "linear", segment_size=1)` for any chunk size
    (the denominator is bounded below by eps exactly as in `memory_retrieve`). n / chunk_size
    steps of matrix products instead of n steps of vector products.

    Args:
        sigma_q, sigma_k: (..., n, d_k) σ(Q), σ(K).
        v: (..., n, d_v) V.
        chunk_size: tokens per chunk, >= 1.
        M0, z0: (..., d_k, d_v), (..., d_k) the memory before the sequence; zeros when None.
        eps: lower bound of the retrieval's denominator.

    Returns:
        A_mem (..., n, d_v) and the final (M, z).
    """
    check_positive("chunk_size", chunk_size)
    check_positive("eps", eps)
    n, M, z = _sequence_and_initial_memory(sigma_q, sigma_k, v, M0, z0)
    strictly_lower = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=v.device).tril(-1)
    outputs = []
    for start in range(0, n, chunk_size):
        chunk = slice(start, start + chunk_size)
        q_c, k_c, v_c = sigma_q[..., chunk, :], sigma_k[..., chunk, :], v[..., chunk, :]
        T = q_c.shape[-2]
        P = (q_c @ k_c.transpose(-2, -1)).masked_fill(~strictly_lower[:T, :T], 0.0)
        numerator = q_c @ M + P @ v_c
        denominator = (q_c @ z[..., None] + P.sum(dim=-1, keepdim=True)).clamp_min(eps)
        outputs.append(numerator / denominator)
        M, z = memory_update_linear(M, z, k_c, v_c)
    return torch.cat(outputs, dim=-2), M, z


def delta_memory_chunked(
    sigma_q: torch.Tensor,
    sigma_k: torch.Tensor,
    v: torch.Tensor,
    chunk_size: int = 64,
    M0: torch.Tensor | None = None,
    z0: torch.Tensor | None = None,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Token-level memory with the delta update, a chunk at a time: DeltaNet's WY / UT chunkwise form.

    Paper: DeltaNet (Yang et al. 2024, arXiv:2406.06484), Sec. 3.2, chunkwise WY / UT form of Infini Eq. (3), (5)

    At token level Infini-attention's Eq. (5) is, with k_t = σ(K_t) and u_t the value written,

    .. math::
        M_t = M_{t-1} + k_t^\top u_t, \qquad u_t = v_t - \beta_t\, k_t M_{t-1}, \qquad
        \beta_t = \frac{1}{\max(k_t z_{t-1}, \epsilon)}

    i.e. M_t = (I - \beta_t k_t^\top k_t) M_{t-1} + k_t^\top v_t: DeltaNet's generalised Householder
    transition with the step size β_t set by the normaliser. The retrieval's normalisation is
    handled exactly, not approximated: z_t = z_{t-1} + k_t is a running sum of the keys, so every
    β_t is known before any M (inside a chunk starting at (M_c, z_c),
    k_t z_{t-1} = k_t z_c + \sum_{j<t} k_t k_j^\top). Writing M_{t-1} = M_c + \sum_{j<t} k_j^\top u_j
    inside the chunk turns the definition of u into a unit lower-triangular system (Yang et al.'s
    UT transform; G = \mathrm{tril}_{-1}(K_c K_c^\top), B = \mathrm{diag}(\beta)):

    .. math::
        (I + B G)\, U_c = V_c - B K_c M_c
        \;\Rightarrow\; U_c = \tilde U_c - W_c M_c, \quad
        \tilde U_c = (I + B G)^{-1} V_c, \quad W_c = (I + B G)^{-1} B K_c

    Ũ and W (the WY factors) are solved for every chunk at once; only M walks chunk by chunk:

    .. math::
        A_{mem, c} = \frac{\sigma(Q_c) M_c + P U_c}{\sigma(Q_c) z_c + P \mathbf{1}}, \qquad
        M_{c+1} = M_c + K_c^\top U_c, \quad z_{c+1} = z_c + \textstyle\sum_t k_{c,t}

    with P = \mathrm{tril}_{-1}(\sigma(Q_c) K_c^\top) as in `linear_memory_chunked` (a token reads
    only earlier tokens). Equal to `compressive_memory_recurrent(..., "delta", segment_size=1)` for
    any chunk size (tested to 1e-10 in float64). DeltaNet scales the written value by β as well
    (u = β (v - S k)); Infini-attention's Eq. (5) writes v - β k M, which this form keeps.

    Args:
        sigma_q, sigma_k: (..., n, d_k) σ(Q), σ(K).
        v: (..., n, d_v) V.
        chunk_size: tokens per chunk, >= 1.
        M0, z0: (..., d_k, d_v), (..., d_k) the memory before the sequence; zeros when None.
        eps: lower bound of the retrieval's denominators.

    Returns:
        A_mem (..., n, d_v) and the final (M, z).
    """
    check_positive("chunk_size", chunk_size)
    check_positive("eps", eps)
    n, M, z = _sequence_and_initial_memory(sigma_q, sigma_k, v, M0, z0)
    C = max(1, min(chunk_size, n))

    def chunks(x: torch.Tensor) -> torch.Tensor:  # (..., n, d) -> (..., n_c, C, d), zero rows after the end
        return nn.functional.pad(x, (0, 0, 0, -n % C)).unflatten(-2, (-1, C))

    Q, K, V = chunks(sigma_q), chunks(sigma_k), chunks(v)
    key_sums = K.sum(dim=-2)  # (..., n_c, d_k)
    z_c = z[..., None, :] + key_sums.cumsum(dim=-2) - key_sums  # z at the start of each chunk
    strictly_lower = torch.ones(C, C, dtype=torch.bool, device=v.device).tril(-1)
    G = (K @ K.transpose(-2, -1)).masked_fill(~strictly_lower, 0.0)  # k_i k_j^T, j < i
    P = (Q @ K.transpose(-2, -1)).masked_fill(~strictly_lower, 0.0)
    beta = 1 / ((K @ z_c[..., None]).squeeze(-1) + G.sum(dim=-1)).clamp_min(eps)  # (..., n_c, C)
    # UT transform: I + B G is unit lower triangular (unitriangular=True reads only B G's lower part)
    BG = beta[..., None] * G
    U_tilde = torch.linalg.solve_triangular(BG, V, upper=False, unitriangular=True)
    W = torch.linalg.solve_triangular(BG, beta[..., None] * K, upper=False, unitriangular=True)
    denominator = (Q @ z_c[..., None] + P.sum(dim=-1, keepdim=True)).clamp_min(eps)
    outputs = []
    # unbind, not indexing: the backward of one unbind is linear in n, that of n_c index ops quadratic
    for Q_c, K_c, P_c, U_tilde_c, W_c, denominator_c in zip(
        *(t.unbind(-3) for t in (Q, K, P, U_tilde, W, denominator))
    ):
        U = U_tilde_c - W_c @ M
        outputs.append((Q_c @ M + P_c @ U) / denominator_c)
        M = M + K_c.transpose(-2, -1) @ U
    return torch.cat(outputs, dim=-2)[..., :n, :], M, z + key_sums.sum(dim=-2)


def l2_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    r"""Scale each vector to unit Euclidean length (the Q/K normalisation of DeltaNet).

    Paper: DeltaNet (Yang et al. 2024, arXiv:2406.06484), Sec. 3.3 (arXiv v5), L2 normalisation of q and k

    .. math::
        \hat x = \frac{x}{\max(\lVert x \rVert_2, \epsilon)}

    Sec. 3.3 of the final version (arXiv v5, NeurIPS 2024). DeltaNet normalises q and k after its
    feature map (SiLU), so that its transition I - β k k^\top has the eigenvalues 1 and 1 - β in
    [0, 1]. `TensorMemory(normalize_qkv=True)` does the same after its feature map σ (ELU + 1):
    σ(q) and σ(k) are normalised, and v as well (this project's choice: every written value then
    has norm 1). The eigenvalue bound does not carry over exactly:
    the delta rule there is Infini-attention's Eq. (5), whose transition I - σ(k)^\top σ(k) / (σ(k) z)
    has the eigenvalue 1 - ‖σ(k)‖² / (σ(k) z) along σ(k), and a unit σ(k) fixes the numerator only.
    eps only guards x = 0.

    Args:
        x: (..., d) vectors along the last dimension.
        eps: lower bound of the norm.

    Returns:
        (..., d) x / max(||x||, eps).
    """
    check_shapes(x=(x, "... d"))
    check_positive("eps", eps)
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(eps)


def clip_update(delta_M: torch.Tensor, max_delta: float) -> torch.Tensor:
    r"""Clamp each entry of one write's increment to [-max_delta, max_delta] (a stability control).

    Paper: Infini-attention (Munkhdalai et al. 2024, arXiv:2404.07143), Sec. 2.1.2, Eq. (4)-(5), our own clamp

    .. math::
        M_s = M_{s-1} + \mathrm{clip}(\Delta M_s, -c_\Delta, c_\Delta), \qquad
        \Delta M_s = \sigma(K)^\top V \;\text{(Eq. 4)} \;\text{or}\;
        \sigma(K)^\top\Big(V - \frac{\sigma(K) M_{s-1}}{\sigma(K) z_{s-1}}\Big) \;\text{(Eq. 5)}

    Not in the paper: the equations are Infini-attention's, the clamp is this project's own control
    (`max_delta`, default off, so the paper's form is unchanged). Effect: one segment (one token
    at token level) moves no entry of M by more than c_Δ, so an outlier key or value cannot
    overwrite the memory at once; M itself stays unbounded over time.
    z is not clipped.

    Args:
        delta_M: (..., d_k, d_v) the increment ΔM_s of Eq. (4) or (5).
        max_delta: c_Δ > 0.

    Returns:
        (..., d_k, d_v) the clipped increment.
    """
    check_shapes(delta_M=(delta_M, "... d_k d_v"))
    check_positive("max_delta", max_delta)
    return delta_M.clamp(-max_delta, max_delta)


def clip_memory(M: torch.Tensor, max_memory: float) -> torch.Tensor:
    r"""Clamp each entry of the memory to [-max_memory, max_memory] after a write (a stability control).

    Paper: Infini-attention (Munkhdalai et al. 2024, arXiv:2404.07143), Sec. 2.1.2, Eq. (4)-(5), our own clamp

    .. math::
        M_s \leftarrow \mathrm{clip}(M_s, -c_M, c_M)

    Not in the paper: the equations are Infini-attention's, the clamp is this project's own control
    (`max_memory`, default off). Effect: |M_ij| <= c_M at every
    step, so the memory cannot grow without bound over a long sequence; an entry at the bound
    saturates and ignores further writes in its direction (writes against it still act).

    Args:
        M: (..., d_k, d_v) the memory after the write.
        max_memory: c_M > 0.

    Returns:
        (..., d_k, d_v) the clipped memory.
    """
    check_shapes(M=(M, "... d_k d_v"))
    check_positive("max_memory", max_memory)
    return M.clamp(-max_memory, max_memory)


def clip_memory_norm(M: torch.Tensor, max_norm: float) -> torch.Tensor:
    r"""Rescale the memory of each head to Frobenius norm at most max_norm (a stability control).

    Paper: Infini-attention (Munkhdalai et al. 2024, arXiv:2404.07143), Sec. 2.1.2, Eq. (4)-(5), our own clamp

    .. math::
        M_s \leftarrow M_s \cdot \min\Big(1, \frac{c_N}{\lVert M_s \rVert_F}\Big)

    Not in the paper: the equations are Infini-attention's, the clamp is this project's own control
    (`max_norm`, default off). Effect: ||M||_F <= c_N at every
    step with the direction of M kept; when it acts, every stored association shrinks by the same
    factor (a uniform forgetting), and since z is not rescaled, retrieval σ(q) M / σ(q) z shrinks with it.

    Args:
        M: (..., d_k, d_v) the memory after the write.
        max_norm: c_N > 0.

    Returns:
        (..., d_k, d_v) the rescaled memory.
    """
    check_shapes(M=(M, "... d_k d_v"))
    check_positive("max_norm", max_norm)
    norm = torch.linalg.matrix_norm(M)[..., None, None]  # Frobenius, per head
    return M * (max_norm / norm.clamp_min(max_norm))


def memory_gate(A_mem: torch.Tensor, A_dot: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    r"""Long-term context injection: a learned per-head mix of memory and local attention.

    Paper: Infini-attention (Munkhdalai et al. 2024, arXiv:2404.07143), Sec. 2.1.2, Eq. (6)

    .. math::
        A = \mathrm{sigmoid}(\beta) \odot A_{mem} + (1 - \mathrm{sigmoid}(\beta)) \odot A_{dot}

    Args:
        A_mem: (b, H, n, d_v) memory retrieval.
        A_dot: (b, H, n, d_v) local causal attention.
        beta: (H,) one gating scalar per head.

    Returns:
        (b, H, n, d_v) A.
    """
    check_shapes(A_mem=(A_mem, "b H n d_v"), A_dot=(A_dot, "b H n d_v"), beta=(beta, "H"))
    gate = torch.sigmoid(beta)[:, None, None]
    return gate * A_mem + (1 - gate) * A_dot


@dataclass(frozen=True)
class CompressiveMemoryState:
    """Per head: the memory M (b, H, d_k, d_v) and normaliser z (b, H, d_k) of the completed
    segments, and the raw keys and values (b, H, n, d) of the current, incomplete segment
    (n < segment_size, so the state's size is constant); and the last kernel - 1 inputs
    (b, <= kernel - 1, d_model) that a short convolution reads (empty without one)."""

    M: torch.Tensor
    z: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    tail: torch.Tensor


class _SegmentMemoryLayer(HeadProjections, ABC):
    """Multi-head projections and the segment walk shared by both layers.

    `step` consumes tokens in order: the tokens of the current segment are read (by `_read`)
    against the memory of the earlier segments, and when a segment is complete it is written
    into the memory (retrieve first, then update).
    """

    def __init__(self, d_model: int, n_heads: int, segment_size: int, update: str, eps: float, bias: bool = False):
        super().__init__(d_model, n_heads, bias)  # Q, K, V of Eq. (1), split into heads
        self.segment_size, self.update, self.eps = segment_size, update, eps

    def _write(
        self, M: torch.Tensor, z: torch.Tensor, segment_k: torch.Tensor, segment_v: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """Write a complete segment (raw keys, values) into (M, z): Eq. (4) or (5)."""
        return _update(self.update, M, z, elu_plus_one(segment_k), segment_v, self.eps)

    @abstractmethod
    def _read(
        self, q: torch.Tensor, segment_k: torch.Tensor, segment_v: torch.Tensor, M: torch.Tensor, z: torch.Tensor
    ) -> torch.Tensor:
        """The output of the queries q (b, H, n, d) given the segment so far and the memory (M, z)."""

    def _project(self, x: torch.Tensor, tail: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Q, K, V heads of the tokens x and the tail to carry (`tail`: earlier inputs, for a convolution)."""
        return *self._heads(x), tail

    def _step(self, x: torch.Tensor, state: CompressiveMemoryState | None) -> tuple[torch.Tensor, object]:
        q, k, v, tail = self._project(x, x[:, :0] if state is None else state.tail)
        if state is None:
            M, z = _initial_memory(None, None, k, v)
            state = self.State(M, z, k[..., :0, :], v[..., :0, :], tail)
        M, z, segment_k, segment_v = state.M, state.z, state.k, state.v
        outputs, start = [], 0
        while start < x.shape[1]:
            stop = min(x.shape[1], start + self.segment_size - segment_k.shape[-2])
            segment_k = torch.cat((segment_k, k[..., start:stop, :]), dim=-2)
            segment_v = torch.cat((segment_v, v[..., start:stop, :]), dim=-2)
            outputs.append(self._read(q[..., start:stop, :], segment_k, segment_v, M, z))
            if segment_k.shape[-2] == self.segment_size:  # segment complete: retrieve first, then update
                M, z = self._write(M, z, segment_k, segment_v)
                segment_k, segment_v = segment_k[..., :0, :], segment_v[..., :0, :]
            start = stop
        y = concat_heads(torch.cat(outputs, dim=-2), self.W_o.weight)
        return y, self.State(M, z, segment_k, segment_v, tail)


class TensorMemoryState(CompressiveMemoryState):
    """The state of `TensorMemory`."""


class InfiniAttentionState(CompressiveMemoryState):
    """The state of `InfiniAttention`."""


@dataclass(frozen=True)
class HeadMemory:
    """The memory of one head of `TensorMemory`: its update rule and its stability clamps (None: off).

    A config lists one per head under `heads:`, e.g. `{update: delta, max_norm: 4.0}`.
    """

    update: Update = "linear"
    max_delta: PositiveFloat | None = None
    max_memory: PositiveFloat | None = None
    max_norm: PositiveFloat | None = None

    def clip(self, M: torch.Tensor, M_next: torch.Tensor) -> torch.Tensor:
        """The memory after a write M -> M_next with this head's clamps: the increment, the entries, the norm."""
        if self.max_delta is not None:
            M_next = M + clip_update(M_next - M, self.max_delta)
        if self.max_memory is not None:
            M_next = clip_memory(M_next, self.max_memory)
        if self.max_norm is not None:
            M_next = clip_memory_norm(M_next, self.max_norm)
        return M_next

    @property
    def clipped(self) -> bool:
        return (self.max_delta, self.max_memory, self.max_norm) != (None, None, None)


CHUNKED = {"linear": linear_memory_chunked, "delta": delta_memory_chunked}
SHIFTED = {"linear": (linear_memory_shifted, fla_linear), "delta": (delta_memory_shifted, fla_delta)}


@register_mixer("tensor_memory")
class TensorMemory(_SegmentMemoryLayer):
    """Memory-only layer: project to Q, K, V, retrieve from the past memory, update, project out.

    No local attention, no gate, no softmax. segment_size = 1 is token-level memory (token t reads
    tokens < t); larger segments read only earlier segments. Token-level memory runs chunked
    (`linear_memory_chunked`, `delta_memory_chunked`, both proven equal to the recurrence);
    segment-level memory and clamped memories run the segment recurrence (a clamp acts after
    every write, which no chunked form reproduces).

    Stability controls (all off by default, so the layer is the paper's): `max_delta`,
    `max_memory`, `max_norm` clamp each write (`clip_update`, `clip_memory`, `clip_memory_norm`,
    in that order); `normalize_qkv` L2-normalises each head's σ(q), σ(k) after the feature map, as
    DeltaNet does, and v (`l2_normalize`);
    `bias` adds a bias to the Q, K, V projections. `conv_kernel` > 1 adds DeltaNet's short
    convolution (Yang et al. 2024, arXiv:2406.06484, its architecture figure, after the
    official code's ShortConvolution): each of the Q, K, V projections passes a causal depthwise
    convolution (`causal_conv1d`) and a SiLU before the heads are split. `heads` declares each head's memory instead
    (`HeadMemory`: update rule and clamps per head, so heads may differ); the layer-level `update`
    and clamps must then keep their defaults.

    `backend` picks the fast form of the unclamped token-level memory: "chunked" (the PyTorch
    chunked forms), "fla" (flash-linear-attention's Triton kernels on inputs shifted one token,
    `src.kernels.fla_memory`, extra 'fla', CUDA tensors only) or "auto" (fla on CUDA when installed,
    else chunked). All compute the same equations.
    """

    State = TensorMemoryState

    def __init__(
        self,
        d_model: int,
        n_heads: PositiveInt,
        update: Update = "linear",
        segment_size: PositiveInt = 1,
        chunk_size: PositiveInt = 64,
        eps: PositiveFloat = 1e-6,
        max_delta: PositiveFloat | None = None,
        max_memory: PositiveFloat | None = None,
        max_norm: PositiveFloat | None = None,
        normalize_qkv: bool = False,
        bias: bool = False,
        heads: list[HeadMemory] | None = None,
        backend: Literal["auto", "chunked", "fla"] = "auto",
        conv_kernel: PositiveInt = 1,
    ):
        super().__init__(d_model, n_heads, segment_size, update, eps, bias)
        self.conv = (
            nn.Parameter(torch.randn(3 * d_model, conv_kernel) / math.sqrt(conv_kernel)) if conv_kernel > 1 else None
        )
        if backend not in ("auto", "chunked", "fla"):
            raise ValueError(f"backend must be one of auto, chunked, fla, got {backend!r}")
        self.backend = backend
        layer_memory = HeadMemory(update, max_delta, max_memory, max_norm)
        if heads is None:
            heads = [layer_memory] * n_heads
        else:
            if layer_memory != HeadMemory():
                raise ValueError("with heads, give update, max_delta, max_memory and max_norm per head, not per layer")
            heads = [spec if isinstance(spec, HeadMemory) else HeadMemory(**spec) for spec in heads]
            if len(heads) != n_heads:
                raise ValueError(f"heads must list one memory per head ({n_heads}), got {len(heads)}")
        self.chunk_size, self.normalize_qkv, self.heads = chunk_size, normalize_qkv, heads
        groups: dict[HeadMemory, list[int]] = {}
        for index, spec in enumerate(heads):
            groups.setdefault(spec, []).append(index)
        self._groups = list(groups.items())  # heads that share a memory kind run together
        order = [index for _, indices in self._groups for index in indices]
        self._inverse = sorted(range(n_heads), key=order.__getitem__)  # group order -> head order

    def _project(self, x: torch.Tensor, tail: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Q, K, V heads (after the short convolution and SiLU when `conv_kernel` > 1, reading `tail`)."""
        if self.conv is None:
            q, k, v = self._heads(x)
        else:
            window = torch.cat((tail, x), dim=1)
            projected = torch.cat((self.W_q(window), self.W_k(window), self.W_v(window)), dim=-1)
            projected = F.silu(causal_conv1d(projected.transpose(1, 2), self.conv).transpose(1, 2))
            q, k, v = (self._split(part[:, tail.shape[1] :]) for part in projected.chunk(3, dim=-1))
            tail = window[:, window.shape[1] - min(self.conv.shape[1] - 1, window.shape[1]) :]
        return q, k, l2_normalize(v) if self.normalize_qkv else v, tail

    def _feature(self, x: torch.Tensor) -> torch.Tensor:
        """σ(x) = ELU(x) + 1, then L2-normalised under normalize_qkv (after the feature map, as in DeltaNet)."""
        return l2_normalize(elu_plus_one(x)) if self.normalize_qkv else elu_plus_one(x)

    def _per_head_group(
        self, compute: Callable[..., tuple[torch.Tensor, ...]], *tensors: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """compute(spec, *tensors of its heads) for each group of heads, reassembled in head order (dim 1)."""
        if len(self._groups) == 1:
            return compute(self._groups[0][0], *tensors)
        results = [compute(spec, *(t[:, indices] for t in tensors)) for spec, indices in self._groups]
        return tuple(torch.cat(parts, dim=1)[:, self._inverse] for parts in zip(*results))

    def _read(
        self, q: torch.Tensor, segment_k: torch.Tensor, segment_v: torch.Tensor, M: torch.Tensor, z: torch.Tensor
    ) -> torch.Tensor:
        return memory_retrieve(self._feature(q), M, z, self.eps)

    def _write(
        self, M: torch.Tensor, z: torch.Tensor, segment_k: torch.Tensor, segment_v: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        def write(
            spec: HeadMemory, M: torch.Tensor, z: torch.Tensor, k: torch.Tensor, v: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor]:
            M_next, z_next = _update(spec.update, M, z, self._feature(k), v, self.eps)
            return spec.clip(M, M_next), z_next

        return self._per_head_group(write, M, z, segment_k, segment_v)

    def _step(  # state: a TensorMemoryState (Mixer.step)
        self, x: torch.Tensor, state: CompressiveMemoryState | None
    ) -> tuple[torch.Tensor, object]:
        if self.segment_size != 1 or any(spec.clipped for spec, _ in self._groups):
            return super()._step(x, state)
        q, k, v, tail = self._project(x, x[:, :0] if state is None else state.tail)
        M0, z0 = _initial_memory(None, None, k, v) if state is None else (state.M, state.z)

        use_fla = self.backend == "fla" or (self.backend == "auto" and x.is_cuda and fla_available())
        if use_fla and not x.is_cuda:
            raise ValueError("TensorMemory backend 'fla' needs CUDA tensors (fla's kernels run on the GPU)")

        def chunked(
            spec: HeadMemory, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, M0: torch.Tensor, z0: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            if use_fla:
                shifted, kernel = SHIFTED[spec.update]
                return shifted(self._feature(q), self._feature(k), v, M0, z0, self.eps, kernel)
            return CHUNKED[spec.update](self._feature(q), self._feature(k), v, self.chunk_size, M0, z0, self.eps)

        A_mem, M, z = self._per_head_group(chunked, q, k, v, M0, z0)
        return concat_heads(A_mem, self.W_o.weight), self.State(M, z, k[..., :0, :], v[..., :0, :], tail)


@register_mixer("infini_attention")
class InfiniAttention(_SegmentMemoryLayer):
    """Gated Infini-attention (Sec. 2.1, Fig. 1): local causal attention within the segment plus
    memory retrieval from earlier segments, mixed per head by Eq. (6), then Eq. (7).

    Local attention is the scaled dot-product attention of Eq. (2) over the segment's keys so far,
    computed by `fused_attention`, with RoPE (`rotary_embedding`, positions within the segment) on
    its Q and K only: the paper's "Position Embeddings" paragraph keeps positional encodings off
    the compressive memory's keys and queries and applies them after the memory read and update,
    so the memory reads and writes the unrotated σ(Q), σ(K). β starts at 0, an even mix.
    """

    State = InfiniAttentionState

    def __init__(
        self,
        d_model: int,
        n_heads: PositiveInt,
        segment_size: PositiveInt,
        update: Update = "linear",
        eps: PositiveFloat = 1e-6,
    ):
        super().__init__(d_model, n_heads, segment_size, update, eps)
        self.beta = nn.Parameter(torch.zeros(n_heads))

    def _read(
        self, q: torch.Tensor, segment_k: torch.Tensor, segment_v: torch.Tensor, M: torch.Tensor, z: torch.Tensor
    ) -> torch.Tensor:
        position = segment_k.shape[-2] - q.shape[-2]  # the queries' first position within the segment
        A_dot = fused_attention(rotary_embedding(q, position), rotary_embedding(segment_k), segment_v, causal=True)
        A_mem = memory_retrieve(elu_plus_one(q), M, z, self.eps)
        return memory_gate(A_mem, A_dot, self.beta)
