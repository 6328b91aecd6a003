"""Build the notebooks from their percent-format sources, with outputs cleared.

The sources ``notebooks/src/NN_name.py`` are plain Python split into cells by
``# %%`` lines (``# %% [markdown]`` cells hold markdown, each line prefixed ``# ``).
The ``.ipynb`` files are generated from them, so they diff cleanly and never carry
outputs.

    python notebooks/build.py             # write notebooks/*.ipynb (outputs cleared)
    python notebooks/build.py --check     # exit 1 if an .ipynb is not what its source gives
    python notebooks/build.py --execute   # also run each notebook top to bottom (nbclient);
                                          # figures go to $HAM_FIGURES_DIR or notebooks/figures,
                                          # the executed copy (with its outputs) to
                                          # notebooks/executed/, which the docs site renders
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
SOURCES = HERE / "src"
EXECUTED = HERE / "executed"  # the executed copies the docs site shows (outputs and figures included)


def parse(text: str) -> list[tuple[str, str]]:
    """Split a percent-format source into ``(kind, source)`` cells."""
    cells: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("# %%"):
            kind = "markdown" if "[markdown]" in line else "code"
            cells.append((kind, []))
            continue
        if not cells:
            if line.strip():
                raise ValueError(f"text before the first '# %%' cell marker: {line!r}")
            continue
        kind, lines = cells[-1]
        if kind == "markdown":
            if line.strip() and not line.startswith("#"):
                raise ValueError(f"markdown cell line does not start with '#': {line!r}")
            line = line[2:] if line.startswith("# ") else line.lstrip("#")
        lines.append(line)
    return [(kind, "\n".join(lines).strip("\n")) for kind, lines in cells]


def build(source: Path) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    for i, (kind, src) in enumerate(parse(source.read_text())):
        cell = (nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_code_cell)(src)
        cell.id = f"{source.stem[:2]}-{i:02d}"  # deterministic ids: rebuilding changes nothing
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def target(source: Path) -> Path:
    return HERE / f"{source.stem}.ipynb"


def render(nb) -> str:
    return nbformat.writes(nb) + "\n"


def execute(path: Path, show: bool = False, save: Path | None = None) -> float:
    """Run a notebook top to bottom in a fresh ``python3`` kernel (the file is not
    modified); returns the wall time. ``show`` prints the cells' text output; ``save``
    writes the executed copy (outputs included) there."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}).execute()
    elapsed = time.perf_counter() - start
    if save is not None:
        for cell in nb.cells:  # kernel timing metadata changes every run: keep the copy's diff to real output
            cell.metadata.pop("execution", None)
        save.parent.mkdir(exist_ok=True)
        save.write_text(render(nb))
    if show:
        for cell in nb.cells:
            for out in cell.get("outputs", []):
                if out.get("name") == "stdout":
                    print(out["text"], end="")
    return elapsed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="only check the .ipynb files are up to date")
    p.add_argument("--execute", action="store_true", help="run the notebooks after building (writes figures)")
    p.add_argument("--show", action="store_true", help="with --execute: print the cells' text output")
    p.add_argument("names", nargs="*", help="notebook stems to build (default: all)")
    args = p.parse_args(argv)
    sources = sorted(SOURCES.glob("[0-9][0-9]_*.py"))
    if args.names:
        sources = [s for s in sources if s.stem in args.names or s.stem[:2] in args.names]
    stale = []
    for src in sources:
        text = render(build(src))
        out = target(src)
        if args.check:
            if not out.exists() or out.read_text() != text:
                stale.append(out.name)
            continue
        out.write_text(text)
        print(f"wrote {out.relative_to(HERE.parent)}")
        if args.execute:
            print(f"  executed in {execute(out, args.show, save=EXECUTED / out.name):.1f} s")
    if stale:
        print("out of date (run python notebooks/build.py):", ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
