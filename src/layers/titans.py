"""Titans' three architectures: memory as a context (MAC, Sec. 4.1), as a gate (MAG, Sec. 4.2) and
as a layer (MAL, Sec. 4.3), each built as attention heads beside a neural memory (`AttentionBesideMemory`).

Paper: Titans: Learning to Memorize at Test Time (Behrouz, Zhong, Mirrokni 2024, arXiv:2501.00663).
The neural memory itself (Sec. 3) is `src.layers.neural_memory`; its options, one
`NeuralMemoryOptions` (a config's `memory:` mapping), are given to every layer here unchanged.

Glossary (code -> paper):
    persistent     P = [p_1 ... p_{N_p}], learnable input-independent tokens (Sec. 3.3)
    window         w, the tokens a query of the sliding-window attention SW-Attn* sees (MAG, MAL)
    segment_size   C, the length of a segment S^(t) (MAC)
    h              h_t = M*_{t-1}(q_t), the memory read for a segment before it is written (Eq. 21)
    y              the attention output of a segment (Eq. 23), the memory's input (Eq. 24)

Causality: the paper describes MAC on whole segments (the memory after a segment, M_t, reads the
segment's outputs). For next-token prediction every position may use only earlier positions, so
here a token of S^(t) attends to the persistent tokens, to h_j and to S^(t)_j for j <= its own
index (the mask of `memory_context_allowed`), and the memory is written and read token by token
within the segment (`NeuralMemory`, update then read), so M*_t(y_i) sees the outputs y_{<=i}.
"""

from dataclasses import dataclass

import torch
from torch import nn

from src.layers._checks import check_positive, check_shapes
from src.layers._heads import HeadProjections
from src.layers.attention import concat_heads, fused_attention, rotary_embedding
from src.layers.mixer import register_mixer
from src.layers.neural_memory import (
    MEMORIES,
    NeuralMemory,
    NeuralMemoryOptions,
    NeuralMemoryState,
)
from src.layers.normalization import RMSNorm
from src.schema import NonNegativeInt, PositiveInt


def sliding_window_allowed(L_q: int, L_k: int, window: int, n_persistent: int) -> torch.Tensor:
    r"""Which keys each query of SW-Attn* sees: the persistent tokens and the last `window` tokens.

    Paper: Titans (Behrouz et al. 2024, arXiv:2501.00663), Sec. 4.2, SW-Attn* of Eq. (26)-(28)

    .. math::
        \mathrm{allowed}[i, j] = (j < N_p) \lor (0 \le p_i - j < w), \qquad p_i = L_k - L_q + i

    The queries are the last L_q of the L_k positions (as in `scaled_dot_product_attention`);
    causality (j <= p_i) is applied by the attention itself.

    Args:
        L_q, L_k: query and key counts.
        window: w, how many most recent tokens (the query's own included) a query sees.
        n_persistent: N_p, the leading positions every query sees.

    Returns:
        (L_q, L_k) bool.
    """
    check_positive("window", window)
    position = torch.arange(L_k - L_q, L_k)[:, None]
    key = torch.arange(L_k)[None, :]
    return (key < n_persistent) | (position - key < window)


def sliding_window_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, n_persistent: int, block: int = 256
) -> torch.Tensor:
    r"""Fast form of SW-Attn*: causal attention to the persistent tokens and the last `window` tokens, banded.

    Paper: Titans (Behrouz et al. 2024, arXiv:2501.00663), Sec. 4.2, SW-Attn* of Eq. (26)-(28), banded form

    .. math::
        y_i = \mathrm{softmax}_{j \in \mathcal{A}_i}\!\left(\frac{q_i k_j^\top}{\sqrt{d_k}}\right) v_j, \qquad
        \mathcal{A}_i = \{ j \le p_i : j < N_p \ \lor\ p_i - j < w \}, \quad p_i = L_k - L_q + i

    Equal to `scaled_dot_product_attention(q, k, v, causal=True, allowed=sliding_window_allowed(...))`,
    the reference, but computed `block` queries at a time against only the keys they can see (the
    persistent ones and a band of window + block - 1), each block through `fused_attention`: time and
    memory grow as O(L (N_p + w + block)), never O(L^2).

    Args:
        q: (..., L_q, d_k) queries, the last L_q of the L_k positions.
        k: (..., L_k, d_k) keys; the first n_persistent are the persistent tokens'.
        v: (..., L_k, d_v) values.
        window: w >= 1, how many most recent tokens (the query's own included) a query sees.
        n_persistent: N_p >= 0, the leading positions every query sees.
        block: queries per block (a speed knob; the result does not depend on it).

    Returns:
        (..., L_q, d_v).
    """
    sizes = check_shapes(q=(q, "... L_q d_k"), k=(k, "... L_k d_k"), v=(v, "... L_k d_v"))
    L_q, L_k = sizes["L_q"], sizes["L_k"]
    check_positive("window", window)
    check_positive("block", block)
    if L_k < L_q or not 0 <= n_persistent <= L_k - L_q:
        raise ValueError(f"need L_k >= L_q + n_persistent, got L_q={L_q}, L_k={L_k}, n_persistent={n_persistent}")
    outputs = []
    for first in range(0, L_q, block):
        last = min(L_q, first + block)  # queries [first, last) sit at positions L_k - L_q + [first, last)
        begin, end = L_k - L_q + first, L_k - L_q + last
        band = torch.arange(max(n_persistent, begin - window + 1), end)
        keys = torch.cat((torch.arange(n_persistent), band)).to(q.device)
        position = torch.arange(begin, end, device=q.device)[:, None]
        allowed = (keys[None, :] <= position) & ((keys[None, :] < n_persistent) | (position - keys[None, :] < window))
        outputs.append(fused_attention(q[..., first:last, :], k[..., keys, :], v[..., keys, :], False, allowed))
    return torch.cat(outputs, dim=-2)


def memory_context_allowed(n_persistent: int, length: int, n_queries: int) -> torch.Tensor:
    r"""Which keys of MAC's extended segment each of the segment's queries sees.

    Paper: Titans (Behrouz et al. 2024, arXiv:2501.00663), Sec. 4.1, Eq. (22)-(23), causal

    .. math::
        \tilde S^{(t)} = [p_1, \dots, p_{N_p}] \,\|\, h_t \,\|\, S^{(t)}, \qquad
        \mathrm{allowed}[i, j] = \begin{cases} 1 & j < N_p \\ (j - N_p) \le m_i & h \text{ block} \\
        (j - N_p - \ell) \le m_i & S \text{ block} \end{cases}, \quad m_i = \ell - n_q + i

    The keys are the N_p persistent tokens, the ℓ memory reads h_t and the ℓ segment tokens so far
    (ℓ <= C); the queries are the last n_q segment tokens, at in-segment indices m_i. Every query
    sees all persistent tokens (Sec. 3.3) and, of h_t and S^(t), the entries of tokens up to its
    own: h_j = M*_{t-1}(q_j) is computed from token j, so a later entry would show a future token.

    Args:
        n_persistent: N_p >= 0.
        length: ℓ >= 1, the segment tokens so far.
        n_queries: n_q, 1 <= n_q <= ℓ.

    Returns:
        (n_q, N_p + 2ℓ) bool.
    """
    if length < 1 or not 1 <= n_queries <= length or n_persistent < 0:
        raise ValueError(
            f"need n_persistent >= 0 and 1 <= n_queries <= length, got {n_persistent}, {n_queries}, {length}"
        )
    index = torch.arange(length - n_queries, length)[:, None]  # m_i
    token = torch.arange(length)[None, :]
    seen = (token <= index).expand(n_queries, length)
    return torch.cat((torch.ones(n_queries, n_persistent, dtype=torch.bool), seen, seen), dim=1)


class AttentionBesideMemory(HeadProjections):
    """Attention heads (with RoPE, so an even head size) beside a `NeuralMemory`: what MAC, MAG and
    MAL share. The memory gets the layer's `NeuralMemoryOptions` and `memory_prefix` persistent
    tokens. A `gated` layer has MAG's ⊗ (`_gate`, Sec. 4.2): both branches normalised with learnable
    vector-valued weights (RMSNorm) and the memory's passed through a sigmoid, o = norm(y) ⊙ σ(norm(M))."""

    gated: bool

    def __init__(self, d_model: int, n_heads: int, memory: NeuralMemoryOptions, memory_prefix: int):
        super().__init__(d_model, n_heads)
        if (d_model // n_heads) % 2:
            raise ValueError(f"d_model / n_heads = {d_model // n_heads} must be even for rotary pairs")
        self.neural_memory = NeuralMemory(d_model, memory, memory_prefix)
        if self.gated:
            self.attention_norm = RMSNorm(d_model)
            self.memory_norm = RMSNorm(d_model)

    def _gate(self, attended: torch.Tensor, memory_out: torch.Tensor) -> torch.Tensor:
        return self.attention_norm(attended) * torch.sigmoid(self.memory_norm(memory_out))


class SlidingWindowBesideMemory(AttentionBesideMemory):
    """MAG and MAL: SW-Attn* (window w, the query's own position included) beside the neural memory,
    whose input gets the `n_persistent` persistent tokens prepended (Sec. 3.3)."""

    def __init__(
        self,
        d_model: int,
        n_heads: PositiveInt,
        window: PositiveInt,
        n_persistent: NonNegativeInt = 4,
        memory: NeuralMemoryOptions = NeuralMemoryOptions(),
    ):
        super().__init__(d_model, n_heads, memory, memory_prefix=n_persistent)
        self.window = window

    def _windowed_attention_step(
        self, x: torch.Tensor, state: "MAGState | MALState | None", n_persistent: int, n_out: int
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, int]]:
        """SW-Attn* of the last `n_out` positions of x, continuing `state` (None, or one with k, v, position).

        Heads of x with RoPE at their positions, the cached keys prepended; returns the attention
        output through W_o, (b, n_out, d_model), and the new cache (k, v, position): the persistent
        keys and values, then the last window - 1, so the cache has a constant size.
        """
        offset, window = 0 if state is None else state.position, self.window
        q, k, v = self._heads(x)
        q, k = rotary_embedding(q, offset), rotary_embedding(k, offset)
        if state is not None:
            k, v = torch.cat((state.k, k), dim=-2), torch.cat((state.v, v), dim=-2)
        attended = sliding_window_attention(q[..., -n_out:, :], k, v, window, n_persistent)
        held = k.shape[-2]
        keep = torch.cat((torch.arange(n_persistent), torch.arange(max(n_persistent, held - window + 1), held)))
        return concat_heads(attended, self.W_o.weight), (k[..., keep, :], v[..., keep, :], offset + x.shape[1])


@dataclass(frozen=True)
class MACState:
    """The memory's weights at the segment's start (M*_{t-1}), the segment's keys and values so far
    (h block and S block, each (b, H, ℓ, d_head)), the last kernel - 1 inputs read by the retrieval
    queries' convolution (b, <= kernel - 1, d_model) and the neural memory's state: size bounded by C."""

    segment_params: dict
    k_h: torch.Tensor
    v_h: torch.Tensor
    k_s: torch.Tensor
    v_s: torch.Tensor
    query_tail: torch.Tensor
    memory: NeuralMemoryState | None


@register_mixer("titans_mac")
class TitansMAC(AttentionBesideMemory):
    """Titans, memory as a context (MAC, Sec. 4.1, Eq. 21-25), segment by segment:

    h_t = M*_{t-1}(q_t) (the memory of earlier segments read with the segment's memory queries; with
    `conv_kernel` > 1 they pass Sec. 4.4's convolution over the layer's input, as the memory's own do),
    y_t = Attn([P || h_t || S^(t)]) under `memory_context_allowed`, the memory written with y_t
    (M_t = M_{t-1}(y_t)), and o_t = y_t ⊗ M*_t(y_t). ⊗ is MAG's (Sec. 4.2) normalised gate,
    o = norm(y) ⊙ σ(norm(M*(y))). Attention uses RoPE over the positions of the extended segment.
    """

    State = MACState
    gated = True

    def __init__(
        self,
        d_model: int,
        n_heads: PositiveInt,
        segment_size: PositiveInt,
        n_persistent: NonNegativeInt = 4,
        memory: NeuralMemoryOptions = NeuralMemoryOptions(),
    ):
        # the persistent tokens enter the attention (Eq. 22), not the memory: its prefix is 0
        super().__init__(d_model, n_heads, memory, memory_prefix=0)
        self.segment_size = segment_size
        self.persistent = nn.Parameter(0.02 * torch.randn(n_persistent, d_model))

    def _retrieve(self, q: torch.Tensor, params: dict) -> torch.Tensor:
        """h = M*(q) for the queries q (b, n, d_k) with the frozen weights `params` (Eq. 21)."""
        frozen = {name: p[:, None].expand(-1, q.shape[1], *p.shape[1:]) for name, p in params.items()}
        return MEMORIES[self.neural_memory.options.kind].read(frozen, q)

    def _segment(self, x: torch.Tensor, state: MACState) -> tuple[torch.Tensor, MACState]:
        """The next tokens of one segment (they do not cross its end)."""
        n_p, done, n = self.persistent.shape[0], state.k_s.shape[-2], x.shape[1]
        q_memory, query_tail = self.neural_memory.queries(x, state.query_tail)
        h = self._retrieve(q_memory, state.segment_params)
        _, k_h, v_h = self._heads(h)
        q_s, k_s, v_s = self._heads(x)
        _, k_p, v_p = self._heads(self.persistent.expand(x.shape[0], -1, -1))
        C = self.segment_size  # positions: P at 0..N_p-1, h at N_p.., S at N_p + C..
        k_h = torch.cat((state.k_h, rotary_embedding(k_h, n_p + done)), dim=-2)
        k_s = torch.cat((state.k_s, rotary_embedding(k_s, n_p + C + done)), dim=-2)
        v_h, v_s = torch.cat((state.v_h, v_h), dim=-2), torch.cat((state.v_s, v_s), dim=-2)
        keys = torch.cat((rotary_embedding(k_p), k_h, k_s), dim=-2)
        values = torch.cat((v_p, v_h, v_s), dim=-2)
        allowed = memory_context_allowed(n_p, done + n, n).to(x.device)
        attended = fused_attention(rotary_embedding(q_s, n_p + C + done), keys, values, False, allowed)
        y = concat_heads(attended, self.W_o.weight)
        memory_out, memory_state = self.neural_memory.step(y, state.memory)  # Eq. (24), then M*_t(y)
        out = self._gate(y, memory_out)  # Eq. (25)
        if done + n == C:  # segment complete: the next one reads the memory as it is now
            empty = k_s[..., :0, :]
            return out, MACState(memory_state.params, empty, empty, empty, empty, query_tail, memory_state)
        return out, MACState(state.segment_params, k_h, v_h, k_s, v_s, query_tail, memory_state)

    def _step(self, x: torch.Tensor, state: MACState | None) -> tuple[torch.Tensor, MACState]:
        if state is None:
            initial = {name: p.expand(x.shape[0], *p.shape) for name, p in self.neural_memory.initial.items()}
            empty = x.new_zeros(x.shape[0], self.n_heads, 0, x.shape[2] // self.n_heads)
            state = MACState(initial, empty, empty, empty, empty, x[:, :0], None)
        outputs, start = [], 0
        while start < x.shape[1]:
            stop = min(x.shape[1], start + self.segment_size - state.k_s.shape[-2])
            out, state = self._segment(x[:, start:stop], state)
            outputs.append(out)
            start = stop
        return torch.cat(outputs, dim=1), state


@dataclass(frozen=True)
class MAGState:
    """The persistent keys and values and those of the last window - 1 tokens (b, H, n, d_head),
    the position in x̃ = [persistent; x], and the neural memory's state: constant size."""

    k: torch.Tensor
    v: torch.Tensor
    position: int
    memory: NeuralMemoryState


@register_mixer("titans_mag")
class TitansMAG(SlidingWindowBesideMemory):
    """Titans, memory as a gate (MAG, Sec. 4.2, Eq. 26-28): sliding-window attention and the neural
    memory read the same sequence x̃ = [persistent tokens; x]; o = y ⊗ M(x̃).

    ⊗ follows the paper's description: both branches are normalised with learnable vector-valued
    weights (RMSNorm) and the memory branch passes a sigmoid, o = norm(y) ⊙ σ(norm(M(x̃))). Attention
    uses RoPE over the positions of x̃ and runs banded (`sliding_window_attention`).
    """

    State = MAGState
    gated = True

    def _step(self, x: torch.Tensor, state: MAGState | None) -> tuple[torch.Tensor, MAGState]:
        n_p = self.neural_memory.persistent.shape[0]
        memory_out, memory_state = self.neural_memory.step(x, None if state is None else state.memory)
        if state is None:  # attention sees x̃ = [persistent; x]
            x = torch.cat((self.neural_memory.persistent.expand(x.shape[0], -1, -1), x), dim=1)
        attended, cache = self._windowed_attention_step(x, state, n_p, memory_out.shape[1])
        out = self._gate(attended, memory_out)
        return out, MAGState(*cache, memory_state)


@dataclass(frozen=True)
class MALState:
    """The keys and values of the last window - 1 memory outputs, the position, the memory's state."""

    k: torch.Tensor
    v: torch.Tensor
    position: int
    memory: NeuralMemoryState


@register_mixer("titans_mal")
class TitansMAL(SlidingWindowBesideMemory):
    """Titans, memory as a layer (MAL, Sec. 4.3, Eq. 29-31): x̃ = [P || x], y = M(x̃), o = SW-Attn(y).

    The neural memory (with the persistent tokens prepended, Sec. 3.3) reads every token, and
    sliding-window attention (RoPE, window w, the query's own position included) runs over its
    outputs at the positions of x; the memory's outputs at the persistent positions are not
    attended to (they would fall out of the window after w tokens).
    """

    State = MALState
    gated = False

    def _step(self, x: torch.Tensor, state: MALState | None) -> tuple[torch.Tensor, MALState]:
        y, memory_state = self.neural_memory.step(x, None if state is None else state.memory)
        out, cache = self._windowed_attention_step(y, state, 0, y.shape[1])
        return out, MALState(*cache, memory_state)
