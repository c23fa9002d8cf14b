"""One step of the selective SSM (Mamba Eq. 2a-2b at a single token) as one Triton kernel, for decoding.

Paper: Mamba (Gu & Dao 2023, arXiv:2312.00752), Sec. 2, Eq. (2a)-(2b) and Sec. 3.4 (the recurrent mode
of inference: constant time per token). The official code's counterpart is `selective_state_update`
(`mamba_ssm/ops/triton/selective_state_update.py`): softplus(Δ + bias), Ā = exp(ΔA), h' = Ā h + Δ B x,
y = C h' + D x and the SiLU(z) gate, fused, one program per (batch, block of channels). Unlike the
official kernel it writes the new state to its own tensor (states here are immutable values), so a
step under a CUDA graph reads one buffer and writes another.

Dtypes as the scan kernel's (`src.kernels.selective_scan_op`): x, Δ, B, C, z float32, bfloat16 or
float16 (or float64), A, D, Δ bias and the state float32 (float64 with float64 inputs); y in x's dtype.
With TRITON_INTERPRET=1 set before triton is imported it runs on CPU tensors in Triton's interpreter,
which is how the tests check it equal to the step equation.
"""

import torch
import triton
import triton.language as tl

from src.kernels.selective_scan import check_device
from src.kernels.selective_scan_op import check_kernel_arguments

BLOCK_D = 16  # channels per program: batch x d / 16 programs, N states each


@triton.jit
def _state_update(
    h, x, delta, A, B, C, D, z, bias, h_new, y, dim, N,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    d_in, n_in = d < dim, n < N
    dn_in = d_in[:, None] & n_in[None, :]
    dn = d[:, None] * N + n[None, :]
    A_dn = tl.load(A + dn, mask=dn_in, other=0.0)
    f = A_dn.dtype
    h_dn = tl.load(h + b * dim * N + dn, mask=dn_in, other=0.0)
    x_d = tl.load(x + b * dim + d, mask=d_in, other=0.0).to(f)
    dt = tl.load(delta + b * dim + d, mask=d_in, other=0.0).to(f)
    if HAS_BIAS:
        dt += tl.load(bias + d, mask=d_in, other=0.0)
    if SOFTPLUS:  # τ_Δ = softplus, linear above 20 as torch's
        dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(dt)))
    B_n = tl.load(B + b * N + n, mask=n_in, other=0.0).to(f)
    C_n = tl.load(C + b * N + n, mask=n_in, other=0.0).to(f)
    h_dn = tl.exp(dt[:, None] * A_dn) * h_dn + (dt * x_d)[:, None] * B_n[None, :]  # Eq. (2a)
    tl.store(h_new + b * dim * N + dn, h_dn, mask=dn_in)
    out = tl.sum(h_dn * C_n[None, :], axis=1)  # Eq. (2b)
    if HAS_D:
        out += tl.load(D + d, mask=d_in, other=0.0) * x_d
    if HAS_Z:
        z_d = tl.load(z + b * dim + d, mask=d_in, other=0.0).to(f)
        out = out * z_d * tl.sigmoid(z_d)
    tl.store(y + b * dim + d, out, mask=d_in)


def selective_state_update(
    state: torch.Tensor,
    x: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""One token of the selective scan: the output and the next state, as `selective_scan_sequential` at
    length 1 from `state` (tested equal to it).

    .. math::
        h' = \exp(\Delta A) h + \Delta B x, \qquad y = (C h' + D x) \odot \mathrm{SiLU}(z)

    Args:
        state: (b, d, N) h, in the state's dtype.
        x: (b, d) input; delta: (b, d) Δ, or s_Δ(x) when `delta_softplus`; z: (b, d) gate, or None.
        A: (d, N); B, C: (b, N); D, delta_bias: (d,) or None.
        delta_softplus: Δ = softplus(delta + delta_bias).

    Returns:
        y (b, d) in x's dtype and the next state (b, d, N).
    """
    check_device(x.device)
    check_kernel_arguments(
        x[..., None], delta[..., None], A, B[..., None], C[..., None], D,
        None if z is None else z[..., None], delta_bias, state,
    )  # fmt: skip
    batch, dim = x.shape
    N = A.shape[1]
    state, x = state.contiguous(), x.contiguous()
    args = [state, x, *(None if t is None else t.contiguous() for t in (delta, A, B, C, D, z, delta_bias))]
    new_state, y = torch.empty_like(state), torch.empty_like(x)
    _state_update[(batch, triton.cdiv(dim, BLOCK_D))](
        *args, new_state, y, dim, N,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
        BLOCK_D=BLOCK_D, BLOCK_N=triton.next_power_of_2(N),
    )  # fmt: skip
    return y, new_state
