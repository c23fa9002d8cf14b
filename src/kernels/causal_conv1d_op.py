"""The Mamba block's causal depthwise conv1d followed by SiLU as torch.library operators, without Triton.

Paper: Mamba (Gu & Dao 2023, arXiv:2312.00752), Sec. 3.4, Figure 3 (conv, then σ = SiLU, before the SSM).

`memory_models::causal_conv1d_silu` takes the conv's input with its k - 1 earlier inputs in front
(`history`, (b, d, k - 1 + l): zeros at a sequence's start, the carried inputs when stepping) and returns
SiLU(bias + Σ_i w_i history_{t+i}) for the l new positions, one kernel instead of a conv, a slice and a
SiLU that keeps the conv's output for backward. Its fake form and autograd formula live here, so a fake
step (`src.estimate`) sees one operator and the kernel's memory; the Triton kernels of
`src.kernels.causal_conv1d` are registered as its CUDA (and interpreted CPU) implementations.
"""

from typing import Any

import torch

from src.layers._checks import check_shapes

FORWARD = "memory_models::causal_conv1d_silu"
BACKWARD = "memory_models::causal_conv1d_silu_backward"
torch.library.define(FORWARD, "(Tensor history, Tensor weight, Tensor? bias) -> Tensor")
torch.library.define(
    BACKWARD,
    "(Tensor history, Tensor weight, Tensor? bias, Tensor dy, Tensor(a!) dhistory, Tensor(b!) dw_part, "
    "Tensor(c!)? dbias_part) -> ()",
)
BLOCK_T = 128  # positions per program of the kernels: the partial sums of dw and d bias are per block


def output_length(history: torch.Tensor, weight: torch.Tensor) -> int:
    return history.shape[-1] - weight.shape[-1] + 1


@torch.library.register_fake(FORWARD)
def _forward_fake(history: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return history.new_empty(*history.shape[:2], output_length(history, weight))


@torch.library.register_fake(BACKWARD)
def _backward_fake(*args: object) -> None:
    return None  # it only writes into tensors its caller allocated


def _setup_context(
    ctx: Any, inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None], output: torch.Tensor
) -> None:
    ctx.save_for_backward(*inputs)


def _backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    history, weight, bias = ctx.saved_tensors
    batch, dim, positions = history.shape
    n_blocks = -(-positions // BLOCK_T)
    state = torch.promote_types(history.dtype, torch.float32)
    dhistory = torch.empty_like(history)
    dw_part = history.new_empty(batch, n_blocks, dim, weight.shape[1], dtype=state)
    dbias_part = history.new_empty(batch, n_blocks, dim, dtype=state) if bias is not None else None
    torch.ops.memory_models.causal_conv1d_silu_backward(
        history, weight, bias, dy.contiguous(), dhistory, dw_part, dbias_part
    )
    dbias = dbias_part.sum((0, 1)).to(bias.dtype) if dbias_part is not None else None
    return dhistory, dw_part.sum((0, 1)).to(weight.dtype), dbias


torch.library.register_autograd(FORWARD, _backward, setup_context=_setup_context)


def causal_conv1d_silu(history: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    r"""SiLU of the causal depthwise conv1d at the l positions after the k - 1 leading ones of `history`.

    .. math::
        y_t[d] = \mathrm{SiLU}\Big(\mathrm{bias}[d] + \sum_{i=0}^{k-1} w[d, i]\, \mathrm{history}_{t+i}[d]\Big)

    Equal to `F.silu(causal_conv1d(history, weight, bias)[..., k - 1:])` of `src.layers.selective_ssm`
    (tested); real tensors need the kernels registered (`src.kernels.causal_conv1d`).

    Args:
        history: (b, d, k - 1 + l) the k - 1 earlier inputs, then the l new ones.
        weight: (d, k) per-channel filter, in history's dtype.
        bias: (d,) or None.

    Returns:
        (b, d, l) in history's dtype; float32 arithmetic (float64 for float64).
    """
    sizes = check_shapes(history=(history, "b d p"), weight=(weight, "d k"), bias=(bias, "d"))
    if sizes["p"] < sizes["k"]:
        raise ValueError(f"history must hold k - 1 = {sizes['k'] - 1} earlier inputs and at least one new one")
    bias = None if bias is None else bias.contiguous()
    return torch.ops.memory_models.causal_conv1d_silu(history.contiguous(), weight.contiguous(), bias)
