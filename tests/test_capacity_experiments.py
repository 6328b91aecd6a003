"""Capacity studies: each ``--smoke`` run into a temporary results folder, the JSON fields
the issue asks for, sanity of the numbers, resumption, the retrieval criteria, bad input."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from experiments import _capacity as cap
from experiments import classical_capacity, dense_capacity, uhn_capacity
from experiments.data import load_dataset

# one worker runs this module, so its module-scoped fixtures run once under `pytest -n 2`
pytestmark = pytest.mark.xdist_group("capacity_experiments")


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


@pytest.fixture(scope="module")
def uhn_smoke(tmp_path_factory):
    """One ``--smoke`` run (two seeds) shared by the UHN tests: its folder and its JSON."""
    folder = tmp_path_factory.mktemp("uhn")
    uhn_capacity.main(["--smoke", "--results-dir", str(folder), "--no-progress"])
    return folder, json.loads((folder / "uhn_smoke.json").read_text())


def test_uhn_smoke_run_writes_ranges_per_seed_and_the_paper_claim(uhn_smoke):
    folder, data = uhn_smoke
    recs = data["records"]
    assert {"uhn_smoke.json", "uhn_smoke.csv", "uhn_smoke.png"} <= set(_files(folder))
    assert recs and all(
        {"dataset", "similarity", "separation", "corruption", "criterion", "capacity_range", "by_seed", "K"} <= set(r)
        for r in recs)
    assert {r["criterion"] for r in recs} == {"paper", "strict"}
    assert all(set(r["by_seed"]) == {"0", "1"} for r in recs)
    by = {(r["similarity"], r["separation"], r["corruption"], r["criterion"]): r for r in recs}
    for (s, sep, c, crit), r in by.items():
        lo, hi = r["capacity_range"]
        assert lo <= hi and lo in [0, *r["K"]] and hi in [0, *r["K"]]
        for seed, e in r["by_seed"].items():
            # the interval holds the estimate, and the range brackets the point capacity
            assert all(lo_ <= a <= hi_ for a, lo_, hi_ in zip(e["accuracy"], e["lower"], e["upper"]))
            assert e["capacity_range"][0] <= e["capacity"] <= e["capacity_range"][1]
            if crit == "strict":  # strict is never more lenient than the paper's criterion
                paper = by[(s, sep, c, "paper")]["by_seed"][seed]["accuracy"]
                assert all(a <= b for a, b in zip(e["accuracy"], paper))
    # the paper's ordering, at every seed: a distance similarity beats the dot product under
    # max, and max beats identity
    for seed in ("0", "1"):
        def point(s, sep):
            return by[(s, sep, "noise0.3", "strict")]["by_seed"][seed]["capacity"]

        assert point("euclidean_reciprocal", "max") > point("dot", "max")
        assert point("euclidean_reciprocal", "max") > point("euclidean_reciprocal", "identity")
    assert "Euclidean" in data["paper_claim"]["claim"] and data["paper_claim"]["measured"]
    for row in data["paper_claim"]["measured"]:
        assert row["euclidean_reciprocal_verdict"] in ("higher", "lower", "overlap")
    assert data["mean_image_check"]["digits"]["strict_accuracy_of_mean_image"] < 0.01
    assert data["seed_agreement"]["cells"] == len(recs)


def test_uhn_max_twins_retrieve_identical_images_at_every_smoke_grid_point(uhn_smoke):
    _, data = uhn_smoke
    maxes = {(r["similarity"], r["corruption"], r["criterion"]): r for r in data["records"] if r["separation"] == "max"}
    checked = 0
    for a, b in uhn_capacity.MAX_TWINS:
        for (s, c, crit), r in maxes.items():
            if s != a:
                continue
            for seed, e in r["by_seed"].items():
                twin = maxes[(b, c, crit)]["by_seed"][seed]
                assert e["digests"] == twin["digests"], (a, b, c, seed)  # bit-identical retrieved images
                assert e["accuracy"] == twin["accuracy"]
                checked += len(e["digests"])
    assert checked == 2 * 2 * 2 * 2 * 3  # pairs x corruptions x criteria x seeds x K
    assert data["max_twins"]["identical"] == data["max_twins"]["grid_points"] == checked // 2


def test_uhn_smoke_run_resumes_without_recomputing(uhn_smoke, monkeypatch):
    folder, _ = uhn_smoke

    def boom(*a, **k):
        raise AssertionError("a finished grid point was recomputed")

    monkeypatch.setattr(uhn_capacity, "point", boom)
    uhn_capacity.main(["--smoke", "--results-dir", str(folder), "--no-progress"])


def test_every_cell_of_a_grid_point_sees_the_same_queries(monkeypatch):
    """Common random numbers: the corrupted queries depend on (seed, K, corruption) only."""
    seen = []
    real = uhn_capacity._evaluate

    def spy(memories, active, queries, targets, similarity, separations):
        seen.append((similarity, np.asarray(queries), np.asarray(targets)))
        return real(memories, active, queries, targets, similarity, separations)

    monkeypatch.setattr(uhn_capacity, "_evaluate", spy)
    images = load_dataset("digits").flat()
    for sim in ("dot", "manhattan"):
        uhn_capacity.point(images, (8, 8), 5, sim, ["max"], ["noise0.3", "mask0.5"], 12, 0, 20)
    uhn_capacity.point(images, (8, 8), 6, "dot", ["max"], ["noise0.3", "mask0.5"], 12, 0, 20)
    (_, q_dot, t_dot), (_, q_man, t_man), (_, q_k6, _) = seen
    np.testing.assert_array_equal(q_dot, q_man)
    np.testing.assert_array_equal(t_dot, np.arange(12) % 5)
    assert not np.array_equal(q_dot, q_k6)  # another K draws fresh corruptions


def test_padding_to_a_compiled_size_changes_no_result(monkeypatch):
    images = load_dataset("digits").flat()
    args = (images, (8, 8), 7, "manhattan_reciprocal", ["identity", "softmax", "max"], ["noise0.3"], 14, 0, 50)
    padded = uhn_capacity.point(*args)
    monkeypatch.setattr(uhn_capacity, "PAD_SIZES", ())
    assert uhn_capacity.point(*args) == padded


def test_bootstrap_over_images_counts_an_image_once_however_often_it_is_queried():
    # two stored images, 150 queries each: one always retrieved, one never
    image = np.arange(300) % 2
    correct = (image == 0)[None, :]
    w = uhn_capacity.bootstrap_weights(2, 2000, 0, 2)
    lo, hi = uhn_capacity.bootstrap_interval(correct, image, w)
    assert lo[0] == 0.0 and hi[0] == 1.0  # two images cannot pin the accuracy down
    # the same 300 outcomes from 300 distinct images: a tight interval around 0.5
    w = uhn_capacity.bootstrap_weights(300, 2000, 0, 300)
    lo, hi = uhn_capacity.bootstrap_interval(correct, np.arange(300), w)
    assert 0.4 < lo[0] < 0.5 < hi[0] < 0.6
    # all correct: the interval is the point
    lo, hi = uhn_capacity.bootstrap_interval(np.ones((1, 300), bool), np.arange(300), w)
    assert lo[0] == hi[0] == 1.0


def test_capacity_of_takes_the_largest_K_at_or_above_the_level():
    assert uhn_capacity.capacity_of([2, 5, 10, 20], [1.0, 0.95, 0.85, 0.95]) == 20
    assert uhn_capacity.capacity_of([2, 5], [0.5, 0.8]) == 0


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("argv, exc, match", [
    (["--datasets", "imagenet"], ValueError, "unknown dataset 'imagenet'"),
    (["--similarities", "jaccard"], ValueError, "unknown similarity 'jaccard'"),
    (["--separations", "relu"], ValueError, "unknown separation 'relu'"),
    (["--corruptions", "blur"], ValueError, "unknown corruption 'blur'"),
    (["--K", "2,5000"], ValueError, r"K = \[5000\].*1797 images"),
    (["--queries", "0"], ValueError, "--queries must be >= 1, got 0"),
    (["--seeds", "0"], ValueError, "--seeds must be >= 1, got 0"),
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
