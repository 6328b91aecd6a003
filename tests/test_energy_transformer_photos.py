"""experiments.energy_transformer --dataset photos: the held-out photographs are really held
out (no photograph, and no pixel of one, on both sides of any fold), every photograph is
held out exactly once over the folds, the results carry each held-out photograph's MSE for
every method with the mean and spread over folds, the energy never rises, an interrupted
run resumes to the same numbers, and bad settings are refused clearly."""

import json

import chex
import numpy as np
import pytest

from experiments import energy_transformer as et_exp
from experiments.data import group_folds, load_dataset

# one worker runs this module, so its module-scoped fixtures run once under `pytest -n 2`
pytestmark = pytest.mark.xdist_group("energy_transformer_photos")

SMOKE = ["--dataset", "photos", "--smoke", "--no-progress"]


@pytest.fixture(scope="module")
def photos():
    return load_dataset("photos")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("et_photos")
    return out, et_exp.main(SMOKE + ["--results-dir", str(out)])


def _quadrants(patches_32: np.ndarray) -> set[bytes]:
    """The 16x16 quarters of 32x32 patches cut on a stride-16 grid: two patches overlap
    exactly when they share a quarter."""
    q = [patches_32[:, i : i + 16, j : j + 16] for i in (0, 16) for j in (0, 16)]
    return {a.tobytes() for part in q for a in part}


def test_no_pixel_of_a_held_out_photograph_is_trained_on(photos):
    cfg = et_exp.build_config(et_exp.parse_args(["--dataset", "photos"]))
    for test_groups in group_folds(photos, cfg.folds, seed=cfg.fold_seed):
        split = et_exp.photo_fold_split(cfg, photos, test_groups)
        assert set(split.test_groups) == set(test_groups) and not set(split.train_groups) & set(test_groups)
        assert len(split.train) + len(split.test) == len(photos)  # the full photos set, no cap
        train = np.asarray(et_exp.unpatchify(split.train, photos.image_shape, cfg.patch))
        test = np.asarray(et_exp.unpatchify(split.test, photos.image_shape, cfg.patch))
        assert not _quadrants(train) & _quadrants(test)


def test_the_old_random_split_of_patches_overlaps():
    """The yardstick the check above must be able to fail: the random split of the
    stride-16 patches (the old `patches` study) shares quarters between train and test."""
    cfg = et_exp.build_config(et_exp.parse_args(["--dataset", "patches"]))
    split = et_exp.load_split(cfg)
    shape = (32, 32, 3)
    train = np.asarray(et_exp.unpatchify(split.train, shape, cfg.patch))
    test = np.asarray(et_exp.unpatchify(split.test, shape, cfg.patch))
    shared = _quadrants(train) & _quadrants(test)
    assert len(shared) > 0.5 * len(_quadrants(test))


def test_every_photograph_is_held_out_once_and_named_in_the_results(smoke_run, photos):
    out, result = smoke_run
    saved = json.loads((out / "energy_transformer_photos_smoke.json").read_text())
    folds = saved["split"]["folds"]
    assert len(folds) >= 3 and saved["split"]["photographs_disjoint"] is True
    held_out = [g for f in folds for g in f["test_photographs"]]
    assert sorted(held_out) == sorted(photos.label_names)  # each once
    for f in folds:
        assert not set(f["test_photographs"]) & set(f["train_photographs"])
        assert set(f["test_photographs"]) | set(f["train_photographs"]) == set(photos.label_names)
    assert "by photograph" in saved["split"]["kind"]


def test_per_photograph_and_overall_mse_of_every_method(smoke_run, photos):
    _, r = smoke_run
    methods = ("et", "baseline", "mean_fill", "visible_neighbour_mean_colour", "visible_image_mean_colour")
    assert set(r["per_photograph"]) == set(photos.label_names)
    for name, v in r["per_photograph"].items():
        for m in methods:
            assert np.isfinite(v[m]) and v[m] > 0, (name, m)
        assert v["images"] > 0 and v["et_over_baseline"] == pytest.approx(v["et"] / v["baseline"])
    for m in methods:
        per_fold = [f["mse"][m] for f in r["folds"]]
        assert r["overall"][m]["per_fold"] == per_fold
        assert r["overall"][m]["mean"] == pytest.approx(np.mean(per_fold))
        assert r["overall"][m]["min"] <= r["overall"][m]["mean"] <= r["overall"][m]["max"]
        # a fold's pooled MSE is the image-weighted mean of its photographs' MSEs
        for f in r["folds"]:
            photos_f = [f["per_photograph"][g] for g in f["test_photographs"]]
            assert f["mse"][m] == pytest.approx(np.average([p[m] for p in photos_f], weights=[p["images"] for p in photos_f]))
    assert r["mse_et"] == r["overall"]["et"]["mean"] and r["mse_baseline"] == r["overall"]["baseline"]["mean"]
    assert r["ratios"]["params_et_over_baseline"] == pytest.approx(r["params_et"] / r["params_baseline"])
    assert len(r["target"]["met_per_fold"]) == len(r["folds"])


def test_energy_never_rises_and_figures_are_written(smoke_run):
    out, r = smoke_run
    assert r["energy_monotone"] and r["max_energy_rise"] <= r["energy_rise_tolerance"]
    assert all(f["energy_monotone"] for f in r["folds"])
    for fig in ("reconstructions", "energy", "training"):
        assert (out / f"energy_transformer_photos_smoke_{fig}.png").stat().st_size > 1000
    for k in range(len(r["folds"])):
        assert (out / "checkpoints" / f"energy_transformer_photos_smoke_fold{k}.eqx").exists()


def test_interrupted_run_resumes_to_the_same_numbers(smoke_run, tmp_path):
    _, full = smoke_run
    stopped = et_exp.main(SMOKE + ["--results-dir", str(tmp_path), "--stop-after", "1"])  # one fold of one epoch
    assert stopped["stopped_in_fold"] == 1 and len(stopped["folds_done"]) == 1
    assert not (tmp_path / "energy_transformer_photos_smoke.json").exists()
    resumed = et_exp.main(SMOKE + ["--results-dir", str(tmp_path), "--resume"])
    chex.assert_trees_all_close([f["mse"] for f in resumed["folds"]], [f["mse"] for f in full["folds"]], rtol=1e-6)
    assert [f["history"] for f in resumed["folds"]] == [f["history"] for f in full["folds"]]


def test_bad_photo_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="--folds must be >= 2"):
        et_exp.build_config(et_exp.parse_args(SMOKE + ["--folds", "1"]))
    with pytest.raises(ValueError, match=r"folds must be in \[2, 10\]"):
        et_exp.main(SMOKE + ["--folds", "11", "--results-dir", str(tmp_path)])
    with pytest.raises(ValueError, match="split by photograph"):
        et_exp.load_split(et_exp.build_config(et_exp.parse_args(SMOKE)))
    with pytest.raises(SystemExit):
        et_exp.parse_args(SMOKE + ["--quick"])  # --quick and --smoke exclude each other


def test_only_fold_trains_and_tests_that_fold_alone(tmp_path):
    r = et_exp.main(SMOKE + ["--only-fold", "2", "--results-dir", str(tmp_path)])
    folds = group_folds(load_dataset("photos"), 3, seed=0)
    assert [f["test_photographs"] for f in r["split"]["folds"]] == [list(folds[1])]
    assert (tmp_path / "energy_transformer_photos_smoke_fold2_1ep.json").exists()
    with pytest.raises(ValueError, match=r"--only-fold must be in \[1, 3\]"):
        et_exp.main(SMOKE + ["--only-fold", "4", "--results-dir", str(tmp_path)])
