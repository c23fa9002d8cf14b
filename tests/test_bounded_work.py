"""Bounded work through the real command: `generate` refuses a prompt longer than the model can take
(--max-prompt-tokens, or an adapted base's positions) in one line naming the limit, unless --truncate;
a prompt that is not UTF-8 is one line; `estimate` allocates no batch (any batch answers; a size torch
cannot represent is one line naming it)."""

import os

import pytest

from src.cli import main
from src.validation import read_yaml
from tests.conftest import CORPUS, ROOT
from tests.test_adapted_cli import experiment
from tests.test_cli import tiny_experiment
from tests.test_cli_bad_input import one_error_line, run, write_config


@pytest.fixture(scope="module")
def byte_model(tmp_path_factory) -> str:
    """A one-step byte-level text model's checkpoint."""
    tmp_path = tmp_path_factory.mktemp("bytes")
    raw = read_yaml(tiny_experiment(tmp_path, steps=1, eval_every=1, warmup_steps=0))
    raw["model"]["vocab_size"] = 256
    raw["task"] = {"type": "text", "path": str(CORPUS), "length": 32}
    assert main(["train", write_config(raw, tmp_path / "text.yaml")]) == 0
    return str(tmp_path / "run" / "checkpoint.pt")


def test_a_prompt_over_the_limit_is_refused_unless_truncated(byte_model, capsys):
    prompt = "x" * 100_000  # 100 KB on the byte-level model: 100,000 tokens
    error = one_error_line(capsys, "generate", byte_model, "--prompt", prompt, "--max-new-tokens", "2")
    assert "the prompt is 100,000 tokens, more than the limit of 4,096 (--max-prompt-tokens)" in error
    assert "--truncate to keep its last 4,096 tokens" in error
    code, out, err = run(capsys, "generate", byte_model, "--prompt", "ab" * 20, "--max-prompt-tokens", "8",
                         "--truncate", "--max-new-tokens", "2")  # fmt: skip
    assert code == 0 and out.startswith("abababab") and len(out.rstrip("\n").encode()) <= 8 + 2 * 4, err
    assert "--max-prompt-tokens must be >= 1" in one_error_line(
        capsys, "generate", byte_model, "--prompt", "a", "--max-prompt-tokens", "0"
    )


def test_a_prompt_that_is_not_utf8_is_one_line(byte_model, capsys):
    prompt = os.fsdecode(b"ab\xffcd")  # how Python hands over a command-line argument that is not UTF-8
    assert "--prompt is not valid UTF-8: byte 2 is 0xff" in one_error_line(
        capsys, "generate", byte_model, "--prompt", prompt
    )


def test_an_adapted_model_is_bounded_by_its_base_positions(tmp_path, tiny_bases, capsys):
    config = experiment(tmp_path, tiny_bases["llama"])
    raw = read_yaml(config)
    raw["train"].update(steps=1, eval_every=1, warmup_steps=0)
    assert main(["train", write_config(raw, tmp_path / "adapted.yaml")]) == 0
    checkpoint = str(tmp_path / "run" / "checkpoint.pt")
    capsys.readouterr()
    prompt = "ROMEO: " * 3000  # thousands of tokens of the base's tokenizer
    error = one_error_line(capsys, "generate", checkpoint, "--prompt", prompt, "--max-prompt-tokens", "100000",
                           "--max-new-tokens", "5")  # fmt: skip
    assert "more than the limit of 4,091 (the model's 4096 positions less 5 new tokens)" in error
    assert "leave no room for a prompt in the model's 4096 positions" in one_error_line(
        capsys, "generate", checkpoint, "--prompt", "A", "--max-new-tokens", "5000"
    )


def test_estimate_allocates_no_batch_and_names_what_it_cannot_represent(capsys):
    config = str(ROOT / "configs" / "mamba_tiny.yaml")
    code, out, err = run(capsys, "estimate", config, "--batch", str(10**12), "--length", "16")
    assert code == 0 and "training step at batch 1000000000000 x length 16" in out, err  # 10**12 rows, none allocated
    error = one_error_line(capsys, "estimate", config, "--batch", str(10**12), "--length", str(10**9))
    assert "batch 1,000,000,000,000 x length 1,000,000,000: a tensor of this training step would have more" in error
