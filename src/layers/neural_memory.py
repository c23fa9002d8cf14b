"""Neural long-term memory (Titans): a memory trained online, at test time, on an associative loss.

Paper: Titans: Learning to Memorize at Test Time (Behrouz, Zhong, Mirrokni 2024, arXiv:2501.00663).

Glossary (code -> paper):
    k, v, q            k_t, v_t (Eq. 11) and q_t (Eq. 15), (batch, L, d)
    M                  linear memory M_t (batch, d_k, d_v), M(k) = k M
    params             the memory's weights (a dict: {"M"} linear, {"W1", "W2"} MLP), leading batch dim
    S, momentum        surprise S_t, same shapes as the weights
    alpha, eta, theta  α_t forgetting, η_t surprise decay, θ_t step size, (batch, L)
    chunk_size         b of Sec. 3.2: the tokens whose gradients share one memory

Every sequence has its own memory (batch dimension first); the learned initial weights and the
projections are the model's parameters, trained by the outer loop through everything below.
"""

import dataclasses
import itertools
import math
from dataclasses import dataclass
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import nn

from src.layers._checks import check_positive, check_shapes
from src.layers.mixer import Mixer, register_mixer
from src.layers.normalization import RMSNorm
from src.layers.selective_ssm import causal_conv1d
from src.schema import NonNegativeInt, PositiveFloat, PositiveInt


def memory_projections(
    x: torch.Tensor, W_K: torch.Tensor, W_V: torch.Tensor, W_Q: torch.Tensor, conv: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Keys, values and queries of the memory.

    Paper: Titans (Behrouz et al. 2024, arXiv:2501.00663), Sec. 3.1, Eq. (11) and (15)

    .. math::
        k_t = \frac{\mathrm{SiLU}(x_t W_K)}{\lVert \mathrm{SiLU}(x_t W_K) \rVert_2}, \quad
        v_t = \mathrm{SiLU}(x_t W_V), \quad
        q_t = \frac{\mathrm{SiLU}(x_t W_Q)}{\lVert \mathrm{SiLU}(x_t W_Q) \rVert_2}

    Eq. (11) and (15) are the linear projections; the SiLU and the ℓ2-normalised keys and queries
    are the architectural details of Sec. 4.4. With `conv`, Sec. 4.4's depthwise-separable
    convolution follows each projection (the projection is its pointwise part): x_t W is replaced
    by the causal depthwise filter of the projected sequence (`causal_conv1d`, zeros before the
    first token) before the SiLU.

    Args:
        x: (b, L, d_model) input.
        W_K, W_Q: (d_k, d_model) projections (nn.Linear layout).
        W_V: (d_v, d_model) projection.
        conv: (2 d_k + d_v, kernel) per-channel filters of the [K, V, Q] projections, or None.

    Returns:
        k (b, L, d_k), v (b, L, d_v), q (b, L, d_k).
    """
    sizes = check_shapes(x=(x, "b L d"), W_K=(W_K, "d_k d"), W_V=(W_V, "d_v d"), W_Q=(W_Q, "d_k d"))
    projected = torch.cat((x @ W_K.T, x @ W_V.T, x @ W_Q.T), dim=-1)
    if conv is not None:
        check_shapes(conv=(conv, "channels kernel"), W_K=(W_K, "d_k d"))
        projected = causal_conv1d(projected.transpose(1, 2), conv).transpose(1, 2)
    k, v, q = projected.split((sizes["d_k"], sizes["d_v"], sizes["d_k"]), dim=-1)
    return F.normalize(F.silu(k), dim=-1), F.silu(v), F.normalize(F.silu(q), dim=-1)


def associative_loss(prediction: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    r"""The associative memory loss: how far the memory's answer for k_t is from v_t.

    Paper: Titans (Behrouz et al. 2024, arXiv:2501.00663), Sec. 3.1, Eq. (12)

    .. math::
        \ell(\mathcal M_{t-1}; x_t) = \lVert \mathcal M_{t-1}(k_t) - v_t \rVert_2^2

    Args:
        prediction: (..., d_v) M_{t-1}(k_t).
        v: (..., d_v) v_t.

    Returns:
        (...) the loss per token.
    """
    check_shapes(prediction=(prediction, "... d_v"), v=(v, "... d_v"))
    return (prediction - v).pow(2).sum(dim=-1)


def linear_memory_gradient(M: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    r"""Closed-form gradient of the associative loss for a linear memory M(k) = k M.

    Paper: Titans (Behrouz et al. 2024, arXiv:2501.00663), Sec. 3.2, Eq. (12) gradient (linear memory)

    .. math::
        \nabla_M \ell(M; x_t) = \nabla_M \lVert k_t M - v_t \rVert_2^2 = 2\, k_t^\top (k_t M - v_t)

    This is the exact gradient of Eq. (12). The paper's Eq. (17) writes the same gradient without
    the factor 2, (W_0 x_t - x_t) x_t^\top, so a step size θ_t here moves the memory as far as
    2 θ_t does in Eq. (17): this project's θ is half the paper's for the same update.

    Args:
        M: (..., d_k, d_v) the memory the gradient is taken at.
        k: (..., d_k) key.
        v: (..., d_v) value.

    Returns:
        (..., d_k, d_v) the gradient.
    """
    check_shapes(M=(M, "... d_k d_v"), k=(k, "... d_k"), v=(v, "... d_v"))
    error = (k[..., None, :] @ M)[..., 0, :] - v
    return 2 * k[..., :, None] * error[..., None, :]


def _check_per_sequence(**tensors: torch.Tensor) -> None:
    """The first two tensors share one shape (b, ...); the rest are per-sequence scalars (b,)."""
    (first, x), (second, y), *scalars = tensors.items()
    check_shapes(**{first: (x, "..."), second: (y, "...")}, **{name: (t, "b") for name, t in scalars})
    if x.dim() == 0 or x.shape[0] != scalars[0][1].shape[0]:
        raise ValueError(
            f"{first} has shape {tuple(x.shape)}; its first dimension must be the batch of {scalars[0][0]}"
        )


def surprise_momentum(S: torch.Tensor, grad: torch.Tensor, eta: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    r"""Surprise with momentum: past surprise decays by η_t, momentary surprise enters with step θ_t.

    Paper: Titans (Behrouz et al. 2024, arXiv:2501.00663), Sec. 3.1, Eq. (14)

    .. math::
        S_t = \eta_t S_{t-1} - \theta_t \nabla \ell(\mathcal M_{t-1}; x_t)

    Args:
        S: (b, ...) S_{t-1}, shaped like the memory weights.
        grad: (b, ...) ∇ℓ, same shape.
        eta: (b,) η_t in [0, 1].
        theta: (b,) θ_t >= 0.

    Returns:
        (b, ...) S_t.
    """
    _check_per_sequence(S=S, grad=grad, eta=eta, theta=theta)
    shape = (-1,) + (1,) * (S.dim() - 1)
    return eta.view(shape) * S - theta.view(shape) * grad


def forget_and_update(M: torch.Tensor, S: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    r"""Forgetting gate: decay the memory by (1 - α_t), then add the surprise.

    Paper: Titans (Behrouz et al. 2024, arXiv:2501.00663), Sec. 3.1, Eq. (13)

    .. math::
        \mathcal M_t = (1 - \alpha_t)\, \mathcal M_{t-1} + S_t

    Args:
        M: (b, ...) M_{t-1} (any weight tensor of the memory).
        S: (b, ...) S_t, same shape.
        alpha: (b,) α_t in [0, 1].

    Returns:
        (b, ...) M_t.
    """
    _check_per_sequence(M=M, S=S, alpha=alpha)
    return (1 - alpha).view((-1,) + (1,) * (M.dim() - 1)) * M + S


def linear_memory_read(M: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    r"""Retrieval: a forward pass of the memory on the query, without updating it.

    Paper: Titans (Behrouz et al. 2024, arXiv:2501.00663), Sec. 3.1, Eq. (15)

    .. math::
        y_t = \mathcal M^*(q_t) = q_t \mathcal M

    Args:
        M: (..., d_k, d_v) linear memory.
        q: (..., d_k) query.

    Returns:
        (..., d_v) y_t.
    """
    check_shapes(M=(M, "... d_k d_v"), q=(q, "... d_k"))
    return (q[..., None, :] @ M)[..., 0, :]


def data_dependent_gates(
    x: torch.Tensor, W: torch.Tensor, bias: torch.Tensor, theta_max: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""The data-dependent forgetting rate, surprise decay and step size of each token.

    Paper: Titans (Behrouz et al. 2024, arXiv:2501.00663), Sec. 3.1, α_t, η_t, θ_t of Eq. (13)-(14)

    .. math::
        [a_t, e_t, h_t] = x_t W^\top + b, \quad
        \alpha_t = \mathrm{sigmoid}(a_t), \quad \eta_t = \mathrm{sigmoid}(e_t), \quad
        \theta_t = \theta_{max}\, (1 - \eta_t)\, \mathrm{sigmoid}(h_t)

    The paper makes all three functions of x_t without fixing the form; one linear map with a
    sigmoid keeps α_t, η_t in (0, 1) as Eq. (13)-(14) require. The factor 1 - η_t is this project's
    control: with momentum S_t = η S_{t-1} - θ ∇ℓ a constant gradient moves the memory by up to
    θ / (1 - η) per token (heavy-ball momentum), so the factor bounds that effective step by θ_max
    however close η_t comes to 1 (`NeuralMemoryOptions.step_size_bound`).

    Args:
        x: (b, L, d_model) input.
        W: (3, d_model) the three projections, rows (α, η, θ).
        bias: (3,) their biases.
        theta_max: the largest effective step size θ_t / (1 - η_t).

    Returns:
        alpha, eta, theta, each (b, L).
    """
    check_shapes(x=(x, "b L d"), W=(W, "3 d"), bias=(bias, "3"))
    check_positive("theta_max", theta_max)
    a, e, h = (x @ W.T + bias).unbind(dim=-1)
    eta = torch.sigmoid(e)
    return torch.sigmoid(a), eta, theta_max * (1 - eta) * torch.sigmoid(h)


def _check_sequence(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, alpha: torch.Tensor, eta: torch.Tensor, theta: torch.Tensor
) -> dict[str, int]:
    return check_shapes(
        q=(q, "b L d_k"),
        k=(k, "b L d_k"),
        v=(v, "b L d_v"),
        alpha=(alpha, "b L"),
        eta=(eta, "b L"),
        theta=(theta, "b L"),
    )


def neural_memory_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    alpha: torch.Tensor,
    eta: torch.Tensor,
    theta: torch.Tensor,
    M0: torch.Tensor | None = None,
    S0: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""The linear neural memory token by token: the literal recurrence, the reference.

    Paper: Titans (Behrouz et al. 2024, arXiv:2501.00663), Sec. 3.1, Eq. (12)-(15)

    .. math::
        S_t = \eta_t S_{t-1} - \theta_t \nabla\ell(M_{t-1}; x_t), \quad
        M_t = (1 - \alpha_t) M_{t-1} + S_t, \quad y_t = q_t M_t

    y_t reads M_t, the memory *after* the update with token t, as the paper writes Eq. (15).

    Args:
        q, k: (b, L, d_k) queries and keys.
        v: (b, L, d_v) values.
        alpha, eta, theta: (b, L) forgetting, surprise decay, step size.
        M0, S0: (b, d_k, d_v) memory and surprise before the sequence; zeros when None.

    Returns:
        y (b, L, d_v), M_L and S_L (b, d_k, d_v).
    """
    sizes = _check_sequence(q, k, v, alpha, eta, theta)
    check_shapes(k=(k, "b L d_k"), M0=(M0, "b d_k d_v"), S0=(S0, "b d_k d_v"))
    zeros = k.new_zeros(sizes["b"], sizes["d_k"], sizes["d_v"])
    M = M0 if M0 is not None else zeros
    S = S0 if S0 is not None else zeros
    y = []
    for t in range(sizes["L"]):
        S = surprise_momentum(S, linear_memory_gradient(M, k[:, t], v[:, t]), eta[:, t], theta[:, t])
        M = forget_and_update(M, S, alpha[:, t])
        y.append(linear_memory_read(M, q[:, t]))
    return torch.stack(y, dim=1), M, S


class LinearMemory:
    """M(k) = k M with the closed-form gradient (`linear_memory_gradient`). Weights {"M": (d_k, d_v)}."""

    @staticmethod
    def read(params: dict, q: torch.Tensor) -> torch.Tensor:
        """params with (b, T, ...) per-token weights, q (b, T, d_k) -> (b, T, d_v)."""
        return linear_memory_read(params["M"], q)

    @staticmethod
    def gradients(params: dict, k: torch.Tensor, v: torch.Tensor) -> dict:
        """∇ℓ of every token of a chunk at the chunk's weights (b, ...): {"M": (b, T, d_k, d_v)}."""
        M = params["M"][:, None].expand(-1, k.shape[1], -1, -1)
        return {"M": linear_memory_gradient(M, k, v)}


class MLPMemory:
    """A deep memory of L_M >= 2 layers, M(k) = SiLU(... SiLU(k W1) ...) W_{L_M} (Sec. 3.1; the
    paper's deep-memory experiments vary L_M from 1, the linear memory, to 4). Weights {"W1", ...}.

    Its per-token gradients come from autograd (torch.func.grad, vectorised over tokens and batch).
    """

    @staticmethod
    def apply(params: dict, k: torch.Tensor) -> torch.Tensor:
        layers = [params[f"W{i}"] for i in range(1, len(params) + 1)]
        for W in layers[:-1]:
            k = F.silu(k @ W)
        return k @ layers[-1]

    @staticmethod
    def read(params: dict, q: torch.Tensor) -> torch.Tensor:
        return MLPMemory.apply(params, q[..., None, :])[..., 0, :]

    @staticmethod
    def gradients(params: dict, k: torch.Tensor, v: torch.Tensor) -> dict:
        def loss(p: dict, k_t: torch.Tensor, v_t: torch.Tensor) -> torch.Tensor:
            return associative_loss(MLPMemory.apply(p, k_t), v_t)

        per_token = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))
        return torch.func.vmap(per_token)(params, k, v)


MEMORIES = {"linear": LinearMemory, "mlp": MLPMemory}


def _decay_weights(a: torch.Tensor) -> torch.Tensor:
    """(b, T) factors in [0, 1] -> (b, T, T + 1) weights [i-1, j] = Π_{j<r<=i} a_r for j <= i, else 0.

    Column 0 is the carried-in state's weight. The products come from a cumprod over a masked
    matrix, so zero factors are exact (no logarithms).
    """
    batch, T = a.shape
    j = torch.arange(T + 1, device=a.device)[:, None]  # source index, 0 = the carried-in state
    r = torch.arange(1, T + 1, device=a.device)[None, :]  # factor index
    factors = a[:, None, :].expand(batch, T + 1, T).masked_fill(r <= j, 1.0)
    weights = torch.cumprod(factors, dim=-1).transpose(1, 2)
    return weights.masked_fill(j.T > r.T, 0.0)


def _within_chunk(a: torch.Tensor, x0: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """x_i = a_i x_{i-1} + inputs_i for i = 1..T at once: x_i = Σ_{j<=i} (Π_{j<r<=i} a_r) inputs_j.

    a (b, T); x0 (b, ...); inputs (b, T, ...). Returns (b, T, ...).
    """
    sources = torch.cat((x0[:, None], inputs), dim=1)
    return torch.einsum("bij,bj...->bi...", _decay_weights(a), sources)


def _linear_chunk(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    alpha: torch.Tensor,
    eta: torch.Tensor,
    theta: torch.Tensor,
    M0: torch.Tensor,
    S0: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One chunk of the linear memory without per-token weights (matrix products, Sec. 3.2).

    With errors E_r = k_r M_0 - v_r at the chunk's start, every update is rank one,
    u_r = -θ_r ∇ℓ_r = k_r^T s_r with s_r = -2 θ_r E_r, so with W[i, r] = Σ_j A[i, j] H[j, r]
    (A, H the decay weights of 1 - α and η):
    y_i = A[i, 0] q_i M_0 + c_i q_i S_0 + Σ_r W[i, r] (q_i · k_r) s_r, c_i = Σ_j A[i, j] H[j, 0].
    """
    A, H = _decay_weights(1 - alpha), _decay_weights(eta)  # (b, T, T + 1)
    W = A[:, :, 1:] @ H[:, :, 1:]  # (b, T, T): weight of u_r in M_i
    c = A[:, :, 1:] @ H[:, :, :1]  # (b, T, 1): weight of S_0 in M_i
    s = -2 * theta[..., None] * (k @ M0 - v)  # (b, T, d_v)
    y = A[:, :, :1] * (q @ M0) + c * (q @ S0) + (W * (q @ k.transpose(1, 2))) @ s
    M = A[:, -1, 0, None, None] * M0 + c[:, -1, :, None] * S0 + k.transpose(1, 2) @ (W[:, -1, :, None] * s)
    S = H[:, -1, 0, None, None] * S0 + k.transpose(1, 2) @ (H[:, -1, 1:, None] * s)
    return y, M, S


def neural_memory_chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    alpha: torch.Tensor,
    eta: torch.Tensor,
    theta: torch.Tensor,
    chunk_size: int,
    params0: dict,
    momentum0: dict | None = None,
    memory: Literal["linear", "mlp"] = "linear",
) -> tuple[torch.Tensor, dict, dict]:
    r"""The neural memory as mini-batch gradient descent with momentum and decay, a chunk at a time.

    Paper: Titans (Behrouz et al. 2024, arXiv:2501.00663), Sec. 3.2, Eq. (16)-(18)

    Inside a chunk starting at t' every gradient is taken at the chunk's starting memory
    \mathcal M_{t'}, so all T gradients come at once (vectorised autograd for the MLP); the two
    linear recurrences then run as weighted sums,

    .. math::
        S_i = \Big(\prod_{r \le i} \eta_r\Big) S_{t'} - \sum_{j \le i} \Big(\prod_{j < r \le i} \eta_r\Big)
              \theta_j \nabla\ell(\mathcal M_{t'}; x_j), \qquad
        \mathcal M_i = \Big(\prod_{r \le i} (1-\alpha_r)\Big) \mathcal M_{t'}
              + \sum_{j \le i} \Big(\prod_{j < r \le i} (1-\alpha_r)\Big) S_j

    and y_i = \mathcal M_i(q_i). For the linear memory every update is rank one, k_j^T s_j, so
    y_i = q_i \mathcal M_i becomes matrix products of (q_i · k_j) weighted by the decays, and no
    per-token weights are formed (`_linear_chunk`). With chunk_size 1 this is
    `neural_memory_recurrent` exactly.

    Args:
        q, k: (b, L, d_k); v: (b, L, d_v); alpha, eta, theta: (b, L).
        chunk_size: b of Sec. 3.2, tokens per chunk, >= 1.
        params0: the memory weights before the sequence, each (b, ...): {"M"} or {"W1", "W2"}.
        momentum0: the surprise before the sequence (same keys and shapes); zeros when None.
        memory: "linear" or "mlp".

    Returns:
        y (b, L, d_v), the final weights and the final surprise (dicts like params0).
    """
    sizes = _check_sequence(q, k, v, alpha, eta, theta)
    check_positive("chunk_size", chunk_size)
    if memory not in MEMORIES:
        raise ValueError(f"memory must be one of {sorted(MEMORIES)}, got {memory!r}")
    rule = MEMORIES[memory]
    params = dict(params0)
    momentum = dict(momentum0) if momentum0 is not None else {n: torch.zeros_like(p) for n, p in params.items()}
    outputs = []
    for start in range(0, sizes["L"], chunk_size):
        chunk = slice(start, start + chunk_size)
        a, e, th = alpha[:, chunk], eta[:, chunk], theta[:, chunk]
        if memory == "linear":  # rank-one updates: matrix products, no per-token weights
            y, params["M"], momentum["M"] = _linear_chunk(
                q[:, chunk], k[:, chunk], v[:, chunk], a, e, th, params["M"], momentum["M"]
            )
            outputs.append(y)
            continue
        grads = rule.gradients(params, k[:, chunk], v[:, chunk])
        weights = {}
        for name, grad in grads.items():
            step = -th.view(*th.shape, *(1,) * (grad.dim() - 2)) * grad
            S = _within_chunk(e, momentum[name], step)
            weights[name] = _within_chunk(1 - a, params[name], S)
            momentum[name] = S[:, -1]
        params = {name: w[:, -1] for name, w in weights.items()}
        outputs.append(rule.read(weights, q[:, chunk]))
    return torch.cat(outputs, dim=1), params, momentum


@dataclass(frozen=True)
class NeuralMemoryOptions:
    """The neural memory's options, shared by `NeuralMemory` and the Titans layers (MAG, MAC, MAL).

    A config gives them as one nested mapping under the layer's `memory:` key, every field
    optional, e.g. `memory: {kind: mlp, chunk_size: 16, d_hidden: 64, depth: 3}`.

    kind: the memory M of Sec. 3.1, "linear" (M(k) = k M, depth 1) or "mlp" (`MLPMemory`).
    chunk_size: b of Sec. 3.2, the tokens whose gradients are taken at one memory.
    d_hidden: the MLP memory's hidden width (None: 2 d_model).
    theta_max: the largest effective step of one chunk, summed over its tokens: each token's
        θ_t / (1 - η_t) is at most theta_max / chunk_size (`step_size_bound`).
    depth: L_M >= 2 layers of the MLP memory (None: 2); a linear memory has depth 1.
    conv_kernel: > 1 adds Sec. 4.4's depthwise-separable convolution after the K, V, Q projections.
    output_gate: Sec. 4.4's normalisation and linear gating before the output projection.
    """

    kind: Literal["linear", "mlp"] = "linear"
    chunk_size: PositiveInt = 16
    d_hidden: PositiveInt | None = None
    theta_max: PositiveFloat = 0.5
    depth: PositiveInt | None = None
    conv_kernel: PositiveInt = 1
    output_gate: bool = False

    @property
    def step_size_bound(self) -> float:
        """The largest effective step θ_t / (1 - η_t), theta_max / chunk_size (`data_dependent_gates`).

        This project's control; the paper bounds θ_t nowhere. Within a chunk every gradient is taken
        at the chunk's first memory (Sec. 3.2), so a chunk moves a linear memory by the sum of its
        tokens' steps at once; with ℓ2-normalised keys (Sec. 4.4) the eigenvalues of Σ_j k_j^T k_j
        are at most the chunk size b. With θ_t <= theta_max (1 - η_t) / b, the chunk-to-chunk map of
        the memory's error along a key has spectral radius below 1 for theta_max <= 0.5, every chunk
        size 1..128, η in [0, 0.9999] and any forgetting (checked for constant gates, b identical
        keys, the worst case). A bound of theta_max on θ_t alone let a chunk of b similar keys
        multiply the error by up to 1 - 2 theta_max b, and momentum near 1 made any chunk size
        above 1 diverge: a trained MAG with b = 16 gave NaN at 256x its training length.
        """
        return self.theta_max / self.chunk_size

    def __post_init__(self) -> None:
        if self.kind not in MEMORIES:
            raise ValueError(f"kind must be one of {sorted(MEMORIES)}, got {self.kind!r}")
        if self.kind == "linear" and self.depth not in (None, 1):
            raise ValueError(f"depth {self.depth} needs kind: mlp (a linear memory has depth 1)")
        if self.kind == "mlp" and self.depth is not None and self.depth < 2:
            raise ValueError(f"kind: mlp needs depth >= 2, got {self.depth} (depth 1 is kind: linear)")


@dataclass(frozen=True)
class NeuralMemoryState:
    """The memory's weights at the current chunk's start (the gradient point), its weights now and
    the momentum (dicts of (b, ...) tensors, as `params` in the glossary), and the tokens seen."""

    start: dict
    params: dict
    momentum: dict
    position: int
    tail: torch.Tensor  # the last kernel - 1 inputs (b, <= kernel - 1, d_model) of the Sec. 4.4 convolution


@register_mixer("neural_memory")
class NeuralMemory(Mixer):
    """Long-term memory layer (Sec. 3): persistent tokens, then the memory read at every token.

    The input gets `n_persistent` learnable tokens prepended (Sec. 3.3), the memory is trained on
    the whole sequence in the chunked form, and each position returns W_O y_t (the persistent
    positions are dropped). `step` streams tokens through the same chunk boundaries: within a
    chunk each token's gradient is taken at the chunk's starting weights, so step equals forward.

    `memory` holds the memory's options (`NeuralMemoryOptions`); those of Sec. 3.1 and 4.4 are off
    by default: `depth` L_M >= 2 layers for the MLP memory (`kind: linear` is L_M = 1);
    `conv_kernel` > 1, the depthwise-separable convolution after the K, V, Q projections
    (`memory_projections`); `output_gate`, the normalisation and linear gating before the output
    projection, W_O (RMSNorm(y_t) ⊙ σ(x_t W_G)).
    """

    State = NeuralMemoryState

    def __init__(
        self, d_model: int, memory: NeuralMemoryOptions = NeuralMemoryOptions(), n_persistent: NonNegativeInt = 0
    ):
        super().__init__(d_model)
        self.options = memory
        self.W_K = nn.Linear(d_model, d_model, bias=False)
        self.W_V = nn.Linear(d_model, d_model, bias=False)
        self.W_Q = nn.Linear(d_model, d_model, bias=False)
        self.W_O = nn.Linear(d_model, d_model, bias=False)
        self.gates = nn.Linear(d_model, 3)
        self.persistent = nn.Parameter(0.02 * torch.randn(n_persistent, d_model))
        kernel = memory.conv_kernel
        self.conv = nn.Parameter(torch.randn(3 * d_model, kernel) / math.sqrt(kernel)) if kernel > 1 else None
        self.output_norm = RMSNorm(d_model) if memory.output_gate else None
        self.W_G = nn.Linear(d_model, d_model, bias=False) if memory.output_gate else None
        if memory.kind == "linear":
            self.initial = nn.ParameterDict({"M": nn.Parameter(torch.zeros(d_model, d_model))})
        else:  # W1 .. W_{L_M - 1} random, the last zero: the memory starts by answering 0
            depth, hidden = memory.depth or 2, memory.d_hidden or 2 * d_model
            widths = [d_model] + [hidden] * (depth - 1) + [d_model]
            self.initial = nn.ParameterDict(
                {
                    f"W{i + 1}": nn.Parameter(
                        torch.randn(fan_in, fan_out) / math.sqrt(fan_in)
                        if i < depth - 1
                        else torch.zeros(fan_in, fan_out)
                    )
                    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(widths))
                }
            )

    def _inputs(self, x: torch.Tensor, tail: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """q, k, v and the gates of the tokens x, the convolution reading the `tail` of earlier inputs."""
        window = torch.cat((tail, x), dim=1)
        k, v, q = memory_projections(window, self.W_K.weight, self.W_V.weight, self.W_Q.weight, self.conv)
        alpha, eta, theta = data_dependent_gates(x, self.gates.weight, self.gates.bias, self.options.step_size_bound)
        earlier = tail.shape[1]
        return q[:, earlier:], k[:, earlier:], v[:, earlier:], alpha, eta, theta

    def _tail(self, tail: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        keep = 0 if self.conv is None else self.conv.shape[1] - 1
        window = torch.cat((tail, x), dim=1)
        return window[:, window.shape[1] - min(keep, window.shape[1]) :]

    def queries(self, x: torch.Tensor, tail: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The memory's queries q_t of the tokens x (Eq. 15, with Sec. 4.4's convolution reading the
        `tail` of earlier tokens of the same sequence) and the tail to keep for the next tokens:
        ((b, n, d_k), (b, <= kernel - 1, d_model))."""
        window = torch.cat((tail, x), dim=1)
        q = memory_projections(window, self.W_K.weight, self.W_V.weight, self.W_Q.weight, self.conv)[2]
        return q[:, tail.shape[1] :], self._tail(tail, x)

    def _start(self, x: torch.Tensor) -> tuple[torch.Tensor, NeuralMemoryState]:
        batch = x.shape[0]
        params = {name: p.expand(batch, *p.shape) for name, p in self.initial.items()}
        zeros = {name: torch.zeros_like(p) for name, p in params.items()}
        state = NeuralMemoryState(params, params, zeros, 0, x[:, :0])
        return torch.cat((self.persistent.expand(batch, *self.persistent.shape), x), dim=1), state

    def _tokens(self, inputs: list, state: NeuralMemoryState) -> tuple[torch.Tensor, NeuralMemoryState]:
        """The recurrence token by token, each gradient at the current chunk's start weights."""
        rule, outputs = MEMORIES[self.options.kind], []
        start, params, momentum, position = state.start, state.params, state.momentum, state.position
        q, k, v, alpha, eta, theta = inputs
        for t in range(q.shape[1]):
            grads = rule.gradients(start, k[:, t : t + 1], v[:, t : t + 1])  # at the chunk's start weights
            momentum = {n: surprise_momentum(momentum[n], g[:, 0], eta[:, t], theta[:, t]) for n, g in grads.items()}
            params = {n: forget_and_update(params[n], momentum[n], alpha[:, t]) for n in params}
            outputs.append(rule.read({n: p[:, None] for n, p in params.items()}, q[:, t : t + 1]))
            position += 1
            if position % self.options.chunk_size == 0:
                start = params
        return torch.cat(outputs, dim=1), NeuralMemoryState(start, params, momentum, position, state.tail)

    def step(self, x: torch.Tensor, state: NeuralMemoryState | None = None) -> tuple[torch.Tensor, NeuralMemoryState]:
        """`Mixer.step`, typed with this mixer's state (the Titans variants keep it in theirs)."""
        y, new_state = super().step(x, state)
        return y, cast(NeuralMemoryState, new_state)

    def _step(self, x: torch.Tensor, state: NeuralMemoryState | None) -> tuple[torch.Tensor, NeuralMemoryState]:
        """The tokens up to the next chunk boundary run token by token, the whole chunks after it in
        the chunked form, the rest token by token: the same gradient points however x is split."""
        n_new, outputs = x.shape[1], []
        if state is None:
            x, state = self._start(x)
        inputs, tail = self._inputs(x, state.tail), self._tail(state.tail, x)
        chunk_size = self.options.chunk_size
        lead = min(x.shape[1], -state.position % chunk_size)
        full = (x.shape[1] - lead) - (x.shape[1] - lead) % chunk_size
        for part, chunked in (
            (slice(0, lead), False),
            (slice(lead, lead + full), True),
            (slice(lead + full, None), False),
        ):
            part_inputs = [tensor[:, part] for tensor in inputs]
            if not part_inputs[0].shape[1]:
                continue
            if chunked:
                y, params, momentum = neural_memory_chunked(
                    *part_inputs, chunk_size, state.params, state.momentum, self.options.kind
                )
                state = NeuralMemoryState(params, params, momentum, state.position + full, state.tail)
            else:
                y, state = self._tokens(part_inputs, state)
            outputs.append(y)
        y = torch.cat(outputs, dim=1)[:, -n_new:]
        if self.W_G is not None and self.output_norm is not None:  # Sec. 4.4: norm and gate before W_O
            y = self.output_norm(y) * torch.sigmoid(self.W_G(x[:, -n_new:]))
        return self.W_O(y), dataclasses.replace(state, tail=tail)
