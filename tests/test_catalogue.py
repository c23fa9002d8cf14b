"""The equation convention (ARCHITECTURE.md section 2), checked for every function in src/layers."""

import inspect

import pytest

from src.catalogue import catalogue, equation_functions, format_table, parse_reference
from src.cli import main

ENTRIES = catalogue()


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.function for e in ENTRIES])
def test_every_equation_function_has_a_reference_and_a_test(entry):
    assert entry.paper is not None, f"{entry.function} lacks a 'Paper: ... (..., arXiv:...), Sec. ...' line"
    assert entry.test_file is not None, f"{entry.function} has no tests/test_equations/test_<paper>_<eq>_<name>.py"


@pytest.mark.parametrize("function", equation_functions(), ids=lambda f: f.__name__)
def test_every_docstring_has_latex_and_shapes(function):
    doc = inspect.getdoc(function)
    assert ".. math::" in doc or "\\" in doc, f"{function.__name__}: no equation in LaTeX"
    assert "Args:" in doc, f"{function.__name__}: no argument shapes"


def test_reference_line_is_parsed():
    def example():
        """Paper: Mamba (Gu & Dao 2023, arXiv:2312.00752), Sec. 3.5, Eq. (2a)"""

    assert parse_reference(example) == {
        "paper": "Mamba (Gu & Dao 2023)",
        "arxiv": "2312.00752",
        "section": "3.5",
        "equation": "Eq. (2a)",
    }

    def missing():
        """No reference here."""

    assert parse_reference(missing) is None


def test_equations_command_prints_the_table(capsys):
    assert main(["equations"]) == 0
    out = capsys.readouterr().out
    assert out.strip() == format_table(ENTRIES)
    assert "attention.scaled_dot_product_attention" in out and "1706.03762" in out
    assert "test_transformer_eq1_scaled_dot_product_attention.py" in out
    assert "generation_scoring.length_penalty" in out and "1609.08144" in out  # equations beside their users
    assert "memory_system.episodic_retrieval.retrieval_score" in out and "2304.03442" in out
    assert "MISSING" not in out
