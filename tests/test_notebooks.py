"""The notebooks run top to bottom, are committed without outputs, and match their sources.

Each notebook is executed in a fresh ``python3`` kernel with nbclient (cwd: ``notebooks/``);
any cell error fails the test. The notebooks check their own claims with ``assert``
(Lyapunov descent, dE/dt formula vs finite differences, retrieval accuracy, ...), so a
regression in the library shows up here. Figures go to a temporary ``HAM_FIGURES_DIR``
so the run does not touch the repository.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import nbformat
import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
BUDGET_S = 180  # per notebook, on 2 CPU cores (they take well under a minute each)


def _build_module():
    spec = importlib.util.spec_from_file_location("_notebooks_build", NOTEBOOK_DIR / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_source_has_a_notebook():
    sources = sorted(p.stem for p in (NOTEBOOK_DIR / "src").glob("[0-9][0-9]_*.py"))
    assert sources, "no notebook sources found in notebooks/src"
    assert [p.stem for p in NOTEBOOKS] == sources


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_has_outputs_cleared_and_matches_its_source(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: a code cell has outputs; rebuild with python notebooks/build.py"
            assert cell.execution_count is None, f"{path.name}: a code cell has an execution count"
    build = _build_module()
    assert path.read_text() == build.render(build.build(NOTEBOOK_DIR / "src" / f"{path.stem}.py")), (
        f"{path.name} is out of date with notebooks/src/{path.stem}.py; run python notebooks/build.py"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_site_shows_an_executed_copy_of_the_current_source(path):
    """The docs site renders ``notebooks/executed/NAME.ipynb`` (written by ``build.py --execute``):
    it must hold the committed notebook's cells, every code cell run once in order, no error,
    and the figures the notebook draws (so a reader of the site sees the outputs, not "In [ ]:")."""
    executed = NOTEBOOK_DIR / "executed" / path.name
    assert executed.is_file(), f"no executed copy of {path.name}; run python notebooks/build.py --execute {path.stem}"
    ran, source = nbformat.read(executed, as_version=4), nbformat.read(path, as_version=4)
    assert [(c.cell_type, c.source) for c in ran.cells] == [(c.cell_type, c.source) for c in source.cells], (
        f"{executed.name} is stale: its cells differ from {path.name}; run python notebooks/build.py --execute {path.stem}"
    )
    code = [c for c in ran.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), f"{executed.name}: not run top to bottom"
    outputs = [o for c in code for o in c.outputs]
    assert not any(o.get("output_type") == "error" for o in outputs), f"{executed.name} holds an error"
    assert any("image/png" in o.get("data", {}) for o in outputs), f"{executed.name} shows no figure"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("HAM_FIGURES_DIR", str(tmp_path))
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=BUDGET_S, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK_DIR)}}
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError on the first failing cell
    elapsed = time.perf_counter() - start
    figure = tmp_path / f"{path.stem}.png"
    assert figure.exists() and figure.stat().st_size > 10_000, f"{path.name} did not save its figure {figure.name}"
    assert not any(
        out.get("output_type") == "error" for cell in nb.cells for out in cell.get("outputs", [])
    )
    assert elapsed < BUDGET_S, f"{path.name} took {elapsed:.0f} s (budget {BUDGET_S} s)"
