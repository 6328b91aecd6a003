"""Dataset loaders: the embedded sets, the IDX / pickle file formats, and the error cases."""

import gzip
import pickle
import struct

import numpy as np
import pytest

from experiments.data import DATASETS, Dataset, load_dataset, read_idx


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
    with pytest.raises(ValueError, match="valid names: digits, patches, mnist, cifar10"):
        load_dataset("imagenet")
    assert DATASETS == ("digits", "patches", "mnist", "cifar10")


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
