"""A PaperModel as a Hugging Face-style directory: `config.json` + `model.safetensors`.

`save_directory` writes one of two forms, chosen by the resolved model section:

- `MambaForCausalLM`'s shape (every block the same `selective_ssm` mixer, no MLP;
  `src.pretrained.hf_mamba_config`): config.json holds Hugging Face's `MambaConfig` keys
  (model_type "mamba") and the weights carry Hugging Face's names, so transformers'
  `MambaForCausalLM.from_pretrained` reads the directory;
- any other model: model_type "memory_models" and the weights under PaperModel's own names.

Both keep the resolved model section under config.json's "memory_models" key, and `read_directory`
builds from it, so a directory read back is the model that was saved; a Hugging Face Mamba
directory without that key is translated by `src.pretrained`. A tied head is stored once, as the
embedding: safetensors refuses tensors that share memory, and Hugging Face's `tie_word_embeddings`
leaves `lm_head.weight` out the same way.

The directory appears whole or not at all: it is written into a temporary directory beside the
target, then renamed onto it (`os.replace`, atomic on POSIX). `overwrite` replaces an earlier
export (a directory with a config.json); the old one is set aside until the new one is in place.
"""

import json
import os
import secrets
import shutil
from pathlib import Path

import torch

from src.adapted.config import is_adapted_section
from src.config import resolve_model_section
from src.pretrained import (
    hf_mamba_config,
    model_section_from_hf_config,
    paper_parameter_hf_name,
    read_hf_weights,
    safetensors_torch,
    state_dict_from_hf,
    tie_head,
)
from src.validation import ConfigError

FORMAT = "memory_models"  # config.json's model_type for PaperModel weight names, and the key of the model section
CONFIG = "config.json"
WEIGHTS = "model.safetensors"


class DirectoryError(ValueError):
    """A directory that cannot take a saved model; the message names it."""


def check_target(directory: str | Path, overwrite: bool) -> None:
    """Refuse a target that is a file, or a non-empty directory unless `overwrite` and it holds an earlier export."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise DirectoryError(f"{directory}: is a file, not a directory")
    if not directory.is_dir() or not any(directory.iterdir()):
        return
    if not overwrite:
        raise DirectoryError(
            f"{directory}: exists and is not empty; refusing to replace it without overwrite (--overwrite)"
        )
    if not (directory / CONFIG).is_file():
        raise DirectoryError(f"{directory}: holds no {CONFIG}, so it is no earlier export; refusing to replace it")


def directory_contents(section: dict, state: dict[str, torch.Tensor]) -> tuple[dict, dict[str, torch.Tensor]]:
    """config.json's mapping and the tensors to store, for a resolved model section and its model's state dict."""
    hf = hf_mamba_config(section)
    config = {**(hf or {"model_type": FORMAT}), FORMAT: section}
    if section["tie_embeddings"]:
        state = {name: tensor for name, tensor in state.items() if name != "head.weight"}
    if hf is not None:
        state = {paper_parameter_hf_name(name): tensor for name, tensor in state.items()}
    return config, {name: tensor.detach().cpu().contiguous() for name, tensor in state.items()}


def _fsync(path: Path) -> None:
    """Flush a file's or a directory's entries to disk (POSIX: a directory cannot be opened for it on Windows)."""
    if os.name == "posix":
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _beside(directory: Path, suffix: str) -> Path:
    """An unused hidden name next to `directory` (tempfile.mkdtemp would make the export private, mode 0700)."""
    return directory.parent / f".{directory.name}.{secrets.token_hex(6)}{suffix}"


def _move_into_place(temporary: Path, directory: Path) -> None:
    """Rename the written `temporary` onto `directory`; a replaced export is set aside until then."""
    if not directory.is_dir() or not any(directory.iterdir()):
        os.replace(temporary, directory)  # an empty directory is replaced by the rename itself
        return
    old = _beside(directory, ".old")
    os.replace(directory, old)
    try:
        os.replace(temporary, directory)
    except BaseException:
        os.replace(old, directory)
        raise
    shutil.rmtree(old)


def save_directory(directory: str | Path, section: dict, state: dict[str, torch.Tensor], overwrite: bool) -> None:
    """Write the model of a resolved section and its state dict as a directory (see the module docstring)."""
    directory = Path(directory)
    check_target(directory, overwrite)
    save_file = safetensors_torch(f"writing {directory / WEIGHTS}").save_file
    config, tensors = directory_contents(section, state)
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        temporary = _beside(directory, ".tmp")
        temporary.mkdir()
        try:
            (temporary / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
            save_file(tensors, str(temporary / WEIGHTS), metadata={"format": "pt"})  # transformers requires "format"
            for written in (temporary / CONFIG, temporary / WEIGHTS, temporary):
                _fsync(written)
            _move_into_place(temporary, directory)
            _fsync(directory.parent)
        finally:
            shutil.rmtree(temporary, ignore_errors=True)  # gone already once moved into place
    except OSError as error:
        raise DirectoryError(f"{directory}: cannot write it: {error.strerror or error}") from error


def _check_hf_keys(config: dict, section: dict, file: str) -> None:
    """The keys transformers reads must say what the model section says (an edit of one half is an error)."""
    for key, value in (hf_mamba_config(section) or {"model_type": FORMAT}).items():
        if config.get(key) != value:
            raise ConfigError(f"{file}: key '{key}' is {config.get(key)!r}, but its '{FORMAT}' section gives {value!r}")


def read_directory(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The resolved model section and the weights, under PaperModel's names, of a directory `save_directory`
    wrote or of a Hugging Face `MambaForCausalLM.save_pretrained` one."""
    path = Path(path)
    file = str(path / CONFIG)
    if not (path / CONFIG).is_file():
        raise FileNotFoundError(f"{path}: no {CONFIG}; expected a saved model or a Hugging Face Mamba directory")
    try:
        config = json.loads((path / CONFIG).read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"{file}: not valid JSON: {error}") from error
    if not isinstance(config, dict):
        raise ConfigError(f"{file}: must hold a JSON object, got {type(config).__name__}")
    if FORMAT not in config and config.get("model_type") != FORMAT:
        section = resolve_model_section(model_section_from_hf_config(path), file)
        return section, state_dict_from_hf(read_hf_weights(path), section["tie_embeddings"])
    raw = config.get(FORMAT)
    if is_adapted_section(raw):
        raise ConfigError(f"{file}: key '{FORMAT}.base': only a PaperModel's section (blocks) is saved here")
    section = resolve_model_section(raw, file, FORMAT)
    _check_hf_keys(config, section, file)
    weights = read_hf_weights(path)
    if config["model_type"] == "mamba":
        return section, state_dict_from_hf(weights, section["tie_embeddings"])
    return section, tie_head(weights, section["tie_embeddings"])
