"""The distribution: ``python -m build`` makes an sdist and a wheel named ``ham-hopfield``
(``ham`` on PyPI is an unrelated project; the import name stays ``ham``), and the wheel
installs into a fresh virtual environment with its console script and every public
module importable. Slow (it installs JAX and the other dependencies into the new
environment from the package index or pip's cache: about a minute here), so it runs with
``python -m pytest -m slow tests/test_packaging.py``."""

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

IMPORT_EVERY_PUBLIC_MODULE = """
import importlib, importlib.metadata, pkgutil, sys
import ham
assert "site-packages" in ham.__file__, ham.__file__  # the installed copy, not the checkout
names = ["ham"] + [m.name for m in pkgutil.walk_packages(ham.__path__, "ham.")
                   if not any(part.startswith("_") for part in m.name.split("."))]
for name in names:
    importlib.import_module(name)
print(importlib.metadata.version("ham-hopfield"), " ".join(names))
"""


def test_distribution_name_is_not_ham_and_the_backend_is_hatchling():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["name"] == "ham-hopfield"
    assert meta["build-system"]["build-backend"] == "hatchling.build"
    assert meta["project"]["scripts"]["ham"] == "ham.cli:console"
    assert any(req.startswith("build") for req in meta["project"]["optional-dependencies"]["dev"])


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_with_console_script_and_public_modules(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)],
                   check=True, capture_output=True, timeout=900)
    wheels = sorted(dist.glob("*.whl"))
    assert [w.name.split("-")[0] for w in wheels] == ["ham_hopfield"]
    assert len(list(dist.glob("ham_hopfield-*.tar.gz"))) == 1
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py, ham_script = venv / "bin" / "python", venv / "bin" / "ham"
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", str(wheels[0])],
                   check=True, capture_output=True, timeout=1800)
    # run outside the checkout, so that only the installed package can be imported
    r = subprocess.run([str(ham_script), "demo", "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "--num-patterns" in r.stdout
    r = subprocess.run([str(py), "-c", IMPORT_EVERY_PUBLIC_MODULE], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    version, *modules = r.stdout.split()
    assert version == "0.1.0"
    for name in ("ham", "ham.lagrangians", "ham.memories", "ham.synapses", "ham.energy_transformer", "ham.cli"):
        assert name in modules
    # the wheel ships the library only (no generic top-level "experiments" package)
    assert not list(venv.glob("lib/python*/site-packages/experiments"))
