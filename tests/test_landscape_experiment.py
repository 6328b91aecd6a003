"""The landscape study's --smoke run: files, fields, and numbers that must hold at any size."""

import json
import math

import numpy as np
import pytest

from experiments import landscape


def test_landscape_smoke_run_writes_every_part(tmp_path):
    landscape.main(["--smoke", "--results-dir", str(tmp_path), "--no-progress"])
    r = json.loads((tmp_path / "landscape_smoke.json").read_text())
    assert (tmp_path / "landscape_smoke.png").exists()
    assert {"spurious", "pattern_loss", "ags", "continuous", "transitions", "spread", "basins", "barriers",
            "claims"} <= set(r)
    for row in r["spurious"]:
        frac, distinct = row["spurious_fraction"][0], row["distinct_spurious"][0]
        assert 0.0 <= frac <= 1.0 and 0 <= distinct <= r["starts"]
        assert 0.0 <= row["patterns_stable"][0] <= 1.0
        assert sum(row["spurious_labels_distinct"].values()) == pytest.approx(distinct * r["seeds"])
    # lowest classical load: every pattern a minimum, every start retrieves
    low = min((x for x in r["spurious"] if x["model"] == "classical"), key=lambda x: x["K"])
    assert low["patterns_stable"][0] == 1.0
    # the stored patterns have energy per neuron -1/2 (alpha -> 0 value, diagonal shift removed)
    for row in r["ags"]:
        assert row["energy_pattern"][0] == pytest.approx(-0.5, abs=0.1)
    # continuous: one global minimum at the smallest beta, one per pattern at the largest
    first, last = r["continuous"][0], r["continuous"][-1]
    assert first["minima"][0] == 1 and first["single_pattern_minima"][0] == 0
    assert last["single_pattern_minima"][0] == r["grid"]["continuous"]["K"]
    # spread: the global average holds (nearly) all patterns, a large beta one
    assert r["spread"][0]["random"][0] >= 0.8 * r["grid"]["spread"]["K"]
    assert r["spread"][-1]["near"][0] == 1.0
    # basins: the classical network at alpha = 0.05 returns from 10 % noise; radii are fractions of N
    for row in r["basins"]:
        assert 0.1 <= row["radius_90"][0] <= row["radius_50"][0] <= 0.5 + 1e-9
    # barriers: two separated patterns at large beta are two minima with an index-1 saddle between
    for row in r["barriers"]:
        assert row["paths"] == r["seeds"] and row["barrier"][0] > 0 and row["index_one"] == row["paths"]


def test_ramsauer_beta_is_the_root_of_the_separation_condition():
    rng = np.random.default_rng(0)
    p = rng.standard_normal((5, 16))
    p = 4 * p / np.linalg.norm(p, axis=1, keepdims=True)
    b = landscape.ramsauer_beta(p)
    g = p @ p.T
    delta = np.min(np.diag(g) - np.max(g - np.diag(np.full(5, np.inf)), axis=1))
    f = lambda beta: delta - 2 / (beta * 5) - math.log(2 * 4 * 5 * beta * 16) / beta  # noqa: E731
    assert f(b) == pytest.approx(0.0, abs=1e-6) and f(1.01 * b) > 0 and f(0.99 * b) < 0
    assert landscape.ramsauer_beta(np.stack([p[0], p[0]])) == math.inf


def test_dense_capacity_formula():
    assert landscape.dense_capacity(2, 100) == pytest.approx(100 / (2 * math.log(100)))
    assert landscape.dense_capacity(3, 100) == pytest.approx(100**2 / (2 * 3 * math.log(100)))
