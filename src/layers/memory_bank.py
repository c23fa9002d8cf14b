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
from typing import Literal

import torch
from torch import nn

from src.layers._checks import check_shapes
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
    d_k = sizes["a"] // n_heads

    def heads(y: torch.Tensor) -> torch.Tensor:  # (..., T, a) -> (..., h, T, d_k)
        return y.unflatten(-1, (n_heads, d_k)).transpose(-3, -2)

    Q, K, V = heads(H @ W_q.T), heads(M @ W_k.T), heads(M @ W_v.T)
    attended = torch.softmax(Q @ K.transpose(-2, -1) / math.sqrt(d_k), dim=-1) @ V
    return attended.transpose(-3, -2).flatten(-2) @ W_o.T


class MemoryBankAttention(nn.Module):
    """Cross-attention to a learnable memory bank, optionally routed to `top_k` of `chapters`.

    Banks: "standard" M (N_m, d_model); "factorized" M = A B^T with A (N_m, rank), B (d_model,
    rank); "reduced" M (N_m, rank) with attention computed in the rank-dimensional space.
    Routing (chapters > 1): router logits from each hidden state ("token") or from the mean hidden
    state of the whole input ("sequence": one choice per sequence, so it reads later tokens; `step`
    keeps the choice its first call made). Only the chosen chapters' rows are gathered, so only
    they are read and only they get gradient; the k chapter reads are mixed by the renormalised
    gates. After each routed call `aux_losses` holds the Switch load-balancing loss (times
    `balance_alpha`) and the ST-MoE z-loss (times `z_loss_coef`); the training loop adds them.
    `quantize(bits)` stores the bank as int8 or 4-bit codes for inference.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: PositiveInt,
        n_memory: PositiveInt,
        bank: Literal["standard", "factorized", "reduced"] = "standard",
        rank: PositiveInt | None = None,
        chapters: PositiveInt = 1,
        top_k: PositiveInt = 1,
        routing: Literal["token", "sequence"] = "token",
        balance_alpha: NonNegativeFloat = 0.01,
        z_loss_coef: NonNegativeFloat = 0.001,
    ):
        super().__init__()
        if bank != "standard" and rank is None:
            raise ValueError(f"bank={bank!r} needs rank")
        if n_memory % chapters:
            raise ValueError(f"chapters={chapters} must divide n_memory={n_memory}")
        if not 1 <= top_k <= chapters:
            raise ValueError(f"top_k must lie in [1, chapters={chapters}], got {top_k}")
        self.bank, self.n_heads, self.n_memory, self.chapters, self.top_k = bank, n_heads, n_memory, chapters, top_k
        self.routing, self.balance_alpha, self.z_loss_coef = routing, balance_alpha, z_loss_coef
        d_mem = rank if bank == "reduced" else d_model
        d_attn = rank if bank == "reduced" else d_model
        if d_attn % n_heads:
            raise ValueError(f"n_heads={n_heads} must divide the attention width {d_attn}")
        self.W_q = nn.Linear(d_model, d_attn, bias=False)
        self.W_k = nn.Linear(d_mem, d_attn, bias=False)
        self.W_v = nn.Linear(d_mem, d_attn, bias=False)
        self.W_o = nn.Linear(d_attn, d_model, bias=False)
        if bank == "factorized":  # product of two N(0, 1/sqrt(rank)) factors has unit-scale entries
            self.A = nn.Parameter(torch.randn(n_memory, rank) / rank**0.25)
            self.B = nn.Parameter(torch.randn(d_model, rank) / rank**0.25)
        else:
            self.M = nn.Parameter(torch.randn(n_memory, d_mem))
        self.router = nn.Linear(d_model, chapters, bias=False) if chapters > 1 else None
        self.quantized: dict | None = None
        self.aux_losses: dict[str, torch.Tensor] = {}

    def memory_rows(self, index: torch.Tensor | None = None) -> torch.Tensor:
        """The bank's rows (all, or M[index] for an int64 index of any shape): (..., d_mem)."""
        if self.quantized is not None:
            M = self._dequantized()
            return M if index is None else M[index]
        if self.bank == "factorized":
            A = self.A if index is None else self.A[index]
            return A @ self.B.T
        return self.M if index is None else self.M[index]

    def quantize(self, bits: Literal[4, 8]) -> None:
        """Store the bank quantised (int8 absmax per row, or 4-bit blockwise, block 64) for inference."""
        with torch.no_grad():
            M = self.memory_rows()
            if bits == 8:
                codes, scale = quantize_absmax_int8(M)
            elif bits == 4:
                codes, scale = quantize_blockwise_4bit(M)
            else:
                raise ValueError(f"bits must be 4 or 8, got {bits}")
        self.quantized = {"bits": bits, "codes": codes, "scale": scale, "shape": tuple(M.shape)}

    def _dequantized(self) -> torch.Tensor:
        q = self.quantized
        if q["bits"] == 8:
            return dequantize_int8(q["codes"], q["scale"])
        return dequantize_blockwise_4bit(q["codes"], q["scale"], q["shape"])

    def _read(self, H: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
        W = (self.W_q.weight, self.W_k.weight, self.W_v.weight, self.W_o.weight)
        return memory_cross_attention(H, M, *W, self.n_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.step(x, None)
        return y

    def step(self, x: torch.Tensor, state: dict | None) -> tuple[torch.Tensor, dict | None]:
        """x: (b, T, d_model). State: None, or {"chosen", "gates"} for sequence routing."""
        if self.router is None:
            return self._read(x, self.memory_rows()), state
        rows_per_chapter = self.n_memory // self.chapters
        offsets = torch.arange(rows_per_chapter, device=x.device)
        if self.routing == "token":
            logits = self.router(x)  # (b, T, C)
            probs = router_probs(logits)
            chosen, gates = top_k_chapters(probs, self.top_k)  # (b, T, k)
            M = self.memory_rows(chosen[..., None] * rows_per_chapter + offsets)  # (b, T, k, n_c, d_mem)
            y = self._read(x[:, :, None, None, :].expand(-1, -1, self.top_k, 1, -1), M)[..., 0, :]
            y = (gates[..., None] * y).sum(dim=2)
            self._record_aux_losses(logits.flatten(0, 1), probs.flatten(0, 1), chosen.flatten(0, 1))
            return y, state
        if state is None:
            logits = self.router(x.mean(dim=1))  # (b, C): one choice per sequence
            probs = router_probs(logits)
            chosen, gates = top_k_chapters(probs, self.top_k)  # (b, k)
            self._record_aux_losses(logits, probs, chosen)
            state = {"chosen": chosen, "gates": gates}
        M = self.memory_rows(state["chosen"][..., None] * rows_per_chapter + offsets)  # (b, k, n_c, d_mem)
        y = self._read(x[:, None].expand(-1, self.top_k, -1, -1), M)  # (b, k, T, d_model)
        return (state["gates"][..., None, None] * y).sum(dim=1), state

    def _record_aux_losses(self, logits, probs, chosen) -> None:
        self.aux_losses = {
            "load_balancing": load_balancing_loss(probs, chosen, self.chapters, self.balance_alpha),
            "router_z": self.z_loss_coef * router_z_loss(logits),
        }
