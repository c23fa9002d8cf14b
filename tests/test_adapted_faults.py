"""An adapted model's base verified whole, through the real command: every file the model reads is
pinned by its SHA-256 and a changed, added or removed one is refused naming it; a tensor missing from
or unexpected in the weights, damaged weights and a config.json that disagrees with them are one line
naming the files; a LoRA rank above a projection's width is refused naming the key."""

import json
import shutil

import pytest
import torch

from src.cli import main
from tests.test_adapted_cli import LORA, experiment
from tests.test_cli_bad_input import one_error_line

pytest.importorskip("transformers")
safetensors = pytest.importorskip("safetensors.torch")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bases):
    """(base directory, checkpoint) of a LoRA run on a private copy of the tiny Llama."""
    tmp_path = tmp_path_factory.mktemp("verified_base")
    base = shutil.copytree(tiny_bases["llama"], tmp_path / "base")
    assert main(["train", experiment(tmp_path, base, adapters=[LORA])]) == 0
    return base, str(tmp_path / "run" / "checkpoint.pt")


def config_edit(base, **changes) -> None:
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, **changes}))


@pytest.mark.parametrize(
    ("change", "name", "what"),
    [
        (lambda base: config_edit(base, rms_norm_eps=1e-3), "config.json", "changed"),
        (lambda base: config_edit(base, hidden_act="gelu"), "config.json", "changed"),
        (
            lambda base: (base / "tokenizer.json").write_text(
                (base / "tokenizer.json").read_text().replace("e", "a", 1)
            ),
            "tokenizer.json",
            "changed",
        ),
        (lambda base: (base / "generation_config.json").unlink(), "generation_config.json", "is gone"),
        (lambda base: (base / "tokenizer_config.json").write_text("{}"), "tokenizer_config.json", "was added"),
    ],
    ids=["norm epsilon", "activation", "tokenizer", "generation config gone", "tokenizer config added"],
)
def test_a_changed_base_file_is_refused_naming_it(trained, capsys, tmp_path, change, name, what):
    base, checkpoint = trained
    kept = shutil.copytree(base, tmp_path / "kept")
    try:
        change(base)
        error = one_error_line(capsys, "generate", checkpoint, "--prompt", "ROMEO:", "--max-new-tokens", "2")
        assert f"model.base.files_sha256': {base / name} {what} since this config or checkpoint was written" in error
    finally:
        shutil.rmtree(base)
        shutil.copytree(kept, base)
    capsys.readouterr()
    assert main(["generate", checkpoint, "--prompt", "ROMEO:", "--max-new-tokens", "2"]) == 0  # restored: accepted


def weights_edit(base, edit) -> None:
    weights = safetensors.load_file(base / "model.safetensors")
    edit(weights)
    safetensors.save_file(weights, base / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda b: weights_edit(b, lambda w: w.pop("model.layers.1.mlp.up_proj.weight")),
            "tensor model.layers.1.mlp.up_proj.weight is missing from them",
        ),
        (
            lambda b: weights_edit(b, lambda w: w.update({"model.extra.weight": torch.zeros(2)})),
            "tensor model.extra.weight is not in the model",
        ),
        (lambda b: (b / "model.safetensors").write_bytes(b""), "cannot be read with its config.json"),
        (
            lambda b: (b / "model.safetensors").write_bytes((b / "model.safetensors").read_bytes()[:5000]),
            "cannot be read with its config.json",
        ),
        (lambda b: (b / "model.safetensors").write_bytes(b"\x00garbage" * 100), "cannot be read with its config.json"),
        (lambda b: config_edit(b, intermediate_size=96), "config.json"),
    ],
    ids=["missing tensor", "unexpected tensor", "empty", "truncated", "corrupt", "sizes disagree"],
)
def test_damaged_weights_are_one_line_naming_the_files(tiny_bases, tmp_path, capsys, damage, message):
    base = shutil.copytree(tiny_bases["llama"], tmp_path / "base")
    damage(base)
    error = one_error_line(capsys, "train", experiment(tmp_path, base, adapters=[LORA]))
    assert f"{base}: the base's weights (model.safetensors)" in error and message in error
    assert "restore the directory" in error
    assert not (tmp_path / "run").exists()


def test_a_lora_rank_above_the_projection_width_is_refused(tiny_bases, tmp_path, capsys):
    error = one_error_line(
        capsys, "train", experiment(tmp_path, tiny_bases["llama"], adapters=[{**LORA, "rank": 100000}])
    )
    assert "key 'model.adapters[0].rank' is 100000, more than q_proj's width: a LoRA rank is at most" in error
