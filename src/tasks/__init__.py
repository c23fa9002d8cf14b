"""Tasks: seeded generators of (inputs, targets) batches, declared in a config's `task` section.

A task has `vocab_size` and `sample(batch_size, seed) -> (inputs, targets)`, both (batch, length)
int64; targets hold -100 (IGNORE) wherever the position is not scored, so one masked
cross-entropy and one accuracy serve every task.
"""

from src.config import ConfigError, arguments_for, build
from src.tasks.associative_recall import AssociativeRecall
from src.tasks.common import IGNORE

TASKS: dict[str, type] = {
    "associative_recall": AssociativeRecall,
}

__all__ = ["IGNORE", "TASKS", "build_task", "resolve_task_section"]


def resolve_task_section(raw, file: str) -> dict:
    """Validate the `task` section against its task class; return it with defaults filled in."""
    if not isinstance(raw, dict) or raw.get("type") not in TASKS:
        raise ConfigError(f"{file}: key 'task.type' must be one of {sorted(TASKS)}, got {raw!r}")
    kind = raw["type"]
    rest = {key: value for key, value in raw.items() if key != "type"}
    resolved = {"type": kind, **arguments_for(TASKS[kind], rest, "task", file)}
    build_task(resolved, file)  # cross-field constraints of the task class
    return resolved


def build_task(spec: dict, file: str = "<config>"):
    """Instantiate the task a resolved `task` section describes."""
    kwargs = {key: value for key, value in spec.items() if key != "type"}
    return build(TASKS[spec["type"]], kwargs, "task", file)
