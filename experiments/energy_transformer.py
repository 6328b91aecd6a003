"""Energy Transformer: masked-patch image reconstruction (Hoover et al. 2023).

Images are cut into patches; a random fraction of the patches is replaced by a learned
mask token; position embeddings are added to the linearly embedded patches; the Energy
Transformer ([`ham.energy_transformer.EnergyTransformer`][], a `ham.HAM`) descends its
energy for T steps of size α (or relaxes it with `ham.relax`); the masked patches are
decoded linearly from the final activations g. Everything is trained end-to-end with
AdamW and a warmup-cosine schedule, next to two baselines measured in the same run:
mean-patch fill and a same-width standard (pre-LN) transformer trained identically.

    python -m experiments.energy_transformer            # digits: ~270 s CPU, 12 min wall on 2 busy cores
    python -m experiments.energy_transformer --quick    # smoke run: ~40 s CPU
    python -m experiments.energy_transformer --dataset patches  # 32x32 photo crops: ~11 min wall on 2 cores
    python -m experiments.energy_transformer --dataset photos   # photographs never seen in training, 3 folds:
                                                                # ~50 min wall on 2 cores shared by ~10 jobs
    python -m experiments.energy_transformer --dataset cifar10 --data-dir ~/data
    python -m experiments.energy_transformer --resume   # continue from the last epoch
    python -m experiments.energy_transformer --legendre # the leaky HAM form instead of the paper's

By default the energy is the paper's, E = E^ATT + E^HN, and each inference step is
x ← x − α ∂E/∂g (α = 0.5, T = 12); ``--legendre`` adds the layer-norm layer's Legendre
term x·g − L, so each step becomes x ← (1 − α) x − α ∂E_syn/∂g.

Each dataset brings its own defaults (``DATASET_DEFAULTS``; any flag overrides them): the
second default run, ``--dataset patches``, cuts 32×32×3 crops of scikit-learn's sample
photographs into 4×4 patches (64 tokens of 48 values), width 128, 4 heads of 32, 512
memories, 20 epochs, and attention only between neighbouring patches (``--attention-window
1``, for both models).

The ``patches`` split is random over crops that overlap their neighbours by half (97.8 % of its
held-out pixels lie inside training crops): it is not a held-out test. ``--dataset photos`` is:
32×32 crops of eleven real photographs, split by photograph (``experiments.data.group_folds``,
3 folds, each photograph held out once), the ``patches`` settings at 2 epochs (a shared CPU);
it reports each held-out photograph's MSE for both models and the fills, and the mean and
spread over folds. ``--only-fold K`` runs one fold alone (e.g. with more ``--epochs``).

Writes ``energy_transformer.json`` (digits) or ``energy_transformer_<dataset>.json`` and
three PNG figures with the same stem (``_quick`` appended for ``--quick``) to the results
folder, and a checkpoint of that stem every epoch under ``<results>/checkpoints/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import io
import json
import math
import struct
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import ham
from ham.energy_transformer import EnergyTransformer, patchify, unpatchify

from ._io import results_dir as _results_dir
from ._io import atomic_open, save_figure, write_json
from .data import load_dataset

NAME = "energy_transformer"
CHECKPOINT_MAGIC = b"HAM-ET-CKPT-1\n"
ENERGY_RISE_TOLERANCE = 1e-5  # relative to max|E| along the trajectory (float32 round-off)
TARGET_MSE_RATIO = 1.05  # the ET's held-out MSE at most 5 % above the transformer baseline's ...
TARGET_PARAMS_RATIO = 0.6  # ... with at most 0.6x its parameters


# ----------------------------------------------------------------------------- configuration
@dataclasses.dataclass(frozen=True)
class Config:
    dataset: str = "digits"
    data_dir: str | None = None
    patch: int = 2
    mask_ratio: float = 0.5
    dim: int = 64
    heads: int = 4
    head_dim: int = 16
    memories: int = 256
    hopfield: str = "relu"
    legendre: bool = False
    steps: int = 12
    step_size: float = 0.5
    inference: str = "descend"
    relax_max_steps: int = 256
    attention_window: int = 0
    baseline_layers: int = 1
    embed_std: float = 0.02
    epochs: int = 80
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_epochs: int = 3
    test_fraction: float = 0.2
    max_train: int | None = None
    max_test: int | None = None
    history_test: int | None = None
    folds: int = 3
    fold_seed: int = 0
    seed: int = 0

    def validate(self) -> None:
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"--mask-ratio must lie strictly between 0 and 1, got {self.mask_ratio}.")
        checks = {
            "--patch": self.patch, "--dim": self.dim, "--heads": self.heads, "--head-dim": self.head_dim,
            "--memories": self.memories, "--steps": self.steps, "--epochs": self.epochs,
            "--batch-size": self.batch_size, "--baseline-layers": self.baseline_layers,
        }
        for name, v in checks.items():
            if v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}.")
        if self.attention_window < 0:
            raise ValueError(f"--attention-window must be >= 0 (0: every token attends to every other), "
                             f"got {self.attention_window}.")
        if not self.step_size > 0:
            raise ValueError(f"--step-size must be > 0, got {self.step_size}.")
        if not self.lr > 0:
            raise ValueError(f"--lr must be > 0, got {self.lr}.")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"--test-fraction must lie strictly between 0 and 1, got {self.test_fraction}.")
        if self.inference not in ("descend", "relax"):
            raise ValueError(f"--inference must be 'descend' or 'relax', got {self.inference!r}.")
        if self.folds < 2:
            raise ValueError(f"--folds must be >= 2 (each fold holds out other photographs), got {self.folds}.")
        if self.history_test is not None and self.history_test < 1:
            raise ValueError(f"--history-test must be >= 1, got {self.history_test}.")
        if self.hopfield not in ("relu", "softmax"):
            raise ValueError(f"--hopfield must be 'relu' or 'softmax', got {self.hopfield!r}.")


DATASET_DEFAULTS = {
    "digits": dict(patch=2),
    # 64 tokens of 4x4x3 pixels; attention within the 3x3 neighbourhood of patches (for both models):
    # with global attention the ET learned only each image's mean colour (see the README)
    "patches": dict(patch=4, dim=128, head_dim=32, memories=512, epochs=20, batch_size=32, attention_window=1),
    "cifar10": dict(patch=4, dim=128, head_dim=32, memories=512, epochs=10, batch_size=64),
    # the patches settings on photographs the models never saw (split by photograph, folds rotate the
    # held-out photographs). 2 epochs (1 of warmup) to fit a 2-core CPU shared by ~10 processes: a fold
    # trains on 3,099-4,037 patches, so 2 epochs are 193-252 optimiser steps per model (the 20-epoch
    # `patches` run took 960; at its step 192 the ET and the transformer were level). The per-epoch
    # held-out curve is measured on 512 held-out patches, the final numbers on all of them.
    "photos": dict(patch=4, dim=128, head_dim=32, memories=512, epochs=2, warmup_epochs=1, batch_size=32,
                   attention_window=1, history_test=512),
}
QUICK_DATASET = {  # --quick on the 32x32 patches: fewer images and epochs, so the smoke run stays short
    "patches": dict(max_train=320, max_test=64, epochs=4),
    "photos": dict(max_train=320, max_test=120, epochs=4, history_test=None),
}
SMOKE = dict(  # --smoke (tests, seconds): a tiny model, a few images, one epoch
    dim=16, heads=2, head_dim=8, memories=16, steps=2, epochs=1, batch_size=16, max_train=32, max_test=40,
    warmup_epochs=1, lr=1e-2, embed_std=0.3, history_test=None,
)
QUICK = dict(  # larger embeddings and more (shorter) descents leave the mean-fill plateau within the smoke run
    dim=32, heads=2, head_dim=16, memories=64, steps=4, step_size=0.5, epochs=10, batch_size=16, max_test=256,
    warmup_epochs=1, lr=1e-2, embed_std=0.3,
)


# ----------------------------------------------------------------------------- models
def _linear(key, d_in, d_out):
    return eqx.nn.Linear(d_in, d_out, key=key)


def _apply(linear: eqx.nn.Linear, x):
    return x @ linear.weight.T + linear.bias


def _embedding(cfg, tokens, patch_dim, ke, kd, km, kp):
    """Encoder, decoder, mask token and position embeddings: one initialisation shared by
    the Energy Transformer and the baseline, so both are set up the same way."""
    encoder = _linear(ke, patch_dim, cfg.dim)
    decoder = _linear(kd, cfg.dim, patch_dim)
    mask_token = cfg.embed_std * jax.random.normal(km, (cfg.dim,))
    positions = cfg.embed_std * jax.random.normal(kp, (tokens, cfg.dim))
    return encoder, decoder, mask_token, positions


def attention_mask(grid: tuple[int, int], window: int):
    """Boolean ``(tokens, tokens)``: query patch C may attend to key patch B when they lie
    within ``window`` patches of each other in both directions on the ``grid`` of patches
    (row-major, as ``patchify``); ``None`` for ``window = 0`` (global attention)."""
    if window == 0:
        return None
    rows, cols = np.divmod(np.arange(grid[0] * grid[1]), grid[1])
    near = (np.abs(rows[:, None] - rows[None]) <= window) & (np.abs(cols[:, None] - cols[None]) <= window)
    return jnp.asarray(near)


def _masked_tokens(encoder, mask_token, positions, patches, mask):
    x = _apply(encoder, patches)
    return jnp.where(mask[..., None], mask_token, x) + positions


class MaskedET(eqx.Module):
    """Linear patch embedding + learned mask token + position embeddings → Energy
    Transformer inference → linear decoder of the final activations g."""

    encoder: eqx.nn.Linear
    mask_token: jax.Array
    positions: jax.Array
    et: EnergyTransformer
    decoder: eqx.nn.Linear
    step_size: float = eqx.field(static=True)
    steps: int = eqx.field(static=True)
    inference: str = eqx.field(static=True)
    relax_max_steps: int = eqx.field(static=True)

    def __init__(self, cfg: Config, tokens: int, patch_dim: int, *, key, attn_mask=None):
        ke, kd, km, kp, kt = jax.random.split(key, 5)
        self.encoder, self.decoder, self.mask_token, self.positions = _embedding(
            cfg, tokens, patch_dim, ke, kd, km, kp
        )
        self.et = EnergyTransformer(
            tokens, cfg.dim, heads=cfg.heads, head_dim=cfg.head_dim, memories=cfg.memories, kind=cfg.hopfield,
            legendre=cfg.legendre, key=kt,
            # the paper's energy: a token never attends to itself
            mask=None if attn_mask is None else attn_mask & ~jnp.eye(tokens, dtype=bool),
        )
        self.step_size, self.steps = float(cfg.step_size), int(cfg.steps)
        self.inference, self.relax_max_steps = cfg.inference, int(cfg.relax_max_steps)

    def solve(self, patches, mask) -> ham.Solution:
        x0 = _masked_tokens(self.encoder, self.mask_token, self.positions, patches, mask)
        if self.inference == "relax":
            return self.et.relax(x0, max_steps=self.relax_max_steps)
        return self.et.descend(x0, step_size=self.step_size, steps=self.steps)

    def __call__(self, patches, mask):
        sol = self.solve(patches, mask)
        return _apply(self.decoder, self.et.activations(sol.states["tokens"]))


class Block(eqx.Module):
    """A standard pre-LN transformer block: x + MHA(LN x), then x + MLP(LN x)."""

    norm1: eqx.nn.LayerNorm
    attention: eqx.nn.MultiheadAttention
    norm2: eqx.nn.LayerNorm
    hidden: eqx.nn.Linear
    out: eqx.nn.Linear

    def __init__(self, dim, heads, head_dim, hidden, *, key):
        ka, kh, ko = jax.random.split(key, 3)
        self.norm1, self.norm2 = eqx.nn.LayerNorm(dim), eqx.nn.LayerNorm(dim)
        self.attention = eqx.nn.MultiheadAttention(heads, dim, qk_size=head_dim, vo_size=head_dim, key=ka)
        self.hidden, self.out = _linear(kh, dim, hidden), _linear(ko, hidden, dim)

    def __call__(self, x, attn_mask=None):  # (tokens, dim)
        h = jax.vmap(self.norm1)(x)
        x = x + self.attention(h, h, h, mask=attn_mask)
        h = jax.vmap(self.norm2)(x)
        return x + _apply(self.out, jax.nn.gelu(_apply(self.hidden, h)))


class MaskedTransformer(eqx.Module):
    """The baseline: the same embedding, mask token, positions and decoder around
    ``baseline_layers`` standard transformer blocks of the ET's width (dim, heads,
    head_dim; MLP hidden size = the ET's number of memories)."""

    encoder: eqx.nn.Linear
    mask_token: jax.Array
    positions: jax.Array
    blocks: list
    norm: eqx.nn.LayerNorm
    decoder: eqx.nn.Linear
    attn_mask: jax.Array | None

    def __init__(self, cfg: Config, tokens: int, patch_dim: int, *, key, attn_mask=None):
        ke, kd, km, kp, kb = jax.random.split(key, 5)
        self.encoder, self.decoder, self.mask_token, self.positions = _embedding(
            cfg, tokens, patch_dim, ke, kd, km, kp
        )
        self.blocks = [
            Block(cfg.dim, cfg.heads, cfg.head_dim, cfg.memories, key=k)
            for k in jax.random.split(kb, cfg.baseline_layers)
        ]
        self.norm = eqx.nn.LayerNorm(cfg.dim)
        self.attn_mask = attn_mask  # the same window as the ET's (a standard token attends to itself too)

    def __call__(self, patches, mask):
        x = _masked_tokens(self.encoder, self.mask_token, self.positions, patches, mask)

        def one(x):
            for block in self.blocks:
                x = block(x, self.attn_mask)
            return jax.vmap(self.norm)(x)

        return _apply(self.decoder, jax.vmap(one)(x))


def count_params(tree) -> int:
    return int(sum(x.size for x in jax.tree_util.tree_leaves(eqx.filter(tree, eqx.is_inexact_array))))


# ----------------------------------------------------------------------------- training
def masked_mse(pred, target, mask):
    """Mean squared error per pixel over the masked patches only."""
    se = jnp.sum(jnp.square(pred - target), axis=-1) * mask
    return jnp.sum(se) / (jnp.sum(mask) * target.shape[-1])


def _loss(model, patches, mask):
    return masked_mse(model(patches, mask), patches, mask)


@functools.lru_cache(maxsize=8)
def make_optimizer(lr: float, weight_decay: float, warmup_steps: int, total_steps: int):
    """AdamW with a linear warmup and cosine decay (cached so equal settings share the
    same object, and hence the same compiled training step)."""
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, lr, warmup_steps=max(1, warmup_steps), decay_steps=max(total_steps, warmup_steps + 1), end_value=lr * 0.01
    )
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=weight_decay))


@eqx.filter_jit
def train_step(model, opt_state, patches, mask, optimizer):
    loss, grads = eqx.filter_value_and_grad(_loss)(model, patches, mask)
    updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_inexact_array))
    return eqx.apply_updates(model, updates), opt_state, loss


@eqx.filter_jit
def _outputs(model, patches, mask):
    if isinstance(model, MaskedET):
        sol = model.solve(patches, mask)
        pred = _apply(model.decoder, model.et.activations(sol.states["tokens"]))
        return pred, sol.energies, sol.mask
    return model(patches, mask), None, None


def predict(model, patches, mask):
    """Reconstructed patches (one compiled function per model, shared with the energy traces)."""
    return _outputs(model, patches, mask)[0]


def et_trajectories(model: MaskedET, patches, mask):
    """The energy traces of the ET's inference and their validity mask."""
    return _outputs(model, patches, mask)[1:]


def random_masks(key, n: int, tokens: int, ratio: float):
    """Boolean ``(n, tokens)``: each row masks exactly ``num_masked(tokens, ratio)`` tokens at random."""
    k = num_masked(tokens, ratio)
    ranks = jnp.argsort(jnp.argsort(jax.random.uniform(key, (n, tokens)), axis=-1), axis=-1)
    return ranks < k


def num_masked(tokens: int, ratio: float) -> int:
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"mask ratio must lie strictly between 0 and 1, got {ratio}.")
    k = int(round(ratio * tokens))
    if not 1 <= k < tokens:
        raise ValueError(
            f"mask ratio {ratio} masks {k} of {tokens} patches; it must mask at least one patch and leave one visible."
        )
    return k


# ----------------------------------------------------------------------------- data
@dataclasses.dataclass
class Split:
    train: np.ndarray  # (n, tokens, patch_dim) float32
    test: np.ndarray
    image_shape: tuple[int, ...]


def load_split(cfg: Config) -> Split:
    if cfg.dataset == "photos":
        raise ValueError("dataset 'photos' is split by photograph, one fold at a time: use photo_fold_split.")
    data = load_dataset(cfg.dataset, cfg.data_dir)
    h, w = data.image_shape[:2]
    if h % cfg.patch or w % cfg.patch:
        raise ValueError(
            f"dataset {cfg.dataset!r} has {h}x{w} images, not divisible by --patch {cfg.patch}; "
            f"use a patch size dividing both (e.g. {[p for p in range(1, min(h, w) + 1) if h % p == 0 and w % p == 0]})."
        )
    rng = np.random.default_rng(cfg.seed)
    if cfg.dataset == "cifar10":
        train = data.images
        test = load_dataset(cfg.dataset, cfg.data_dir, split="test").images
    else:
        perm = rng.permutation(len(data))
        n_test = max(1, int(round(cfg.test_fraction * len(data))))
        test, train = data.images[perm[:n_test]], data.images[perm[n_test:]]
    if cfg.max_train:
        train = train[: cfg.max_train]
    if cfg.max_test:
        test = test[: cfg.max_test]
    if len(train) < cfg.batch_size:
        raise ValueError(f"only {len(train)} training images, fewer than --batch-size {cfg.batch_size}.")
    as_patches = lambda a: np.asarray(patchify(a, cfg.patch), dtype=np.float32)  # noqa: E731
    return Split(as_patches(train), as_patches(test), tuple(data.image_shape))


@dataclasses.dataclass
class PhotoSplit(Split):
    test_labels: np.ndarray  # (n_test,) source group of each held-out patch
    train_groups: tuple[str, ...]
    test_groups: tuple[str, ...]


def photo_fold_split(cfg: Config, data, test_groups) -> PhotoSplit:
    """Train on the patches of every photograph outside ``test_groups`` and hold out all the
    patches of the photographs in it (``split_by_group``: no photograph on both sides). The
    held-out patches come in a seeded random order (so the first ``history_test`` of them mix
    the held-out photographs); ``max_train``/``max_test`` keep a seeded random subset."""
    from .data import split_by_group

    train_idx, test_idx = split_by_group(data, test_groups)
    rng = np.random.default_rng(cfg.seed)
    train_idx, test_idx = rng.permutation(train_idx), rng.permutation(test_idx)
    if cfg.max_train:
        train_idx = train_idx[: cfg.max_train]
    if cfg.max_test:
        test_idx = test_idx[: cfg.max_test]
    if len(train_idx) < cfg.batch_size:
        raise ValueError(f"only {len(train_idx)} training images, fewer than --batch-size {cfg.batch_size}.")
    names = data.label_names
    train_groups = tuple(names[i] for i in sorted(set(data.labels[train_idx].tolist())))
    held_out = tuple(names[i] for i in sorted(set(data.labels[test_idx].tolist())))
    if set(train_groups) & set(held_out):
        raise AssertionError(f"photographs on both sides of the split: {set(train_groups) & set(held_out)}")
    as_patches = lambda a: np.asarray(patchify(a, cfg.patch), dtype=np.float32)  # noqa: E731
    return PhotoSplit(as_patches(data.images[train_idx]), as_patches(data.images[test_idx]), tuple(data.image_shape),
                      test_labels=data.labels[test_idx], train_groups=train_groups, test_groups=held_out)


def held_out_pixels_seen(train: np.ndarray, test: np.ndarray) -> float:
    """Fraction of the held-out images' pixels that lie inside some training image, for
    square crops cut on a grid of stride half their side (``photos``, ``patches``): a pixel
    lies in a training crop exactly when its quarter (a ``side/2`` square, one grid cell) is
    one of that crop's quarters, matched by value. Images ``(n, H, W[, C])``."""
    h, w = train.shape[1:3]
    if h % 2 or w % 2:
        raise ValueError(f"held_out_pixels_seen needs crops of even side, got {h}x{w}.")

    def quarters(a):
        return [a[:, i : i + h // 2, j : j + w // 2] for i in (0, h // 2) for j in (0, w // 2)]

    seen = {q.tobytes() for part in quarters(np.ascontiguousarray(train)) for q in part}
    hits = np.stack([[q.tobytes() in seen for q in part] for part in quarters(np.ascontiguousarray(test))])
    return float(hits.mean())


def patches_split_note(split: Split, cfg: Config) -> dict:
    """What the random split of ``patches`` holds out: the crops overlap their grid
    neighbours by half, so most held-out pixels were trained on (not a held-out test)."""
    as_images = lambda p: np.asarray(unpatchify(p, split.image_shape, cfg.patch))  # noqa: E731
    return {
        "kind": "random over overlapping stride-16 crops of the same two photographs (NOT held out: "
                "see energy_transformer_photos.json for photographs never seen in training)",
        "held_out_pixels_in_training_images": held_out_pixels_seen(as_images(split.train), as_images(split.test)),
    }


# ----------------------------------------------------------------------------- checkpoints
def _config_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def save_checkpoint(path: Path, state, meta: dict) -> None:
    """One file: magic, JSON header (config, epoch, history), then the pytree leaves
    (``eqx.tree_serialise_leaves``); written to a temporary file and renamed."""
    header = json.dumps(meta).encode()
    with atomic_open(path) as f:
        f.write(CHECKPOINT_MAGIC)
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
        eqx.tree_serialise_leaves(f, state)


def load_checkpoint(path: Path, like, config: dict):
    """Read a checkpoint written by [`save_checkpoint`][] into the structure of ``like``.
    Raises ``ValueError`` if the file is corrupt, truncated, from another configuration
    or holds arrays of other shapes."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(f"checkpoint {str(path)!r} cannot be read: {e}") from e
    if not data.startswith(CHECKPOINT_MAGIC) or len(data) < len(CHECKPOINT_MAGIC) + 8:
        raise ValueError(f"checkpoint {str(path)!r} is corrupt: not an Energy Transformer checkpoint (bad header).")
    pos = len(CHECKPOINT_MAGIC)
    (n,) = struct.unpack("<Q", data[pos : pos + 8])
    pos += 8
    try:
        meta = json.loads(data[pos : pos + n].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"checkpoint {str(path)!r} is corrupt: unreadable header ({e}).") from e
    if not isinstance(meta, dict) or "config" not in meta or "epoch" not in meta:
        raise ValueError(f"checkpoint {str(path)!r} is corrupt: header lacks config/epoch.")
    if meta["config"] != config:
        diff = {
            k: (meta["config"].get(k), v) for k, v in config.items() if meta["config"].get(k) != v
        }
        raise ValueError(
            f"checkpoint {str(path)!r} was written with a different configuration; differing settings "
            f"(checkpoint, now): {diff}. Run without --resume to start afresh, or with the checkpoint's settings."
        )
    buf = io.BytesIO(data[pos + n :])
    try:
        state = eqx.tree_deserialise_leaves(buf, like)
    except Exception as e:  # noqa: BLE001 - equinox/numpy raise various types on bad data
        raise ValueError(f"checkpoint {str(path)!r} is corrupt or does not match the models: {e}") from e
    if buf.tell() != len(buf.getvalue()):
        raise ValueError(f"checkpoint {str(path)!r} is corrupt: {len(buf.getvalue()) - buf.tell()} trailing bytes.")
    bad = [
        i for i, x in enumerate(jax.tree_util.tree_leaves(eqx.filter(state, eqx.is_inexact_array)))
        if not bool(jnp.all(jnp.isfinite(x)))
    ]
    if bad:
        raise ValueError(f"checkpoint {str(path)!r} is corrupt: non-finite values in {len(bad)} array(s).")
    return state, meta


# ----------------------------------------------------------------------------- evaluation
def evaluate_mse(model, patches: np.ndarray, masks, batch: int = 256) -> float:
    total, count = 0.0, 0.0
    for i in range(0, len(patches), batch):
        p, m = jnp.asarray(patches[i : i + batch]), masks[i : i + batch]
        pred = predict(model, p, m)
        total += float(jnp.sum(jnp.sum(jnp.square(pred - p), axis=-1) * m))
        count += float(jnp.sum(m)) * p.shape[-1]
    return total / count


def mean_fill_mse(train: np.ndarray, test: np.ndarray, masks) -> float:
    """Fill each masked patch with the mean training patch at that position."""
    mean = jnp.asarray(train.mean(axis=0))
    pred = jnp.broadcast_to(mean, test.shape)
    return float(masked_mse(pred, jnp.asarray(test), masks))


def context_fill_mses(test: np.ndarray, masks, grid: tuple[int, int], channels: int = 1) -> dict:
    """Two hand-made fills that use each image's visible patches (a yardstick for what a
    model learned): every masked patch gets the mean colour (per channel) of (a) all visible
    patches of its image, (b) its visible 4-neighbours on the grid of patches, or (a) when
    none is visible. ``channels`` is the last axis of a patch's values (as ``patchify``)."""
    m = np.asarray(masks, bool)
    patch_dim = test.shape[-1]
    return {
        name: float(np.sum(np.square(pred - test).sum(-1) * m) / (m.sum() * patch_dim))
        for name, pred in _context_fill_preds(test, masks, grid, channels).items()
    }


def _context_fill_preds(test: np.ndarray, masks, grid: tuple[int, int], channels: int = 1) -> dict:
    n, tokens, patch_dim = test.shape
    m = np.asarray(masks, bool)
    colour = test.reshape(n, tokens, -1, channels).mean(axis=2)  # (n, tokens, channels)
    vis = (~m)[..., None].astype(np.float64)
    image_mean = (colour * vis).sum(1, keepdims=True) / np.maximum(vis.sum(1, keepdims=True), 1)
    c, v = colour.reshape(n, *grid, channels), vis.reshape(n, *grid, 1)
    total, count = np.zeros_like(c, dtype=np.float64), np.zeros_like(v)
    for axis, shift in ((1, 1), (1, -1), (2, 1), (2, -1)):  # up, down, left, right neighbours
        cs, vs = np.roll(c * v, shift, axis=axis), np.roll(v, shift, axis=axis)
        edge = [slice(None)] * 4
        edge[axis] = 0 if shift == 1 else -1  # np.roll wraps around: drop the wrapped row/column
        cs[tuple(edge)], vs[tuple(edge)] = 0.0, 0.0
        total, count = total + cs, count + vs
    near = np.where(count > 0, total / np.maximum(count, 1), image_mean.reshape(n, 1, 1, channels))

    def fill(colours):  # (n, tokens, channels) colour per patch -> (n, tokens, patch_dim) patches
        return np.repeat(colours.reshape(n, tokens, 1, channels), patch_dim // channels, axis=2).reshape(test.shape)

    return {
        "visible_image_mean_colour": fill(np.broadcast_to(image_mean, colour.shape)),
        "visible_neighbour_mean_colour": fill(near.reshape(n, tokens, channels)),
    }


def per_image_mse(pred: np.ndarray, target: np.ndarray, masks) -> np.ndarray:
    """Masked-patch MSE of each image, ``(n,)`` (every image masks the same number of
    patches, so the mean over images equals the pooled MSE)."""
    m = np.asarray(masks, bool)
    se = np.square(np.asarray(pred, np.float64) - target).sum(-1) * m
    return se.sum(-1) / (m.sum(-1) * target.shape[-1])


def model_per_image(model, patches: np.ndarray, masks, batch: int = 256):
    """One pass of ``model`` over held-out images: each image's masked-patch MSE ``(n,)`` and,
    for the ET, the energy traces and their largest relative rise (as [`energy_rises`][])."""
    errors, traces, worst = [], [], -np.inf
    for i in range(0, len(patches), batch):
        p, m = patches[i : i + batch], masks[i : i + batch]
        pred, e, valid = _outputs(model, jnp.asarray(p), m)
        errors.append(per_image_mse(pred, p, m))
        if e is not None:
            e, valid = np.asarray(e, np.float64), np.asarray(valid)
            scale = np.max(np.where(valid, np.abs(e), 0.0), axis=-1, keepdims=True)
            rel = np.where(valid[:, 1:], np.diff(e, axis=-1), -np.inf) / np.maximum(scale, 1e-30)
            worst = max(worst, float(np.max(rel)))
            traces.append(np.where(valid, e, np.nan))
    return np.concatenate(errors), (np.concatenate(traces) if traces else None), (worst if traces else None)


def fill_per_image(train: np.ndarray, test: np.ndarray, masks, grid: tuple[int, int], channels: int) -> dict:
    """Each image's masked-patch MSE under the mean-patch fill and the two context fills
    of [`context_fill_mses`][]."""
    out = {"mean_fill": per_image_mse(np.broadcast_to(train.mean(axis=0), test.shape), test, masks)}
    for name, pred in _context_fill_preds(test, masks, grid, channels).items():
        out[name] = per_image_mse(pred, test, masks)
    return out


def energy_rises(model: MaskedET, patches: np.ndarray, masks, batch: int = 256):
    """Energy traces on held-out images and the largest relative rise
    max_k (E[k+1] − E[k]) / max_k |E[k]| over all trajectories (≤ 0: monotone)."""
    traces, worst = [], -np.inf
    for i in range(0, len(patches), batch):
        e, m = et_trajectories(model, jnp.asarray(patches[i : i + batch]), masks[i : i + batch])
        e, m = np.asarray(e, np.float64), np.asarray(m)
        scale = np.max(np.where(m, np.abs(e), 0.0), axis=-1, keepdims=True)
        rel = np.where(m[:, 1:], np.diff(e, axis=-1), -np.inf) / np.maximum(scale, 1e-30)
        worst = max(worst, float(np.max(rel)))
        traces.append(np.where(m, e, np.nan))
    return np.concatenate(traces), worst



# ----------------------------------------------------------------------------- the training loop
@dataclasses.dataclass
class Trained:
    et: MaskedET
    base: MaskedTransformer
    history: dict
    timing: dict
    eval_masks: jax.Array  # (test images, tokens): the fixed held-out masks
    epoch: int
    stopped: bool  # True when --stop-after ended the run before cfg.epochs
    epochs_run: int  # epochs trained in this call


def train_models(cfg: Config, split: Split, ckpt_path: Path, config: dict, *, resume: bool = False,
                 stop_after: int | None = None, progress: bool = True, history_test: int | None = None,
                 desc: str = "ET training") -> Trained:
    """Train the ET and the baseline side by side on ``split.train`` (the same batches and
    masks for both), checkpointing every epoch to ``ckpt_path`` (header ``config``); with
    ``resume`` continue from that checkpoint. The held-out MSE of each epoch goes to the
    history, measured on the first ``history_test`` held-out images (all when None)."""
    tokens, patch_dim = split.train.shape[1:]
    num_masked(tokens, cfg.mask_ratio)
    steps_per_epoch = len(split.train) // cfg.batch_size
    optimizer = make_optimizer(
        cfg.lr, cfg.weight_decay, cfg.warmup_epochs * steps_per_epoch, cfg.epochs * steps_per_epoch
    )

    root = jax.random.PRNGKey(cfg.seed)
    k_et, k_base, k_train, k_eval = jax.random.split(root, 4)
    grid = (split.image_shape[0] // cfg.patch, split.image_shape[1] // cfg.patch)
    attn_mask = attention_mask(grid, cfg.attention_window)
    et = MaskedET(cfg, tokens, patch_dim, key=k_et, attn_mask=attn_mask)
    base = MaskedTransformer(cfg, tokens, patch_dim, key=k_base, attn_mask=attn_mask)
    state = {
        "et": et, "et_opt": optimizer.init(eqx.filter(et, eqx.is_inexact_array)),
        "base": base, "base_opt": optimizer.init(eqx.filter(base, eqx.is_inexact_array)),
        "key": k_train, "epoch": jnp.asarray(0, jnp.int32),
    }
    history = {"et_train": [], "base_train": [], "et_test": [], "base_test": []}
    timing = {"et_train_s": 0.0, "baseline_train_s": 0.0}
    if resume:
        if ckpt_path.exists():
            state, meta = load_checkpoint(ckpt_path, state, config)
            if int(state["epoch"]) != meta["epoch"]:
                raise ValueError(f"checkpoint {str(ckpt_path)!r} is corrupt: header epoch {meta['epoch']} != {int(state['epoch'])}.")
            history, timing = meta["history"], meta["timing"]
            print(f"resuming from {ckpt_path} at epoch {meta['epoch']}/{cfg.epochs}", file=sys.stderr)
        else:
            print(f"--resume: no checkpoint at {ckpt_path}; starting from scratch", file=sys.stderr)

    eval_masks = random_masks(k_eval, len(split.test), tokens, cfg.mask_ratio)
    n_hist = len(split.test) if history_test is None else min(history_test, len(split.test))
    train_key = state["key"]
    start = int(state["epoch"])
    stop = cfg.epochs if stop_after is None else min(cfg.epochs, start + stop_after)

    from tqdm.auto import tqdm

    bar = tqdm(total=(stop - start) * steps_per_epoch, desc=desc, disable=not progress, file=sys.stderr)
    for epoch in range(start, stop):
        k_epoch = jax.random.fold_in(train_key, epoch)
        perm = np.asarray(jax.random.permutation(jax.random.fold_in(k_epoch, 0), len(split.train)))
        et_losses, base_losses = [], []
        for i in range(steps_per_epoch):
            batch = jnp.asarray(split.train[perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]])
            mask = random_masks(jax.random.fold_in(k_epoch, i + 1), cfg.batch_size, tokens, cfg.mask_ratio)
            t0 = time.perf_counter()
            state["et"], state["et_opt"], loss_et = train_step(state["et"], state["et_opt"], batch, mask, optimizer)
            loss_et = float(loss_et)
            t1 = time.perf_counter()
            state["base"], state["base_opt"], loss_base = train_step(state["base"], state["base_opt"], batch, mask, optimizer)
            loss_base = float(loss_base)
            timing["et_train_s"] += t1 - t0
            timing["baseline_train_s"] += time.perf_counter() - t1
            et_losses.append(loss_et)
            base_losses.append(loss_base)
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, et=f"{loss_et:.4f}", base=f"{loss_base:.4f}")
        history["et_train"].append(float(np.mean(et_losses)))
        history["base_train"].append(float(np.mean(base_losses)))
        history["et_test"].append(evaluate_mse(state["et"], split.test[:n_hist], eval_masks[:n_hist]))
        history["base_test"].append(evaluate_mse(state["base"], split.test[:n_hist], eval_masks[:n_hist]))
        state["epoch"] = jnp.asarray(epoch + 1, jnp.int32)
        save_checkpoint(ckpt_path, state, {"config": config, "epoch": epoch + 1, "history": history, "timing": timing})
    bar.close()
    epoch = int(state["epoch"])
    if epoch < cfg.epochs:
        print(f"stopped after epoch {epoch}/{cfg.epochs}; continue with --resume", file=sys.stderr)
    return Trained(state["et"], state["base"], history, timing, eval_masks, epoch, epoch < cfg.epochs, epoch - start)


# ----------------------------------------------------------------------------- figures
def figure_reconstructions(split: Split, masks, et_pred, base_pred, cfg: Config, path: Path, n: int = 10):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    test = split.test[:n]
    m = np.asarray(masks[:n])[..., None]
    shown = lambda p: np.clip(np.asarray(unpatchify(p, split.image_shape, cfg.patch)), 0, 1)  # noqa: E731
    rows = [
        ("original", shown(test)),
        ("masked", shown(np.where(m, 0.5, test))),
        ("Energy Transformer", shown(np.where(m, et_pred[:n], test))),
        ("transformer baseline", shown(np.where(m, base_pred[:n], test))),
    ]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.2 * n, 1.35 * len(rows)))
    for r, (title, imgs) in enumerate(rows):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(imgs[c], cmap="gray" if imgs.ndim == 3 else None, vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
        axes[r, 0].set_ylabel(title, fontsize=7)
    fig.suptitle(f"held-out {cfg.dataset}: {cfg.mask_ratio:.0%} of {cfg.patch}x{cfg.patch} patches masked (grey)")
    save_figure(fig, path)


def figure_energy(traces: np.ndarray, cfg: Config, path: Path, n: int = 8):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for e in traces[:n]:
        e = e[np.isfinite(e)]
        ax.plot(np.arange(len(e)), e, marker=".")
    ax.set_xlabel("inference step" if cfg.inference == "descend" else "accepted solver step")
    ax.set_ylabel("energy E")
    ax.set_title(f"ET energy along inference ({n} held-out images)")
    save_figure(fig, path)


def figure_training(history: dict, mean_fill: float, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    ep = np.arange(1, len(history["et_train"]) + 1)
    axes[0].plot(ep, history["et_train"], label="Energy Transformer")
    axes[0].plot(ep, history["base_train"], label="transformer baseline")
    axes[0].set_title("training loss (masked-patch MSE)")
    axes[1].plot(ep, history["et_test"], label="Energy Transformer")
    axes[1].plot(ep, history["base_test"], label="transformer baseline")
    axes[1].axhline(mean_fill, color="gray", ls="--", label="mean-patch fill")
    axes[1].set_title("held-out masked-patch MSE")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    save_figure(fig, path)



# ----------------------------------------------------------------------------- photographs never seen
FILLS = ("mean_fill", "visible_neighbour_mean_colour", "visible_image_mean_colour")
METHODS = ("et", "baseline", *FILLS)


def _spread(values) -> dict:
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max()), "per_fold": [float(x) for x in v]}


def evaluate_fold(cfg: Config, split: PhotoSplit, trained: Trained, n_fig_per_group: int = 1) -> tuple[dict, dict]:
    """The fold's record (pooled and per held-out photograph MSE of every method, energy
    check) and, for the figures, a few held-out patches per photograph with both models'
    reconstructions and the ET's energy traces."""
    grid = (split.image_shape[0] // cfg.patch, split.image_shape[1] // cfg.patch)
    masks = trained.eval_masks
    err_et, traces, max_rise = model_per_image(trained.et, split.test, masks)
    err_base, _, _ = model_per_image(trained.base, split.test, masks)
    errors = {"et": err_et, "baseline": err_base, **fill_per_image(split.train, split.test, masks, grid, split.image_shape[2])}
    names = load_dataset_names()
    per_photo = {}
    for g in split.test_groups:
        sel = split.test_labels == names.index(g)
        per_photo[g] = {"images": int(sel.sum()), **{k: float(v[sel].mean()) for k, v in errors.items()}}
        per_photo[g]["et_over_baseline"] = per_photo[g]["et"] / per_photo[g]["baseline"]
    pooled = {k: float(v.mean()) for k, v in errors.items()}
    as_images = lambda p: np.asarray(unpatchify(p, split.image_shape, cfg.patch))  # noqa: E731
    record = {
        "test_photographs": list(split.test_groups), "train_photographs": list(split.train_groups),
        "train_images": len(split.train), "test_images": len(split.test),
        "held_out_pixels_in_training_images": held_out_pixels_seen(as_images(split.train), as_images(split.test)),
        "mse": pooled, "et_over_baseline": pooled["et"] / pooled["baseline"],
        "per_photograph": per_photo,
        "max_energy_rise": max_rise, "energy_monotone": bool(max_rise <= ENERGY_RISE_TOLERANCE),
        "energy_start_mean": float(np.nanmean(traces[:, 0])),
        "energy_end_mean": float(np.nanmean([t[np.isfinite(t)][-1] for t in traces])),
        "history": trained.history,
        "timings": {k: round(v, 3) for k, v in trained.timing.items()},
    }
    rng = np.random.default_rng(cfg.seed)
    pick = np.concatenate([
        rng.choice(np.flatnonzero(split.test_labels == names.index(g)), n_fig_per_group, replace=False)
        for g in split.test_groups
    ])
    m = masks[pick]
    fig = {
        "groups": [names[i] for i in split.test_labels[pick]], "test": split.test[pick], "masks": np.asarray(m),
        "et": np.asarray(predict(trained.et, jnp.asarray(split.test[pick]), m)),
        "base": np.asarray(predict(trained.base, jnp.asarray(split.test[pick]), m)),
        "traces": traces[:3], "history": trained.history, "mean_fill": pooled["mean_fill"],
    }
    return record, fig


def load_dataset_names() -> tuple[str, ...]:
    from .data import PHOTO_GROUPS

    return tuple(PHOTO_GROUPS)


def run_photos(args, cfg: Config, out: Path, stem: str) -> dict:
    """Every fold of ``group_folds(photos, cfg.folds, cfg.fold_seed)``: train both models on
    the other photographs, evaluate on the held-out ones; then the mean and spread over folds."""
    from .data import group_folds

    t_start = time.perf_counter()
    data = load_dataset("photos")
    folds = group_folds(data, cfg.folds, seed=cfg.fold_seed)
    chosen = range(len(folds))
    if args.only_fold is not None:
        if not 1 <= args.only_fold <= len(folds):
            raise ValueError(f"--only-fold must be in [1, {len(folds)}] (folds are numbered from 1), got {args.only_fold}.")
        chosen = [args.only_fold - 1]
    config = _config_dict(cfg)
    records, figs, remaining = [], [], args.stop_after
    partial_path = out / f"{stem}.partial.checkpoint.json"
    for k in chosen:
        test_groups = folds[k]
        t_fold = time.perf_counter()
        split = photo_fold_split(cfg, data, test_groups)
        trained = train_models(
            cfg, split, out / "checkpoints" / f"{stem}_fold{k}.eqx",
            {**config, "fold": k, "test_photographs": list(test_groups)}, resume=args.resume, stop_after=remaining,
            progress=not args.no_progress, history_test=cfg.history_test, desc=f"fold {k + 1}/{len(folds)}",
        )
        if remaining is not None:
            remaining -= trained.epochs_run
        if trained.stopped:
            print(f"stopped in fold {k + 1}/{len(folds)} after epoch {trained.epoch}/{cfg.epochs}; continue with --resume",
                  file=sys.stderr)
            return {"stopped_at_epoch": trained.epoch, "stopped_in_fold": k, "folds_done": records}
        record, fig = evaluate_fold(cfg, split, trained)
        record, fig["fold"] = {"fold": k, **record}, k
        record["timings"]["wall_s_this_invocation"] = round(time.perf_counter() - t_fold, 3)
        records.append(record)
        figs.append(fig)
        write_json(partial_path, {"config": config, "folds": records})
        print(f"fold {k + 1}/{len(folds)} {list(test_groups)}: ET {record['mse']['et']:.5f}, transformer "
              f"{record['mse']['baseline']:.5f}, mean fill {record['mse']['mean_fill']:.5f}", file=sys.stderr)

    et, base = trained.et, trained.base
    params_et, params_base = count_params(et), count_params(base)
    overall = {k: _spread([r["mse"][k] for r in records]) for k in METHODS}
    ratio = _spread([r["et_over_baseline"] for r in records])
    per_photo = {g: {**v, "fold": r["fold"]} for r in records for g, v in r["per_photograph"].items()}
    everything = {k: float(np.average([v[k] for v in per_photo.values()],
                                      weights=[v["images"] for v in per_photo.values()])) for k in METHODS}
    max_rise = max(r["max_energy_rise"] for r in records)
    met = lambda mse_ratio: bool(mse_ratio <= TARGET_MSE_RATIO and params_et <= TARGET_PARAMS_RATIO * params_base)  # noqa: E731
    figure_photo_reconstructions(figs, cfg, out / f"{stem}_reconstructions.png")
    figure_energy(np.concatenate([f["traces"] for f in figs]), cfg, out / f"{stem}_energy.png")
    figure_photo_training(figs, out / f"{stem}_training.png")
    result = {
        "split": {
            "kind": "by photograph: every patch of a held-out photograph is held out, no photograph (and neither "
                    "half of the motorcycle stereo pair) is on both sides; the held-out photographs rotate over "
                    f"the folds, each held out once (experiments.data.group_folds(photos, {cfg.folds}, "
                    f"seed={cfg.fold_seed}))",
            "folds": [{"fold": r["fold"], "test_photographs": r["test_photographs"],
                       "train_photographs": r["train_photographs"], "train_images": r["train_images"],
                       "test_images": r["test_images"],
                       "held_out_pixels_in_training_images": r["held_out_pixels_in_training_images"]} for r in records],
            "photographs_disjoint": all(not set(r["test_photographs"]) & set(r["train_photographs"]) for r in records),
            "held_out_pixels_in_training_images": max(r["held_out_pixels_in_training_images"] for r in records),
        },
        "mse_et": overall["et"]["mean"], "mse_baseline": overall["baseline"]["mean"],
        "mse_mean_fill": overall["mean_fill"]["mean"],
        "mse_context_fills": {k: overall[k]["mean"] for k in FILLS[1:]},
        "overall": {**overall, "et_over_baseline": ratio},
        "pooled_all_photographs": everything,
        "per_photograph": per_photo,
        "folds": records,
        "max_energy_rise": max_rise, "energy_rise_tolerance": ENERGY_RISE_TOLERANCE,
        "energy_monotone": bool(max_rise <= ENERGY_RISE_TOLERANCE),
        "params_et": params_et, "params_baseline": params_base,
        "params": {"et_total": params_et, "et_core": count_params(et.et), "baseline_total": params_base,
                   "baseline_blocks": count_params(base.blocks)},
        "ratios": {"mse_et_over_baseline": ratio["mean"], "params_et_over_baseline": params_et / params_base,
                   "mse_et_over_mean_fill": overall["et"]["mean"] / overall["mean_fill"]["mean"],
                   "mse_baseline_over_mean_fill": overall["baseline"]["mean"] / overall["mean_fill"]["mean"]},
        "target": {
            "description": f"ET masked-patch MSE within {TARGET_MSE_RATIO - 1:.0%} of the transformer baseline's "
            f"with at most {TARGET_PARAMS_RATIO}x its parameters (MSE ratio: mean over folds)",
            "max_mse_et_over_baseline": TARGET_MSE_RATIO, "max_params_et_over_baseline": TARGET_PARAMS_RATIO,
            "met": met(ratio["mean"]), "met_per_fold": [met(r["et_over_baseline"]) for r in records],
        },
        "seeds": [cfg.seed],
        "command": " ".join(["python -m experiments.energy_transformer", *(sys.argv[1:] if args.argv is None else args.argv)]),
        "data": {"dataset": "photos", "image_shape": list(data.image_shape), "images": len(data),
                 "tokens": int(split.train.shape[1]), "patch_dim": int(split.train.shape[2]),
                 "masked_tokens": num_masked(split.train.shape[1], cfg.mask_ratio),
                 "history_test_images": cfg.history_test},
        "config": config,
        "quick": bool(args.quick), "smoke": bool(args.smoke),
        "timings": {
            "et_train_s": round(sum(r["timings"]["et_train_s"] for r in records), 3),
            "baseline_train_s": round(sum(r["timings"]["baseline_train_s"] for r in records), 3),
            "wall_s_this_invocation": round(time.perf_counter() - t_start, 3),
        },
        "devices": [str(d) for d in jax.devices()],
    }
    write_json(out / f"{stem}.json", result)
    print(f"over {len(records)} folds of held-out photographs, masked-patch MSE: ET {overall['et']['mean']:.5f} "
          f"± {overall['et']['std']:.5f}, transformer {overall['baseline']['mean']:.5f} ± {overall['baseline']['std']:.5f}, "
          f"mean fill {overall['mean_fill']['mean']:.5f}; ET/transformer {ratio['mean']:.3f} at "
          f"{params_et / params_base:.2f}x the parameters; max relative energy rise {max_rise:.3g} -> {out / (stem + '.json')}",
          file=sys.stderr)
    return result


def figure_photo_reconstructions(figs: list, cfg: Config, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shape = (cfg.patch * 8, cfg.patch * 8, 3)
    groups = [g for f in figs for g in f["groups"]]
    cat = lambda key: np.concatenate([f[key] for f in figs])  # noqa: E731
    test, m = cat("test"), cat("masks")[..., None]
    shown = lambda p: np.clip(np.asarray(unpatchify(p, shape, cfg.patch)), 0, 1)  # noqa: E731
    rows = [("original", shown(test)), ("masked", shown(np.where(m, 0.5, test))),
            ("Energy Transformer", shown(np.where(m, cat("et"), test))),
            ("transformer baseline", shown(np.where(m, cat("base"), test)))]
    n = len(groups)
    fig, axes = plt.subplots(len(rows), n, figsize=(1.25 * n, 1.4 * len(rows)), squeeze=False)
    for r, (title, imgs) in enumerate(rows):
        for c in range(n):
            axes[r, c].imshow(imgs[c], vmin=0, vmax=1)
            axes[r, c].set_xticks([]), axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(groups[c].replace("_", " ")[:14], fontsize=6)
        axes[r, 0].set_ylabel(title, fontsize=7)
    fig.suptitle(f"photographs never seen in training (each by its fold's models): {cfg.mask_ratio:.0%} of "
                 f"{cfg.patch}x{cfg.patch} patches masked (grey)", fontsize=8)
    save_figure(fig, path)


def figure_photo_training(figs: list, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for f in figs:
        h, k = f["history"], f["fold"]
        ep = np.arange(1, len(h["et_train"]) + 1)
        for ax, part in zip(axes, ("train", "test")):
            ax.plot(ep, h[f"et_{part}"], color=f"C{k}", label=f"ET, fold {k + 1}")
            ax.plot(ep, h[f"base_{part}"], color=f"C{k}", ls=":", label=f"transformer, fold {k + 1}")
        axes[1].axhline(f["mean_fill"], color=f"C{k}", ls="--", lw=0.8)
    axes[0].set_title("training loss (masked-patch MSE)")
    axes[1].set_title("held-out photographs: masked-patch MSE\n(dashed: mean-patch fill)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.set_yscale("log")
        ax.legend(fontsize=6)
    save_figure(fig, path)

# ----------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m experiments.energy_transformer",
        description="Train an Energy Transformer (ham) for masked-patch image reconstruction and compare it "
        "with mean-patch fill and a standard transformer trained identically.",
    )
    d = Config()
    p.add_argument("--dataset", choices=sorted(DATASET_DEFAULTS), default=d.dataset,
                   help="digits: sklearn 8x8 digits (default); patches: 32x32 crops of sklearn's sample images; "
                   "cifar10: python-pickle CIFAR-10 from --data-dir")
    p.add_argument("--data-dir", default=None, help="folder holding cifar-10-batches-py (for --dataset cifar10)")
    p.add_argument("--patch", type=int, help="patch size in pixels (default 2 for digits, 4 otherwise)")
    p.add_argument("--mask-ratio", type=float, help=f"fraction of patches masked, in (0, 1) (default {d.mask_ratio})")
    p.add_argument("--dim", type=int, help="token dimension")
    p.add_argument("--heads", type=int, help="attention heads")
    p.add_argument("--head-dim", type=int, help="key/query size per head")
    p.add_argument("--memories", type=int, help="Hopfield memories (also the baseline's MLP width)")
    p.add_argument("--hopfield", choices=["relu", "softmax"], help="Hopfield hidden units (default relu)")
    p.add_argument("--legendre", action=argparse.BooleanOptionalAction, default=None,
                   help="--no-legendre (default): the paper's energy E = E_ATT + E_HN, steps x <- x - alpha dE/dg; "
                   "--legendre: add the layer-norm layer's Legendre term (a leak: x <- (1 - alpha) x - alpha dE_syn/dg)")
    p.add_argument("--steps", type=int, help=f"inference steps T (default {d.steps})")
    p.add_argument("--step-size", type=float, help=f"inference step size alpha (default {d.step_size})")
    p.add_argument("--inference", choices=["descend", "relax"],
                   help="descend: the paper's T steps of size alpha (default); relax: ham.relax to a fixed point")
    p.add_argument("--relax-max-steps", type=int, help="max solver steps for --inference relax")
    p.add_argument("--attention-window", type=int,
                   help="attention only between patches at most this many patches apart (both axes), in the ET "
                   "and the baseline alike; 0 = global attention (default 0 for digits)")
    p.add_argument("--baseline-layers", type=int, help="transformer blocks in the baseline (default 1)")
    p.add_argument("--embed-std", type=float, help="initial scale of the mask token and position embeddings")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="peak AdamW learning rate")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--warmup-epochs", type=int)
    p.add_argument("--test-fraction", type=float, help="held-out fraction (digits, patches)")
    p.add_argument("--max-train", type=int, help="use at most this many training images")
    p.add_argument("--max-test", type=int, help="use at most this many held-out images")
    p.add_argument("--seed", type=int)
    p.add_argument("--quick", action="store_true", help="a small, fast run (< 3 min)")
    p.add_argument("--smoke", action="store_true", help="a tiny run for the tests (seconds)")
    p.add_argument("--folds", type=int, help="photos: folds of held-out photographs (default 3)")
    p.add_argument("--fold-seed", type=int, help="photos: seed dealing the photographs into folds (default 0)")
    p.add_argument("--only-fold", type=int, default=None,
                   help="photos: train and test this fold only (1..folds); results get the suffix _fold<K>_<epochs>ep")
    p.add_argument("--history-test", type=int,
                   help="held-out images for the per-epoch curve (default: all; 512 for photos)")
    p.add_argument("--results-dir", default=None, help="where results go (default experiments/results)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint of the same configuration")
    p.add_argument("--stop-after", type=int, default=None,
                   help="stop after this many epochs in this invocation (simulates an interruption)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    args = p.parse_args(argv)
    args.argv = None if argv is None else list(argv)
    if args.quick and args.smoke:
        p.error("--quick and --smoke exclude each other")
    return args


def build_config(args) -> Config:
    fields = {f.name for f in dataclasses.fields(Config)}
    values = dict(DATASET_DEFAULTS.get(args.dataset, {}))
    if args.quick:
        values.update(QUICK)
        values.update(QUICK_DATASET.get(args.dataset, {}))
    if getattr(args, "smoke", False):
        values.update(SMOKE)
    values.update({k: v for k, v in vars(args).items() if k in fields and v is not None})
    cfg = Config(**values)
    cfg.validate()
    return cfg


def result_stem(dataset: str, quick: bool = False, smoke: bool = False) -> str:
    """File-name stem of a run's results and checkpoint: ``energy_transformer`` for the
    digits run, ``energy_transformer_<dataset>`` otherwise, ``_quick`` appended for
    ``--quick``, so runs on different datasets never overwrite each other."""
    return NAME + ("" if dataset == "digits" else f"_{dataset}") + ("_quick" if quick else "") + ("_smoke" if smoke else "")


def main(argv=None) -> dict:
    args = parse_args(argv)
    cfg = build_config(args)
    t_start = time.perf_counter()
    out = _results_dir(args.results_dir)
    stem = result_stem(cfg.dataset, args.quick, args.smoke)
    if cfg.dataset == "photos":
        if args.only_fold is not None:
            stem += f"_fold{args.only_fold}_{cfg.epochs}ep"
        return run_photos(args, cfg, out, stem)
    ckpt_path = out / "checkpoints" / f"{stem}.eqx"

    split = load_split(cfg)
    trained = train_models(cfg, split, ckpt_path, _config_dict(cfg), resume=args.resume,
                           stop_after=args.stop_after, progress=not args.no_progress)
    if trained.stopped:
        return {"stopped_at_epoch": trained.epoch, "history": trained.history}
    tokens, patch_dim = split.train.shape[1:]
    grid = (split.image_shape[0] // cfg.patch, split.image_shape[1] // cfg.patch)
    history, timing, eval_masks, config = trained.history, trained.timing, trained.eval_masks, _config_dict(cfg)
    state = {"et": trained.et, "base": trained.base}

    t_eval = time.perf_counter()
    et, base = state["et"], state["base"]
    mse_et = evaluate_mse(et, split.test, eval_masks)
    mse_base = evaluate_mse(base, split.test, eval_masks)
    mse_fill = mean_fill_mse(split.train, split.test, eval_masks)
    traces, max_rise = energy_rises(et, split.test, eval_masks)
    channels = split.image_shape[2] if len(split.image_shape) == 3 else 1
    context_fills = context_fill_mses(split.test, eval_masks, grid, channels)
    n_fig = min(10, len(split.test))
    et_pred = np.asarray(predict(et, jnp.asarray(split.test[:n_fig]), eval_masks[:n_fig]))
    base_pred = np.asarray(predict(base, jnp.asarray(split.test[:n_fig]), eval_masks[:n_fig]))
    figure_reconstructions(split, eval_masks, et_pred, base_pred, cfg, out / f"{stem}_reconstructions.png", n=n_fig)
    figure_energy(traces, cfg, out / f"{stem}_energy.png")
    figure_training(history, mse_fill, out / f"{stem}_training.png")

    gamma = float(et.et.network.layers["tokens"].lagrangian.gamma)
    result = {
        "mse_et": mse_et,
        "mse_mean_fill": mse_fill,
        "mse_baseline": mse_base,
        "mse_context_fills": context_fills,
        "max_energy_rise": max_rise,
        "energy_rise_tolerance": ENERGY_RISE_TOLERANCE,
        "energy_monotone": bool(max_rise <= ENERGY_RISE_TOLERANCE),
        "energy_start_mean": float(np.nanmean(traces[:, 0])),
        "energy_end_mean": float(np.nanmean([t[np.isfinite(t)][-1] for t in traces])),
        "layernorm_gamma": gamma,
        "params_et": count_params(et),
        "params_baseline": count_params(base),
        "ratios": {
            "mse_et_over_baseline": mse_et / mse_base,
            "mse_et_over_mean_fill": mse_et / mse_fill,
            "mse_baseline_over_mean_fill": mse_base / mse_fill,
            "params_et_over_baseline": count_params(et) / count_params(base),
        },
        "target": {
            "description": f"ET masked-patch MSE within {TARGET_MSE_RATIO - 1:.0%} of the transformer baseline's "
            f"with at most {TARGET_PARAMS_RATIO}x its parameters",
            "max_mse_et_over_baseline": TARGET_MSE_RATIO,
            "max_params_et_over_baseline": TARGET_PARAMS_RATIO,
            "met": bool(mse_et <= TARGET_MSE_RATIO * mse_base
                        and count_params(et) <= TARGET_PARAMS_RATIO * count_params(base)),
        },
        "seeds": [cfg.seed],
        "command": " ".join(["python -m experiments.energy_transformer", *(sys.argv[1:] if argv is None else argv)]),
        "params": {
            "et_total": count_params(et), "et_core": count_params(et.et),
            "baseline_total": count_params(base), "baseline_blocks": count_params(base.blocks),
        },
        "data": {
            "dataset": cfg.dataset, "image_shape": list(split.image_shape), "train_images": len(split.train),
            "test_images": len(split.test), "tokens": int(tokens), "patch_dim": int(patch_dim),
            "masked_tokens": num_masked(tokens, cfg.mask_ratio),
        },
        "config": config,
        "quick": bool(args.quick),
        **({"split": patches_split_note(split, cfg)} if cfg.dataset == "patches" else {}),
        "history": history,
        "timings": {
            **{k: round(v, 3) for k, v in timing.items()},
            "eval_s": round(time.perf_counter() - t_eval, 3),
            "wall_s_this_invocation": round(time.perf_counter() - t_start, 3),
        },
        "devices": [str(d) for d in jax.devices()],
    }
    write_json(out / f"{stem}.json", result)
    print(
        f"held-out masked-patch MSE: ET {mse_et:.5f}, transformer {mse_base:.5f}, mean fill {mse_fill:.5f}; "
        f"max relative energy rise {max_rise:.3g}  -> {out / (stem + '.json')}",
        file=sys.stderr,
    )
    return result


if __name__ == "__main__":
    main()
