"""The documentation site (mkdocs.yml, docs/): it builds with ``mkdocs build --strict``
(every cross-reference resolves, no warning), every public name of the API is rendered
from a docstring, and the code on the hand-written pages runs.

The docs dependencies (the ``docs`` extra, included in ``dev``) are required: without
them these tests fail with the install command, they do not skip.
"""

from __future__ import annotations

import html
import importlib
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

# one worker runs this module, so its module-scoped fixtures run once under `pytest -n 2`
pytestmark = pytest.mark.xdist_group("docs")

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# Public modules besides those named in ``ham.__all__`` whose ``__all__`` the API
# reference must cover.
EXTRA_MODULES = ("ham.integrator", "ham.solve")
DOCS_DEPENDENCIES = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers", "mkdocs_autorefs",
                     "mkdocs_jupyter", "griffe")
# Pages whose ```python blocks are executed, in order, in one namespace per page.
EXECUTED_PAGES = ("getting-started.md", "concepts.md", "relaxation.md", "scaling.md", "landscape.md", "models.md")


def public_modules() -> list[str]:
    """``ham``, every submodule named in ``ham.__all__``, and EXTRA_MODULES."""
    import types

    import ham

    subs = [f"ham.{n}" for n in ham.__all__ if isinstance(getattr(ham, n), types.ModuleType)]
    return ["ham", *subs, *(m for m in EXTRA_MODULES if m not in subs)]


def require_docs_dependencies() -> None:
    missing = [name for name in DOCS_DEPENDENCIES if importlib.util.find_spec(name) is None]
    if missing:
        pytest.fail(
            f"the documentation tests need the docs dependencies (missing modules: {', '.join(missing)}); "
            "install them with: pip install -e \".[docs]\" (the dev extra includes them)",
            pytrace=False,
        )


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Build the site once with ``mkdocs build --strict``; returns (site dir, build log)."""
    require_docs_dependencies()
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", HAM_DOCS_EXECUTE="false")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    log = proc.stdout + proc.stderr
    return out, proc.returncode, log


def ids_in(site_dir: Path, under: str = "api") -> set[str]:
    ids: set[str] = set()
    for page in (site_dir / under).rglob("*.html"):
        ids.update(re.findall(r'\sid="([^"]+)"', page.read_text()))
    return ids


def visible_text(page: Path) -> str:
    """The text of a built page, without code, scripts and typeset-ready maths."""
    s = page.read_text()
    s = re.sub(r"<(script|style|pre|code)\b.*?</\1>", " ", s, flags=re.DOTALL)
    s = re.sub(r'<(span|div) class="arithmatex">.*?</\1>', " ", s, flags=re.DOTALL)
    return html.unescape(re.sub(r"<[^>]+>", " ", s))


# ----------------------------------------------------------------------------- the build
def test_site_builds_strictly_without_warnings(site):
    site_dir, returncode, log = site
    problems = [line for line in log.splitlines() if re.match(r"\s*(WARNING|ERROR)\b", line)]
    assert returncode == 0 and not problems, (
        "mkdocs build --strict failed (unresolved cross-references, missing files or other warnings):\n"
        + "\n".join(problems or log.splitlines()[-40:])
    )
    for page in ("index.html", "getting-started/index.html", "concepts/index.html", "models/index.html",
                 "relaxation/index.html", "experiments/index.html", "notebooks/index.html"):
        assert (site_dir / page).exists(), f"the site has no {page}"
    notebooks = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks, "no notebooks/*.ipynb (run python notebooks/build.py)"
    for name in notebooks:
        assert (site_dir / "notebooks" / name / "index.html").exists(), f"notebook {name} is not rendered"


def test_notebook_pages_show_their_outputs(site):
    """The site renders the executed copies (notebooks/executed/), not the cleared sources: a
    reader sees numbered cells and the figures, not "In [ ]:" (tests/test_notebooks.py checks
    that each copy matches its source)."""
    site_dir, returncode, _ = site
    assert returncode == 0
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        page = html.unescape((site_dir / "notebooks" / path.stem / "index.html").read_text()).replace("\xa0", " ")
        assert "In [1]:" in page and "In [ ]:" not in page, f"notebook {path.stem} is shown unexecuted"
        assert 'class="jp-RenderedImage' in page, f"notebook {path.stem} shows no figure"


def test_every_public_name_is_in_the_api_reference(site):
    """Each name in the ``__all__`` of a public module has a rendered heading: at its own
    path, or (for names re-exported at the top level) at ``ham.<name>``. mkdocstrings
    renders no object without a docstring, so this also proves each has one."""
    site_dir, returncode, _ = site
    assert returncode == 0, "the site did not build (see test_site_builds_strictly_without_warnings)"
    ids = ids_in(site_dir)
    import ham

    missing = []
    for modname in public_modules():
        module = importlib.import_module(modname)
        assert hasattr(module, "__all__"), f"{modname} has no __all__"
        for name in module.__all__:
            obj = getattr(module, name)
            paths = {f"{modname}.{name}"} | {f"ham.{n}" for n in ham.__all__ if getattr(ham, n) is obj}
            if not paths & ids:
                missing.append(f"{modname}.{name}")
    assert not missing, (
        f"public names not in the API reference (add a docstring, or add the name to its page under docs/api/): "
        f"{missing}"
    )


def test_every_public_name_has_a_docstring():
    """Statically (griffe, as mkdocstrings reads it): every public module, every name in
    its ``__all__``, and every public method and property those classes define or inherit
    from ham's own classes."""
    require_docs_dependencies()
    import griffe

    package = griffe.load("ham", search_paths=[str(ROOT)], resolve_aliases=True, resolve_external=False)
    missing = []
    for modname in public_modules():
        module = package if modname == "ham" else package[modname.removeprefix("ham.")]
        if not (module.docstring and module.docstring.value.strip()):
            missing.append(modname)
        for name in module.exports:
            obj = module[name]
            path = f"{modname}.{name}"
            if obj.is_module:
                continue  # a submodule: checked as a module above
            if not (obj.docstring and obj.docstring.value.strip()):
                missing.append(path)
            if obj.is_class:
                for member_name, member in obj.all_members.items():
                    if member_name.startswith("_") or not member.path.startswith("ham."):
                        continue
                    documentable = member.is_function or (member.is_attribute and "property" in member.labels)
                    if documentable and not (member.docstring and member.docstring.value.strip()):
                        missing.append(f"{path}.{member_name} (defined in {member.parent.path})")
    assert not missing, f"public names without a docstring: {missing}"


def test_no_unrendered_maths(site):
    """Inline maths that arithmatex did not pick up shows as raw ``$...$`` (e.g.
    ``$v = $ query``: a closing ``$`` after a space is not a delimiter)."""
    site_dir, returncode, _ = site
    assert returncode == 0
    raw = []
    for page in sorted(site_dir.rglob("index.html")):
        if page.relative_to(site_dir).parts[0] == "notebooks" and page.parent.name != "notebooks":
            continue  # notebook cells keep their $...$ for MathJax
        for m in re.finditer(r"\$[^$\n]{1,80}\$", visible_text(page)):
            raw.append(f"{page.relative_to(site_dir)}: {m.group(0)!r}")
    assert not raw, "maths left as raw TeX (write $x$ = y, not $x = $ y):\n" + "\n".join(raw)


def test_experiment_tables_come_from_the_results_files(site):
    site_dir, returncode, _ = site
    assert returncode == 0
    text = visible_text(site_dir / "experiments" / "index.html")
    assert "<!-- results:" not in (site_dir / "experiments" / "index.html").read_text()
    import json

    classical = json.loads((ROOT / "experiments/results/classical.json").read_text())
    assert f"{classical['alpha_c'][0]:.3f}" in text
    et = json.loads((ROOT / "experiments/results/energy_transformer.json").read_text())
    assert f"{et['mse_et']:.4f}" in text
    patches = json.loads((ROOT / "experiments/results/energy_transformer_patches.json").read_text())
    assert f"{patches['mse_et']:.5f}" in text and f"{patches['mse_baseline']:.5f}" in text
    fidelity = json.loads((ROOT / "experiments/results/bench_relax_fidelity.json").read_text())
    assert "cheapest at ≥ 99 %" in text
    for row in fidelity["results"]:  # every row's cheapest method, with its cost, from the file
        if row["cheapest_99"] is not None:
            assert f"{row['cheapest_99']} ({row['cheapest_99_evals_vs_euler']:.2f}×" in text
    dam = json.loads((ROOT / "experiments/results/dam_classifier_mnist5k.json").read_text())
    assert f"{dam['dam_validated']['test_error'] * 100:.2f} %" in text
    assert f"{dam['baselines']['relu_network']['test_error'] * 100:.2f} %" in text
    ham_mnist = json.loads((ROOT / "experiments/results/ham_classifier_mnist5k.json").read_text())["summary"]
    assert f"{ham_mnist['ham']['test_error'] * 100:.2f} %" in text and f"{ham_mnist['ffn']['test_error'] * 100:.2f} %" in text
    for figure in ("classical.png", "dense.png", "uhn.png", "dam_classifier.png"):
        assert (site_dir / "experiments" / "results" / figure).exists(), f"figure {figure} not in the site"


# ----------------------------------------------------------------------------- the examples
def python_blocks(page: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", page.read_text(), flags=re.MULTILINE | re.DOTALL)


@pytest.mark.parametrize("page", EXECUTED_PAGES)
def test_page_examples_run(page):
    blocks = python_blocks(DOCS / page)
    assert blocks, f"docs/{page} has no ```python blocks"
    namespace = {"__name__": f"docs.{page}"}
    for i, block in enumerate(blocks):
        code = compile(block, f"docs/{page} (python block {i + 1} of {len(blocks)})", "exec")
        exec(code, namespace)  # noqa: S102 - the documented examples, run as a reader would


def test_getting_started_and_concepts_examples_are_all_executed():
    """Every page with python examples is in EXECUTED_PAGES (so none can rot unseen)."""
    with_code = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md") if python_blocks(p))
    assert set(with_code) <= set(EXECUTED_PAGES), f"pages with python blocks that no test runs: {with_code}"
    assert {"getting-started.md", "concepts.md"} <= set(with_code)
