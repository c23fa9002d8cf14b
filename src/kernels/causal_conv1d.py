"""The causal depthwise conv1d + SiLU of the Mamba block (Sec. 3.4, Fig. 3) as two Triton kernels.

Forward: one program per (batch, 16 channels, BLOCK_T positions) sums the k shifted inputs with the
filter and applies SiLU. Backward: each program takes BLOCK_T positions s of the input; dhistory_s =
Σ_i w_i g_{s-i} with g_t = dy_t SiLU'(pre_t), pre recomputed from the inputs (k² loads from cache
instead of a saved (b, d, l) pre-activation), and writes its block's partial sums of dw and d bias
(summed afterwards, so the result does not depend on the order programs run in). These are the CUDA
(and, with TRITON_INTERPRET=1, CPU) implementations of the operators of `src.kernels.causal_conv1d_op`.
"""

import torch
import triton
import triton.language as tl

from src.kernels.causal_conv1d_op import BACKWARD, BLOCK_T, FORWARD, causal_conv1d_silu, output_length
from src.kernels.selective_scan import check_device

BLOCK_D = 16


@triton.jit
def _pre_activation(history, w, bias_d, row, t, mask, d, d_in, K: tl.constexpr, HAS_BIAS: tl.constexpr, acc):
    """bias + Σ_i w_i history_{t+i} of a (channels, positions) tile, accumulated in acc's dtype."""
    if HAS_BIAS:
        acc += bias_d[:, None]
    for i in tl.static_range(K):
        w_i = tl.load(w + d * K + i, mask=d_in, other=0.0).to(acc.dtype)
        acc += w_i[:, None] * tl.load(history + row[:, None] + (t + i)[None, :], mask=mask, other=0.0).to(acc.dtype)
    return acc


@triton.jit
def _forward_kernel(
    history, w, bias, y, dim, L,
    HAS_BIAS: tl.constexpr, FP64: tl.constexpr, K: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    t = tl.program_id(2) * BLOCK_T + tl.arange(0, BLOCK_T)
    d_in = d < dim
    mask = d_in[:, None] & (t < L)[None, :]
    acc = tl.zeros((BLOCK_D, BLOCK_T), dtype=tl.float64 if FP64 else tl.float32)
    bias_d = tl.load(bias + d, mask=d_in, other=0.0).to(acc.dtype) if HAS_BIAS else None
    row = (b * dim + d) * (L + K - 1)
    pre = _pre_activation(history, w, bias_d, row, t, mask, d, d_in, K, HAS_BIAS, acc)
    tl.store(y + ((b * dim + d) * L)[:, None] + t[None, :], pre * tl.sigmoid(pre), mask=mask)


@triton.jit
def _backward_kernel(
    history, w, bias, dy, dhistory, dw_part, dbias_part, dim, L, n_blocks,
    HAS_BIAS: tl.constexpr, FP64: tl.constexpr, K: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    block = tl.program_id(2)
    s = block * BLOCK_T + tl.arange(0, BLOCK_T)  # positions of history
    d_in = d < dim
    zeros = tl.zeros((BLOCK_D, BLOCK_T), dtype=tl.float64 if FP64 else tl.float32)
    bias_d = tl.load(bias + d, mask=d_in, other=0.0).to(zeros.dtype) if HAS_BIAS else None
    row = (b * dim + d) * (L + K - 1)
    part = ((b * n_blocks + block) * dim + d) * K
    dhistory_s = zeros
    for i in tl.static_range(K):  # history_s reaches the output t = s - i through w_i
        t = s - i
        mask = d_in[:, None] & ((t >= 0) & (t < L))[None, :]
        pre = _pre_activation(history, w, bias_d, row, t, mask, d, d_in, K, HAS_BIAS, zeros)
        sig = tl.sigmoid(pre)
        dy_t = tl.load(dy + ((b * dim + d) * L)[:, None] + t[None, :], mask=mask, other=0.0).to(zeros.dtype)
        g = tl.where(mask, dy_t * sig * (1.0 + pre * (1.0 - sig)), 0.0)  # dL/dpre_t: SiLU'(p) = σ(p)(1 + p(1 - σ(p)))
        dhistory_s += tl.load(w + d * K + i, mask=d_in, other=0.0).to(zeros.dtype)[:, None] * g
        if i == 0:  # t = s: this block's outputs give its share of dw and d bias
            for j in tl.static_range(K):
                x_j = tl.load(history + row[:, None] + (t + j)[None, :], mask=mask, other=0.0).to(zeros.dtype)
                tl.store(dw_part + part + j, tl.sum(g * x_j, axis=1), mask=d_in)
            if HAS_BIAS:
                tl.store(dbias_part + (b * n_blocks + block) * dim + d, tl.sum(g, axis=1), mask=d_in)
    positions = L + K - 1
    tl.store(dhistory + row[:, None] + s[None, :], dhistory_s, mask=d_in[:, None] & (s < positions)[None, :])


@torch.library.register_kernel(FORWARD, ("cuda", "cpu"))
def _forward(history: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    check_device(history.device)
    batch, dim, _ = history.shape
    K = weight.shape[1]
    L = output_length(history, weight)
    y = history.new_empty(batch, dim, L)
    _forward_kernel[(batch, triton.cdiv(dim, BLOCK_D), triton.cdiv(L, BLOCK_T))](
        history, weight, bias, y, dim, L,
        HAS_BIAS=bias is not None, FP64=history.dtype == torch.float64, K=K, BLOCK_D=BLOCK_D, BLOCK_T=BLOCK_T,
    )  # fmt: skip
    return y


@torch.library.register_kernel(BACKWARD, ("cuda", "cpu"))
def _backward(
    history: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    dy: torch.Tensor,
    dhistory: torch.Tensor,
    dw_part: torch.Tensor,
    dbias_part: torch.Tensor | None,
) -> None:
    check_device(history.device)
    batch, dim, _ = history.shape
    K = weight.shape[1]
    n_blocks = dw_part.shape[1]
    _backward_kernel[(batch, triton.cdiv(dim, BLOCK_D), n_blocks)](
        history, weight, bias, dy, dhistory, dw_part, dbias_part, dim, output_length(history, weight), n_blocks,
        HAS_BIAS=bias is not None, FP64=history.dtype == torch.float64, K=K, BLOCK_D=BLOCK_D, BLOCK_T=BLOCK_T,
    )  # fmt: skip


def causal_conv1d_silu_triton(
    history: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """`causal_conv1d_silu` run by the kernels above (CUDA tensors, or CPU ones under the interpreter)."""
    check_device(history.device)
    return causal_conv1d_silu(history, weight, bias)
