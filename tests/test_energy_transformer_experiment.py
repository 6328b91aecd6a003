"""experiments.energy_transformer: the --quick run writes its metrics, beats mean fill,
keeps the energy monotone, resumes exactly, refuses checkpoints of another configuration
(the energy form included) and refuses bad input clearly."""

import json
import shutil

import numpy as np
import pytest

from experiments import energy_transformer as et_exp

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
