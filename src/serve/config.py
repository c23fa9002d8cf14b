"""The serve config: a YAML file naming the model checkpoint, the database and every budget.

Top-level keys: `checkpoint` (written by `memory-models train`) or `pretrained` (a local Hugging
Face causal-LM directory served as it is: `directory`, `quantization` none | int8 | nf4 of its
decoder layers' linear weights, `dtype`; `src.adapted.config.BaseSection`, frozen), `database` (the
SQLite file of the memories; created when missing), `device` (auto | cpu | cuda | mps),
`auth_token_env` (the environment variable whose value, when set and non-empty, every endpoint but
/health requires as a bearer token), `max_request_bytes`, and the sections `memory`
(`src.memory_system.manager.MemoryConfig`), `chat` and `learning`. Relative paths start at the
working directory. Validation is `src.config`'s: an unknown, missing, mistyped or out-of-range key
raises `ConfigError` naming the key and the file.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

from src.adapted.config import resolve_base
from src.memory_system.manager import MemoryConfig
from src.schema import Device, NonNegativeFloat, PositiveFloat, PositiveInt
from src.validation import ConfigError, arguments_for, check_keys, check_value, read_yaml


@dataclass(frozen=True)
class ChatConfig:
    """Prompt layout and generation limits; requests may ask for less, never more. `session_state`:
    `replay` re-reads a session's recent turns at every reply, `carry` continues from the session's
    stored model state (models whose state does not grow; `src.serve.session_state`)."""

    session_state: Literal["carry", "replay"] = "replay"
    max_new_tokens: PositiveInt = 200
    context_bytes: PositiveInt = 1024
    stop: str = "\n"
    user_name: str = "USER"
    model_name: str = "MODEL"
    max_beam_width: PositiveInt = 8
    max_reasoning_steps: PositiveInt = 8  # POST /reason: steps of each kind a program may take
    length_penalty_alpha: NonNegativeFloat = 0.6


@dataclass(frozen=True)
class LearningConfig:
    """Incremental LoRA learning: adapter shape, targets, steps per interaction, where it is saved."""

    rank: PositiveInt = 4
    alpha: PositiveFloat = 8.0
    targets: list[str] = field(default_factory=lambda: ["W_q", "W_k", "W_v", "W_o"])
    steps: PositiveInt = 4
    max_steps: PositiveInt = 32
    lr: PositiveFloat = 1.0e-3
    grad_clip: PositiveFloat = 1.0
    adapter_path: str = "runs/serve/adapter.pt"


@dataclass(frozen=True)
class ServeConfig:
    file: str
    checkpoint: str | None
    pretrained: dict | None  # a resolved `model.base` section (src.adapted.config)
    database: str
    device: Device
    auth_token_env: str
    max_request_bytes: int
    memory: MemoryConfig
    chat: ChatConfig
    learning: LearningConfig


_TOP = {
    "checkpoint": False, "pretrained": False, "database": True, "device": False, "auth_token_env": False,
    "max_request_bytes": False, "memory": False, "chat": False, "learning": False,
}  # fmt: skip


_Section = TypeVar("_Section", MemoryConfig, ChatConfig, LearningConfig)


def _section(kind: type[_Section], raw: dict, name: str, file: str) -> _Section:
    """The `name` section of a serve config (all defaults when absent), its keys checked against `kind`'s fields."""
    return kind(**arguments_for(kind, raw.get(name, {}), name, file))


def load_serve_config(path: str | Path) -> ServeConfig:
    """Read and validate a serve config (see the module docstring)."""
    file = str(path)
    raw = read_yaml(path)
    check_keys(raw, _TOP, "<top>", file)
    memory = _section(MemoryConfig, raw, "memory", file)
    chat = _section(ChatConfig, raw, "chat", file)
    learning = _section(LearningConfig, raw, "learning", file)
    if not chat.stop:
        raise ConfigError(f"{file}: key 'chat.stop' must be a non-empty text (one token of the model)")
    if memory.chunk_bytes > memory.max_text_bytes:
        raise ConfigError(f"{file}: key 'memory.chunk_bytes' must be <= memory.max_text_bytes")
    if ("checkpoint" in raw) == ("pretrained" in raw):
        raise ConfigError(f"{file}: give one of the keys 'checkpoint' (a trained run) or 'pretrained' (a directory)")
    return ServeConfig(
        file=file,
        checkpoint=check_value(raw["checkpoint"], str, "checkpoint", file) if "checkpoint" in raw else None,
        pretrained=_pretrained(raw["pretrained"], file) if "pretrained" in raw else None,
        database=check_value(raw["database"], str, "database", file),
        device=check_value(raw.get("device", "cpu"), Device, "device", file),
        auth_token_env=check_value(raw.get("auth_token_env", "MEMORY_MODELS_TOKEN"), str, "auth_token_env", file),
        max_request_bytes=check_value(raw.get("max_request_bytes", 65536), PositiveInt, "max_request_bytes", file),
        memory=memory,
        chat=chat,
        learning=learning,
    )


def _pretrained(raw: object, file: str) -> dict:
    """The `pretrained` section resolved as an adapted model's base; it is served frozen (LoRA learns)."""
    base = resolve_base(raw, "pretrained", file)
    if not base["freeze"]:
        raise ConfigError(f"{file}: key 'pretrained.freeze' must be true: the service learns through LoRA only")
    return base
