"""Tasks: seeded generators of (inputs, targets) batches, declared in a config's `task` section.

A task has `vocab_size` and `sample(batch_size, seed) -> (inputs, targets)`, both (batch, length)
int64; targets hold -100 (IGNORE) wherever the position is not scored, so one masked
cross-entropy and one accuracy serve every task. Synthetic tasks hold out by seed (the eval seed
is disjoint); a task with a held-out split (text) returns it from `held_out()`. Sections are
validated by `src.config.resolve_task_section`.
"""

import typing

from src.tasks.associative_recall import AssociativeRecall
from src.tasks.common import IGNORE, Task
from src.tasks.fact_recall import FactRecall
from src.tasks.induction_heads import InductionHeads
from src.tasks.passkey import Passkey
from src.tasks.selective_copying import SelectiveCopying
from src.tasks.text_corpus import TextCorpus
from src.validation import instantiate

TASKS: dict[str, type[Task]] = {
    "associative_recall": AssociativeRecall,
    "selective_copying": SelectiveCopying,
    "induction_heads": InductionHeads,
    "passkey": Passkey,
    "text": TextCorpus,
    "fact_recall": FactRecall,
}

__all__ = ["IGNORE", "TASKS", "Task", "build_task", "held_out"]


def build_task(spec: dict) -> Task:
    """Instantiate the task a resolved `task` section (from `src.config`) describes (nested mappings
    typed as dataclasses, e.g. the text task's `dataset`, become those dataclasses)."""
    task = TASKS[spec["type"]]
    hints = typing.get_type_hints(task.__init__, include_extras=True)
    return task(**{key: instantiate(value, hints[key]) for key, value in spec.items() if key != "type"})


def held_out(task: Task) -> Task:
    """The task to evaluate on: its held-out split when it has one (the text task), else the task itself."""
    return task.held_out() if isinstance(task, TextCorpus) else task
