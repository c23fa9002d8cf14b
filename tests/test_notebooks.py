"""Notebooks run top to bottom: every code cell runs in order in one namespace, and the cells'
own asserts (each equation against its hand-worked value) must hold."""

import json

import pytest

from tests.conftest import ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_top_to_bottom(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    namespace: dict = {}
    cells = [cell for cell in json.loads(path.read_text())["cells"] if cell["cell_type"] == "code"]
    assert cells, f"{path.name} has no code cells"
    for cell in cells:
        source = "".join(cell["source"])
        assert "assert" in source or "import" in source, f"{path.name}: a code cell checks nothing"
        exec(compile(source, f"{path.name}", "exec"), namespace)
