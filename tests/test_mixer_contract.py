"""The mixer contract (src/layers/mixer.py), checked for every registered mixer.

Each property runs over `EXAMPLES`, small configurations that together cover every entry of
`MIXERS` (a test fails when a registered mixer has none, so a new mixer is checked the moment it
registers) and the options that change how a mixer computes (update rules, segment sizes,
routing, memory kinds).
"""

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from src.layers import MIXERS
from src.validation import build

D_MODEL = 16
EXAMPLES = {
    "attention": ("attention", {"n_heads": 2}),
    "selective_ssm": ("selective_ssm", {"d_state": 4}),
    "selective_ssm-sequential": ("selective_ssm", {"d_state": 4, "scan": "sequential"}),
    "lti_ssm": ("lti_ssm", {"d_state": 4}),
    "tensor_memory": ("tensor_memory", {"n_heads": 2, "chunk_size": 4}),
    "tensor_memory-delta": ("tensor_memory", {"n_heads": 2, "update": "delta"}),
    "tensor_memory-segment": ("tensor_memory", {"n_heads": 2, "segment_size": 3}),
    "tensor_memory-delta-chunked": ("tensor_memory", {"n_heads": 2, "update": "delta", "chunk_size": 4}),
    "tensor_memory-heads": (
        "tensor_memory",
        {"n_heads": 2, "chunk_size": 3, "heads": [{"update": "delta"}, {"update": "linear"}]},
    ),
    "tensor_memory-clamps": (
        "tensor_memory",
        {"n_heads": 2, "max_delta": 0.3, "max_memory": 0.5, "max_norm": 1.0, "normalize_qkv": True, "bias": True},
    ),
    "tensor_memory-heads-clamps": (
        "tensor_memory",
        {
            "n_heads": 4,
            "segment_size": 2,
            "heads": [{"update": "delta", "max_norm": 0.8}, {"update": "linear"}, {"max_memory": 0.2}, {}],
        },
    ),
    "infini_attention": ("infini_attention", {"n_heads": 2, "segment_size": 4}),
    "infini_attention-delta": ("infini_attention", {"n_heads": 2, "segment_size": 3, "update": "delta"}),
    "neural_memory": ("neural_memory", {"memory": {"chunk_size": 4}, "n_persistent": 2}),
    "neural_memory-mlp": ("neural_memory", {"memory": {"kind": "mlp", "chunk_size": 3, "d_hidden": 8}}),
    "titans_mag": ("titans_mag", {"n_heads": 2, "window": 4, "n_persistent": 2, "memory": {"chunk_size": 4}}),
    "titans_mac": ("titans_mac", {"n_heads": 2, "segment_size": 4, "n_persistent": 2, "memory": {"chunk_size": 2}}),
    "titans_mac-mlp": (
        "titans_mac",
        {"n_heads": 2, "segment_size": 3, "memory": {"kind": "mlp", "chunk_size": 2, "d_hidden": 8}},
    ),
    "titans_mal": ("titans_mal", {"n_heads": 2, "window": 4, "n_persistent": 2, "memory": {"chunk_size": 4}}),
    "neural_memory-deep-conv-gate": (
        "neural_memory",
        {"memory": {"kind": "mlp", "chunk_size": 3, "d_hidden": 8, "depth": 3, "conv_kernel": 4, "output_gate": True}},
    ),
    "titans_mac-conv-gate": (
        "titans_mac",
        {
            "n_heads": 2,
            "segment_size": 4,
            "n_persistent": 1,
            "memory": {"chunk_size": 2, "conv_kernel": 3, "output_gate": True},
        },
    ),
    "memory_bank": ("memory_bank", {"n_heads": 2, "n_memory": 8}),
    "memory_bank-token": ("memory_bank", {"n_heads": 2, "n_memory": 16, "chapters": 4, "top_k": 2}),
    "memory_bank-sequence": (
        "memory_bank",
        {"n_heads": 2, "n_memory": 16, "chapters": 4, "top_k": 2, "routing": "sequence"},
    ),
    "memory_bank-factorized": ("memory_bank", {"n_heads": 2, "n_memory": 8, "bank": "factorized", "rank": 4}),
    "product_key_memory": ("product_key_memory", {"n_keys": 4, "top_k": 3, "heads": 2, "key_dim": 4, "value_dim": 6}),
}
# At L = 65,536 each fast form runs (attention without the L x L scores), with the chunk and
# segment sizes of the configs: the examples' tiny ones would only time the Python loop over chunks.
LONG_SIZES = {"chunk_size": 64, "segment_size": 256}


def long_sizes(value):
    """An example's arguments with the long chunk and segment sizes, in nested options too."""
    if isinstance(value, dict):
        return {key: LONG_SIZES.get(key, long_sizes(item)) for key, item in value.items()}
    return value


LONG = {
    name: (kind, long_sizes(kwargs))
    for name, (kind, kwargs) in EXAMPLES.items()
    if not name.endswith(("-sequential", "-delta", "-clamps"))  # literal loops: references, or clamped writes
    and name != "attention"  # at 65,536 in tests/test_layers/test_attention.py (finite, and its peak memory)
    # the MLP memory at this length once, in its fullest example (depth 3, convolution, output gate); MAC's path once,
    # with the linear memory
    and name not in ("neural_memory-mlp", "titans_mac-mlp")
}


def make(name: str, dtype=torch.float64, seed: int = 0, examples: dict = EXAMPLES):
    """The example mixer with every parameter moved a little, so zero-initialised paths (gates,
    Titans' W2 and M_0) carry signal too."""
    kind, kwargs = examples[name]
    torch.manual_seed(seed)
    mixer = build(MIXERS[kind], kwargs, name, "EXAMPLES", d_model=D_MODEL)  # nested options as a config gives them
    with torch.no_grad():
        for parameter in mixer.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return mixer.to(dtype).eval()


def inputs(batch: int, length: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(batch, length, D_MODEL, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def state_size(state) -> int:
    """Elements of every tensor held by a state (dataclasses and dicts walked recursively)."""
    if isinstance(state, torch.Tensor):
        return state.numel()
    if dataclasses.is_dataclass(state):
        return sum(state_size(getattr(state, field.name)) for field in dataclasses.fields(state))
    if isinstance(state, dict):
        return sum(state_size(value) for value in state.values())
    return 0


def test_every_registered_mixer_has_an_example():
    assert set(MIXERS) == {kind for kind, _ in EXAMPLES.values()}


@pytest.mark.parametrize("name", EXAMPLES)
@settings(max_examples=10)  # x 17 examples; each draw is a fresh sequence and split
@given(length=st.integers(2, 20), data=st.data())
def test_causal(name, length, data):
    t = data.draw(st.integers(0, length - 2), label="last unchanged position")
    mixer, x = make(name), inputs(2, length)
    x_changed = x.clone()
    x_changed[:, t + 1 :] += inputs(2, length - t - 1, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(mixer(x_changed)[:, : t + 1], mixer(x)[:, : t + 1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", EXAMPLES)
@settings(max_examples=10)
@given(pieces=st.lists(st.integers(1, 7), min_size=1, max_size=5))
def test_step_equals_forward(name, pieces):
    mixer, x = make(name), inputs(2, sum(pieces))
    with torch.no_grad():
        expected = mixer(x)
        outputs, state, start = [], None, 0
        for size in pieces:
            y, state = mixer.step(x[:, start : start + size], state)
            outputs.append(y)
            start += size
    assert type(state) is mixer.State
    torch.testing.assert_close(torch.cat(outputs, dim=1), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", EXAMPLES)
def test_batch_independent(name):
    mixer, x = make(name), inputs(3, 11)
    others = x.clone()
    others[1:] = inputs(2, 11, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(mixer(others)[0], mixer(x)[0], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(mixer(x[1:2])[0], mixer(x)[1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", EXAMPLES)
def test_float64_and_float32_agree(name):
    x = inputs(2, 13)
    with torch.no_grad():
        y64 = make(name, torch.float64)(x)
        y32 = make(name, torch.float32)(x.float())
    assert y64.dtype == torch.float64 and y32.dtype == torch.float32
    torch.testing.assert_close(y32.double(), y64, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", EXAMPLES)
def test_state_size_does_not_grow_with_length(name):
    # lengths that are multiples of every example's segment and chunk size: a partly filled
    # segment (at most segment_size tokens) is part of a compressive memory's constant-size state
    mixer = make(name)
    with torch.no_grad():
        _, short = mixer.step(inputs(1, 12), None)
        _, long = mixer.step(inputs(1, 48), None)
        _, longer = mixer.step(inputs(1, 12), long)
    if mixer.constant_state:
        assert state_size(short) == state_size(long) == state_size(longer)
    else:  # attention's KV cache holds every token: the one stated exception
        assert type(mixer).__name__ == "CausalSelfAttention"
        assert state_size(longer) > state_size(long) > state_size(short)


@pytest.mark.parametrize("name", EXAMPLES)
def test_gradients_reach_every_parameter(name):
    mixer = make(name).train()
    mixer(inputs(2, 12)).square().sum().backward()
    missing = [n for n, p in mixer.named_parameters() if p.numel() and (p.grad is None or not p.grad.abs().sum() > 0)]
    if EXAMPLES[name][0] == "memory_bank" and "chapters" in EXAMPLES[name][1]:
        missing = [n for n in missing if n != "M"]  # unchosen chapters get no gradient, by design
    assert not missing, f"no gradient reaches {missing}"


@pytest.mark.parametrize("name", EXAMPLES)
def test_bad_input_names_the_argument(name):
    mixer = make(name)
    with pytest.raises(ValueError, match=r"x must have shape \(batch, length, d_model=16\)"):
        mixer(inputs(2, 5)[0])
    with pytest.raises(ValueError, match="x must have shape"):
        mixer(torch.randn(2, 5, D_MODEL + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="length >= 1"):
        mixer(inputs(2, 0))
    with pytest.raises(TypeError, match=r"x has dtype torch\.float32"):
        mixer(inputs(2, 5).float())
    with pytest.raises(TypeError, match=r"x must be a torch\.Tensor"):
        mixer([[0.0] * D_MODEL])


@pytest.mark.parametrize("name", EXAMPLES)
def test_a_state_of_another_mixer_is_refused(name):
    mixer = make(name)
    for other_name in EXAMPLES:
        other = make(other_name)
        if type(other) is type(mixer):
            continue
        with torch.no_grad():
            _, foreign = other.step(inputs(1, 3), None)
        with pytest.raises(TypeError, match=rf"state must be a {mixer.State.__name__}"):
            mixer.step(inputs(1, 2), foreign)


@pytest.mark.parametrize("name", EXAMPLES)
def test_an_empty_batch_gives_an_empty_result(name):
    with torch.no_grad():
        y, _ = make(name).step(inputs(0, 5), None)
    assert y.shape == (0, 5, D_MODEL)


@pytest.mark.parametrize("name", EXAMPLES)
def test_a_state_of_another_batch_or_width_is_refused(name):
    kind, kwargs = EXAMPLES[name]
    mixer = make(name)
    with torch.no_grad():
        _, state = mixer.step(inputs(2, 5), None)
        wider = build(MIXERS[kind], kwargs, name, "EXAMPLES", d_model=2 * D_MODEL).double()
        _, wide_state = wider.step(torch.randn(2, 5, 2 * D_MODEL, dtype=torch.float64), None)
        if state_size(state) == 0:  # token routing keeps only a position: any batch and width continue it
            return
        with pytest.raises(ValueError, match=r"state\.\S+ has shape .*: it holds 2 sequences, x holds 3"):
            mixer.step(inputs(3, 1), state)
        with pytest.raises(ValueError, match=r"state\.\S+ has shape .* with these settings keeps \(batch, "):
            mixer.step(inputs(2, 1), wide_state)
        mixer.step(inputs(2, 3), state)  # its own state still continues


@pytest.mark.parametrize("name", LONG)
def test_finite_at_65536_positions(name):
    mixer = make(name, torch.float32, examples=LONG)
    with torch.no_grad():
        y = mixer(inputs(1, 65_536, dtype=torch.float32))
    assert y.shape == (1, 65_536, D_MODEL)
    assert bool(y.isfinite().all())
