"""A learnable memory bank read by cross-attention, with chapter routing and quantised storage.

Papers: Augmenting Self-attention with Persistent Memory (Sukhbaatar et al. 2019, arXiv:1907.01470)
for learnable memory vectors read by attention; Large Memory Layers with Product Keys (Lample et
al. 2019, arXiv:1907.05242) and Memory Layers at Scale (Berges et al. 2024, arXiv:2412.09764) for
reading only a small part of a large memory; the routing of `src.layers.routing` (Shazeer et al.
2017; Fedus et al. 2021; Zoph et al. 2022) picks that part.

Glossary (code -> paper):
    H            hidden states, the queries' source, (..., L, d_model)
    M            memory bank, N_m tokens of width d_mem, (N_m, d_mem) or (..., N_m, d_mem)
    chapters     the bank split into C equal, contiguous groups of N_m / C tokens
    top_k        chapters read per routed item
"""

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from src.layers._checks import check_shapes
from src.layers.attention import fused_attention
from src.layers.mixer import Mixer, register_mixer
from src.layers.quantization import (
    dequantize_blockwise_4bit,
    dequantize_int8,
    quantize_absmax_int8,
    quantize_blockwise_4bit,
)
from src.layers.routing import load_balancing_loss, router_probs, router_z_loss, top_k_chapters
from src.schema import NonNegativeFloat, PositiveInt


def memory_cross_attention(
    H: torch.Tensor,
    M: torch.Tensor,
    W_q: torch.Tensor,
    W_k: torch.Tensor,
    W_v: torch.Tensor,
    W_o: torch.Tensor,
    n_heads: int,
) -> torch.Tensor:
    r"""Multi-head cross-attention from the hidden states to the memory tokens.

    Paper: Attention Is All You Need (Vaswani et al. 2017, arXiv:1706.03762), Sec. 3.2.3, cross-attention

    .. math::
        Q = H W_q, \quad K = M W_k, \quad V = M W_v, \qquad
        \mathrm{MemAttn}(H, M) = \mathrm{Concat}_h\Big(\mathrm{softmax}\big(Q_h K_h^\top / \sqrt{d_k}\big) V_h\Big) W_o

    The queries come from the sequence and the keys and values only from the bank (Sukhbaatar et
    al. 2019 read memory vectors the same way), so the cost is O(L N_m), never O((L + N_m)^2).

    Args:
        H: (..., L, d_model) hidden states.
        M: (N_m, d_mem), shared by every sequence, or (..., N_m, d_mem) with H's leading dims.
        W_q: (d_attn, d_model); W_k, W_v: (d_attn, d_mem); W_o: (d_model, d_attn) (nn.Linear layout).
        n_heads: h, dividing d_attn; d_k = d_attn / h.

    Returns:
        (..., L, d_model).
    """
    sizes = check_shapes(
        H=(H, "... L d"), W_q=(W_q, "a d"), W_k=(W_k, "a m"), W_v=(W_v, "a m"), W_o=(W_o, "d a")
    )  # fmt: skip
    if M.dim() == 2:
        check_shapes(M=(M, "N m"), W_k=(W_k, "a m"))
    else:
        check_shapes(H=(H, "... L d"), M=(M, "... N m"), W_k=(W_k, "a m"))
    if sizes["a"] % n_heads:
        raise ValueError(f"n_heads={n_heads} must divide the attention width {sizes['a']}")
    Q, K, V = _split_heads(H @ W_q.T, n_heads), _split_heads(M @ W_k.T, n_heads), _split_heads(M @ W_v.T, n_heads)
    attended = torch.softmax(Q @ K.transpose(-2, -1) / math.sqrt(Q.shape[-1]), dim=-1) @ V
    return _merge_heads(attended) @ W_o.T


def _split_heads(y: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(..., T, a) -> (..., h, T, a / h)."""
    return y.unflatten(-1, (n_heads, y.shape[-1] // n_heads)).transpose(-3, -2)


def _merge_heads(y: torch.Tensor) -> torch.Tensor:
    """(..., h, T, d_k) -> (..., T, h d_k): Concat(head_1, ..., head_h)."""
    return y.transpose(-3, -2).flatten(-2)


@dataclass(frozen=True)
class MemoryBankState:
    """Routing state: the tokens seen, the sum of their inputs (b, d_model) for causal sequence
    routing, and the first call's choice (b, k) and gates (b, k) for `sequence_noncausal`."""

    position: int
    prefix_sum: torch.Tensor | None = None
    chosen: torch.Tensor | None = None
    gates: torch.Tensor | None = None


@register_mixer("memory_bank")
class MemoryBankAttention(Mixer):
    """Cross-attention to a learnable memory bank, optionally routed to `top_k` of `chapters`.

    Banks: "standard" M (N_m, d_model); "factorized" M = A B^T with A (N_m, rank), B (d_model,
    rank); "reduced" M (N_m, rank) with attention computed in the rank-dimensional space. The read
    is `memory_cross_attention` computed through `fused_attention`.
    Routing (chapters > 1) picks each token's chapters from router logits of
    - "token": the token's own hidden state;
    - "sequence": the mean hidden state of the tokens so far (token t uses tokens <= t: causal);
    - "sequence_noncausal": the mean of the whole input, one choice per sequence. It reads later
      tokens, so it is for encoders, not language models; `step` keeps its first call's choice.
    Only the chosen chapters' rows are gathered, so only they are read and only they get gradient;
    the k chapter reads are mixed by the renormalised gates. After each routed call `aux_losses`
    holds the Switch load-balancing loss (times `balance_alpha`) and the ST-MoE z-loss (times
    `z_loss_coef`). `quantize(bits)` stores the bank as int8 or 4-bit codes in buffers (saved in
    `state_dict`, moved by `.to`) that every later read uses. The config key `quantize: 8 | 4` does so
    whenever the layer enters eval mode (evaluation, inference) and drops the codes when it returns to
    training, which updates the float bank: a trained bank is read as its int8 or 4-bit storage.
    """

    State = MemoryBankState

    def __init__(
        self,
        d_model: int,
        n_heads: PositiveInt,
        n_memory: PositiveInt,
        bank: Literal["standard", "factorized", "reduced"] = "standard",
        rank: PositiveInt | None = None,
        chapters: PositiveInt = 1,
        top_k: PositiveInt = 1,
        routing: Literal["token", "sequence", "sequence_noncausal"] = "token",
        balance_alpha: NonNegativeFloat = 0.01,
        z_loss_coef: NonNegativeFloat = 0.001,
        quantize: Literal[8, 4] | None = None,
    ):
        super().__init__(d_model)
        if bank != "standard" and rank is None:
            raise ValueError(f"bank={bank!r} needs rank")
        if n_memory % chapters:
            raise ValueError(f"chapters={chapters} must divide n_memory={n_memory}")
        if not 1 <= top_k <= chapters:
            raise ValueError(f"top_k must lie in [1, chapters={chapters}], got {top_k}")
        self.bank, self.n_heads, self.n_memory, self.chapters, self.top_k = bank, n_heads, n_memory, chapters, top_k
        self.routing, self.balance_alpha, self.z_loss_coef = routing, balance_alpha, z_loss_coef
        self.quantize_bits = quantize
        width = d_model if rank is None else rank  # the factors' and the reduced bank's width
        d_mem = width if bank == "reduced" else d_model
        d_attn = width if bank == "reduced" else d_model
        if d_attn % n_heads:
            raise ValueError(f"n_heads={n_heads} must divide the attention width {d_attn}")
        self.W_q = nn.Linear(d_model, d_attn, bias=False)
        self.W_k = nn.Linear(d_mem, d_attn, bias=False)
        self.W_v = nn.Linear(d_mem, d_attn, bias=False)
        self.W_o = nn.Linear(d_attn, d_model, bias=False)
        if bank == "factorized":  # product of two N(0, 1/sqrt(rank)) factors has unit-scale entries
            self.A = nn.Parameter(torch.randn(n_memory, width) / width**0.25)
            self.B = nn.Parameter(torch.randn(d_model, width) / width**0.25)
        else:
            self.M = nn.Parameter(torch.randn(n_memory, d_mem))
        self.router = nn.Linear(d_model, chapters, bias=False) if chapters > 1 else None
        self.bank_shape = (n_memory, d_mem)
        # the quantised bank, None until quantize(): codes, scales and the bit width (a 0-dim tensor)
        self.register_buffer("quantized_codes", None)
        self.register_buffer("quantized_scale", None)
        self.register_buffer("quantized_bits", None)

    def memory_rows(self, index: torch.Tensor | None = None) -> torch.Tensor:
        """The bank's rows (all, or M[index] for an int64 index of any shape): (..., d_mem)."""
        if self.quantized_codes is not None:
            M = self._dequantized()
            return M if index is None else M[index]
        if self.bank == "factorized":
            A = self.A if index is None else self.A[index]
            return A @ self.B.T
        return self.M if index is None else self.M[index]

    def quantize(self, bits: Literal[4, 8]) -> None:
        """Store the bank quantised (int8 absmax per row, or 4-bit blockwise, block 64) for inference."""
        if bits not in (4, 8):
            raise ValueError(f"bits must be 4 or 8, got {bits}")
        with torch.no_grad():
            M = self.memory_rows()
            codes, scale = quantize_absmax_int8(M) if bits == 8 else quantize_blockwise_4bit(M)
        self.quantized_codes, self.quantized_scale = codes, scale
        self.quantized_bits = torch.tensor(bits, device=codes.device)

    def train(self, mode: bool = True) -> "MemoryBankAttention":
        """`nn.Module.train`; with the `quantize` key, eval mode stores the bank's codes and training drops them."""
        super().train(mode)
        if self.quantize_bits is not None:
            if mode:
                self.quantized_codes = self.quantized_scale = self.quantized_bits = None
            else:
                self.quantized_codes = None  # quantise the float bank, not an earlier quantisation of it
                self.quantize(self.quantize_bits)
        return self

    def _dequantized(self) -> torch.Tensor:
        codes, scale, bits = self.quantized_codes, self.quantized_scale, self.quantized_bits
        if codes is None or scale is None or bits is None:
            raise RuntimeError("the bank is not quantised (quantize() first)")
        if int(bits) == 8:
            M = dequantize_int8(codes, scale)
        else:
            M = dequantize_blockwise_4bit(codes, scale, self.bank_shape)
        return M.to(self.W_q.weight.dtype)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # a checkpoint of a quantised bank fills the buffers even when this bank is not quantised yet
        for name in ("quantized_codes", "quantized_scale", "quantized_bits"):
            if prefix + name in state_dict and getattr(self, name) is None:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _read(self, H: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
        """`memory_cross_attention(H, M, W_q, W_k, W_v, W_o, n_heads)` through `fused_attention`."""
        Q = _split_heads(self.W_q(H), self.n_heads)  # (..., h, L, d_k)
        K, V = _split_heads(self.W_k(M), self.n_heads), _split_heads(self.W_v(M), self.n_heads)
        K, V = K.expand(*Q.shape[:-2], *K.shape[-2:]), V.expand(*Q.shape[:-2], *V.shape[-2:])
        return self.W_o(_merge_heads(fused_attention(Q, K, V, causal=False)))

    def _step(self, x: torch.Tensor, state: MemoryBankState | None) -> tuple[torch.Tensor, MemoryBankState]:
        position = (0 if state is None else state.position) + x.shape[1]
        if self.router is None:
            return self._read(x, self.memory_rows()), MemoryBankState(position)
        if self.routing == "sequence_noncausal":
            return self._route_whole_sequence(self.router, x, state, position)
        if self.routing == "token":
            router_input, new_state = x, MemoryBankState(position)
        else:  # causal sequence routing: the mean of the tokens so far
            before = None if state is None else state.prefix_sum
            sums = torch.cumsum(x, dim=1) + (0 if before is None else before[:, None])
            counts = torch.arange(position - x.shape[1] + 1, position + 1, device=x.device, dtype=x.dtype)
            router_input, new_state = sums / counts[:, None], MemoryBankState(position, sums[:, -1])
        logits = self.router(router_input)  # (b, T, C)
        probs = router_probs(logits)
        chosen, gates = top_k_chapters(probs, self.top_k)  # (b, T, k)
        M = self.memory_rows(chosen[..., None] * (self.n_memory // self.chapters) + self._chapter_rows(x))
        y = self._read(x[:, :, None, None, :].expand(-1, -1, self.top_k, 1, -1), M)[..., 0, :]  # (b, T, k, d)
        self._record_aux_losses(logits.flatten(0, 1), probs.flatten(0, 1), chosen.flatten(0, 1))
        return (gates[..., None] * y).sum(dim=2), new_state

    def _route_whole_sequence(
        self, router: nn.Linear, x: torch.Tensor, state: MemoryBankState | None, position: int
    ) -> tuple[torch.Tensor, MemoryBankState]:
        if state is None:
            logits = router(x.mean(dim=1))  # (b, C): one choice per sequence, from every token
            probs = router_probs(logits)
            chosen, gates = top_k_chapters(probs, self.top_k)  # (b, k)
            self._record_aux_losses(logits, probs, chosen)
        else:
            chosen, gates = state.chosen, state.gates
            if chosen is None or gates is None:
                raise ValueError("a sequence_noncausal bank's state must hold its first call's chapters and gates")
        M = self.memory_rows(chosen[..., None] * (self.n_memory // self.chapters) + self._chapter_rows(x))
        y = self._read(x[:, None].expand(-1, self.top_k, -1, -1), M)  # (b, k, T, d_model)
        return (gates[..., None, None] * y).sum(dim=1), MemoryBankState(position, chosen=chosen, gates=gates)

    def _chapter_rows(self, x: torch.Tensor) -> torch.Tensor:
        return torch.arange(self.n_memory // self.chapters, device=x.device)

    def _record_aux_losses(self, logits: torch.Tensor, probs: torch.Tensor, chosen: torch.Tensor) -> None:
        self.aux_losses = {
            "load_balancing": load_balancing_loss(probs, chosen, self.chapters, self.balance_alpha),
            "router_z": self.z_loss_coef * router_z_loss(logits),
        }
