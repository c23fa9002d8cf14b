"""`memory-models serve` with a config it cannot use: one line on stderr naming the problem, exit 2."""

import sqlite3

import yaml

from src.cli import main
from src.config import load_experiment
from src.training import train
from tests.conftest import ROOT
from tests.test_serve.conftest import write_config


def serve_error(capsys, *argv) -> str:
    assert main(["serve", *map(str, argv)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


def test_missing_config(capsys, tmp_path):
    assert "config file not found" in serve_error(capsys, tmp_path / "nope.yaml")


def test_unknown_and_mistyped_keys_are_named(capsys, tmp_path, checkpoint):
    path = write_config(tmp_path, checkpoint, memory={"chunk_byte": 10})
    assert "unknown key 'memory.chunk_byte'" in serve_error(capsys, path)
    path = write_config(tmp_path, checkpoint, chat={"stop": "\n\n"})
    assert "key 'chat.stop' must be one token of the model, it is 2" in serve_error(capsys, path)
    path = write_config(tmp_path, checkpoint, memory={"recency_decay": 1.5})
    assert "key 'memory.recency_decay' must be <= 1" in serve_error(capsys, path)


def test_missing_checkpoint_and_bad_port(capsys, tmp_path, checkpoint):
    assert "no checkpoint file there" in serve_error(capsys, write_config(tmp_path, tmp_path / "missing.pt"))
    assert "--port must lie in [0, 65535]" in serve_error(capsys, write_config(tmp_path, checkpoint), "--port", 70000)


def test_a_model_that_does_not_read_bytes_is_refused(capsys, tmp_path):
    experiment = yaml.safe_load((ROOT / "configs" / "transformer_mqar.yaml").read_text())
    experiment["train"] |= {"steps": 1, "warmup_steps": 0, "eval_every": 1, "out_dir": str(tmp_path / "mqar")}
    experiment["eval"] |= {"num_examples": 4, "batch_size": 4}
    (tmp_path / "mqar.yaml").write_text(yaml.safe_dump(experiment))
    train(load_experiment(tmp_path / "mqar.yaml"), log=lambda line: None)
    path = write_config(tmp_path, tmp_path / "mqar" / "checkpoint.pt")
    assert "at least the 256 bytes, got vocab_size 64" in serve_error(capsys, path)


def test_a_database_of_another_model_is_refused(capsys, tmp_path, checkpoint):
    path = write_config(tmp_path, checkpoint)
    with sqlite3.connect(tmp_path / "memory.sqlite") as connection:
        connection.execute("CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        connection.execute("INSERT INTO settings VALUES ('embedding_dim', '768')")
    err = serve_error(capsys, path)
    assert "key 'database'" in err and "embeddings of size 768, but the model's d_model is 32" in err
