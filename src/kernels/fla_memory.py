"""The token-level compressive memory on GPU through flash-linear-attention's (fla) Triton kernels.

This project's token-level memory (Infini-attention Eq. (3)-(5) with segments of one token,
`linear_memory_chunked` / `delta_memory_chunked`) reads before it writes: token t retrieves from
M_{t-1}, the memory of the tokens before it, normalised by σ(q_t) z_{t-1}. fla's kernels are
self-inclusive: their o_t = q_t S_t reads the state that already holds token t, and they do not
normalise the way Eq. (3) does. Feeding them keys and values shifted one token later,
k'_t = k_{t-1}, v'_t = v_{t-1} (zero at t = 0), makes S'_t = M_{t-1} exactly, so

    numerator_t = σ(q_t) M_{t-1}              (fla, unnormalised, scale 1)
    denominator_t = max(σ(q_t) z_{t-1}, eps),  z_{t-1} = z_0 + Σ_{s<t} σ(k_s)   (a cumsum here)

and the final state adds the last token's write, which the shifted sequence leaves out. For the
delta rule fla computes S_t = S_{t-1} + β_t k_t^T (v_t - k_t S_{t-1}) (DeltaNet's form, the value
scaled by β), while Eq. (5) at token level writes M_t = M_{t-1} + k_t^T (v_t - β_t k_t M_{t-1}) with
β_t = 1 / max(k_t z_{t-1}, eps): the same transition with v_t / β_t as fla's value. Every β_t is
known in advance because z is a running sum of the keys.

`linear_memory_shifted` and `delta_memory_shifted` build those inputs and take the self-inclusive
recurrence as an argument: fla's kernels on a GPU (`fla_linear`, `fla_delta`, extra `fla`), or a
literal loop of fla's recurrence in the tests, which prove the construction equal to the equation
functions to 1e-10 in float64 on the CPU.
"""

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F

Inclusive = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def _shifted(x: torch.Tensor) -> torch.Tensor:
    """(..., n, d) -> the same one token later along n, zeros first."""
    return F.pad(x, (0, 0, 1, 0))[..., :-1, :]


def _earlier_key_sums(sigma_k: torch.Tensor, z0: torch.Tensor) -> torch.Tensor:
    """z_{t-1} = z_0 + Σ_{s<t} σ(k_s) for every t, (..., n, d_k)."""
    return z0[..., None, :] + torch.cumsum(sigma_k, dim=-2) - sigma_k


def linear_memory_shifted(
    sigma_q: torch.Tensor, sigma_k: torch.Tensor, v: torch.Tensor, M0: torch.Tensor, z0: torch.Tensor, eps: float,
    inclusive: Inclusive,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """`linear_memory_chunked` through `inclusive(q, k, v, S0) -> (q_t S_t, S_n)`, S_t = S_{t-1} + k_t^T v_t.

    Shapes as `linear_memory_chunked`: σ(Q), σ(K) (b, H, n, d_k), V (b, H, n, d_v), M0, z0 the memory
    before the sequence. Returns A_mem (b, H, n, d_v) and the final (M, z).
    """
    numerator, S = inclusive(sigma_q, _shifted(sigma_k), _shifted(v), M0)
    z_before = _earlier_key_sums(sigma_k, z0)
    denominator = (sigma_q * z_before).sum(-1, keepdim=True).clamp_min(eps)
    M = S + sigma_k[..., -1, :, None] * v[..., -1, None, :]  # the last token's write
    return numerator / denominator, M, z_before[..., -1, :] + sigma_k[..., -1, :]


def delta_memory_shifted(
    sigma_q: torch.Tensor, sigma_k: torch.Tensor, v: torch.Tensor, M0: torch.Tensor, z0: torch.Tensor, eps: float,
    inclusive: Inclusive,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """`delta_memory_chunked` through `inclusive(q, k, v, beta, S0) -> (q_t S_t, S_n)` with fla's delta rule
    S_t = S_{t-1} + β_t k_t^T (v_t - k_t S_{t-1}); shapes as `linear_memory_shifted`."""
    z_before = _earlier_key_sums(sigma_k, z0)
    inverse_beta = (sigma_k * z_before).sum(-1, keepdim=True).clamp_min(eps)  # 1 / β_t
    beta = 1 / inverse_beta
    numerator, S = inclusive(
        sigma_q, _shifted(sigma_k), _shifted(v * inverse_beta), _shifted(beta)[..., 0], M0
    )  # S'_t = M_{t-1}
    denominator = (sigma_q * z_before).sum(-1, keepdim=True).clamp_min(eps)
    k_last, v_last = sigma_k[..., -1, :], v[..., -1, :]
    written = v_last - beta[..., -1, :] * (k_last[..., None, :] @ S)[..., 0, :]  # Eq. (5), the last token
    M = S + k_last[..., :, None] * written[..., None, :]
    return numerator / denominator, M, z_before[..., -1, :] + k_last


def _fla() -> None:
    """Import fla's kernels, or say which extra provides them."""
    try:
        import fla.ops  # noqa: F401  (imported to check that the extra is installed)
    except ImportError as error:
        raise ImportError(
            "the 'fla' backend of the compressive memory needs flash-linear-attention's kernels: "
            "install the optional extra 'fla' (uv sync --extra fla)"
        ) from error


def _heads_last(x: torch.Tensor) -> torch.Tensor:
    """(b, H, n, d) -> fla's (b, n, H, d), contiguous."""
    return x.transpose(1, 2).contiguous()


def fla_linear(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, S0: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """fla's chunked linear attention, unnormalised, scale 1: o_t = q_t S_t, S_t = S_{t-1} + k_t^T v_t.

    On float32 inputs fla's matrix products run in TF32 (about 1e-3 relative error).
    """
    _fla()
    from fla.ops.linear_attn import chunk_linear_attn

    o, S = chunk_linear_attn(
        _heads_last(q), _heads_last(k), _heads_last(v), scale=1.0, initial_state=S0.contiguous(),
        output_final_state=True, normalize=False,
    )  # fmt: skip
    return o.transpose(1, 2), S


def fla_delta(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, S0: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """fla's chunked delta rule, scale 1, keys as given: S_t = S_{t-1} + β_t k_t^T (v_t - k_t S_{t-1}).

    fla's kernel takes bfloat16 inputs only (its float32 path is refused), so q, k, v, β pass in
    bfloat16 and the state stays float32; outputs come back in the inputs' dtype.
    """
    _fla()
    from fla.ops.delta_rule import chunk_delta_rule

    half = [_heads_last(t).to(torch.bfloat16) for t in (q, k, v)]
    o, S = chunk_delta_rule(
        *half, beta.transpose(1, 2).contiguous().to(torch.bfloat16), scale=1.0,
        initial_state=S0.float().contiguous(), output_final_state=True,
    )  # fmt: skip
    return o.transpose(1, 2).to(q.dtype), S.to(q.dtype)


@functools.cache
def fla_available() -> bool:
    """Whether fla's kernels can be imported here (the extra 'fla' on a machine with CUDA); asked once,
    since `TensorMemory` asks on every CUDA forward and a failed import is retried from disk each time."""
    if not torch.cuda.is_available():
        return False
    try:
        _fla()
    except ImportError:
        return False
    return True
