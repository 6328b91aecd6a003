"""Capacity studies: each ``--smoke`` run into a temporary results folder, the JSON fields
the issue asks for, sanity of the numbers, resumption, the retrieval criteria, bad input."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from experiments import _capacity as cap
from experiments import classical_capacity, dense_capacity, uhn_capacity
from experiments.data import load_dataset


def _files(d):
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


# ---------------------------------------------------------------- helpers (oracle checks)
def test_first_crossing_interpolates_between_bracketing_points():
    assert cap.first_crossing([0.1, 0.2, 0.3], [0.0, 0.01, 0.03], 0.015) == pytest.approx(0.225)
    assert cap.first_crossing([1, 2], [0.0, 0.0], 0.5) is None
    assert cap.first_crossing([1, 2, 3], [1.0, 0.95, 0.5], 0.9, rising=False) == pytest.approx(2 + 0.05 / 0.45)


def test_capacity_is_largest_K_with_accuracy_at_and_below_it():
    assert cap.capacity_from_accuracy([2, 5, 10, 20], [1.0, 0.95, 0.85, 0.95]) == 5
    assert cap.capacity_from_accuracy([2, 5], [0.5, 1.0]) == 0
    assert cap.capacity_from_accuracy([10, 2, 5], [0.9, 1.0, 0.9]) == 10


def test_loglog_slope_recovers_a_power_law():
    N = np.array([10, 20, 40, 80])
    assert cap.loglog_slope(N, 3 * N**2.5) == pytest.approx(2.5)
    assert cap.semilog_slope(N, np.exp(0.4 * N)) == pytest.approx(0.4)


# ---------------------------------------------------------------- UHN criteria
def test_paper_criterion_accepts_the_mean_image_on_digits_but_strict_rejects_it():
    ds = load_dataset("digits")
    x = jnp.asarray(ds.flat()[:300])
    mean = jnp.mean(jnp.asarray(ds.flat()), axis=0)
    outputs = jnp.broadcast_to(mean, x.shape)
    thr = uhn_capacity.threshold_for(64)
    assert thr == pytest.approx(60 * 64 / 784)
    paper, strict = uhn_capacity.criteria(outputs, jnp.arange(300), x, thr)
    # hand-computed: the mean image's squared error to each digit, against the threshold
    err = np.sum((np.asarray(x) - np.asarray(mean)) ** 2, axis=1)
    np.testing.assert_array_equal(np.asarray(paper), err <= thr)
    assert np.mean(err <= thr) > 0.4  # the degenerate paper criterion counts the blur as success
    assert float(jnp.sum(strict)) <= 1  # the mean is nearest to at most one stored digit


def test_criteria_on_hand_made_outputs():
    m = jnp.array([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 1.0, 0.0]])
    thr = 1.0
    outputs = jnp.array([
        [0.0, 0.0, 0.0, 0.0],   # exact target 0
        [0.9, 0.9, 0.9, 0.9],   # near target 1, err 0.04
        [0.5, 0.5, 0.5, 0.5],   # blend: err 1.0 to target 0 (<= thr) but equidistant -> nearest is index 0 (argmin tie)
        [1.0, 0.0, 1.0, 0.0],   # exactly pattern 2 but asked for target 1: err 2 > thr
        [jnp.nan, 0, 0, 0],     # NaN never counts
    ])
    targets = jnp.array([0, 1, 1, 1, 0])
    paper, strict = uhn_capacity.criteria(outputs, targets, m, thr)
    assert list(map(bool, paper)) == [True, True, True, False, False]
    assert list(map(bool, strict)) == [True, True, False, False, False]


def test_corruptions_do_what_they_say():
    import jax

    x = jnp.ones(8 * 8)
    half = uhn_capacity.corrupt(None, x, "half", (8, 8)).reshape(8, 8)
    assert float(half[:4].sum()) == 32 and float(half[4:].sum()) == 0
    noisy = uhn_capacity.corrupt(jax.random.PRNGKey(0), x * 0.5, "noise0.3", (8, 8))
    assert float(noisy.min()) >= 0 and float(noisy.max()) <= 1 and float(jnp.std(noisy)) > 0.1
    col = jnp.ones(4 * 4 * 3)
    masked = uhn_capacity.corrupt(jax.random.PRNGKey(1), col, "mask0.5", (4, 4, 3)).reshape(4, 4, 3)
    # whole pixels are masked: every pixel's channels are all 0 or all 1
    assert bool(jnp.all((masked.sum(-1) == 0) | (masked.sum(-1) == 3)))


# ---------------------------------------------------------------- smoke runs
def test_classical_smoke_run_writes_alpha_c(tmp_path):
    r = classical_capacity.main(["--smoke", "--results-dir", str(tmp_path), "--no-progress"])
    data = json.loads((tmp_path / "classical_smoke.json").read_text())
    assert data["N"] == [64] and len(data["alpha_c"]) == 1
    assert 0.08 <= data["alpha_c"][0] <= 0.24
    errs = [p["stored"]["mean_error"] for p in sorted(data["points"], key=lambda p: p["load"])]
    assert errs[0] < 0.015 <= errs[-1]  # retrieval works at low load and breaks at high load
    assert {"classical_smoke.csv", "classical_smoke.png"} <= set(_files(tmp_path))
    assert r["alpha_c"] == data["alpha_c"]


def test_dense_smoke_run_writes_slopes_and_exponential_capacity(tmp_path):
    dense_capacity.main(["--smoke", "--results-dir", str(tmp_path), "--no-progress"])
    data = json.loads((tmp_path / "dense_smoke.json").read_text())
    assert data["n"] == [2] and len(data["slope"]) == 1 and np.isfinite(data["slope"][0])
    assert 0.0 < data["slope"][0] < 2.0
    assert data["exp_N"] == [8, 12] and len(data["exp_capacity"]) == 2
    assert data["exp_capacity"][1] > 2 * data["exp_capacity"][0]  # grows fast with N
    assert (tmp_path / "dense_smoke.png").exists() and (tmp_path / "dense_smoke.csv").exists()


def test_uhn_smoke_run_writes_records_and_resumes_without_recomputing(tmp_path, monkeypatch):
    uhn_capacity.main(["--smoke", "--results-dir", str(tmp_path), "--no-progress"])
    data = json.loads((tmp_path / "uhn_smoke.json").read_text())
    recs = data["records"]
    assert recs and all(
        {"dataset", "similarity", "separation", "corruption", "criterion", "capacity", "accuracy_by_K"} <= set(r)
        for r in recs)
    assert {r["criterion"] for r in recs} == {"paper", "strict"}
    # strict is never more lenient than the paper's criterion
    by = {(r["similarity"], r["separation"], r["corruption"], r["criterion"]): r for r in recs}
    for (s, sep, c, crit), r in by.items():
        if crit == "strict":
            paper = by[(s, sep, c, "paper")]
            assert all(r["accuracy_by_K"][k] <= paper["accuracy_by_K"][k] for k in r["accuracy_by_K"])

    def cap_of(s, sep):
        return by[(s, sep, "noise0.3", "strict")]["capacity"]

    # the paper's ordering: distance similarity beats dot; max separation beats identity
    assert cap_of("euclidean_reciprocal", "max") > cap_of("dot", "max")
    assert cap_of("euclidean_reciprocal", "max") > cap_of("euclidean_reciprocal", "identity")
    assert data["mean_image_check"]["digits"]["strict_accuracy_of_mean_image"] < 0.01

    def boom(*a, **k):
        raise AssertionError("a finished grid point was recomputed")

    monkeypatch.setattr(uhn_capacity, "point", boom)
    uhn_capacity.main(["--smoke", "--results-dir", str(tmp_path), "--no-progress"])


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("argv, exc, match", [
    (["--datasets", "imagenet"], ValueError, "unknown dataset 'imagenet'"),
    (["--similarities", "jaccard"], ValueError, "unknown similarity 'jaccard'"),
    (["--separations", "relu"], ValueError, "unknown separation 'relu'"),
    (["--corruptions", "blur"], ValueError, "unknown corruption 'blur'"),
    (["--K", "2,5000"], ValueError, r"K = \[5000\].*1797 images"),
    (["--datasets", "mnist"], FileNotFoundError, "data_dir"),
])
def test_uhn_bad_input_fails_before_writing_anything(tmp_path, argv, exc, match):
    out = tmp_path / "results"
    with pytest.raises(exc, match=match):
        uhn_capacity.main(["--smoke", "--results-dir", str(out), "--no-progress", *argv])
    assert _files(out) == []


def test_uhn_data_dir_without_files_names_the_missing_file(tmp_path):
    out = tmp_path / "results"
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        uhn_capacity.main(["--smoke", "--datasets", "mnist", "--data-dir", str(tmp_path), "--results-dir", str(out)])
    assert _files(out) == []
