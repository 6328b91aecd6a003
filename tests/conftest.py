"""Test configuration: hypothesis profiles and float64 where a test needs it.

Profiles (select with HYPOTHESIS_PROFILE=<name>):
- ``default``: a few examples per property, for the fast default suite;
- ``thorough``: >= 100 examples per property (run: ``HYPOTHESIS_PROFILE=thorough python -m pytest -m "not slow or slow" tests/test_properties.py``).
"""

import os
from pathlib import Path

import jax
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default", max_examples=8, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "thorough", max_examples=120, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors, HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture
def x64():
    """Run a test in float64 (restored afterwards)."""
    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", old)


# Modules that mark themselves ``pytestmark = pytest.mark.xdist_group(...)`` (their
# module-scoped fixtures start subprocesses, build the docs site or run smoke studies)
# run on one worker as one unit, so each fixture runs once under ``pytest -n 2``.
_TESTS = Path(__file__).parent
ONE_WORKER_MODULES = frozenset(
    p.name for p in _TESTS.glob("test_*.py") if "pytestmark = pytest.mark.xdist_group(" in p.read_text()
)


def _module_unit(nodeid: str) -> str | None:
    """The scheduling unit of a test id: its module when the module runs on one worker."""
    path = nodeid.split("::", 1)[0]
    return path if Path(path).name in ONE_WORKER_MODULES else None


def _one_worker_scheduling(config, log):
    """xdist's scope scheduling with a unit per one-worker module and a unit per test
    elsewhere, in collection order (the one-worker modules first: the long units start
    while the fine-grained tests keep the other worker busy).

    Why not ``--dist loadgroup``: with pytest >= 9.2 xdist 3.8 can no longer tag the test
    ids with their group (it assigns ``item._nodeid``, which pytest no longer reads), so
    every grouped test became its own unit and the subprocess fixtures ran on both
    workers (the 8-device sharding script twice: 80 s + 78 s)."""
    from xdist.scheduler import LoadScopeScheduling

    class OneWorkerModules(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _module_unit(nodeid) or nodeid

    config.option.loadscopereorder = False  # keep the collection order (long units first)
    return OneWorkerModules(config, log)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Under ``pytest -n N`` (xdist's default ``--dist load``) schedule with
    [`_one_worker_scheduling`][]; an explicit other ``--dist`` is kept."""
    if getattr(config.option, "dist", "no") == "load":
        return _one_worker_scheduling(config, log)
    return None


def pytest_collection_modifyitems(config, items):
    """One-worker modules first (a stable sort keeps the order within each part): each runs
    on one worker as one unit, so scheduling the long units first keeps both workers busy
    to the end instead of leaving one idle behind a late unit."""
    items.sort(key=lambda item: _module_unit(item.nodeid) is None)
