"""Inputs for the equation battery (tests/test_equation_battery.py), one maker per catalogued function.

`INPUTS[name]` makes the function's arguments at a `scale` (the data inputs, activations and
values, multiplied by it; weights, gates and structural arguments keep their range) with a
leading batch of `BATCH` where the equation has one (`batched` names those arguments). Float64
throughout; every call draws the same numbers (its own generator), so two calls are identical.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from src.layers import product_keys, quantization, routing

BATCH = 3  # no other size of the inputs below is 3, so a batched argument is recognised by it


@dataclass(frozen=True)
class Inputs:
    """How to call one equation function in the battery."""

    make: Callable[[float, Callable], tuple[tuple, dict]]  # (scale, random) -> (args, kwargs)
    batched: tuple[int | str, ...] = ()  # positional indices / keyword names with the leading batch
    differentiable: bool = True  # a float output has a gradient with respect to the float inputs
    limits: dict[float, str] = field(default_factory=dict)  # scale -> the documented domain limit there


def random_numbers(seed: int = 0) -> Callable:
    """A fresh standard-normal float64 drawer: every maker called with one draws the same numbers."""
    g = torch.Generator().manual_seed(seed)
    return lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)


def _gate(r, *shape):  # values in (0, 1): gates, forgetting rates, momenta
    return torch.sigmoid(r(*shape))


def _positive(r, *shape):  # σ(·) features and Δ: positive
    return r(*shape).abs() + 0.1


B = BATCH
ATTENTION = Inputs(lambda s, r: ((r(B, 2, 5, 4) * s, r(B, 2, 5, 4) * s, r(B, 2, 5, 4) * s), {}), (0, 1, 2))
MEMORY_SEQUENCE = Inputs(
    lambda s, r: ((_positive(r, B, 2, 6, 4) * s, _positive(r, B, 2, 6, 4) * s, r(B, 2, 6, 4) * s), {}), (0, 1, 2)
)
MEMORY_UPDATE = Inputs(
    lambda s, r: ((r(B, 2, 4, 4) * s, _positive(r, B, 2, 4) * s, _positive(r, B, 2, 5, 4) * s, r(B, 2, 5, 4) * s), {}),
    (0, 1, 2, 3),
)


def _neural_sequence(s, r) -> tuple:  # q, k, v (b, L, d) and the gates α, η, θ (b, L)
    return r(B, 6, 4) * s, r(B, 6, 4) * s, r(B, 6, 4) * s, _gate(r, B, 6), _gate(r, B, 6), 0.1 * _gate(r, B, 6)


SCAN = Inputs(
    lambda s, r: (
        (r(B, 4, 6) * s, _positive(r, B, 4, 6), -_positive(r, 4, 2), r(B, 2, 6) * s, r(B, 2, 6) * s),
        {"D": r(4), "z": r(B, 4, 6) * s},
    ),
    (0, 1, 3, 4, "z"),
)
DISCRETIZE = Inputs(lambda s, r: ((_positive(r, B, 5, 4) * s, -_positive(r, 4, 2), r(B, 5, 2) * s), {}), (0, 2))
UNSCALED = "its arguments are sizes, counts or codes: the scale does not apply"


def _quantized(quantize, dequantize_shape: bool):
    def make(s, r):
        X = r(128) * s
        codes, scale = quantize(X)
        return ((codes, scale, tuple(X.shape)) if dequantize_shape else (codes, scale)), {}

    return make


def _double_dequantize(s, r):
    codes, scale, mean = quantization.double_quantize(_positive(r, 300) * s)
    return (codes, scale, mean), {}


def _sub_key_scores(s, r) -> tuple:  # each half's 2 best of 4 sub-keys, for queries (B, 5, 6)
    return product_keys.sub_key_top_k(r(B, 5, 6) * s, r(4, 3), r(4, 3), 2)


def _candidates(s, r) -> tuple:  # the 2 x 2 candidates' scores and rows, and k = 2
    return (*product_keys.product_key_candidates(*_sub_key_scores(s, r), 4), 2), {}


def _kept_keys(s, r) -> tuple:  # the 2 best of the 2 x 2 candidates
    return product_keys.top_k_keys(*_candidates(s, r)[0])


def _value_read(s, r) -> tuple:  # the kept keys' weights and rows, and a table of 16 values
    scores, indices = _kept_keys(s, r)
    return (product_keys.key_weights(scores), indices, r(16, 4) * s), {}


def _load_balancing(s, r):
    probs = routing.router_probs(r(6, 4) * s)
    return (probs, probs.topk(1, dim=-1).indices, 4, 0.01), {}


INPUTS: dict[str, Inputs] = {
    "concat_heads": Inputs(lambda s, r: ((r(B, 2, 5, 4) * s, r(8, 8)), {}), (0,)),
    "fused_attention": ATTENTION,
    "rotary_embedding": Inputs(lambda s, r: ((r(B, 2, 5, 4) * s,), {"offset": 7}), (0,)),
    "scaled_dot_product_attention": ATTENTION,
    "clip_memory": Inputs(lambda s, r: ((r(B, 2, 4, 4) * s, 0.5), {}), (0,)),
    "clip_memory_norm": Inputs(lambda s, r: ((r(B, 2, 4, 4) * s, 1.0), {}), (0,)),
    "clip_update": Inputs(lambda s, r: ((r(B, 2, 4, 4) * s, 0.5), {}), (0,)),
    "compressive_memory_recurrent": Inputs(
        lambda s, r: (MEMORY_SEQUENCE.make(s, r)[0], {"update": "delta", "segment_size": 2}), (0, 1, 2)
    ),
    "delta_memory_chunked": Inputs(lambda s, r: (MEMORY_SEQUENCE.make(s, r)[0], {"chunk_size": 4}), (0, 1, 2)),
    "linear_memory_chunked": Inputs(lambda s, r: (MEMORY_SEQUENCE.make(s, r)[0], {"chunk_size": 4}), (0, 1, 2)),
    "elu_plus_one": Inputs(lambda s, r: ((r(B, 5, 4) * s,), {}), (0,)),
    "l2_normalize": Inputs(lambda s, r: ((r(B, 5, 4) * s,), {}), (0,)),
    "memory_gate": Inputs(lambda s, r: ((r(B, 2, 5, 4) * s, r(B, 2, 5, 4) * s, r(2)), {}), (0, 1)),
    "memory_retrieve": Inputs(
        lambda s, r: ((_positive(r, B, 2, 5, 4) * s, r(B, 2, 4, 4) * s, _positive(r, B, 2, 4) * s), {}), (0, 1, 2)
    ),
    "memory_update_delta": MEMORY_UPDATE,
    "memory_update_linear": MEMORY_UPDATE,
    "swiglu": Inputs(lambda s, r: ((r(B, 5, 8) * s, r(8, 16), r(8, 16), r(16, 8)), {}), (0,)),
    "lora_forward": Inputs(lambda s, r: ((r(B, 5, 8) * s, r(6, 8), r(2, 8), r(6, 2), 4.0), {"bias": r(6)}), (0,)),
    "lora_merge": Inputs(lambda s, r: ((r(6, 8) * s, r(2, 8), r(6, 2), 4.0), {})),
    "lora_update": Inputs(lambda s, r: ((r(B, 5, 8) * s, r(2, 8), r(6, 2), 4.0), {}), (0,)),
    "tanh_gated_residual": Inputs(lambda s, r: ((r(B, 5, 8) * s, r(B, 5, 8) * s, r(())), {}), (0, 1)),
    "memory_cross_attention": Inputs(
        lambda s, r: ((r(B, 5, 8) * s, r(16, 8), r(8, 8), r(8, 8), r(8, 8), r(8, 8), 2), {}), (0,)
    ),
    "associative_loss": Inputs(lambda s, r: ((r(B, 4) * s, r(B, 4) * s), {}), (0, 1)),
    "data_dependent_gates": Inputs(lambda s, r: ((r(B, 5, 8) * s, r(3, 8), r(3), 0.5), {}), (0,)),
    "forget_and_update": Inputs(lambda s, r: ((r(B, 4, 4) * s, r(B, 4, 4) * s, _gate(r, B)), {}), (0, 1, 2)),
    "linear_memory_gradient": Inputs(lambda s, r: ((r(B, 4, 4) * s, r(B, 4) * s, r(B, 4) * s), {}), (0, 1, 2)),
    "linear_memory_read": Inputs(lambda s, r: ((r(B, 4, 4) * s, r(B, 4) * s), {}), (0, 1)),
    "memory_projections": Inputs(lambda s, r: ((r(B, 5, 8) * s, r(4, 8), r(4, 8), r(4, 8)), {}), (0,)),
    "neural_memory_chunked": Inputs(
        lambda s, r: ((*_neural_sequence(s, r), 2, {"M": torch.zeros(B, 4, 4, dtype=torch.float64)}), {}),
        (0, 1, 2, 3, 4, 5, 7),
    ),
    "neural_memory_recurrent": Inputs(lambda s, r: (_neural_sequence(s, r), {}), (0, 1, 2, 3, 4, 5)),
    "surprise_momentum": Inputs(
        lambda s, r: ((r(B, 4, 4) * s, r(B, 4, 4) * s, _gate(r, B), 0.1 * _gate(r, B)), {}), (0, 1, 2, 3)
    ),
    "rms_norm": Inputs(lambda s, r: ((r(B, 5, 8) * s, r(8)), {}), (0,)),
    "dequantize_blockwise_4bit": Inputs(_quantized(quantization.quantize_blockwise_4bit, True), (), False),
    "dequantize_int8": Inputs(
        lambda s, r: (quantization.quantize_absmax_int8(r(B, 8) * s), {}), (0, 1), differentiable=False
    ),
    "dequantize_nf4": Inputs(_quantized(quantization.quantize_nf4, True), (), False),
    "double_dequantize": Inputs(_double_dequantize, (), False),
    "double_quantize": Inputs(lambda s, r: ((_positive(r, 300) * s,), {}), (), False),
    "nf4_code_values": Inputs(lambda s, r: ((torch.float64,), {}), (), False, {1e3: UNSCALED, 1e-6: UNSCALED}),
    "quantize_absmax_int8": Inputs(lambda s, r: ((r(B, 8) * s,), {}), (0,), False),
    "quantize_blockwise_4bit": Inputs(lambda s, r: ((r(128) * s,), {}), (), False),
    "quantize_nf4": Inputs(lambda s, r: ((r(128) * s,), {}), (), False),
    "load_balancing_loss": Inputs(_load_balancing),
    "router_probs": Inputs(lambda s, r: ((r(B, 5, 4) * s,), {}), (0,)),
    "router_z_loss": Inputs(lambda s, r: ((r(6, 4) * s,), {})),
    "sub_key_top_k": Inputs(lambda s, r: ((r(B, 5, 6) * s, r(4, 3), r(4, 3), 2), {}), (0,)),
    "product_key_candidates": Inputs(lambda s, r: ((*_sub_key_scores(s, r), 4), {}), (0, 1, 2, 3)),
    "top_k_keys": Inputs(_candidates, (0, 1)),
    "key_weights": Inputs(lambda s, r: ((_kept_keys(s, r)[0],), {}), (0,)),
    "weighted_value_sum": Inputs(_value_read, (0, 1)),
    "top_k_chapters": Inputs(lambda s, r: ((routing.router_probs(r(B, 5, 4) * s), 2), {}), (0,)),
    "causal_conv1d": Inputs(lambda s, r: ((r(B, 4, 6) * s, r(4, 2), r(4)), {}), (0,)),
    "delta_bias_init": Inputs(
        lambda s, r: ((4, 0.001, 0.1, 1e-4), {"generator": torch.Generator().manual_seed(0)}),
        differentiable=False,
        limits={1e3: UNSCALED, 1e-6: UNSCALED},
    ),
    "discretize_simplified": DISCRETIZE,
    "discretize_zoh": DISCRETIZE,
    "s4d_real_init": Inputs(lambda s, r: ((4, 2), {}), (), False, {1e3: UNSCALED, 1e-6: UNSCALED}),
    "selection_functions": Inputs(lambda s, r: ((r(B, 4, 6) * s, r(5, 4), r(4, 1), 2), {}), (0,)),
    "selective_scan": SCAN,
    "selective_scan_sequential": SCAN,
    "ssm_convolution": Inputs(lambda s, r: ((r(B, 4, 6) * s, r(4, 6)), {}), (0,)),
    "ssm_convolution_kernel": Inputs(lambda s, r: ((_gate(r, 4, 2), r(4, 2) * s, r(4, 2) * s, 6), {})),
    "tau_delta": Inputs(lambda s, r: ((r(B, 4, 6) * s, r(4)), {}), (0,)),
    "memory_context_allowed": Inputs(lambda s, r: ((2, 5, 4), {}), (), False, {1e3: UNSCALED, 1e-6: UNSCALED}),
    "sliding_window_allowed": Inputs(lambda s, r: ((5, 7, 4, 2), {}), (), False, {1e3: UNSCALED, 1e-6: UNSCALED}),
    "sliding_window_attention": Inputs(
        lambda s, r: ((r(B, 2, 5, 4) * s, r(B, 2, 7, 4) * s, r(B, 2, 7, 4) * s, 4, 2), {}), (0, 1, 2)
    ),
    "length_penalty": Inputs(
        lambda s, r: ((1 + r(B).abs().round(),), {"alpha": 0.6}), (0,), limits={1e3: UNSCALED, 1e-6: UNSCALED}
    ),
    "retrieval_score": Inputs(lambda s, r: ((r(8) * s, r(4, 8) * s, r(4).abs() * 10, r(4).abs()), {})),
}
