"""The language-model contract (src/language_model.py), checked for both model kinds.

A PaperModel per registered mixer (its first example of the mixer contract, with an MLP, two
blocks), and adapted tiny Llama and Qwen2 models with a memory adapter after the attention, a
routed one after the MLP and LoRA: step == forward, a state's round trip through bytes, beam
reordering, parameter groups, the tokenizer, save and load of what trains.
"""

import pytest
import torch

from src.adapted.model import AdaptedModel
from src.config import resolve_model_section
from src.language_model import LanguageModel, StateError
from src.layers import MIXERS
from src.runs import build_model
from tests.test_mixer_contract import EXAMPLES

VOCAB = 300  # a byte-level model reads every byte
FIRST_EXAMPLE = {}
for mixer_type, kwargs in EXAMPLES.values():
    FIRST_EXAMPLE.setdefault(mixer_type, kwargs)
ADAPTERS = [
    {"type": "memory", "layers": [0], "variant": "A", "n_heads": 4, "n_memory": 16},
    {"type": "memory", "layers": [1], "variant": "B", "n_heads": 2, "n_memory": 32, "chapters": 4, "top_k": 2},
    {"type": "lora", "targets": ["q_proj", "v_proj"], "rank": 4, "alpha": 8},
]
KINDS = [*(f"paper:{name}" for name in sorted(MIXERS)), "adapted:llama", "adapted:qwen2"]


def paper_section(mixer: str) -> dict:
    block = {"mixer": {"type": mixer, **FIRST_EXAMPLE[mixer]}, "mlp": {"type": "swiglu", "d_hidden": 32}, "repeat": 2}
    return {"vocab_size": VOCAB, "d_model": 16, "tie_embeddings": True, "blocks": [block]}


def make(kind: str, tiny_bases, seed: int = 0) -> LanguageModel:
    """The model `kind` names, its trainable parameters moved off their initialisation (gates open, LoRA B != 0)."""
    family, name = kind.split(":")
    if family == "paper":
        raw = paper_section(name)
    else:
        raw = {"base": {"directory": str(tiny_bases[name])}, "adapters": ADAPTERS}
    torch.manual_seed(seed)
    model = build_model(resolve_model_section(raw, "test"), "test").eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad and family == "adapted":
                parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return model


@pytest.fixture(params=KINDS, scope="module")
def model(request):
    bases = request.getfixturevalue("tiny_bases") if request.param.startswith("adapted") else None
    return make(request.param, bases)


def ids(batch=3, length=10, seed=0):
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(seed))


TOLERANCE = {"atol": 1e-4, "rtol": 1e-4}


def test_every_mixer_has_an_example():
    assert set(FIRST_EXAMPLE) == set(MIXERS)


@torch.no_grad()
def test_shapes_and_forward(model):
    tokens = ids()
    hidden = model.hidden_states(tokens)
    assert isinstance(model, LanguageModel)
    assert hidden.shape == (3, 10, model.hidden_size)
    assert torch.equal(model(tokens), model.head(hidden))
    assert model(tokens).shape == (3, 10, model.vocab_size)
    assert all(isinstance(value, torch.Tensor) for value in model.auxiliary_losses().values())
    units = model.sharding_units()
    owned = {id(module) for module in model.modules()}
    assert units and all(id(unit) in owned for unit in units)


@torch.no_grad()
def test_step_equals_forward(model):
    tokens = ids()
    pieces = [tokens[:, :5], tokens[:, 5:6], tokens[:, 6:]]
    state, logits = None, []
    for piece in pieces:
        out, state = model.step(piece, state)
        logits.append(out)
    torch.testing.assert_close(torch.cat(logits, dim=1), model(tokens), **TOLERANCE)


@torch.no_grad()
def test_a_state_travels_as_bytes(model):
    tokens = ids()
    _, state = model.step(tokens[:, :6], None)
    data = state.select(torch.arange(3)).to_bytes()  # select copies: an adapted model's step extends its cache
    expected, _ = model.step(tokens[:, 6:], state)
    restored = model.state_from_bytes(data)
    assert isinstance(data, bytes) and type(restored) is type(state)
    got, _ = model.step(tokens[:, 6:], restored)
    torch.testing.assert_close(got, expected, **TOLERANCE)


@torch.no_grad()
def test_a_constant_state_keeps_its_size(model):
    """`constant_state` holds exactly when the state's bytes are as long after 48 tokens as after 12 (multiples
    of every example's segment and chunk size, as the mixer contract measures)."""
    tokens = ids(batch=1, length=48)
    sizes = {len(model.step(tokens[:, :length], None)[1].to_bytes()) for length in (12, 48)}
    assert model.constant_state == (len(sizes) == 1)
    if isinstance(model, AdaptedModel) or model.config["blocks"][0]["mixer"]["type"] == "attention":
        assert not model.constant_state


@torch.no_grad()
def test_bytes_that_are_no_state_of_this_model_are_refused(model, tiny_bases):
    with pytest.raises(StateError, match="not a saved model state"):
        model.state_from_bytes(b"not a state")
    other = make("paper:attention" if isinstance(model, AdaptedModel) else "adapted:llama", tiny_bases)
    _, foreign = other.step(ids(length=3), None)
    with pytest.raises(StateError):
        model.state_from_bytes(foreign.to_bytes())


@torch.no_grad()
def test_reordered_beams_continue_their_own_sequences(model):
    tokens = ids()
    rows = torch.tensor([2, 0, 2])
    _, state = model.step(tokens[:, :7], None)
    got, _ = model.step(tokens[rows, 7:], state.select(rows))
    torch.testing.assert_close(got, model(tokens[rows])[:, 7:], **TOLERANCE)


def test_parameter_groups_hold_each_trainable_parameter_once(model):
    groups = model.parameter_groups(0.1)
    grouped = [id(p) for group in groups for p in group["params"]]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert len(grouped) == len(set(grouped)) and set(grouped) == trainable
    assert model.trainable_parameters() == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert model.trainable_parameters() <= model.num_parameters()


def test_the_tokenizer_round_trips_text(model):
    text = "To be, or not to be"
    encoded = model.tokenizer.encode(text)
    assert all(0 <= token < model.vocab_size for token in encoded)
    assert model.tokenizer.decode(encoded) == text


@torch.no_grad()
def test_what_trains_saves_and_loads(model, request, tiny_bases):
    kind = request.node.callspec.params["model"]
    fresh = make(kind, tiny_bases, seed=1)
    tokens = ids()
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh(tokens), model(tokens))
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trained <= set(model.state_dict())
