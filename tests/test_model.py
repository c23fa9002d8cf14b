"""PaperModel: built from a config, logits of the right shape, step equals forward."""

import math

import pytest
import torch
import yaml

from src.config import count_parameters, resolve_model_section
from src.model import PaperModel
from src.validation import ConfigError
from tests.conftest import ROOT

TINY = {
    "vocab_size": 32,
    "d_model": 16,
    "tie_embeddings": True,
    "blocks": [
        {"mixer": {"type": "attention", "n_heads": 2}, "mlp": {"type": "swiglu", "d_hidden": 32}, "repeat": 2},
        {"mixer": {"type": "attention", "n_heads": 4}, "mlp": "none"},
    ],
}


def write(tmp_path, model_section) -> str:
    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump({"model": model_section}))
    return str(path)


def test_from_config_builds_the_declared_blocks(tmp_path):
    model = PaperModel.from_config(write(tmp_path, TINY))
    assert len(model.blocks) == 3
    assert model.blocks[2].mlp is None and model.blocks[0].mlp is not None
    assert model.blocks[2].mixer.n_heads == 4
    assert model.head.weight is model.embedding.weight
    # embedding 32*16 + 3 blocks of attention 4*16*16 + 2 SwiGLU 3*16*32 + norms (5 + final) * 16
    assert model.num_parameters() == 32 * 16 + 3 * 4 * 16 * 16 + 2 * 3 * 16 * 32 + 6 * 16


def test_forward_shape_and_step_equals_forward(tmp_path):
    torch.manual_seed(0)
    model = PaperModel.from_config(write(tmp_path, TINY))
    ids = torch.randint(32, (2, 9))
    logits = model(ids)
    assert logits.shape == (2, 9, 32)
    state, steps = None, []
    for t in range(9):
        step_logits, state = model.step(ids[:, t : t + 1], state)
        steps.append(step_logits)
    torch.testing.assert_close(torch.cat(steps, 1), logits, rtol=1e-5, atol=1e-5)


def test_step_accepts_several_tokens_at_once(tmp_path):
    torch.manual_seed(1)
    model = PaperModel.from_config(write(tmp_path, TINY))
    ids = torch.randint(32, (1, 10))
    first, state = model.step(ids[:, :6], None)
    second, _ = model.step(ids[:, 6:], state)
    torch.testing.assert_close(torch.cat((first, second), 1), model(ids), rtol=1e-5, atol=1e-5)


def test_untied_head_is_a_separate_parameter(tmp_path):
    model = PaperModel.from_config(write(tmp_path, {**TINY, "tie_embeddings": False}))
    assert model.head.weight is not model.embedding.weight


def test_bad_input_ids_are_named(tmp_path):
    model = PaperModel.from_config(write(tmp_path, TINY))
    with pytest.raises(TypeError, match="input_ids must be an int64"):
        model(torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0, 32\)"):
        model(torch.tensor([[0, 32]]))
    with pytest.raises(ValueError, match="input_ids must have shape"):
        model(torch.tensor([1, 2]))


def test_cross_field_error_names_key_and_file(tmp_path):
    bad = {**TINY, "blocks": [{"mixer": {"type": "attention", "n_heads": 3}, "mlp": "none"}]}
    path = write(tmp_path, bad)
    with pytest.raises(ConfigError, match=rf"{path}: key 'model.blocks\[0\].mixer': n_heads=3 must divide d_model=16"):
        PaperModel.from_config(path)


def test_mamba_130m_has_the_released_parameter_count():
    # Hugging Face MambaForCausalLM(MambaConfig(vocab_size=50280, hidden_size=768, num_hidden_layers=24,
    # state_size=16, expand=2, conv_kernel=4, tie_word_embeddings=True)) has 129,135,360 parameters.
    with torch.device("meta"):
        model = PaperModel.from_config(ROOT / "configs" / "mamba_130m.yaml")
    assert model.num_parameters() == 129_135_360


@pytest.mark.parametrize("config", ["mamba_tiny", "tensor_memory_mqar", "infini_attention_mqar", "titans_mag_mqar"])
def test_token_by_token_step_equals_forward_in_float32(config):
    torch.manual_seed(0)
    model = PaperModel.from_config(ROOT / "configs" / f"{config}.yaml")
    ids = torch.randint(64, (2, 20))
    state, steps = None, []
    for t in range(20):
        logits, state = model.step(ids[:, t : t + 1], state)
        steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, 1), model(ids), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config", ["transformer_mqar", "mamba_tiny", "titans_mag_mqar", "memory_bank_a_mqar"])
def test_count_parameters_on_the_meta_device_equals_the_built_model(config):
    model = PaperModel.from_config(ROOT / "configs" / f"{config}.yaml")
    assert count_parameters(model.config) == model.num_parameters()


def test_ssm_out_projections_are_rescaled_as_the_official_mamba_init_does():
    """mixer_seq_simple._init_weights: out_proj ~ U(±1/sqrt(fan_in)) / sqrt(n_residuals x n_layer)."""
    ssm = {"mixer": {"type": "selective_ssm", "d_state": 4}}
    blocks = [{**ssm, "mlp": "none", "repeat": 2}, {**ssm, "mlp": {"type": "swiglu", "d_hidden": 16}}]
    section = {"vocab_size": 8, "d_model": 32, "tie_embeddings": True, "blocks": blocks}
    model = PaperModel(resolve_model_section(section, "<test>"))
    for block, residuals in zip(model.blocks, (1, 1, 2)):
        weight = block.mixer.out_proj.weight
        bound = weight.shape[1] ** -0.5 / math.sqrt(residuals * 3)
        assert weight.abs().max() <= bound and weight.abs().max() > 0.9 * bound
