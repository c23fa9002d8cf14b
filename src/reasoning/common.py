"""What every reasoning program shares: the model it talks to, its limits, its steps and their parsing."""

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

NUMBERED = re.compile(r"^\s*(?:step\s*)?(\d+)\s*[.):]\s*(.*)$", re.IGNORECASE)


class Reasoner(Protocol):
    def complete(self, prompt: str, max_new_tokens: int) -> str:
        """The model's continuation of `prompt` up to its end-of-turn token (greedy)."""

    def recall(self, query: str) -> list[str]:
        """The texts of the memories `query` recalls (none for a session without memories)."""


@dataclass(frozen=True)
class Limits:
    """At most `max_steps` steps of each kind a program takes, at most `max_new_tokens` tokens per completion."""

    max_steps: int
    max_new_tokens: int


@dataclass(frozen=True)
class Step:
    """One step of a program: its kind (reasoning, plan, result, draft, feedback, revision), its number, its text,
    and the memories it was given."""

    kind: str
    index: int
    text: str
    memories: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Reasoning:
    """A program's steps, oldest first, and its answer."""

    steps: list[Step]
    answer: str


def lines_of(text: str) -> list[str]:
    """The non-empty lines of a completion, stripped."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def numbered_items(lines: list[str]) -> list[str]:
    """The items of a numbered list ("1. ...", "2) ...", "Step 3: ..."), numbers removed; a line without a
    number continues the item before it (or is an item when no numbered line came first)."""
    items: list[str] = []
    for line in lines:
        match = NUMBERED.match(line)
        if match:
            items.append(match.group(2).strip())
        elif items:
            items[-1] = f"{items[-1]} {line}".strip()
        else:
            items.append(line)
    return [item for item in items if item]


def generate_lines(
    model: Reasoner, prompt: str, limits: Limits, last: Callable[[str], bool] = lambda line: False
) -> list[str]:
    """Lines the model writes after `prompt`, one completion after another (a model that stops at a newline
    writes one line per completion), until an empty completion, a line for which `last` holds, or
    `limits.max_steps` lines."""
    lines: list[str] = []
    text = prompt
    while len(lines) < limits.max_steps:
        completion = model.complete(text, limits.max_new_tokens)
        new = lines_of(completion)
        if not new:
            break
        lines += new
        text += completion.rstrip("\n") + "\n"
        if any(last(line) for line in new):
            break
    return lines[: limits.max_steps]
