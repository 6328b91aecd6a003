"""Test configuration: hypothesis profiles and float64 where a test needs it.

Profiles (select with HYPOTHESIS_PROFILE=<name>):
- ``default``: a few examples per property, for the fast default suite;
- ``thorough``: >= 100 examples per property (run: ``HYPOTHESIS_PROFILE=thorough python -m pytest -m "not slow or slow" tests/test_properties.py``).
"""

import os

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


def pytest_configure(config):
    """Under ``pytest -n N`` schedule by ``xdist_group`` marks (``--dist loadgroup``): the
    modules that mark themselves (their module-scoped fixtures start subprocesses, build
    the docs site or run smoke studies) then run on one worker, so each fixture runs once.
    Set here, not in ``addopts``, so ``-p no:xdist`` and plain ``pytest`` keep working."""
    if getattr(config.option, "dist", "no") == "load":
        config.option.dist = "loadgroup"


def pytest_collection_modifyitems(config, items):
    """Grouped modules first (a stable sort keeps the order within each part): a group runs
    on one worker as one unit, so scheduling the long units first keeps both workers busy
    to the end instead of leaving one idle behind a late group."""
    items.sort(key=lambda item: item.get_closest_marker("xdist_group") is None)
