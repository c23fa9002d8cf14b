"""A memory (a bank, or product keys) added to a frozen pretrained decoder layer through a zero-initialised tanh gate.

Papers: the memory and its read are `src.layers.memory_bank` (Sukhbaatar et al. 2019; Lample et al.
2019; Berges et al. 2024) or the product-key memory of `src.layers.product_keys` (Lample et al. 2019;
Berges et al. 2024); the gate that makes the adapted model start equal to the frozen one is
Flamingo's (Alayrac et al. 2022, arXiv:2204.14198, Sec. 2.2, Figure 4: GATED XATTN-DENSE).
Flamingo puts its gated cross-attention before each frozen layer; here the gated read sits after
a chosen layer's self-attention (variant A) or after its MLP (variant B), as the design's memory
blocks do.

Glossary (code -> paper):
    h        the residual stream at the insertion point, (batch, L, d_model)
    alpha    the gate's learnable scalar α; Flamingo initialises it at 0, so tanh(α) = 0
"""

from typing import Any

import torch
from torch import nn

from src.layers._checks import check_shapes
from src.layers.mixer import MIXERS
from src.layers.normalization import RMSNorm


def tanh_gated_residual(h: torch.Tensor, update: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    r"""Add a new layer's output to a frozen model's residual stream through a tanh gate.

    Paper: Flamingo (Alayrac et al. 2022, arXiv:2204.14198), Sec. 2.2, Figure 4

    .. math::
        y = h + \tanh(\alpha) \cdot u, \qquad \alpha = 0 \text{ at initialisation}

    With α = 0 the output is h exactly (tanh(0) = 0 and h + 0 = h bit for bit), so the adapted
    model computes the frozen model's logits until α moves; |tanh α| < 1 bounds the update's scale.

    Args:
        h: (..., d) the residual stream.
        update: (..., d) the new layer's output u (here the memory read).
        alpha: () the learnable gate.

    Returns:
        (..., d) y.
    """
    check_shapes(h=(h, "... d"), update=(update, "... d"), alpha=(alpha, ""))
    return h + torch.tanh(alpha) * update


MEMORY_TYPES = ("memory_bank", "product_key_memory")  # the mixers an adapter's memory can be


class MemoryAdapter(nn.Module):
    """The residual stream reads a learnable memory: h + tanh(α) Read(RMSNorm(h)).

    The memory, the registered mixer `memory_type` built from `memory` (a `MemoryBankAttention`:
    standard, factorized or reduced, optionally routed to `top_k` of `chapters`; or a
    `ProductKeyMemory`: n_keys^2 values of which each token reads top_k), is read by the
    normalised stream; the read joins the stream through `tanh_gated_residual` with α = 0, so at
    initialisation the output is the input exactly. The adapter keeps its parameters in float32
    whatever the frozen model's dtype: the stream is read in float32 and the sum is returned in the
    stream's dtype (a bfloat16 stream widened to float32 and back is unchanged, so α = 0 still gives
    the input exactly).
    """

    def __init__(self, d_model: int, norm_eps: float, memory_type: str = "memory_bank", **memory: Any):
        super().__init__()
        if memory_type not in MEMORY_TYPES:
            raise ValueError(f"memory_type must be one of {list(MEMORY_TYPES)}, got {memory_type!r}")
        self.norm = RMSNorm(d_model, norm_eps)
        self.memory = MIXERS[memory_type](d_model, **memory)
        self.alpha = nn.Parameter(torch.zeros(1))  # α, held as (1,): FSDP2 shards no 0-dim parameter

    def step(
        self, h: torch.Tensor, state: object = None, into: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, object]:
        """Read the memory from the stream h (batch, T, d_model), after the memory's `state` (a bank's routing).

        Returns `into` + tanh(α) read (`into` defaults to h; a variant-A insertion adds the read to
        the attention's output instead, see `src.adapted.model`) in `into`'s dtype, and the new state.
        """
        into = h if into is None else into
        read, state = self.memory.step(self.norm(h.to(self.alpha.dtype)), state)
        return tanh_gated_residual(into.to(self.alpha.dtype), read, self.alpha[0]).to(into.dtype), state

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.step(h)[0]
