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
    # ET attention spread: the measure's range, the uniform (global-average) values, a trained model saved
    _check_et_spread(r)
    assert (tmp_path / "landscape_smoke_et_spread.png").exists()
    ckpt = tmp_path / "checkpoints" / r["et_spread"][0]["checkpoint"]
    assert ckpt.exists()
    # a rerun resumes: with the spread point dropped from the study's checkpoint, the ET is loaded from its
    # own checkpoint (no retraining: the training time recorded there comes back unchanged), same numbers
    study = tmp_path / "landscape_smoke.checkpoint.json"
    data = json.loads(study.read_text())
    data["done"] = {k: v for k, v in data["done"].items() if not k.startswith("et_spread/")}
    study.write_text(json.dumps(data))
    landscape.main(["--smoke", "--results-dir", str(tmp_path), "--no-progress"])
    again = json.loads((tmp_path / "landscape_smoke.json").read_text())["et_spread"][0]
    first = r["et_spread"][0]
    assert again["et_train_s"] == first["et_train_s"] and again["mse_et"] == pytest.approx(first["mse_et"], rel=1e-6)
    assert again["models"]["trained"]["attention"] == first["models"]["trained"]["attention"]


def _check_et_spread(r):
    (e,) = r["et_spread"]
    cfg = r["grid"]["et"]["overrides"]
    assert e["kind"] == "softmax" and e["epochs"] == cfg["epochs"] and len(e["history_et_test"]) == cfg["epochs"]
    assert e["tokens"] == 16 and e["allowed_keys"] == 15 and e["memories"] == cfg["memories"]
    # uniform logits: ceil(mass x allowed)
    assert e["uniform"]["0.9"]["attention"] == math.ceil(0.9 * 15) == 14
    assert e["uniform"]["0.5"]["attention"] == 8
    assert e["uniform"]["0.9"]["hopfield"] == math.ceil(0.9 * e["memories"] - 1e-9)
    for name in ("trained", "untrained"):
        m = e["models"][name]
        assert math.isfinite(m["mse"]) and m["mse"] > 0
        for state in ("start", "final"):
            heads9, heads5 = m["attention"][f"{state}/0.9"], m["attention"][f"{state}/0.5"]
            assert len(heads9) == e["heads"]
            for d9, d5 in zip(heads9, heads5):
                # every query spreads over 1..15 keys; half the mass never needs more keys than 90 % of it
                assert 1 <= d9["q05"] <= d9["median"] <= d9["q95"] <= 15
                assert d5["mean"] <= d9["mean"] and d5["median"] <= d9["median"]
                assert d9["mean_ci"][0] <= d9["mean"] <= d9["mean_ci"][1]
                assert sum(d9["hist"]) == e["test_images"] * e["tokens"] and d9["hist"][0] == 0
                assert d9["single"] == pytest.approx(d9["hist"][1] / sum(d9["hist"]))
            h9, h5 = m["hopfield"][f"{state}/0.9"], m["hopfield"][f"{state}/0.5"]
            assert 1 <= h9["q05"] <= h9["median"] <= h9["q95"] <= e["memories"] and h5["mean"] <= h9["mean"]


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
