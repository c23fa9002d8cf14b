"""Quantised storage: absmax int8, 4-bit blockwise, QLoRA's NF4 with double quantization, inverses.

Papers: LLM.int8() (Dettmers, Lewis, Belkada, Zettlemoyer 2022, arXiv:2208.07339);
8-bit Optimizers via Block-wise Quantization (Dettmers, Lewis, Shleifer, Zettlemoyer 2021,
arXiv:2110.02861); QLoRA: Efficient Finetuning of Quantized LLMs (Dettmers, Pagnoni, Holtzman,
Zettlemoyer 2023, arXiv:2305.14314). `quantize_blockwise_4bit` is the symmetric linear 4-bit code
(integers -7..7 times the block's absmax / 7); `quantize_nf4` is QLoRA's NormalFloat code.
"""

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

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
    flat, absmax = _packable_blocks(X, block)
    scale = torch.where(absmax > 0, absmax / 7, torch.ones_like(absmax))
    codes = (torch.round(flat / scale).clamp(-7, 7) + 8).to(torch.uint8)
    return _pack(codes), scale.flatten()


def _packable_blocks(X: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """X checked, in rows of an even `block` (for two 4-bit codes per byte), and each row's absmax (rows, 1)."""
    check_shapes(X=(X, "..."))
    check_positive("block", block)
    if block % 2:
        raise ValueError(f"block must be even (two codes per byte), got {block}")
    flat = _blocks(X, block)
    return flat, flat.abs().amax(dim=-1, keepdim=True)


def _blocks(X: torch.Tensor, block: int) -> torch.Tensor:
    """X flattened and zero-padded into rows of `block` values."""
    flat = X.flatten()
    return F.pad(flat, (0, -flat.numel() % block)).view(-1, block)


def _pack(codes: torch.Tensor) -> torch.Tensor:
    """4-bit codes (any shape, values 0..15, an even count) -> two per uint8, the first in the high half."""
    codes = codes.flatten()
    return codes[0::2] << 4 | codes[1::2]


def _unpack(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of `_pack`: (n_bytes,) uint8 -> (2 n_bytes,) int64 codes."""
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed must be uint8, got {packed.dtype}")
    return torch.stack((packed >> 4, packed & 15), dim=-1).flatten().long()


def _unblock(values: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Blocked values -> the first prod(shape) of them in `shape`."""
    n = torch.Size(shape).numel()
    if values.numel() < n:
        raise ValueError(f"packed holds {values.numel()} values, shape {tuple(shape)} needs {n}")
    return values.flatten()[:n].view(shape)


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
    codes = _unpack(packed).to(scale.dtype) - 8
    check_shapes(scale=(scale, "n_blocks"))
    return _unblock(codes.view(scale.shape[0], -1) * scale[:, None], shape)


def nf4_code_values(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    r"""The 16 values of the 4-bit NormalFloat data type, sorted, in [-1, 1], with an exact zero.

    Paper: QLoRA (Dettmers et al. 2023, arXiv:2305.14314), Sec. 3, Eq. (4), 4-bit NormalFloat

    .. math::
        q_i = \tfrac12\Big(Q_X\big(\tfrac{i}{2^k + 1}\big) + Q_X\big(\tfrac{i + 1}{2^k + 1}\big)\Big)

    with Q_X the standard normal quantile function. For an exact zero the paper estimates the
    quantiles of the two halves separately, 2^{k-1} for the negative and 2^{k-1} + 1 for the
    positive part, joins them, drops the duplicate zero and normalises into [-1, 1]. The quantile
    positions are those of the official code (bitsandbytes `create_normal_map`): the outermost at
    δ = ½((1 - 1/32) + (1 - 1/30)), the mean of the two halves' outermost Eq. (4) positions, then
    evenly spaced to ½: Q_X(linspace(δ, ½, 9)) for the 8 positive values (the last, Q_X(½) = 0,
    dropped), -Q_X(linspace(δ, ½, 8)) for the 7 negative ones, and 0.

    Args:
        dtype: the floating dtype of the result.

    Returns:
        (16,) code values, ascending; the first is -1, the last 1, one is 0.
    """
    offset = 0.5 * ((1 - 1 / 32) + (1 - 1 / 30))
    positive = torch.special.ndtri(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])
    negative = -torch.special.ndtri(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])
    values = torch.cat((negative, torch.zeros(1, dtype=torch.float64), positive)).sort().values
    return (values / values.max()).to(dtype)


def quantize_nf4(X: torch.Tensor, block: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Block-wise NF4 quantisation: each block scaled into [-1, 1] by its absmax, each value to the nearest code.

    Paper: QLoRA (Dettmers et al. 2023, arXiv:2305.14314), Sec. 2, Eq. (1) with the NF4 data type

    .. math::
        c_b = \max_{j \in b} |X_j|, \qquad
        \mathrm{code}_j = \arg\min_i \Big| q_i - \frac{X_j}{c_b} \Big|

    over the flattened tensor in blocks of `block` (64 in the paper; zero-padded at the end), so
    the error of `dequantize_nf4` is at most c_b times half the widest gap between neighbouring
    codes. Two codes are packed per uint8.

    Args:
        X: any float tensor.
        block: values per block, even.

    Returns:
        packed (ceil(n / block) * block / 2,) uint8 and absmax (ceil(n / block),) of X's dtype.
    """
    flat, absmax = _packable_blocks(X, block)
    normalised = flat / torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    codes = (normalised[..., None] - nf4_code_values(X.dtype).to(X.device)).abs().argmin(dim=-1)
    return _pack(codes.to(torch.uint8)), absmax.flatten()


def dequantize_nf4(packed: torch.Tensor, absmax: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    r"""Inverse of `quantize_nf4`: each code's value times its block's absmax.

    Paper: QLoRA (Dettmers et al. 2023, arXiv:2305.14314), Sec. 2, Eq. (2) with the NF4 data type

    .. math::
        \hat X_j = c_b\, q_{\mathrm{code}_j}

    Args:
        packed: (n_bytes,) uint8 from `quantize_nf4`.
        absmax: (n_blocks,) float block constants.
        shape: the original tensor's shape.

    Returns:
        tensor of `shape` in absmax's dtype.
    """
    check_shapes(absmax=(absmax, "n_blocks"))
    values = nf4_code_values(absmax.dtype).to(absmax.device)[_unpack(packed)]
    return _unblock(values.view(absmax.shape[0], -1) * absmax[:, None], shape)


def double_quantize(constants: torch.Tensor, block: int = 256) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Quantise the first level's float32 block constants to 8-bit floats, block-wise, mean first subtracted.

    Paper: QLoRA (Dettmers et al. 2023, arXiv:2305.14314), Sec. 3, Double Quantization

    .. math::
        \bar c = \tfrac1n \textstyle\sum_b c_b, \qquad
        c_b^{FP8} = \mathrm{FP8}\Big(448\, \frac{c_b - \bar c}{s_g}\Big), \quad
        s_g = \max_{b \in g} |c_b - \bar c|

    in groups g of `block` constants (256 in the paper), the centred constants quantised
    symmetrically. The paper's 8-bit float is taken here as float8_e4m3 (largest value 448). With
    blocks of 64 this stores 8/64 + 32/(64 · 256) = 0.127 bits per parameter for the constants
    instead of 32/64 = 0.5.

    Args:
        constants: (n,) float32 first-level constants (absmax of each block).
        block: constants per second-level group.

    Returns:
        codes (n,) float8_e4m3fn, group scales (ceil(n / block),) float32 and the mean, a scalar.
    """
    check_shapes(constants=(constants, "n"))
    check_positive("block", block)
    mean = constants.mean()
    groups = _blocks(constants - mean, block)
    scale = groups.abs().amax(dim=-1, keepdim=True)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = (448 * groups / scale).to(torch.float8_e4m3fn).flatten()[: constants.numel()]
    return codes, scale.flatten(), mean


def double_dequantize(codes: torch.Tensor, scale: torch.Tensor, mean: torch.Tensor, block: int = 256) -> torch.Tensor:
    r"""Inverse of `double_quantize`: the first level's constants back in float32.

    Paper: QLoRA (Dettmers et al. 2023, arXiv:2305.14314), Sec. 3, Double Quantization, inverse

    .. math::
        \hat c_b = \frac{s_g}{448}\, c_b^{FP8} + \bar c, \qquad g = \lfloor b / \mathrm{block} \rfloor

    Constant b belongs to group ⌊b / block⌋, as `double_quantize` grouped it (256 in the paper); the
    last group may be partial, so the group size cannot be recovered from n and n_groups.

    Args:
        codes: (n,) float8_e4m3fn.
        scale: (n_groups,) float32 group scales, n_groups = ceil(n / block).
        mean: scalar float32.
        block: constants per group, the `block` given to `double_quantize`.

    Returns:
        (n,) float32 constants.
    """
    if codes.dtype != torch.float8_e4m3fn:
        raise TypeError(f"codes must be float8_e4m3fn, got {codes.dtype}")
    check_shapes(scale=(scale, "n_groups"))
    check_positive("block", block)
    if scale.numel() != -(-codes.numel() // block):
        raise ValueError(
            f"scale has {scale.numel()} groups, but {codes.numel()} codes in groups of {block} make "
            f"{-(-codes.numel() // block)}"
        )
    groups = F.pad(codes.float(), (0, -codes.numel() % block)).view(-1, block)
    return (groups * scale[:, None] / 448).flatten()[: codes.numel()] + mean


class _DequantizedProduct(torch.autograd.Function):
    """x W^T with W dequantised in forward and again in backward, so no full-precision W is kept
    between them (the frozen W gets no gradient; bitsandbytes' 4-bit layers do the same)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, layer: "QuantizedLinear") -> torch.Tensor:
        ctx.layer = layer
        return F.linear(x, layer.weight.to(x.dtype))

    @staticmethod
    # torch declares backward(ctx, *grad_outputs); a Function's backward takes one per output, as documented
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # ty: ignore[incompatible-method-override]
        return grad @ ctx.layer.weight.to(grad.dtype), None


class QuantizedLinear(nn.Module):
    """A frozen linear layer whose weight is stored quantised and dequantised on the fly (weight-only).

    `kind` "int8": per output row absmax int8 (`quantize_absmax_int8`, LLM.int8()'s Eq. (1) applied
    row-wise), 8 + 32 / d_in bits per weight. "nf4": block-wise NF4 (`quantize_nf4`, blocks of 64)
    with double-quantized constants (`double_quantize`, groups of 256), about 4.127 bits per weight.
    Each forward rebuilds the weight in the input's dtype (under autocast, the autocast dtype) and
    applies it; backward rebuilds it again instead of keeping it, so a training step holds the
    quantised codes and one layer's dequantised weight at a time. The bias, if any, stays in
    floating point. Nothing here trains: wrap it with `LoRALinear` to adapt it (QLoRA).
    """

    codes: torch.Tensor  # buffers (int8: codes, scale; nf4: codes and the double-quantized constants)
    scale: torch.Tensor
    absmax_codes: torch.Tensor
    absmax_scale: torch.Tensor
    absmax_mean: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, linear: nn.Linear, kind: str):
        super().__init__()
        if kind not in ("int8", "nf4"):
            raise ValueError(f"kind must be 'int8' or 'nf4', got {kind!r}")
        self.kind, self.in_features, self.out_features = kind, linear.in_features, linear.out_features
        weight = linear.weight.detach().float()
        if kind == "int8":
            codes, scale = quantize_absmax_int8(weight)
            self.register_buffer("codes", codes)
            self.register_buffer("scale", scale)
        else:
            packed, absmax = quantize_nf4(weight)
            absmax_codes, absmax_scale, absmax_mean = double_quantize(absmax)
            self.register_buffer("codes", packed)
            self.register_buffer("absmax_codes", absmax_codes)
            self.register_buffer("absmax_scale", absmax_scale)
            self.register_buffer("absmax_mean", absmax_mean)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    @property
    def weight(self) -> torch.Tensor:
        """The dequantised (d_out, d_in) weight in float32."""
        if self.kind == "int8":
            return dequantize_int8(self.codes, self.scale)
        absmax = double_dequantize(self.absmax_codes, self.absmax_scale, self.absmax_mean)
        return dequantize_nf4(self.codes, absmax, (self.out_features, self.in_features))

    def stored_bytes(self) -> int:
        """Bytes held for the weight (codes and every constant; the bias not counted)."""
        return sum(buffer.numel() * buffer.element_size() for name, buffer in self.named_buffers() if name != "bias")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled(x.device.type):
            x = x.to(torch.get_autocast_dtype(x.device.type))
        y = _DequantizedProduct.apply(x, self)
        return y if self.bias is None else y + self.bias.to(y.dtype)
