"""Causal multi-head self-attention with rotary position embeddings and a KV cache.

Papers: Attention Is All You Need (Vaswani et al. 2017, arXiv:1706.03762);
RoFormer (Su et al. 2021, arXiv:2104.09864).

Glossary (code -> paper):
    q, k, v     Q, K, V: queries, keys, values, (batch, heads, length, d_head)
    d_head      d_k = d_v = d_model / h
    n_heads     h, the number of heads
    offset      m of the first row: the absolute position of x[..., 0, :] (RoPE)
    base        the 10000 in theta_i = 10000^{-2(i-1)/d}
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from src.layers._checks import check_positive, check_shapes
from src.layers._heads import HeadProjections
from src.layers.mixer import register_mixer
from src.schema import PositiveFloat, PositiveInt


def scaled_dot_product_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True, allowed: torch.Tensor | None = None
) -> torch.Tensor:
    r"""Scaled dot-product attention, optionally with the decoder's causal mask.

    Paper: Attention Is All You Need (Vaswani et al. 2017, arXiv:1706.03762), Sec. 3.2.1, Eq. (1)

    .. math::
        \mathrm{Attention}(Q, K, V) = \mathrm{softmax}\!\left(\frac{Q K^\top}{\sqrt{d_k}}\right) V

    With `causal`, scores of future keys are set to -inf before the softmax (Sec. 3.2.3). The
    queries are the *last* L_q of the L_k key positions, so a query chunk can attend to a KV
    cache of earlier tokens: query i may see keys 0 .. L_k - L_q + i. `allowed` restricts the
    keys further (e.g. a sliding window); a query must keep at least one key.

    Args:
        q: (..., L_q, d_k) queries.
        k: (..., L_k, d_k) keys, L_k >= L_q when causal.
        v: (..., L_k, d_v) values.
        causal: apply the causal mask.
        allowed: (L_q, L_k) bool, True where query i may attend to key j; None allows all.

    Returns:
        (..., L_q, d_v) attention output.
    """
    L_q, L_k = _check_attention_arguments(q, k, v, causal, allowed)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if causal:
        query_pos = torch.arange(L_k - L_q, L_k, device=q.device)[:, None]
        key_pos = torch.arange(L_k, device=q.device)[None, :]
        scores = scores.masked_fill(key_pos > query_pos, float("-inf"))
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def _check_attention_arguments(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, allowed: torch.Tensor | None
) -> tuple[int, int]:
    """The checks both forms of Eq. (1) share; returns (L_q, L_k)."""
    sizes = check_shapes(q=(q, "... L_q d_k"), k=(k, "... L_k d_k"), v=(v, "... L_k d_v"))
    L_q, L_k = sizes["L_q"], sizes["L_k"]
    if causal and L_k < L_q:
        raise ValueError(f"k has {L_k} positions but q has {L_q}; causal attention needs L_k >= L_q")
    if allowed is not None and (allowed.shape != (L_q, L_k) or allowed.dtype != torch.bool):
        raise ValueError(
            f"allowed must be a bool tensor of shape ({L_q}, {L_k}), got {allowed.dtype} {tuple(allowed.shape)}"
        )
    return L_q, L_k


def fused_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True, allowed: torch.Tensor | None = None
) -> torch.Tensor:
    r"""Fast form of Eq. (1): the same attention through `torch.nn.functional.scaled_dot_product_attention`.

    Paper: Attention Is All You Need (Vaswani et al. 2017, arXiv:1706.03762), Sec. 3.2.1, Eq. (1), fused form

    .. math::
        \mathrm{Attention}(Q, K, V) = \mathrm{softmax}\!\left(\frac{Q K^\top}{\sqrt{d_k}}\right) V

    Equal to `scaled_dot_product_attention` (the reference) with the same arguments and mask
    conventions: the queries are the last L_q of the L_k key positions. Without `allowed`, PyTorch
    picks a fused kernel (flash or memory-efficient attention on GPU, a blocked flash form on CPU)
    that never holds the (L_q, L_k) scores, so memory grows as O(L); `allowed` is an explicit
    (L_q, L_k) mask and costs that much memory.

    Args:
        q: (..., L_q, d_k) queries.
        k: (..., L_k, d_k) keys, L_k >= L_q when causal.
        v: (..., L_k, d_v) values.
        causal: apply the causal mask (bottom-right aligned when L_q < L_k).
        allowed: (L_q, L_k) bool, True where query i may attend to key j; None allows all.

    Returns:
        (..., L_q, d_v) attention output.
    """
    L_q, L_k = _check_attention_arguments(q, k, v, causal, allowed)
    if allowed is not None:
        if causal:
            key = torch.arange(L_k, device=q.device)
            allowed = allowed & (key[None, :] <= key[L_k - L_q :, None])
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    if not causal or L_q == 1:  # one query at the end sees every key
        return F.scaled_dot_product_attention(q, k, v)
    if L_q == L_k:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    from torch.nn.attention.bias import causal_lower_right  # imports torch._dynamo: seconds, paid only here

    return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(L_q, L_k))


def concat_heads(heads: torch.Tensor, W_O: torch.Tensor) -> torch.Tensor:
    r"""Multi-head output: the heads side by side, projected by W^O.

    Paper: Attention Is All You Need (Vaswani et al. 2017, arXiv:1706.03762), Sec. 3.2.2, MultiHead

    .. math::
        \mathrm{MultiHead}(Q, K, V) = \mathrm{Concat}(\mathrm{head}_1, \dots, \mathrm{head}_h)\, W^O

    Infini-attention's Eq. (7), O = [A^1; ...; A^H] W_O, is the same equation.

    Args:
        heads: (batch, h, L, d_v) the per-head outputs.
        W_O: (d_model, h d_v) the output projection, as stored by nn.Linear (y = x W_O^T).

    Returns:
        (batch, L, d_model).
    """
    sizes = check_shapes(heads=(heads, "b h L d_v"), W_O=(W_O, "d_model hd"))
    if sizes["hd"] != sizes["h"] * sizes["d_v"]:
        raise ValueError(f"W_O must have h * d_v = {sizes['h'] * sizes['d_v']} columns, got {sizes['hd']}")
    return heads.transpose(1, 2).flatten(-2) @ W_O.T


def rotary_embedding(x: torch.Tensor, offset: int = 0, base: float = 10000.0) -> torch.Tensor:
    r"""Rotate consecutive pairs of features by an angle proportional to the position.

    Paper: RoFormer (Su et al. 2021, arXiv:2104.09864), Sec. 3.4.2, Eq. (34)

    .. math::
        R^d_{\Theta,m} x = x \otimes (\cos m\theta_1, \cos m\theta_1, \dots, \cos m\theta_{d/2},
        \cos m\theta_{d/2}) + (-x_2, x_1, \dots, -x_d, x_{d-1}) \otimes (\sin m\theta_1,
        \sin m\theta_1, \dots), \qquad \theta_i = \mathrm{base}^{-2(i-1)/d}

    Pairs are the paper's adjacent features (x_1, x_2), (x_3, x_4), ...; Hugging Face's Llama
    code pairs feature i with i + d/2 instead, a fixed permutation of the same rotation.

    Args:
        x: (..., L, d) queries or keys, d even; row m sits at position offset + m.
        offset: absolute position of row 0 (the length of the KV cache when stepping).
        base: the frequency base (10000 in the paper).

    Returns:
        (..., L, d) rotated tensor.
    """
    sizes = check_shapes(x=(x, "... L d"))
    d, L = sizes["d"], sizes["L"]
    if d % 2:
        raise ValueError(f"x must have an even last dimension for rotary pairs, got d={d}")
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    check_positive("base", base)
    theta = base ** (-torch.arange(0, d, 2, dtype=torch.float64, device=x.device) / d)  # (d/2,)
    m = torch.arange(offset, offset + L, dtype=torch.float64, device=x.device)  # (L,)
    angle = (m[:, None] * theta[None, :]).repeat_interleave(2, dim=-1).to(x.dtype)  # (L, d)
    x_rotated = torch.stack((-x[..., 1::2], x[..., 0::2]), dim=-1).flatten(-2)  # (-x2, x1, -x4, x3, ...)
    return x * torch.cos(angle) + x_rotated * torch.sin(angle)


@dataclass(frozen=True)
class KVCache:
    """Keys (after rotation) and values of every token so far, each (batch, heads, T, d_head).

    It grows by one row per token: attention is the one mixer whose state is not constant.
    """

    k: torch.Tensor
    v: torch.Tensor


@register_mixer("attention")
class CausalSelfAttention(HeadProjections):
    """Multi-head causal self-attention (Vaswani et al. 2017, Sec. 3.2.2) with RoPE on Q and K.

    Computed by `fused_attention` (no L x L score tensor); `step` takes the next tokens and a
    `KVCache`, so one-token decoding never recomputes the prefix.
    """

    State = KVCache
    constant_state = False
    autocast = True

    def __init__(self, d_model: int, n_heads: PositiveInt, rope_base: PositiveFloat = 10000.0):
        super().__init__(d_model, n_heads)
        if (d_model // n_heads) % 2:
            raise ValueError(f"d_model / n_heads = {d_model // n_heads} must be even for rotary pairs")
        self.rope_base = rope_base

    def _step(self, x: torch.Tensor, state: KVCache | None) -> tuple[torch.Tensor, KVCache]:
        offset = 0 if state is None else state.k.shape[-2]
        q, k, v = self._heads(x)
        q, k = rotary_embedding(q, offset, self.rope_base), rotary_embedding(k, offset, self.rope_base)
        if state is not None:
            k = torch.cat((state.k, k), dim=-2)
            v = torch.cat((state.v, v), dim=-2)
        y = fused_attention(q, k, v, causal=True)  # (batch, heads, T, d_head)
        return concat_heads(y, self.W_o.weight.to(y.dtype)), KVCache(k, v)  # .to: autocast's dtype
