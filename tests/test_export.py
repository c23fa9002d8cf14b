"""PaperModel.save_pretrained / from_pretrained and `memory-models export`: a model round-trips through
`config.json` + `model.safetensors`, and a pure Mamba one is read by transformers' MambaForCausalLM.
`export` writes the model of a train checkpoint, fsdp shards included; bad input is one line, exit 2."""

import json
import stat

import pytest
import torch
import yaml

from src.checkpoints import save
from src.cli import main
from src.config import ConfigError, read_yaml, resolve_model_section
from src.hf_directory import DirectoryError, save_directory
from src.model import PaperModel
from src.runs import load_model, read_checkpoint
from tests.conftest import ROOT
from tests.test_cli import tiny_experiment
from tests.test_cli_bad_input import files, one_error_line
from tests.test_distributed import experiment_file, parameters, run_processes

pytest.importorskip("safetensors", reason="extra 'pretrained' not installed")

V, D_MODEL = 50, 16
SWIGLU = {"type": "swiglu", "d_hidden": 32}
MAMBA = {"type": "selective_ssm", "d_state": 4}
BLOCKS = {
    "transformer": [{"mixer": {"type": "attention", "n_heads": 2}, "mlp": SWIGLU, "repeat": 2}],
    "mamba": [{"mixer": MAMBA, "mlp": "none", "repeat": 3}],
    "mamba-sequential-scan": [{"mixer": {**MAMBA, "scan": "sequential"}, "mlp": "none", "repeat": 2}],
    "mamba-with-mlp": [{"mixer": MAMBA, "mlp": SWIGLU, "repeat": 2}],
    "mamba-two-widths": [{"mixer": MAMBA, "mlp": "none"}, {"mixer": {**MAMBA, "d_state": 8}, "mlp": "none"}],
    "titans_mag": [
        {
            "mixer": {"type": "titans_mag", "n_heads": 2, "window": 4, "n_persistent": 2, "memory": {"chunk_size": 4}},
            "mlp": SWIGLU,
        }
    ],
    "tensor_memory": [{"mixer": {"type": "tensor_memory", "n_heads": 2, "update": "delta"}, "mlp": "none"}],
    "memory_bank-attention": [
        {"mixer": {"type": "memory_bank", "n_heads": 2, "n_memory": 8}, "mlp": SWIGLU},
        {"mixer": {"type": "attention", "n_heads": 2}, "mlp": "none"},
    ],
}
HF_SHAPED = ("mamba", "mamba-sequential-scan")  # every block the same Mamba mixer, no MLP


def paper_model(kind: str, tie: bool = True, seed: int = 0) -> PaperModel:
    """A small model of `kind`, every parameter moved off its initialisation so a misplaced one shows."""
    raw = {"vocab_size": V, "d_model": D_MODEL, "tie_embeddings": tie, "blocks": BLOCKS[kind]}
    torch.manual_seed(seed)
    model = PaperModel(resolve_model_section(raw, "<test>"))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model.eval()


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids)


IDS = torch.randint(0, V, (2, 19), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("kind", sorted(BLOCKS))
def test_save_then_load_gives_the_same_model(tmp_path, kind, tie):
    model = paper_model(kind, tie)
    model.save_pretrained(tmp_path / "saved")
    assert sorted(path.name for path in (tmp_path / "saved").iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert config["model_type"] == ("mamba" if kind in HF_SHAPED else "memory_models")
    loaded = PaperModel.from_pretrained(tmp_path / "saved")
    assert loaded.config == model.config
    assert torch.equal(logits(loaded, IDS), logits(model, IDS))
    assert (loaded.head.weight is loaded.embedding.weight) == tie
    assert [path.name for path in tmp_path.iterdir()] == ["saved"]  # no temporary left beside it


def test_a_pure_mamba_directory_carries_hugging_face_names(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    paper_model("mamba").save_pretrained(tmp_path)
    names = set(safetensors.load_file(str(tmp_path / "model.safetensors")))
    assert "backbone.layers.2.mixer.dt_proj.bias" in names and "backbone.layers.0.norm.weight" in names
    assert "backbone.embeddings.weight" in names and "lm_head.weight" not in names  # tied: stored once
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["num_hidden_layers"] == 3 and config["state_size"] == 4 and config["time_step_rank"] == "auto"


@pytest.mark.parametrize("tie", [True, False])
def test_hugging_face_mamba_reads_an_exported_mamba(tmp_path, tie):
    transformers = pytest.importorskip("transformers", reason="extra 'reference' not installed")
    model = paper_model("mamba", tie)
    model.save_pretrained(tmp_path)
    reference, info = transformers.MambaForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched weight
    assert reference.dtype == torch.float32 and reference.num_parameters() == model.num_parameters()
    with torch.no_grad():
        expected = reference.eval()(IDS).logits
    torch.testing.assert_close(logits(model, IDS), expected, rtol=1e-4, atol=1e-4)


def test_an_edited_hugging_face_key_is_refused(tmp_path):
    paper_model("mamba").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 4}))
    with pytest.raises(ConfigError, match=r"key 'num_hidden_layers' is 4, but its 'memory_models' section gives 3"):
        PaperModel.from_pretrained(tmp_path)


def test_an_adapted_section_is_refused(tmp_path):
    paper_model("transformer").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["memory_models"] = {"base": {"directory": "somewhere"}, "adapters": []}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"key 'memory_models.base': only a PaperModel's section"):
        PaperModel.from_pretrained(tmp_path)


def test_a_config_that_is_not_json_is_named(tmp_path):
    paper_model("transformer").save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(ConfigError, match=r"config\.json: not valid JSON"):
        PaperModel.from_pretrained(tmp_path)


def test_the_directory_has_the_permissions_of_a_new_directory(tmp_path):
    (tmp_path / "plain").mkdir()
    paper_model("transformer").save_pretrained(tmp_path / "saved")
    assert stat.S_IMODE((tmp_path / "saved").stat().st_mode) == stat.S_IMODE((tmp_path / "plain").stat().st_mode)


def test_a_non_empty_directory_is_replaced_only_when_it_holds_an_export(tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep")
    for overwrite in (False, True):
        with pytest.raises(DirectoryError, match="other"):
            paper_model("transformer").save_pretrained(tmp_path / "other", overwrite=overwrite)
    assert files(tmp_path / "other") == {"notes.txt": b"keep"}
    paper_model("transformer").save_pretrained(tmp_path / "saved")
    with pytest.raises(DirectoryError, match="not empty"):
        paper_model("mamba").save_pretrained(tmp_path / "saved")
    paper_model("mamba").save_pretrained(tmp_path / "saved", overwrite=True)
    assert PaperModel.from_pretrained(tmp_path / "saved").config == paper_model("mamba").config
    assert sorted(path.name for path in tmp_path.iterdir()) == ["other", "saved"]


def test_a_failed_write_keeps_the_earlier_export(tmp_path):
    model = paper_model("transformer")
    model.save_pretrained(tmp_path / "saved")
    before = files(tmp_path / "saved")
    state = model.state_dict()
    state["blocks.0.mlp.copy"] = state["embedding.weight"]  # shares memory: safetensors refuses to write it
    with pytest.raises(RuntimeError):
        save_directory(tmp_path / "saved", model.config, state, overwrite=True)
    assert files(tmp_path / "saved") == before
    assert [path.name for path in tmp_path.iterdir()] == ["saved"]


def mamba_experiment(tmp_path) -> str:
    """A 2-step run of a tiny pure Mamba on associative recall."""
    raw = read_yaml(ROOT / "configs" / "mamba_tiny.yaml")
    raw["model"].update(d_model=16)
    raw["train"].update(steps=2, batch_size=4, eval_every=2, warmup_steps=1, out_dir=str(tmp_path / "run"))
    raw["eval"].update(num_examples=8, batch_size=8)
    path = tmp_path / "mamba.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


@pytest.mark.parametrize("experiment", [tiny_experiment, mamba_experiment])
def test_export_writes_the_trained_model(tmp_path, capsys, experiment):
    assert main(["train", experiment(tmp_path)]) == 0
    capsys.readouterr()
    checkpoint = str(tmp_path / "run" / "checkpoint.pt")
    assert main(["export", checkpoint, str(tmp_path / "exported")]) == 0
    assert "config.json + model.safetensors" in capsys.readouterr().out
    stored = read_checkpoint(checkpoint)
    trained = PaperModel(resolve_model_section(stored["config"]["model"], checkpoint))
    load_model(checkpoint, stored, trained)
    exported = PaperModel.from_pretrained(tmp_path / "exported")
    assert exported.config == trained.config
    assert torch.equal(logits(exported, IDS % 16), logits(trained.eval(), IDS % 16))
    assert main(["export", checkpoint, str(tmp_path / "exported"), "--overwrite"]) == 0


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """The checkpoint of a finished tiny transformer run."""
    tmp_path = tmp_path_factory.mktemp("export")
    assert main(["train", tiny_experiment(tmp_path)]) == 0
    return str(tmp_path / "run" / "checkpoint.pt")


def test_bad_export_input_is_one_line(tmp_path, capsys, checkpoint):
    missing = one_error_line(capsys, "export", str(tmp_path / "nowhere.pt"), str(tmp_path / "out"))
    assert "nowhere.pt: no checkpoint file there" in missing
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("keep")
    assert "full: exists and is not empty" in one_error_line(capsys, "export", checkpoint, str(tmp_path / "full"))
    (tmp_path / "file").write_text("keep")
    assert "file: is a file" in one_error_line(capsys, "export", checkpoint, str(tmp_path / "file"))
    assert files(tmp_path / "full") == {"notes.txt": b"keep"} and (tmp_path / "file").read_text() == "keep"
    assert not (tmp_path / "out").exists()


def test_an_adapted_checkpoint_is_refused(tmp_path, capsys, checkpoint):
    stored = torch.load(checkpoint, weights_only=True)
    config = yaml.safe_load(stored["config"])
    config["model"] = {"base": {"directory": str(tmp_path / "base")}, "adapters": [{"type": "lora"}]}
    save({**stored, "config": yaml.safe_dump(config)}, tmp_path / "adapted.pt")
    error = one_error_line(capsys, "export", str(tmp_path / "adapted.pt"), str(tmp_path / "out"))
    assert "an adapted model (model.base) does not export; only PaperModels" in error
    assert not (tmp_path / "out").exists()


def test_export_reads_the_shards_of_an_fsdp_run(tmp_path, capsys):
    path = experiment_file(tmp_path, parallel="fsdp")
    run_processes(path, world_size=1)
    assert "shards" in read_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert main(["export", str(tmp_path / "run" / "checkpoint.pt"), str(tmp_path / "exported")]) == 0
    exported = PaperModel.from_pretrained(tmp_path / "exported").state_dict()
    trained = parameters(tmp_path / "run", path)
    assert exported.keys() == trained.keys() and all(torch.equal(exported[n], trained[n]) for n in trained)
