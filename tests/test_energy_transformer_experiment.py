"""experiments.energy_transformer: the --quick run writes its metrics, beats mean fill,
keeps the energy monotone, resumes exactly, refuses checkpoints of another configuration
(the energy form included) and refuses bad input clearly."""

import json
import shutil

import numpy as np
import pytest

from experiments import energy_transformer as et_exp

# one worker runs this module, so its module-scoped fixtures run once under `pytest -n 2`
pytestmark = pytest.mark.xdist_group("energy_transformer_experiment")

QUICK = ["--quick", "--no-progress"]
FIELDS = ("mse_et", "mse_mean_fill", "mse_baseline", "max_energy_rise", "config", "timings", "params")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("et_quick")
    result = et_exp.main(QUICK + ["--results-dir", str(out)])
    return out, result


def test_quick_run_writes_metrics_and_beats_mean_fill(quick_run):
    out, result = quick_run
    saved = json.loads((out / "energy_transformer_quick.json").read_text())
    for field in FIELDS:
        assert field in saved, field
    assert saved["mse_et"] == pytest.approx(result["mse_et"])
    assert saved["mse_et"] < saved["mse_mean_fill"]
    assert saved["max_energy_rise"] <= saved["energy_rise_tolerance"] <= 1e-4
    assert saved["params"]["et_total"] > 0 and saved["params"]["baseline_total"] > 0
    for fig in ("reconstructions", "energy", "training"):
        assert (out / f"energy_transformer_quick_{fig}.png").stat().st_size > 1000
    assert (out / "checkpoints" / "energy_transformer_quick.eqx").exists()


def test_resume_continues_exactly(quick_run, tmp_path):
    _, full = quick_run
    epochs = full["config"]["epochs"]
    partial = et_exp.main(QUICK + ["--results-dir", str(tmp_path), "--stop-after", str(epochs // 2)])
    assert partial["stopped_at_epoch"] == epochs // 2
    assert not (tmp_path / "energy_transformer_quick.json").exists()
    resumed = et_exp.main(QUICK + ["--results-dir", str(tmp_path), "--resume"])
    assert resumed["history"] == full["history"]  # bit-identical losses, epoch by epoch
    for key in ("mse_et", "mse_baseline", "mse_mean_fill", "max_energy_rise"):
        assert resumed[key] == full[key], key


@pytest.mark.parametrize("ratio", ["0", "1", "1.5", "-0.2"])
def test_mask_ratio_outside_unit_interval_is_refused(ratio):
    with pytest.raises(ValueError, match="--mask-ratio must lie strictly between 0 and 1"):
        et_exp.build_config(et_exp.parse_args(QUICK + ["--mask-ratio", ratio]))


def test_mask_ratio_masking_no_patch_is_refused():
    with pytest.raises(ValueError, match="masks 0 of 16 patches"):
        et_exp.num_masked(16, 0.01)


def test_patch_size_not_dividing_the_images_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"8x8 images, not divisible by --patch 3"):
        et_exp.main(QUICK + ["--patch", "3", "--results-dir", str(tmp_path)])


def test_cifar10_without_files_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        et_exp.main(QUICK + ["--dataset", "cifar10", "--data-dir", str(tmp_path), "--results-dir", str(tmp_path)])


def _copy_checkpoint(quick_run, tmp_path):
    src = quick_run[0] / "checkpoints" / "energy_transformer_quick.eqx"
    dst = tmp_path / "checkpoints" / "energy_transformer_quick.eqx"
    dst.parent.mkdir(parents=True)
    shutil.copy(src, dst)
    return dst


@pytest.mark.parametrize("damage", ["garbage", "truncated", "flipped-array-bytes"])
def test_corrupt_checkpoint_is_refused(quick_run, tmp_path, damage):
    path = _copy_checkpoint(quick_run, tmp_path)
    data = bytearray(path.read_bytes())
    if damage == "garbage":
        data = bytearray(b"not a checkpoint at all")
    elif damage == "truncated":
        data = data[: len(data) // 2]
    else:  # overwrite bytes in the middle of the serialised arrays (NaN floats or a broken header)
        mid = len(data) // 2
        data[mid : mid + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt"):
        et_exp.main(QUICK + ["--results-dir", str(tmp_path), "--resume"])


@pytest.mark.parametrize("change", [["--mask-ratio", "0.25"], ["--legendre"]], ids=["mask_ratio", "legendre"])
def test_checkpoint_of_another_configuration_is_refused(quick_run, tmp_path, change):
    _copy_checkpoint(quick_run, tmp_path)
    setting = change[0].lstrip("-").replace("-", "_")
    with pytest.raises(ValueError, match=rf"different configuration.*{setting}"):
        et_exp.main(QUICK + ["--results-dir", str(tmp_path), "--resume", *change])


def test_paper_energy_is_the_default_and_legendre_is_opt_in():
    parse = lambda *a: et_exp.build_config(et_exp.parse_args(list(a)))  # noqa: E731
    assert parse().legendre is False and parse("--no-legendre").legendre is False
    assert parse("--legendre").legendre is True
    assert parse("--quick").legendre is False


def test_masks_hide_exactly_the_requested_fraction():
    import jax

    masks = np.asarray(et_exp.random_masks(jax.random.PRNGKey(0), 50, 16, 0.5))
    assert masks.shape == (50, 16) and np.all(masks.sum(-1) == 8)
    assert len({tuple(m) for m in masks}) > 40  # different patches for different images


# ----------------------------------------------------------------------------- the 32x32 patches run
PATCHES = ["--dataset", "patches", "--quick", "--no-progress"]


@pytest.fixture(scope="module")
def patches_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("et_patches")
    return out, et_exp.main(PATCHES + ["--results-dir", str(out)])


def test_patches_defaults_are_chosen_by_the_dataset():
    parse = lambda *a: et_exp.build_config(et_exp.parse_args(list(a)))  # noqa: E731
    digits, patches = parse(), parse("--dataset", "patches")
    assert digits.patch == 2 and digits == et_exp.Config()  # the digits run keeps its settings
    assert patches.patch == 4 and patches.dataset == "patches"
    assert parse("--dataset", "patches", "--patch", "8").patch == 8  # the user's choice wins
    assert parse("--dataset", "patches", "--dim", "96").dim == 96


def test_patches_quick_run_has_its_own_files_and_beats_mean_fill(patches_run):
    out, result = patches_run
    assert result["data"]["tokens"] == 64 and result["data"]["patch_dim"] == 48  # 4x4x3 patches of 32x32x3
    saved = json.loads((out / "energy_transformer_patches_quick.json").read_text())
    for field in FIELDS + ("mse_et", "mse_baseline", "mse_mean_fill", "params_et", "params_baseline", "ratios"):
        assert field in saved, field
    assert saved["mse_et"] < saved["mse_mean_fill"] and saved["mse_baseline"] < saved["mse_mean_fill"]
    assert saved["max_energy_rise"] <= saved["energy_rise_tolerance"]
    assert saved["params_et"] < saved["params_baseline"]
    assert saved["ratios"]["mse_et_over_baseline"] == pytest.approx(saved["mse_et"] / saved["mse_baseline"])
    assert set(saved["mse_context_fills"]) == {"visible_image_mean_colour", "visible_neighbour_mean_colour"}
    for fig in ("reconstructions", "energy", "training"):
        assert (out / f"energy_transformer_patches_quick_{fig}.png").stat().st_size > 1000
    assert (out / "checkpoints" / "energy_transformer_patches_quick.eqx").exists()
    assert not (out / "energy_transformer_quick.json").exists()  # the digits results are left alone


def test_patches_resume_and_rerun_are_identical(patches_run, tmp_path):
    _, full = patches_run
    epochs = full["config"]["epochs"]
    et_exp.main(PATCHES + ["--results-dir", str(tmp_path), "--stop-after", str(epochs // 2)])
    resumed = et_exp.main(PATCHES + ["--results-dir", str(tmp_path), "--resume"])
    assert resumed["history"] == full["history"]  # same seed, same numbers, interrupted or not
    for key in ("mse_et", "mse_baseline", "mse_mean_fill", "max_energy_rise", "params_et", "params_baseline"):
        assert resumed[key] == full[key], key


def test_patches_checkpoint_of_another_configuration_is_refused(patches_run, tmp_path):
    src = patches_run[0] / "checkpoints" / "energy_transformer_patches_quick.eqx"
    dst = tmp_path / "checkpoints" / src.name
    dst.parent.mkdir(parents=True)
    shutil.copy(src, dst)
    with pytest.raises(ValueError, match=rf"{dst.name}.*different configuration.*'dim'"):
        et_exp.main(PATCHES + ["--results-dir", str(tmp_path), "--resume", "--dim", "48"])


def test_attention_window_masks_far_patches_in_both_models():
    import jax
    import jax.numpy as jnp

    assert et_exp.attention_mask((8, 8), 0) is None
    near = np.asarray(et_exp.attention_mask((4, 4), 1))  # 3x3 neighbourhoods on a 4x4 grid of patches
    assert near.shape == (16, 16) and np.array_equal(near, near.T) and near.diagonal().all()
    assert near[5].sum() == 9 and near[0].sum() == 4 and not near[0, 2] and near[0, 5]
    cfg = et_exp.build_config(et_exp.parse_args(["--quick", "--attention-window", "1"]))
    et = et_exp.MaskedET(cfg, 16, 4, key=jax.random.PRNGKey(0), attn_mask=jnp.asarray(near))
    allowed = np.asarray(et.et.network.synapses["attention"].mask)
    assert np.array_equal(allowed, near & ~np.eye(16, dtype=bool))  # the paper's ET: no token attends to itself
    base = et_exp.MaskedTransformer(cfg, 16, 4, key=jax.random.PRNGKey(1), attn_mask=jnp.asarray(near))
    # a far patch does not change the baseline's output for patch 0 (one block: one neighbourhood)
    patches, mask = jnp.zeros((1, 16, 4)), jnp.zeros((1, 16), bool)
    far = patches.at[0, 15].set(1.0)
    assert np.allclose(base(patches, mask)[0, 0], base(far, mask)[0, 0])
    assert not np.allclose(base(patches, mask)[0, 15], base(far, mask)[0, 15])
    with pytest.raises(ValueError, match="--attention-window must be >= 0"):
        et_exp.build_config(et_exp.parse_args(["--attention-window", "-1"]))


def test_context_fills_use_the_visible_patches():
    rng = np.random.default_rng(0)
    colours = rng.uniform(size=(3, 1, 1, 3))  # three images of one flat colour each, 2x2 patches of 2x2 pixels
    patches = np.array(et_exp.patchify(np.broadcast_to(colours, (3, 4, 4, 3)), 2))  # a writable copy
    masks = np.array([[True, False, False, True]] * 3)
    fills = et_exp.context_fill_mses(patches, masks, (2, 2), channels=3)
    assert fills == pytest.approx({"visible_image_mean_colour": 0.0, "visible_neighbour_mean_colour": 0.0}, abs=1e-12)
    patches[:, 1] = 0.0  # the visible top-right patch turns black: both fills now err
    fills = et_exp.context_fill_mses(patches, masks, (2, 2), channels=3)
    assert fills["visible_image_mean_colour"] > 0 and fills["visible_neighbour_mean_colour"] > 0
