"""Quantised storage of a memory bank: absmax int8 and 4-bit blockwise, with their inverses.

Papers: LLM.int8() (Dettmers, Lewis, Belkada, Zettlemoyer 2022, arXiv:2208.07339);
8-bit Optimizers via Block-wise Quantization (Dettmers, Lewis, Shleifer, Zettlemoyer 2021,
arXiv:2110.02861). The 4-bit code here is the symmetric linear one (integers -7..7 times the
block's absmax / 7), not QLoRA's NF4.
"""

import torch
import torch.nn.functional as F

from src.layers._checks import check_positive, check_shapes


def quantize_absmax_int8(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Absmax quantisation to int8, one scale per row.

    Paper: LLM.int8() (Dettmers et al. 2022, arXiv:2208.07339), Sec. 2.1, Eq. (1)

    .. math::
        X_{i8} = \Big\lfloor \frac{127}{\lVert X_{r} \rVert_\infty} X \Big\rceil, \qquad
        s_r = \frac{\lVert X_{r} \rVert_\infty}{127}

    per row r (a memory token). Rounding to nearest makes the error of `dequantize_int8` at most
    half a step, absmax / 254. An all-zero row gets scale 1 (its codes are 0).

    Args:
        X: (..., d) float tensor.

    Returns:
        codes (..., d) int8 and scales (..., 1) of X's dtype.
    """
    check_shapes(X=(X, "... d"))
    absmax = X.abs().amax(dim=-1, keepdim=True)
    scale = torch.where(absmax > 0, absmax / 127, torch.ones_like(absmax))
    return torch.round(X / scale).clamp(-127, 127).to(torch.int8), scale


def dequantize_int8(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    r"""Inverse of `quantize_absmax_int8`.

    Paper: LLM.int8() (Dettmers et al. 2022, arXiv:2208.07339), Sec. 2.1, Eq. (1) inverse

    .. math::
        \hat X = s_r \cdot X_{i8}

    Args:
        codes: (..., d) int8.
        scale: (..., 1) float scales.

    Returns:
        (..., d) in the scale's dtype.
    """
    if codes.dtype != torch.int8:
        raise TypeError(f"codes must be int8, got {codes.dtype}")
    check_shapes(scale=(scale, "... 1"))
    return codes.to(scale.dtype) * scale


def quantize_blockwise_4bit(X: torch.Tensor, block: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    r"""4-bit blockwise quantisation: each block of `block` values gets its own absmax scale.

    Paper: 8-bit Optimizers (Dettmers et al. 2021, arXiv:2110.02861), Sec. 2, block-wise quantization

    .. math::
        c_j = \Big\lfloor \frac{7}{m_b} X_j \Big\rceil \in \{-7, \dots, 7\}, \qquad
        m_b = \max_{j \in b} |X_j|

    over the flattened tensor in blocks of `block` (zero-padded at the end). Two codes, offset by
    8 into 1..15, are packed per uint8; the error is at most half a step, m_b / 14.

    Args:
        X: any float tensor.
        block: values per block, even.

    Returns:
        packed (ceil(n / block) * block / 2,) uint8 and scales (ceil(n / block),) of X's dtype.
    """
    check_shapes(X=(X, "..."))
    check_positive("block", block)
    if block % 2:
        raise ValueError(f"block must be even (two codes per byte), got {block}")
    flat = X.flatten()
    flat = F.pad(flat, (0, -flat.numel() % block)).view(-1, block)
    absmax = flat.abs().amax(dim=-1, keepdim=True)
    scale = torch.where(absmax > 0, absmax / 7, torch.ones_like(absmax))
    codes = (torch.round(flat / scale).clamp(-7, 7) + 8).to(torch.uint8).flatten()
    return codes[0::2] << 4 | codes[1::2], scale.flatten()


def dequantize_blockwise_4bit(packed: torch.Tensor, scale: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    r"""Inverse of `quantize_blockwise_4bit`.

    Paper: 8-bit Optimizers (Dettmers et al. 2021, arXiv:2110.02861), Sec. 2, block-wise dequantization

    .. math::
        \hat X_j = \frac{m_b}{7}\, c_j

    Args:
        packed: (n_bytes,) uint8 from `quantize_blockwise_4bit`.
        scale: (n_blocks,) float scales.
        shape: the original tensor's shape.

    Returns:
        tensor of `shape` in the scale's dtype.
    """
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed must be uint8, got {packed.dtype}")
    check_shapes(scale=(scale, "n_blocks"))
    codes = torch.stack((packed >> 4, packed & 15), dim=-1).flatten().to(scale.dtype) - 8
    values = codes.view(scale.shape[0], -1) * scale[:, None]
    n = torch.Size(shape).numel()
    if values.numel() < n:
        raise ValueError(f"packed holds {values.numel()} values, shape {tuple(shape)} needs {n}")
    return values.flatten()[:n].view(shape)
