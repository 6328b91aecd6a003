"""The README is the front door: short, its two commands are the ones CI and users run, its
headline numbers are rendered from the committed results files, and its links resolve."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _headline():
    spec = importlib.util.spec_from_file_location("_headline", ROOT / "docs" / "headline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_headline_numbers_are_the_committed_results():
    headline = _headline()
    assert headline.current(README) == headline.render(), "README's headline table is stale: run python docs/headline.py"
    rows = [line for line in headline.render().splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) >= 6, rows  # header + at least five studies


def test_readme_is_a_short_front_door_with_the_two_commands():
    assert len(README.splitlines()) <= 300
    assert 'pip install -e ".[dev]" && ham demo' in README
    assert 'pip install -e ".[dev]" && python -m pytest -n 2' in README
    ci = (ROOT / ".ci" / "run").read_text()
    assert "\npython -m pytest -n 2\n" in ci, ".ci/run must run exactly the README's test command"


def test_every_relative_link_in_the_readme_resolves():
    links = re.findall(r"\]\(([^)\s]+)\)", README)
    relative = [link.split("#")[0] for link in links if not re.match(r"[a-z]+://", link)]
    assert relative
    missing = [link for link in relative if link and not (ROOT / link).exists()]
    assert not missing, f"README links to files that do not exist: {missing}"
