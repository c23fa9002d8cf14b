"""Tensor-product compressive memory: Infini-attention and its memory-only variant.

Papers: Leave No Context Behind: Efficient Infinite Context Transformers with Infini-attention
(Munkhdalai, Faruqui, Gopal 2024, arXiv:2404.07143); Transformers are RNNs (Katharopoulos et al.
2020, arXiv:2006.16236); Linear Transformers Are Secretly Fast Weight Programmers (Schlag et al.
2021, arXiv:2102.11174).

Glossary (code -> paper):
    sigma_q, sigma_k   σ(Q), σ(K) with σ = ELU + 1, (..., n, d_k)
    v                  V, (..., n, d_v)
    M, z               memory M_s (..., d_k, d_v) and normaliser z_s (..., d_k)
    beta               β, one gate scalar per head
    segment_size       N, the tokens of one segment (1 = token-level memory)

Order (paper Sec. 2.1.2): every segment first retrieves from M_{s-1}, then writes itself into
M_s, so no token reads itself through memory. M_0 = 0 and z_0 = 0 (the paper leaves them open):
the first segment retrieves exactly zero, because eps only guards the 0 / 0.
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from src.layers._checks import check_positive, check_shapes
from src.layers._heads import HeadProjections
from src.layers.attention import concat_heads, fused_attention
from src.layers.mixer import register_mixer
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
    with β = 1); the paper gives no separate z rule for Eq. (5), so z is updated as in Eq. (4).

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


def _update(update: str, M, z, sigma_k, v, eps):
    if update == "linear":
        return memory_update_linear(M, z, sigma_k, v)
    if update == "delta":
        return memory_update_delta(M, z, sigma_k, v, eps)
    raise ValueError(f"update must be 'linear' or 'delta', got {update!r}")


def _initial_memory(M0, z0, like_k: torch.Tensor, like_v: torch.Tensor):
    """M_0, z_0 when given, else zeros shaped (..., d_k, d_v) and (..., d_k)."""
    if M0 is None:
        M0 = like_k.new_zeros(*like_k.shape[:-2], like_k.shape[-1], like_v.shape[-1])
    if z0 is None:
        z0 = like_k.new_zeros(*like_k.shape[:-2], like_k.shape[-1])
    return M0, z0


def _sequence_and_initial_memory(sigma_q, sigma_k, v, M0, z0):
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
    (n < segment_size, so the state's size is constant)."""

    M: torch.Tensor
    z: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor


class _SegmentMemoryLayer(HeadProjections, ABC):
    """Multi-head projections and the segment walk shared by both layers.

    `step` consumes tokens in order: the tokens of the current segment are read (by `_read`)
    against the memory of the earlier segments, and when a segment is complete it is written
    into the memory (retrieve first, then update).
    """

    def __init__(self, d_model: int, n_heads: int, segment_size: int, update: str, eps: float):
        super().__init__(d_model, n_heads)  # Q, K, V of Eq. (1), split into heads
        self.segment_size, self.update, self.eps = segment_size, update, eps

    @abstractmethod
    def _read(self, q, segment_k, segment_v, M, z) -> torch.Tensor:
        """The output of the queries q (b, H, n, d) given the segment so far and the memory (M, z)."""

    def _step(self, x: torch.Tensor, state: CompressiveMemoryState | None):
        q, k, v = self._heads(x)
        if state is None:
            M, z = _initial_memory(None, None, k, v)
            state = self.State(M, z, k[..., :0, :], v[..., :0, :])
        M, z, segment_k, segment_v = state.M, state.z, state.k, state.v
        outputs, start = [], 0
        while start < x.shape[1]:
            stop = min(x.shape[1], start + self.segment_size - segment_k.shape[-2])
            segment_k = torch.cat((segment_k, k[..., start:stop, :]), dim=-2)
            segment_v = torch.cat((segment_v, v[..., start:stop, :]), dim=-2)
            outputs.append(self._read(q[..., start:stop, :], segment_k, segment_v, M, z))
            if segment_k.shape[-2] == self.segment_size:  # segment complete: retrieve first, then update
                M, z = _update(self.update, M, z, elu_plus_one(segment_k), segment_v, self.eps)
                segment_k, segment_v = segment_k[..., :0, :], segment_v[..., :0, :]
            start = stop
        y = concat_heads(torch.cat(outputs, dim=-2), self.W_o.weight)
        return y, self.State(M, z, segment_k, segment_v)


class TensorMemoryState(CompressiveMemoryState):
    """The state of `TensorMemory`."""


class InfiniAttentionState(CompressiveMemoryState):
    """The state of `InfiniAttention`."""


@register_mixer("tensor_memory")
class TensorMemory(_SegmentMemoryLayer):
    """Memory-only layer: project to Q, K, V, retrieve from the past memory, update, project out.

    No local attention, no gate, no softmax. segment_size = 1 is token-level memory (token t reads
    tokens < t); larger segments read only earlier segments. Token-level memory with the linear
    update runs in the chunked form (`linear_memory_chunked`); the delta update and segment-level
    memory run the segment recurrence: the delta rule's normalised retrieval has no chunked form here.
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
    ):
        super().__init__(d_model, n_heads, segment_size, update, eps)
        self.chunk_size = chunk_size

    def _read(self, q, segment_k, segment_v, M, z) -> torch.Tensor:
        return memory_retrieve(elu_plus_one(q), M, z, self.eps)

    def _step(self, x: torch.Tensor, state: TensorMemoryState | None):
        if self.update != "linear" or self.segment_size != 1:
            return super()._step(x, state)
        q, k, v = self._heads(x)
        M0, z0 = (None, None) if state is None else (state.M, state.z)
        A_mem, M, z = linear_memory_chunked(elu_plus_one(q), elu_plus_one(k), v, self.chunk_size, M0, z0, self.eps)
        return concat_heads(A_mem, self.W_o.weight), self.State(M, z, k[..., :0, :], v[..., :0, :])


@register_mixer("infini_attention")
class InfiniAttention(_SegmentMemoryLayer):
    """Gated Infini-attention (Sec. 2.1, Fig. 1): local causal attention within the segment plus
    memory retrieval from earlier segments, mixed per head by Eq. (6), then Eq. (7).

    Local attention is the scaled dot-product attention of Eq. (2) over the segment's keys so far,
    computed by `fused_attention` (no positional encoding). β starts at 0, an even mix.
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

    def _read(self, q, segment_k, segment_v, M, z) -> torch.Tensor:
        A_dot = fused_attention(q, segment_k, segment_v, causal=True)
        A_mem = memory_retrieve(elu_plus_one(q), M, z, self.eps)
        return memory_gate(A_mem, A_dot, self.beta)
