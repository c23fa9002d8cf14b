"""PaperModel.from_pretrained on Hugging Face-format Mamba checkpoints written by the tests."""

import json
import sys

import pytest
import torch
import torch.nn.functional as F

from src.layers.selective_ssm import selective_scan_sequential
from src.model import PaperModel
from src.pretrained import hf_mamba_parameter_name
from src.validation import ConfigError

V, D_MODEL, N, LAYERS, EXPAND, K = 50, 16, 4, 2, 2, 4
D_INNER, RANK = EXPAND * D_MODEL, 1  # time_step_rank = ceil(16 / 16)


def hf_config(**overrides) -> dict:
    config = {
        "model_type": "mamba",
        "vocab_size": V,
        "hidden_size": D_MODEL,
        "state_size": N,
        "num_hidden_layers": LAYERS,
        "expand": EXPAND,
        "conv_kernel": K,
        "intermediate_size": D_INNER,
        "time_step_rank": RANK,
        "layer_norm_epsilon": 1e-5,
        "tie_word_embeddings": True,
        "hidden_act": "silu",
        "use_bias": False,
        "use_conv_bias": True,
    }
    return {**config, **overrides}


def hf_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under the names and shapes `MambaForCausalLM.state_dict()` uses."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g) * 0.3

    weights = {"backbone.embeddings.weight": rand(V, D_MODEL), "backbone.norm_f.weight": 1 + rand(D_MODEL)}
    for i in range(LAYERS):
        p = f"backbone.layers.{i}."
        weights |= {
            p + "norm.weight": 1 + rand(D_MODEL),
            p + "mixer.A_log": rand(D_INNER, N),
            p + "mixer.D": rand(D_INNER),
            p + "mixer.conv1d.weight": rand(D_INNER, 1, K),
            p + "mixer.conv1d.bias": rand(D_INNER),
            p + "mixer.in_proj.weight": rand(2 * D_INNER, D_MODEL),
            p + "mixer.x_proj.weight": rand(RANK + 2 * N, D_INNER),
            p + "mixer.dt_proj.weight": rand(D_INNER, RANK),
            p + "mixer.dt_proj.bias": rand(D_INNER),
            p + "mixer.out_proj.weight": rand(D_MODEL, D_INNER),
        }
    return weights


def write_checkpoint(path, config: dict, weights: dict, safetensors: bool = False) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    if safetensors:
        from safetensors.torch import save_file

        save_file(weights, str(path / "model.safetensors"))
    else:
        torch.save(weights, path / "pytorch_model.bin")


def reference_logits(w: dict[str, torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    """Mamba LM written from the paper (Fig. 3, Algorithm 2) on the raw checkpoint tensors, float64."""
    w = {name: t.double() for name, t in w.items()}

    def norm(x, g):
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * g

    x = w["backbone.embeddings.weight"][ids]
    length = ids.shape[1]
    for i in range(LAYERS):
        p = f"backbone.layers.{i}.mixer."
        h = norm(x, w[f"backbone.layers.{i}.norm.weight"]) @ w[p + "in_proj.weight"].T
        u, z = h[..., :D_INNER].transpose(1, 2), h[..., D_INNER:].transpose(1, 2)
        u = F.conv1d(F.pad(u, (K - 1, 0)), w[p + "conv1d.weight"], w[p + "conv1d.bias"], groups=D_INNER)
        u = F.silu(u)
        x_dbl = torch.einsum("bdl,rd->brl", u, w[p + "x_proj.weight"])
        dt, B, C = x_dbl[:, :RANK], x_dbl[:, RANK : RANK + N], x_dbl[:, RANK + N :]
        delta = torch.einsum("brl,dr->bdl", dt, w[p + "dt_proj.weight"])
        y = selective_scan_sequential(
            u, delta, -torch.exp(w[p + "A_log"]), B, C, w[p + "D"], z, w[p + "dt_proj.bias"], delta_softplus=True
        )
        x = x + y.transpose(1, 2) @ w[p + "out_proj.weight"].T
        assert y.shape[-1] == length
    return norm(x, w["backbone.norm_f.weight"]) @ w["backbone.embeddings.weight"].T


def test_parameter_names_map_one_to_one():
    assert hf_mamba_parameter_name("backbone.embeddings.weight") == "embedding.weight"
    assert hf_mamba_parameter_name("backbone.layers.3.norm.weight") == "blocks.3.mixer_norm.weight"
    assert hf_mamba_parameter_name("backbone.layers.12.mixer.dt_proj.bias") == "blocks.12.mixer.dt_proj.bias"
    assert hf_mamba_parameter_name("backbone.norm_f.weight") == "norm.weight"
    assert hf_mamba_parameter_name("lm_head.weight") == "head.weight"
    with pytest.raises(KeyError, match=r"backbone\.layers\.0\.attn\.weight"):
        hf_mamba_parameter_name("backbone.layers.0.attn.weight")


@pytest.mark.parametrize("safetensors", [False, True])
def test_tiny_checkpoint_loads_and_matches_a_float64_reference(tmp_path, safetensors):
    if safetensors:
        pytest.importorskip("safetensors", reason="extra 'pretrained' not installed")
    weights = hf_weights()
    write_checkpoint(tmp_path, hf_config(), weights, safetensors)
    model = PaperModel.from_pretrained(tmp_path)
    assert torch.equal(model.blocks[1].mixer.x_proj.weight, weights["backbone.layers.1.mixer.x_proj.weight"])
    assert model.head.weight is model.embedding.weight
    ids = torch.randint(0, V, (2, 23), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(ids)
    expected = reference_logits(weights, ids)
    torch.testing.assert_close(logits.double(), expected, rtol=1e-4, atol=1e-4)


def test_untied_head_is_read_from_lm_head(tmp_path):
    weights = hf_weights() | {"lm_head.weight": torch.randn(V, D_MODEL)}
    write_checkpoint(tmp_path, hf_config(tie_word_embeddings=False), weights)
    model = PaperModel.from_pretrained(tmp_path)
    assert torch.equal(model.head.weight, weights["lm_head.weight"])
    assert model.head.weight is not model.embedding.weight


def test_wrong_model_type_names_key_and_file(tmp_path):
    write_checkpoint(tmp_path, hf_config(model_type="llama"), hf_weights())
    with pytest.raises(ConfigError, match=r"config\.json: key 'model_type' must be 'mamba'"):
        PaperModel.from_pretrained(tmp_path)


def test_a_setting_the_block_does_not_compute_is_refused(tmp_path):
    write_checkpoint(tmp_path, hf_config(use_bias=True), hf_weights())
    with pytest.raises(ConfigError, match=r"config\.json: key 'use_bias' is True"):
        PaperModel.from_pretrained(tmp_path)


def test_missing_weight_is_an_error_naming_the_directory(tmp_path):
    weights = hf_weights()
    del weights["backbone.layers.1.mixer.D"]
    write_checkpoint(tmp_path, hf_config(), weights)
    with pytest.raises(ValueError, match=r"blocks\.1\.mixer\.D"):
        PaperModel.from_pretrained(tmp_path)


def test_directory_without_weights_is_an_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(hf_config()))
    with pytest.raises(FileNotFoundError, match=r"pytorch_model\.bin"):
        PaperModel.from_pretrained(tmp_path)


def test_missing_safetensors_extra_is_named(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text(json.dumps(hf_config()))
    (tmp_path / "model.safetensors").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(ImportError, match="extra pretrained"):
        PaperModel.from_pretrained(tmp_path)
