"""AdaptedModel on a tiny random Llama and Qwen2: equal to the base at initialisation, only adapters train,
int8 / NF4 frozen weights within their stated tolerance, and the adapter-only state."""

import copy

import pytest
import torch

from src.adapted.config import count_adapted_parameters
from src.adapted.model import AdaptedModel
from src.config import resolve_model_section
from src.validation import ConfigError

transformers = pytest.importorskip("transformers")

MEMORY_A = {"type": "memory", "layers": [0], "variant": "A", "n_heads": 4, "n_memory": 16}
MEMORY_B = {"type": "memory", "layers": [1], "variant": "B", "n_heads": 2, "n_memory": 32, "chapters": 4, "top_k": 2}
LORA = {"type": "lora", "targets": ["q_proj", "v_proj"], "rank": 4, "alpha": 8}
ALL_ADAPTERS = [MEMORY_A, MEMORY_B, LORA]


def adapted(directory, adapters=ALL_ADAPTERS, **base) -> AdaptedModel:
    section = resolve_model_section({"base": {"directory": str(directory), **base}, "adapters": adapters}, "test")
    return AdaptedModel(section, "test")


def reference(directory, dtype=torch.float32):
    return transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=dtype).eval()


def token_ids(batch=2, length=24, seed=0):
    return torch.randint(0, 500, (batch, length), generator=torch.Generator().manual_seed(seed))


def perturb(model: AdaptedModel, seed=0) -> None:
    """Move every adapter away from its initialisation (gates open, LoRA B non-zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.1 * torch.randn(parameter.shape, generator=g))


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize(
    "adapters", [[MEMORY_A], [MEMORY_B], [LORA], ALL_ADAPTERS], ids=["memory_A", "memory_B_routed", "lora", "all"]
)
def test_logits_equal_the_base_exactly_at_initialisation(tiny_bases, kind, adapters):
    ids = token_ids()
    with torch.no_grad():
        assert torch.equal(adapted(tiny_bases[kind], adapters)(ids), reference(tiny_bases[kind])(ids).logits)


def test_a_bfloat16_base_is_also_matched_exactly(tiny_bases):
    ids = token_ids()
    with torch.no_grad():
        logits = adapted(tiny_bases["llama"], dtype="bfloat16")(ids)
        assert logits.dtype == torch.bfloat16
        assert torch.equal(logits, reference(tiny_bases["llama"], torch.bfloat16)(ids).logits)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_adapters_change_the_logits_once_trained(tiny_bases, kind):
    model, ids = adapted(tiny_bases[kind]), token_ids()
    perturb(model)
    with torch.no_grad():
        assert not torch.allclose(model(ids), reference(tiny_bases[kind])(ids).logits, atol=1e-3)


def test_stepping_equals_the_whole_sequence(tiny_bases):
    model, ids = adapted(tiny_bases["qwen2"], [MEMORY_A, {**MEMORY_B, "routing": "sequence"}, LORA]), token_ids()
    perturb(model)
    with torch.no_grad():
        whole = model(ids)
        first, state = model.step(ids[:, :10], None)
        second, state = model.step(ids[:, 10:11], state)
        third, _ = model.step(ids[:, 11:], state)
    torch.testing.assert_close(torch.cat((first, second, third), dim=1), whole, atol=1e-5, rtol=1e-5)


def test_only_adapters_get_gradients_and_the_base_stays_bit_identical(tiny_bases):
    model = adapted(tiny_bases["llama"])
    before = {name: tensor.clone() for name, tensor in model.base.state_dict().items() if ".A" not in name}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(3):
        ids = token_ids(seed=step)
        loss = torch.nn.functional.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        graded = {name for name, p in model.named_parameters() if p.grad is not None}
        assert graded == {name for name, p in model.named_parameters() if p.requires_grad}
        optimizer.step()
    after = model.base.state_dict()
    assert all(torch.equal(after[name], tensor) for name, tensor in before.items() if not name.endswith((".A", ".B")))
    assert any(adapter.alpha.item() != 0 for adapter in model.memory_adapters.values())


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_trainable_parameter_counts_match_the_config(tiny_bases, kind):
    config = transformers.AutoConfig.from_pretrained(tiny_bases[kind])
    d, layers = config.hidden_size, config.num_hidden_layers
    d_kv = config.num_key_value_heads * d // config.num_attention_heads
    # memory adapter: RMSNorm gain d, gate 1, bank N_m x d, W_q W_k W_v W_o 4 d^2, router d x chapters
    memory_a = d + 1 + 16 * d + 4 * d * d
    memory_b = d + 1 + 32 * d + 4 * d * d + d * 4
    lora = layers * (4 * (d + d) + 4 * (d + d_kv))  # rank 4: r (d_in + d_out) for q_proj and v_proj
    assert adapted(tiny_bases[kind]).trainable_parameters() == memory_a + memory_b + lora
    assert adapted(tiny_bases[kind], [{**LORA, "layers": [1]}]).trainable_parameters() == lora // layers


def test_full_fine_tuning_trains_every_parameter(tiny_bases):
    model = adapted(tiny_bases["llama"], [], freeze=False)
    assert model.trainable_parameters() == model.num_parameters() == reference(tiny_bases["llama"]).num_parameters()


# Measured on these random bases (weights N(0, 0.02)): int8 0.6-1.1 % and NF4 10.6-10.9 % of the
# largest |logit|; next-token distributions within total variation 0.0008 (int8) and 0.011 (NF4).
TOLERANCE = {"int8": (0.03, 0.005), "nf4": (0.25, 0.05)}  # (max |Δ logit| / max |logit|, total variation)


def expected_linear_bytes(base, quantization: str) -> float:
    """Bytes per weight of the decoder linears, from their shapes: int8 one byte per weight and a float32
    scale per output row; NF4 half a byte per weight, an FP8 absmax per block of 64 and, per 256 blocks,
    a float32 group scale, plus one float32 mean per layer."""
    shapes = [m.weight.shape for m in base.model.layers.modules() if isinstance(m, torch.nn.Linear)]
    weights = sum(rows * columns for rows, columns in shapes)
    if quantization == "int8":
        return (weights + 4 * sum(rows for rows, _ in shapes)) / weights
    blocks = [rows * columns // 64 for rows, columns in shapes]
    return (weights / 2 + sum(b + 4 * -(-b // 256) + 4 for b in blocks)) / weights


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("quantization", ["int8", "nf4"])
def test_quantized_bases_stay_within_the_stated_tolerance(tiny_bases, kind, quantization):
    ids = token_ids()
    with torch.no_grad():
        exact = reference(tiny_bases[kind])(ids).logits
        model = adapted(tiny_bases[kind], quantization=quantization)
        logits = model(ids)
    relative, variation = TOLERANCE[quantization]
    assert 0 < (logits - exact).abs().max() <= relative * exact.abs().max()
    assert (logits.softmax(-1) - exact.softmax(-1)).abs().sum(-1).max() / 2 <= variation
    base = reference(tiny_bases[kind])
    assert model.storage["linear_bytes_per_parameter"] == pytest.approx(expected_linear_bytes(base, quantization))
    assert model.storage["frozen_parameters"] == base.num_parameters()


def test_the_state_dict_holds_the_adapters_only_and_restores_them(tiny_bases):
    model, ids = adapted(tiny_bases["llama"]), token_ids()
    perturb(model)
    state = model.state_dict()
    assert set(state) == {name for name, p in model.named_parameters() if p.requires_grad}
    fresh = adapted(tiny_bases["llama"])
    fresh.load_state_dict(copy.deepcopy(state))
    with torch.no_grad():
        assert torch.equal(fresh(ids), model(ids))
    with pytest.raises(RuntimeError, match="missing"):
        fresh.load_state_dict({name: value for name, value in state.items() if "memory" not in name})


def test_gradient_checkpointing_gives_the_same_gradients(tiny_bases):
    model, ids = adapted(tiny_bases["llama"]), token_ids()
    perturb(model)
    model.train()
    grads = []
    for checkpoint_blocks in (False, True):
        model.zero_grad()
        model.head(model.hidden_states(ids, checkpoint_blocks=checkpoint_blocks)).square().mean().backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.requires_grad])
    for plain, checkpointed in zip(*grads):
        torch.testing.assert_close(checkpointed, plain)


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        (torch.zeros(2, 3), "int64 or int32"),
        (torch.zeros(3, dtype=torch.long), r"shape \(batch, length >= 1\)"),
        (torch.full((1, 3), 10_000), r"must lie in \[0, 512\)"),
    ],
)
def test_bad_ids_are_named(tiny_bases, ids, message):
    with pytest.raises((TypeError, ValueError), match=message):
        adapted(tiny_bases["llama"], [LORA])(ids)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("base", [{}, {"quantization": "nf4"}, {"freeze": False}])
def test_counting_without_weights_equals_the_built_model(tiny_bases, kind, base):
    adapters = [] if base.get("freeze") is False else ALL_ADAPTERS
    section = resolve_model_section({"base": {"directory": str(tiny_bases[kind]), **base}, "adapters": adapters}, "t")
    model = AdaptedModel(section)
    assert count_adapted_parameters(section) == (model.num_parameters(), model.trainable_parameters())


def test_from_config_reads_the_model_section(tiny_bases, tmp_path):
    path = tmp_path / "adapted.yaml"
    lora = "{type: lora, targets: [q_proj], rank: 2, alpha: 2}"
    path.write_text(f"model:\n  base: {{directory: {tiny_bases['llama']}}}\n  adapters: [{lora}]\n")
    assert AdaptedModel.from_config(path).trainable_parameters() == 2 * 2 * (64 + 64)  # 2 layers x r (d_in + d_out)
    path.write_text("model: {vocab_size: 8, d_model: 4, tie_embeddings: true, blocks: []}\n")
    with pytest.raises(ConfigError, match="not an adapted pretrained model"):
        AdaptedModel.from_config(path)
