"""Titans' memory as a context (MAC, Sec. 4.1) and memory as a layer (MAL, Sec. 4.3).

Paper: Titans: Learning to Memorize at Test Time (Behrouz, Zhong, Mirrokni 2024, arXiv:2501.00663).
The neural memory itself (Sec. 3) and MAG (Sec. 4.2) live in `src.layers.neural_memory`.

Glossary (code -> paper):
    persistent     P = [p_1 ... p_{N_p}], learnable input-independent tokens (Sec. 3.3)
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
from typing import Literal

import torch
from torch import nn

from src.layers.attention import concat_heads, fused_attention, rotary_embedding
from src.layers.mixer import register_mixer
from src.layers.neural_memory import (
    MEMORIES,
    NeuralMemoryState,
    _AttentionBesideMemory,
    _windowed_attention_step,
    memory_projections,
)
from src.schema import NonNegativeInt, PositiveFloat, PositiveInt


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


@dataclass(frozen=True)
class MACState:
    """The memory's weights at the segment's start (M*_{t-1}), the segment's keys and values so far
    (h block and S block, each (b, H, ℓ, d_head)) and the neural memory's state: size bounded by C."""

    segment_params: dict
    k_h: torch.Tensor
    v_h: torch.Tensor
    k_s: torch.Tensor
    v_s: torch.Tensor
    memory: NeuralMemoryState | None


@register_mixer("titans_mac")
class TitansMAC(_AttentionBesideMemory):
    """Titans, memory as a context (MAC, Sec. 4.1, Eq. 21-25), segment by segment:

    h_t = M*_{t-1}(q_t) (the memory of earlier segments read with the segment's memory queries),
    y_t = Attn([P || h_t || S^(t)]) under `memory_context_allowed`, the memory written with y_t
    (M_t = M_{t-1}(y_t)), and o_t = y_t ⊗ M*_t(y_t). ⊗ is MAG's (Sec. 4.2) normalised gate,
    o = norm(y) ⊙ σ(norm(M*(y))). Attention uses RoPE over the positions of the extended segment.
    """

    State = MACState

    def __init__(
        self,
        d_model: int,
        n_heads: PositiveInt,
        segment_size: PositiveInt,
        n_persistent: NonNegativeInt = 4,
        memory: Literal["linear", "mlp"] = "linear",
        chunk_size: PositiveInt = 16,
        d_hidden: PositiveInt | None = None,
        theta_max: PositiveFloat = 0.5,
        memory_depth: PositiveInt | None = None,
        conv_kernel: PositiveInt = 1,
        output_gate: bool = False,
    ):
        # the persistent tokens enter the attention (Eq. 22), not the memory: its prefix is 0
        super().__init__(
            d_model, n_heads, 0, memory, chunk_size, d_hidden, theta_max, memory_depth, conv_kernel, output_gate,
            gated=True,
        )  # fmt: skip
        self.segment_size = segment_size
        self.persistent = nn.Parameter(0.02 * torch.randn(n_persistent, d_model))

    def _retrieve(self, x: torch.Tensor, params: dict) -> torch.Tensor:
        """h = M*(q) for the tokens x with the frozen weights `params` (Eq. 21)."""
        memory = self.neural_memory
        q = memory_projections(x, memory.W_K.weight, memory.W_V.weight, memory.W_Q.weight)[2]
        frozen = {name: p[:, None].expand(-1, x.shape[1], *p.shape[1:]) for name, p in params.items()}
        return MEMORIES[memory.memory].read(frozen, q)

    def _segment(self, x: torch.Tensor, state: MACState) -> tuple[torch.Tensor, MACState]:
        """The next tokens of one segment (they do not cross its end)."""
        n_p, done, n = self.persistent.shape[0], state.k_s.shape[-2], x.shape[1]
        h = self._retrieve(x, state.segment_params)
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
            return out, MACState(memory_state.params, empty, empty, empty, empty, memory_state)
        return out, MACState(state.segment_params, k_h, v_h, k_s, v_s, memory_state)

    def _step(self, x: torch.Tensor, state: MACState | None) -> tuple[torch.Tensor, MACState]:
        if state is None:
            initial = {name: p.expand(x.shape[0], *p.shape) for name, p in self.neural_memory.initial.items()}
            empty = x.new_zeros(x.shape[0], self.n_heads, 0, x.shape[2] // self.n_heads)
            state = MACState(initial, empty, empty, empty, empty, None)
        outputs, start = [], 0
        while start < x.shape[1]:
            stop = min(x.shape[1], start + self.segment_size - state.k_s.shape[-2])
            out, state = self._segment(x[:, start:stop], state)
            outputs.append(out)
            start = stop
        return torch.cat(outputs, dim=1), state


@dataclass(frozen=True)
class MALState:
    """The keys and values of the last window - 1 memory outputs, the position, the memory's state."""

    k: torch.Tensor
    v: torch.Tensor
    position: int
    memory: NeuralMemoryState


@register_mixer("titans_mal")
class TitansMAL(_AttentionBesideMemory):
    """Titans, memory as a layer (MAL, Sec. 4.3, Eq. 29-31): x̃ = [P || x], y = M(x̃), o = SW-Attn(y).

    The neural memory (with the persistent tokens prepended, Sec. 3.3) reads every token, and
    sliding-window attention (RoPE, window w, the query's own position included) runs over its
    outputs at the positions of x; the memory's outputs at the persistent positions are not
    attended to (they would fall out of the window after w tokens).
    """

    State = MALState

    def __init__(
        self,
        d_model: int,
        n_heads: PositiveInt,
        window: PositiveInt,
        n_persistent: NonNegativeInt = 4,
        memory: Literal["linear", "mlp"] = "linear",
        chunk_size: PositiveInt = 16,
        d_hidden: PositiveInt | None = None,
        theta_max: PositiveFloat = 0.5,
        memory_depth: PositiveInt | None = None,
        conv_kernel: PositiveInt = 1,
        output_gate: bool = False,
    ):
        super().__init__(
            d_model, n_heads, n_persistent, memory, chunk_size, d_hidden, theta_max, memory_depth, conv_kernel,
            output_gate, gated=False,
        )  # fmt: skip
        self.window = window

    def _step(self, x: torch.Tensor, state: MALState | None) -> tuple[torch.Tensor, MALState]:
        y, memory_state = self.neural_memory.step(x, None if state is None else state.memory)
        out, cache = _windowed_attention_step(self, y, state, self.window, 0, y.shape[1])
        return out, MALState(*cache, memory_state)
