"""Decoding under a CUDA graph gives the tokens that stepping gives, and is used only for states that keep
their structure from token to token (`src.generation_graphs`). The structure check runs on any machine;
the decoding comparisons need a GPU (`cuda` marker)."""

import pytest
import torch

from src.config import resolve_model_section
from src.generation import generate, generate_stream
from src.generation_graphs import graph_step, state_structure
from src.model import PaperModel

MIXERS = {
    "selective_ssm": {"type": "selective_ssm", "d_state": 4, "d_conv": 3, "expand": 2},
    "lti_ssm": {"type": "lti_ssm", "d_state": 4},
    "titans_mag": {
        "type": "titans_mag", "n_heads": 2, "window": 4, "n_persistent": 2,
        "memory": {"kind": "linear", "chunk_size": 4, "conv_kernel": 2},
    },
    "attention": {"type": "attention", "n_heads": 2},
}  # fmt: skip
VOCAB = 32


def tiny_model(mixer: str, device: str = "cpu") -> PaperModel:
    raw = {"vocab_size": VOCAB, "d_model": 16, "tie_embeddings": True}
    raw["blocks"] = [{"mixer": MIXERS[mixer], "mlp": {"type": "swiglu", "d_hidden": 32}, "repeat": 2}]
    torch.manual_seed(0)
    return PaperModel(resolve_model_section(raw, "<test>")).to(device).eval()


@pytest.mark.parametrize(("mixer", "keeps"), [("selective_ssm", True), ("lti_ssm", True), ("titans_mag", False)])
def test_a_state_keeps_its_structure_only_without_counters_or_growing_tensors(mixer, keeps):
    model = tiny_model(mixer)
    with torch.no_grad():
        _, state = model.step(torch.tensor([[1, 2, 3]]), None)
        _, after = model.step(torch.tensor([[4]]), state)
    assert (state_structure(after) == state_structure(state)) is keeps


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("mixer", list(MIXERS))
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_decoding_with_graphs_equals_stepping(mixer, temperature):
    model = tiny_model(mixer, "cuda")
    prompt = torch.randint(VOCAB, (2, 5), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    stepped = generate(model, prompt, 12, temperature=temperature, seed=3, cuda_graphs=False)
    for _ in range(2):  # the second call replays the graph captured by the first
        assert torch.equal(generate(model, prompt, 12, temperature=temperature, seed=3), stepped)
    streamed = generate_stream(model, prompt[:1], 12, temperature, seed=3)  # the chat service's path
    assert list(streamed) == generate(model, prompt[:1], 12, temperature, seed=3, cuda_graphs=False)[0, 5:].tolist()


@pytest.mark.cuda
@needs_cuda
def test_the_graph_is_captured_for_mamba_and_refused_where_the_state_changes():
    for mixer, captured in (("selective_ssm", True), ("titans_mag", False)):
        model = tiny_model(mixer, "cuda")
        token = torch.ones(1, 1, dtype=torch.long, device="cuda")
        with torch.no_grad():
            _, state = model.step(token, None)
            assert (graph_step(model, state, token) is not None) is captured
