"""Low-rank adaptation of a frozen linear layer, and its exact merge into the frozen weight.

Paper: LoRA: Low-Rank Adaptation of Large Language Models (Hu et al. 2021, arXiv:2106.09685).

Glossary: W_0 (d_out, d_in) is the frozen pretrained weight; A (r, d_in) and B (d_out, r) are the
trainable factors of rank r; α is a constant, and the update ΔW = B A is scaled by α / r. Sec. 4.1:
A starts from a random Gaussian and B from zero, so ΔW = 0 and the adapted layer equals the frozen
one at initialisation. The paper does not give A's variance; `LoRALinear` draws
A ~ N(0, 1 / d_in), the variance of a unit-gain linear layer (our choice).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from src.layers._checks import check_positive, check_shapes
from src.layers.quantization import QuantizedLinear


def lora_forward(
    x: torch.Tensor, W0: torch.Tensor, A: torch.Tensor, B: torch.Tensor, alpha: float, bias: torch.Tensor | None = None
) -> torch.Tensor:
    r"""The adapted layer's output: the frozen product plus the scaled low-rank update.

    Paper: LoRA (Hu et al. 2021, arXiv:2106.09685), Sec. 4.1, Eq. (3)

    .. math::
        h = W_0 x + \Delta W x = W_0 x + \frac{\alpha}{r} B A x

    computed as two thin products, (x A^T) B^T, never forming B A. Rows of `x` are the paper's
    column vectors x. `bias` is the frozen layer's own bias (added once, not adapted).

    Args:
        x: (..., d_in) inputs.
        W0: (d_out, d_in) frozen weight.
        A: (r, d_in) down-projection.
        B: (d_out, r) up-projection.
        alpha: α > 0; the update is scaled by α / r.
        bias: (d_out,) or None.

    Returns:
        (..., d_out) h.
    """
    check_shapes(x=(x, "... d_in"), W0=(W0, "d_out d_in"), A=(A, "r d_in"), B=(B, "d_out r"), bias=(bias, "d_out"))
    return F.linear(x, W0, bias) + lora_update(x, A, B, alpha)


def lora_update(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, alpha: float) -> torch.Tensor:
    r"""The low-rank term of the adapted layer's output, added to whatever computes the frozen W_0 x.

    Paper: LoRA (Hu et al. 2021, arXiv:2106.09685), Sec. 4.1, Eq. (3), the update term

    .. math::
        \Delta W x = \frac{\alpha}{r} B A x

    computed as (x A^T) B^T. `LoRALinear` adds it to its frozen layer's own forward, so a quantised
    W_0 is applied by `QuantizedLinear` (which keeps no dequantised copy for backward).

    Args:
        x: (..., d_in) inputs.
        A: (r, d_in) down-projection.
        B: (d_out, r) up-projection.
        alpha: α > 0.

    Returns:
        (..., d_out) ΔW x.
    """
    sizes = check_shapes(x=(x, "... d_in"), A=(A, "r d_in"), B=(B, "d_out r"))
    check_positive("alpha", alpha)
    return (alpha / sizes["r"]) * F.linear(F.linear(x, A), B)


def lora_merge(W0: torch.Tensor, A: torch.Tensor, B: torch.Tensor, alpha: float) -> torch.Tensor:
    r"""The merged weight that serves the adapted layer with no extra inference cost.

    Paper: LoRA (Hu et al. 2021, arXiv:2106.09685), Sec. 4.1, "No Additional Inference Latency"

    .. math::
        W = W_0 + \frac{\alpha}{r} B A, \qquad W x = W_0 x + \frac{\alpha}{r} B A x

    so `F.linear(x, lora_merge(...))` equals `lora_forward(x, ...)` up to rounding; subtracting
    (α/r) B A recovers W_0 to switch tasks.

    Args:
        W0: (d_out, d_in) frozen weight.
        A: (r, d_in), B: (d_out, r) the trained factors.
        alpha: α > 0.

    Returns:
        (d_out, d_in) W.
    """
    sizes = check_shapes(W0=(W0, "d_out d_in"), A=(A, "r d_in"), B=(B, "d_out r"))
    check_positive("alpha", alpha)
    return W0 + (alpha / sizes["r"]) * (B @ A)


class LoRALinear(nn.Module):
    """A frozen `nn.Linear` (or `QuantizedLinear`, as QLoRA) plus trainable factors A, B (Eq. (3));
    `weight` is the merged W.

    `weight` serves the layers that read their weight directly instead of calling the module
    (attention's output projection through `concat_heads`, for example). A and B are float32 (or
    float64 over a float64 layer) whatever the frozen weight's dtype, as QLoRA trains its adapters
    above a 4-bit base. The forward is Eq. (3) as the frozen layer's own output plus `lora_update`
    (A and B cast to the input's dtype), so a quantised base keeps its memory-saving backward.
    """

    def __init__(self, base: nn.Linear | QuantizedLinear, rank: int, alpha: float):
        super().__init__()
        check_positive("rank", rank)
        check_positive("alpha", alpha)
        self.base, self.alpha = base.requires_grad_(False), float(alpha)
        weight = base.weight
        dtype = weight.dtype if weight.dtype == torch.float64 else torch.float32
        device = weight.device
        self.A = nn.Parameter(
            torch.randn(rank, base.in_features, device=device, dtype=dtype) / math.sqrt(base.in_features)
        )
        self.B = nn.Parameter(torch.zeros(base.out_features, rank, device=device, dtype=dtype))

    @property
    def weight(self) -> torch.Tensor:
        W0 = self.base.weight
        return lora_merge(W0, self.A.to(W0.dtype), self.B.to(W0.dtype), self.alpha)

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frozen = self.base(x)
        return frozen + lora_update(x.to(frozen.dtype), self.A.to(frozen.dtype), self.B.to(frozen.dtype), self.alpha)

    def merged(self) -> nn.Linear:
        """A plain `nn.Linear` holding W = W_0 + (α/r) B A (Sec. 4.1), for serving."""
        linear = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None)
        linear.to(self.base.weight.device, self.base.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(self.weight)
            if self.base.bias is not None:
                linear.bias.copy_(self.base.bias)
        return linear.requires_grad_(False)

    @classmethod
    def add_to(cls, model: nn.Module, targets: list[str], rank: int, alpha: float) -> dict[str, "LoRALinear"]:
        """Wrap every `nn.Linear` or `QuantizedLinear` child named in `targets`; return them by path."""
        wrapped = {}
        for path, module in list(model.named_modules()):
            for name, child in list(module.named_children()):
                if name in targets and isinstance(child, nn.Linear | QuantizedLinear):
                    setattr(module, name, cls(child, rank, alpha))
                    wrapped[f"{path}.{name}" if path else name] = getattr(module, name)
        return wrapped
