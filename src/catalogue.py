"""The equation catalogue: every public function of `src/layers/`, and of the equation modules
that are not layers and live beside their one user (`OTHER_EQUATION_MODULES`), with its paper
reference.

Each equation function's docstring opens with one reference line,

    Paper: <title> (<authors year>, arXiv:<id>), Sec. <section>, <equation>

and its test lives in `tests/test_equations/test_<paper>_<equation>_<function>.py`; the file is
found by the function's name. `memory-models equations` prints this table, and a test fails when
a function has no reference line or no test file.
"""

import importlib
import inspect
import pkgutil
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import src.layers

REFERENCE = re.compile(
    r"^Paper: (?P<paper>.+) \((?P<citation>[^()]+), arXiv:(?P<arxiv>\d{4}\.\d{4,5})\), (?P<where>.+)$"
)
EQUATION_TESTS = Path(__file__).resolve().parents[1] / "tests" / "test_equations"
CONTRACT_MODULES = {"mixer"}  # the mixer base class and its registry: no equations
OTHER_EQUATION_MODULES = (  # equations that are not layers, beside the code that uses them
    "src.generation_scoring",  # GNMT's length penalty, for beam search (src.generation)
    "src.memory_system.episodic_retrieval",  # Generative Agents' retrieval score, for the episodic memory
)


@dataclass(frozen=True)
class Entry:
    """One equation function and where its paper and its test are."""

    function: str  # module.function, relative to src.layers (or to src, outside it)
    paper: str | None  # title and citation, None when the reference line is missing
    arxiv: str | None
    section: str | None
    equation: str | None
    test_file: str | None  # path relative to tests/test_equations, None when missing


def equation_modules() -> list[str]:
    """The modules of src.layers (but private and contract ones), in name order, then `OTHER_EQUATION_MODULES`."""
    layers = sorted(pkgutil.iter_modules(src.layers.__path__), key=lambda m: m.name)
    names = [f"src.layers.{m.name}" for m in layers if not m.name.startswith("_") and m.name not in CONTRACT_MODULES]
    return names + list(OTHER_EQUATION_MODULES)


def equation_functions() -> list:
    """All public functions defined in the equation modules, in module order."""
    functions = []
    for module_name in equation_modules():
        module = importlib.import_module(module_name)
        for name, function in inspect.getmembers(module, inspect.isfunction):
            if function.__module__ == module.__name__ and not name.startswith("_"):
                functions.append(function)
    return functions


def parse_reference(function: Callable[..., object]) -> dict | None:
    """Parse the `Paper:` line of a docstring into paper, arxiv, section and equation."""
    docstring = inspect.getdoc(function) or ""
    for line in docstring.splitlines():
        if match := REFERENCE.match(line.strip()):
            section, _, equation = match["where"].partition(", ")
            return {
                "paper": f"{match['paper']} ({match['citation']})",
                "arxiv": match["arxiv"],
                "section": section.removeprefix("Sec. "),
                "equation": equation or "-",
            }
    return None


def find_test(function_name: str) -> str | None:
    """The equation test file for a function: test_<paper>_<equation>_<function_name>.py.

    <paper> and <equation> are single lower-case words (`mamba`, `eq2a`), so `scan` does not
    claim the test of `selective_scan`.
    """
    pattern = re.compile(rf"^test_[a-z0-9]+_[a-z0-9]+_{re.escape(function_name)}\.py$")
    matches = sorted(path.name for path in EQUATION_TESTS.glob("test_*.py") if pattern.match(path.name))
    return matches[0] if matches else None


def catalogue() -> list[Entry]:
    """One entry per equation function."""
    entries = []
    for function in equation_functions():
        reference = parse_reference(function) or dict.fromkeys(("paper", "arxiv", "section", "equation"))
        module = function.__module__.removeprefix("src.layers.").removeprefix("src.")
        entries.append(Entry(f"{module}.{function.__name__}", **reference, test_file=find_test(function.__name__)))
    return entries


def format_table(entries: list[Entry]) -> str:
    """A plain-text table: paper, arXiv, section, equation, function, test file."""
    header = ("paper", "arXiv", "section", "equation", "function", "test")
    rows = [
        (
            e.paper or "MISSING",
            e.arxiv or "-",
            e.section or "-",
            e.equation or "-",
            e.function,
            e.test_file or "MISSING",
        )
        for e in entries
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
