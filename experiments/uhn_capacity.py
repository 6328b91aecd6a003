"""Capacity of Universal Hopfield Networks on real images (Millidge et al. 2022).

K images are stored in ``ham.memories.universal(images, similarity, separation, ...)``;
``Q`` corrupted copies of them are retrieved single-shot. Grid: similarity × separation ×
corruption × K, on each dataset, for several seeds (a seed draws the stored set).

The paper's claim (Millidge et al. 2022, ICML, abstract and §5): distance similarities —
Euclidean and Manhattan — "perform substantially better" than the dot product, giving more
robust retrieval and a higher capacity. ``paper_claim`` in the JSON states it beside the
measured capacities.

Following the paper's published code: images in [0, 1]; similarities dot product,
cosine, and the reciprocal distances 1/Σ|q−m| (``manhattan_reciprocal``, the paper's
"Manhattan") and 1/Σ(q−m)² (``euclidean_reciprocal``, the paper's "Euclidean"), with the
scores normalised to sum 1 before and after the separation function; separations
identity, polynomial n ∈ {2, 3, 5, 10}, softmax (β = 1000, the code's default) and max.
The negative-distance variants −Σ(q−m)² (``euclidean``) and −Σ|q−m| (``manhattan``) are run
without normalisation and only with softmax (β = 1) and max: identity and polynomial
separations are not order-preserving on negative scores. With max, −d and 1/d retrieve the
same memory (the library takes the least distance for both); each ``max`` record carries a
digest of the retrieved images, so this is checked at every grid point.

Corruptions: ``half`` (bottom half of the image zeroed), ``noise{σ}`` (Gaussian noise,
clamped to [0, 1]), ``mask{f}`` (each pixel zeroed with probability f).

Common random numbers: at a (dataset, seed, K) every similarity × separation cell stores
the same K images (the first K of the seed's permutation of the dataset) and retrieves the
same corrupted queries (drawn from a key of seed, K and corruption only). Query j corrupts
stored image j mod K: for K ≥ Q, Q distinct images once each; for K < Q every stored image
several times with fresh corruptions.

Criteria: ``paper`` — Σ(x − x̂)² ≤ 60 · D / 784 (the paper's 60 at its native D = 784, MNIST;
scaled on other sizes); ``strict`` — the paper's criterion **and** the stored image nearest
to x̂ is the target. On 8×8 digits the scaled threshold 60·64/784 ≈ 4.9 exceeds the mean
image's median squared error to a digit, so blurred blends pass the paper's criterion
(``mean_image_check`` in the JSON measures this for every dataset).

Intervals: the 95 % percentile bootstrap over the queried *images* (each resample draws
images with replacement and takes all the queries of each, so repeated queries of one
image for K < Q count as one unit). Capacity range at a seed: from the largest K whose
lower bound is ≥ 90 % to the largest K whose upper bound is ≥ 90 % (the point estimate:
the largest K whose accuracy is ≥ 90 %); the reported range is the envelope over seeds.

    python -m experiments.uhn_capacity [--quick | --smoke] [--datasets mnist5k,digits]
        [--seed S] [--seeds N] [--queries Q] [--bootstrap B] [--data-dir DIR] [--K 2,5,...,all]
        [--similarities ...] [--separations ...] [--corruptions ...] [--results-dir DIR]
"""

from __future__ import annotations

import functools
import hashlib
import sys
import time
import zlib

import jax
import jax.numpy as jnp
import numpy as np

import ham

from . import _capacity as cap
from ._io import save_figure, write_csv, write_json
from .data import DATASETS, load_dataset

NAME = "uhn"
LEVEL = 0.9
PAPER_THRESHOLD = 60.0  # for a 784-value image
PAPER_BETA = 1000.0  # softmax β of the paper's code (on normalised scores)
NEG_BETA = 1.0  # softmax β on negative distances

# similarity name (ham.memories) -> (normalize, which separations apply)
PAPER_SIMS = ("dot", "cosine", "euclidean_reciprocal", "manhattan_reciprocal")
NEG_SIMS = ("euclidean", "manhattan")
SIMILARITIES = PAPER_SIMS + NEG_SIMS
SEPARATIONS = {
    "identity": dict(separation="identity"),
    "poly2": dict(separation="polynomial", n=2),
    "poly3": dict(separation="polynomial", n=3),
    "poly5": dict(separation="polynomial", n=5),
    "poly10": dict(separation="polynomial", n=10),
    "softmax": dict(separation="softmax"),
    "max": dict(separation="max"),
}
NEG_SEPARATIONS = ("softmax", "max")
CORRUPTIONS = ("half", "noise0.1", "noise0.3", "noise0.5", "mask0.25", "mask0.5", "mask0.75")

GRIDS = {
    "full": dict(datasets=["mnist5k", "digits"], K=[2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, "all"],
                 queries=300, seeds=2, bootstrap=1000, similarities=list(SIMILARITIES),
                 separations=list(SEPARATIONS), corruptions=list(CORRUPTIONS)),
    "quick": dict(datasets=["digits"], K=[2, 10, 50, 200, "all"], queries=100, seeds=2, bootstrap=200,
                  similarities=list(SIMILARITIES), separations=list(SEPARATIONS),
                  corruptions=["half", "noise0.1", "noise0.5", "mask0.5"]),
    "smoke": dict(datasets=["digits"], K=[2, 20, 200], queries=24, seeds=2, bootstrap=100,
                  similarities=["dot", "euclidean_reciprocal", "euclidean", "manhattan_reciprocal", "manhattan"],
                  separations=["identity", "softmax", "max"], corruptions=["half", "noise0.3"]),
}
#: The pairs that are the same memory under max (−d and 1/d of one distance).
MAX_TWINS = (("euclidean", "euclidean_reciprocal"), ("manhattan", "manhattan_reciprocal"))
PAPER_CLAIM = {
    "source": "Millidge, Salvatori, Song, Lukasiewicz & Bogacz 2022, Universal Hopfield Networks, ICML (PMLR 162)",
    "claim": "distance similarities (Euclidean, Manhattan) perform substantially better than the dot product: "
             "more robust retrieval of corrupted images and a higher memory capacity",
    "paper_setting": "MNIST, CIFAR-10 and Tiny ImageNet images in [0, 1]; a retrieval counts when its squared error "
                     "is below 60 (on MNIST, D = 784)",
}


def threshold_for(dim: int) -> float:
    """The paper's error threshold, 60 for 784 values, scaled by D / 784."""
    return PAPER_THRESHOLD * dim / 784.0


def separations_for(similarity: str, separations: list[str]) -> list[str]:
    return [s for s in separations if similarity in PAPER_SIMS or s in NEG_SEPARATIONS]


def make_memory(patterns, similarity: str, separation: str, active=None):
    kw = dict(SEPARATIONS[separation])
    paper = similarity in PAPER_SIMS
    if kw["separation"] == "softmax":
        kw["beta"] = PAPER_BETA if paper else NEG_BETA
    return ham.memories.universal(patterns, similarity=similarity, normalize=paper, active=active, **kw)


# --------------------------------------------------------------------------- corruption
def corrupt(key, x, kind: str, image_shape: tuple[int, ...]):
    """Corrupt one flattened image ``x`` (values in [0, 1])."""
    if kind == "half":
        img = x.reshape(image_shape)
        rows = jnp.arange(image_shape[0]) >= image_shape[0] // 2
        rows = rows.reshape((-1,) + (1,) * (len(image_shape) - 1))
        return jnp.where(rows, 0.0, img).reshape(-1)
    if kind.startswith("noise"):
        sigma = float(kind[5:])
        return jnp.clip(x + sigma * jax.random.normal(key, x.shape, x.dtype), 0.0, 1.0)
    if kind.startswith("mask"):
        frac = float(kind[4:])
        img = x.reshape(image_shape)
        drop = jax.random.uniform(key, image_shape[:2]) < frac  # whole pixels (all channels)
        drop = drop.reshape(image_shape[:2] + (1,) * (len(image_shape) - 2))
        return jnp.where(drop, 0.0, img).reshape(-1)
    raise ValueError(f"unknown corruption {kind!r}; valid: half, noise<σ>, mask<fraction>")


def check_corruption(kind: str) -> None:
    try:
        if kind == "half":
            return
        if kind.startswith("noise") and float(kind[5:]) >= 0:
            return
        if kind.startswith("mask") and 0 <= float(kind[4:]) <= 1:
            return
    except ValueError:
        pass
    raise ValueError(f"unknown corruption {kind!r}; valid: half, noise<σ> (e.g. noise0.3), mask<fraction> (e.g. mask0.5)")


# --------------------------------------------------------------------------- criteria
def criteria(outputs, targets, memories, threshold: float, active=None):
    """Per output: (paper, strict) correctness. ``targets`` are indices into ``memories``
    (of which only the ``active`` rows are stored, if given).

    paper: Σ(x − x̂)² ≤ threshold; strict: paper and argmin_μ ‖x̂ − m_μ‖² is the target.
    A NaN output is never correct."""
    err = jnp.sum((outputs - memories[targets]) ** 2, axis=1)
    paper = err <= threshold  # False for NaN
    d2 = jnp.sum(outputs**2, 1)[:, None] - 2 * outputs @ memories.T + jnp.sum(memories**2, 1)[None, :]
    if active is not None:
        d2 = jnp.where(active[None, :], d2, jnp.inf)
    nearest = jnp.argmin(d2, axis=1)
    return paper, paper & (nearest == targets)


# --------------------------------------------------------------------------- one grid point
def query_key(seed: int, K: int, corruption: str):
    """The key of the corrupted queries at (seed, K, corruption): no similarity or separation
    enters it, so every cell of the grid point sees the same queries."""
    key = jax.random.fold_in(jax.random.PRNGKey(seed), K)
    return jax.random.fold_in(key, zlib.crc32(corruption.encode()) & 0x7FFFFFFF)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _queries(keys, stored, corruptions: tuple, image_shape: tuple):
    """Corrupted copies of ``stored`` (Q, D), one set per corruption: (C, Q, D)."""
    return jnp.stack([
        jax.vmap(lambda k, x, c=c: corrupt(k, x, c, image_shape))(jax.random.split(key, stored.shape[0]), stored)
        for key, c in zip(keys, corruptions)
    ])


def make_queries(memories, image_shape, corruptions, Q: int, seed: int):
    """Targets (Q,) = j mod K and the corrupted queries (C, Q, D) of the grid point."""
    K = memories.shape[0]
    targets = np.arange(Q) % K
    keys = jnp.stack([query_key(seed, K, c) for c in corruptions])
    return targets, _queries(keys, memories[targets], tuple(corruptions), tuple(image_shape))


#: Sizes the stored set is padded to (zero rows, inactive in the memory's ``active`` mask), so a
#: few compilations serve every K; K above the last is not padded.
PAD_SIZES = (200, 1000, 2000)


def padded(memories):
    """``memories`` (K, D) padded with inactive zero rows to the next of ``PAD_SIZES`` and the
    ``active`` mask (inactive rows never win and never contribute: the results are those of
    the K rows alone)."""
    K = memories.shape[0]
    size = next((p for p in PAD_SIZES if p >= K), K)
    return jnp.pad(memories, ((0, size - K), (0, 0))), jnp.arange(size) < K


@functools.partial(jax.jit, static_argnums=(4, 5))
def _evaluate(memories, active, queries, targets, similarity: str, separations: tuple):
    """For every separation, per query: paper and strict correctness and NaN output
    (each (S, C, Q)), and the retrieved images of the ``max`` separation (C, Q, D) or None.
    Only the ``active`` rows of ``memories`` are stored."""
    C, Q, D = queries.shape
    K = memories.shape[0]
    flat = queries.reshape(-1, D)
    # dot/cosine/euclidean are one matrix product per batch; the Manhattan distances run over
    # blocks of patterns per query: batches are kept to ~16 M (query, value) pairs
    per_query = K if similarity in ("dot", "cosine", "euclidean", "euclidean_reciprocal") else K * D
    chunk = int(max(1, min(flat.shape[0], 16_000_000 // per_query)))
    threshold = threshold_for(D)
    tgt = jnp.tile(targets, C)
    paper, strict, nan, max_out = [], [], [], None
    for sep in separations:
        memory = make_memory(memories, similarity, sep, active)
        z = jax.lax.map(memory.retrieve, flat, batch_size=chunk)
        p, st = criteria(z, tgt, memories, threshold, active)
        paper.append(p.reshape(C, Q))
        strict.append(st.reshape(C, Q))
        nan.append(jnp.any(jnp.isnan(z), axis=1).reshape(C, Q))
        if sep == "max":
            max_out = z.reshape(C, Q, D)
    return jnp.stack(paper), jnp.stack(strict), jnp.stack(nan), max_out


def bootstrap_weights(n_images: int, B: int, seed: int, K: int) -> np.ndarray:
    """(B, n_images) multiplicities of a bootstrap over images (the same for every cell of a
    grid point: the intervals of two cells are drawn on the same resamples)."""
    rng = np.random.default_rng([seed, K, 2022])
    return rng.multinomial(n_images, np.full(n_images, 1.0 / n_images), size=B).astype(np.float64)


def bootstrap_interval(correct: np.ndarray, image: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """95 % percentile interval of the accuracy for each row of ``correct`` (cells, Q): every
    bootstrap resample takes the queried images with the multiplicities in ``weights``
    (B, n_images), each with all its queries (``image`` (Q,) names each query's image)."""
    n = weights.shape[1]
    per_image = np.zeros((correct.shape[0], n))
    np.add.at(per_image.T, image, correct.T.astype(np.float64))
    queries_per_image = np.bincount(image, minlength=n).astype(np.float64)
    acc = (weights @ per_image.T) / (weights @ queries_per_image)[:, None]  # (B, cells)
    lo, hi = np.percentile(acc, [2.5, 97.5], axis=0)
    return lo, hi


def point(images: np.ndarray, image_shape, K: int, similarity: str, separations, corruptions, Q: int, seed: int,
          B: int) -> dict:
    """Accuracy with its 95 % interval (paper, strict), NaN fraction and, for ``max``, a digest of
    the retrieved images, for every (separation, corruption) at one (dataset, seed, K, similarity)."""
    memories = jnp.asarray(images[:K])
    targets, queries = make_queries(memories, image_shape, corruptions, Q, seed)
    paper, strict, nan, max_out = jax.device_get(
        _evaluate(*padded(memories), queries, jnp.asarray(targets), similarity, tuple(separations)))
    S, C = len(separations), len(corruptions)
    weights = bootstrap_weights(min(K, Q), B, seed, K)
    rows = {}
    for name, arr in (("paper", paper), ("strict", strict)):
        flat = arr.reshape(S * C, Q)
        lo, hi = bootstrap_interval(flat, targets, weights)
        rows[name] = (flat.mean(axis=1), lo, hi)
    out = {}
    for i, sep in enumerate(separations):
        for j, c in enumerate(corruptions):
            cell = {crit: [round(float(v[i * C + j]), 4) for v in rows[crit]] for crit in ("paper", "strict")}
            cell["nan"] = round(float(nan[i, j].mean()), 4)
            if sep == "max":
                cell["digest"] = hashlib.sha256(np.ascontiguousarray(max_out[j]).tobytes()).hexdigest()[:16]
            out[f"{sep}|{c}"] = cell
    return out | {"queries": Q, "images_queried": int(min(K, Q))}


def capacity_of(ks, values, level: float = LEVEL) -> int:
    """The largest K on the grid whose value is >= ``level`` (0 if none)."""
    return max([int(k) for k, v in zip(ks, values) if v >= level], default=0)


def mean_image_check(ds) -> dict:
    """How the dataset's mean image scores as a 'retrieval' of every image (it must fail)."""
    x = jnp.asarray(ds.flat())
    mean = jnp.mean(x, axis=0)
    outputs = jnp.broadcast_to(mean, x.shape)
    err = np.asarray(jnp.sum((x - mean) ** 2, axis=1))
    paper, strict = criteria(outputs, jnp.arange(len(x)), x, threshold_for(ds.dim))
    return {"threshold": threshold_for(ds.dim), "median_sq_error_of_mean_image": float(np.median(err)),
            "paper_accuracy_of_mean_image": float(jnp.mean(paper)), "strict_accuracy_of_mean_image": float(jnp.mean(strict))}


# --------------------------------------------------------------------------- summaries
def summarise(done: dict, grid: dict, data: dict) -> tuple[list[dict], list[dict]]:
    """Records (one per dataset × similarity × separation × corruption × criterion) and CSV rows."""
    records, rows = [], []
    seeds = grid["seed_list"]
    for d in grid["datasets"]:
        Ks = data[d][2]
        for s in grid["similarities"]:
            for sep in separations_for(s, grid["separations"]):
                for c in grid["corruptions"]:
                    for crit in ("paper", "strict"):
                        by_seed, ranges = {}, []
                        for seed in seeds:
                            cells = [done[f"{d}|seed={seed}|{s}|K={K}"][f"{sep}|{c}"] for K in Ks]
                            acc, lo, hi = ([cell[crit][i] for cell in cells] for i in range(3))
                            rng = [capacity_of(Ks, lo), capacity_of(Ks, hi)]
                            ranges.append(rng)
                            entry = {"capacity": capacity_of(Ks, acc), "capacity_range": rng,
                                     "accuracy": acc, "lower": lo, "upper": hi,
                                     "max_nan_fraction": max(cell["nan"] for cell in cells)}
                            if sep == "max":
                                entry["digests"] = [cell["digest"] for cell in cells]
                            by_seed[str(seed)] = entry
                            rows.append({"dataset": d, "seed": seed, "similarity": s, "separation": sep,
                                         "corruption": c, "criterion": crit, "capacity": entry["capacity"],
                                         "capacity_low": rng[0], "capacity_high": rng[1]}
                                        | {f"acc_K{K}": a for K, a in zip(Ks, acc)}
                                        | {f"lo_K{K}": a for K, a in zip(Ks, lo)}
                                        | {f"hi_K{K}": a for K, a in zip(Ks, hi)})
                        envelope = [min(r[0] for r in ranges), max(r[1] for r in ranges)]
                        overlap = max(r[0] for r in ranges) <= min(r[1] for r in ranges)
                        records.append({"dataset": d, "similarity": s, "separation": sep, "corruption": c,
                                        "criterion": crit, "normalize": s in PAPER_SIMS, "K": Ks,
                                        "capacity_range": envelope, "seeds_agree": bool(overlap),
                                        "same_point_capacity": len({e["capacity"] for e in by_seed.values()}) == 1,
                                        "by_seed": by_seed})
    return records, rows


def max_twin_check(records: list[dict]) -> dict:
    """Whether −d and 1/d with max retrieved bit-identical images at every (dataset, seed, K,
    corruption) of the run."""
    idx = {(r["dataset"], r["similarity"], r["corruption"]): r for r in records
           if r["separation"] == "max" and r["criterion"] == "strict"}
    points = identical = 0
    for (d, s, c), r in idx.items():
        for a, b in MAX_TWINS:
            if s != a or (d, b, c) not in idx:
                continue
            for seed, e in r["by_seed"].items():
                other = idx[(d, b, c)]["by_seed"][seed]["digests"]
                points += len(e["digests"])
                identical += sum(x == y for x, y in zip(e["digests"], other))
    return {"pairs": [list(t) for t in MAX_TWINS], "grid_points": points, "identical": identical}


def claim_table(records: list[dict], grid: dict) -> list[dict]:
    """The paper's comparison, measured: capacity range of each distance similarity against the
    dot product at the same (dataset, separation, corruption, criterion); ``verdict`` is
    'higher' / 'lower' when the ranges do not overlap, else 'overlap'."""
    idx = {(r["dataset"], r["similarity"], r["separation"], r["corruption"], r["criterion"]): r["capacity_range"]
           for r in records}
    rows = []
    for d in grid["datasets"]:
        for crit in ("paper", "strict"):
            for sep in ("softmax", "max"):
                for c in grid["corruptions"]:
                    dot = idx.get((d, "dot", sep, c, crit))
                    if dot is None:
                        continue
                    row = {"dataset": d, "criterion": crit, "separation": sep, "corruption": c, "dot": dot}
                    for s in ("euclidean_reciprocal", "manhattan_reciprocal"):
                        r = idx.get((d, s, sep, c, crit))
                        if r is None:
                            continue
                        row[s] = r
                        row[f"{s}_verdict"] = ("higher" if r[0] > dot[1] else "lower" if r[1] < dot[0] else "overlap")
                    rows.append(row)
    return rows


# --------------------------------------------------------------------------- figure
def figure(records: list[dict], datasets: list[str], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(datasets), 2, figsize=(13, 4.4 * len(datasets)), squeeze=False)
    for row, ds in enumerate(datasets):
        recs = [r for r in records if r["dataset"] == ds and r["criterion"] == "strict"]
        corr = "noise0.3" if any(r["corruption"] == "noise0.3" for r in recs) else recs[0]["corruption"]
        seed = next(iter(recs[0]["by_seed"]))
        # left: accuracy vs K with its 95 % band, max and softmax separations, first seed
        ax = axes[row, 0]
        for i, sim in enumerate(sorted({r["similarity"] for r in recs}, key=SIMILARITIES.index)):
            for sep, ls in (("max", "-"), ("softmax", "--")):
                r = next((r for r in recs if r["similarity"] == sim and r["separation"] == sep
                          and r["corruption"] == corr), None)
                if r is None:
                    continue
                e = r["by_seed"][seed]
                ax.plot(r["K"], e["accuracy"], ls, marker="o", ms=3, color=f"C{i}", label=f"{sim} / {sep}")
                ax.fill_between(r["K"], e["lower"], e["upper"], color=f"C{i}", alpha=0.12)
        ax.axhline(LEVEL, color="k", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel("images stored K")
        ax.set_ylabel("fraction retrieved (strict), 95 % band")
        ax.set_title(f"{ds}: retrieval vs K ({corr}, seed {seed})")
        ax.legend(fontsize=6, ncol=2)
        # right: capacity ranges similarity × separation (envelope over seeds), strict criterion
        ax = axes[row, 1]
        sims = sorted({r["similarity"] for r in recs}, key=SIMILARITIES.index)
        seps = [s for s in SEPARATIONS if any(r["separation"] == s for r in recs)]
        grid = np.full((len(sims), len(seps)), np.nan)
        text = {}
        for a, sim in enumerate(sims):
            for b, sep in enumerate(seps):
                r = next((r for r in recs if r["similarity"] == sim and r["separation"] == sep
                          and r["corruption"] == corr), None)
                if r is not None:
                    lo, hi = r["capacity_range"]
                    grid[a, b] = np.sqrt(max(lo, 1) * max(hi, 1))
                    text[a, b] = f"{lo}" if lo == hi else f"{lo}–{hi}"
        im = ax.imshow(np.log10(np.maximum(grid, 1)), cmap="viridis", aspect="auto")
        for (a, b), t in text.items():
            ax.text(b, a, t, ha="center", va="center", fontsize=6, color="w" if grid[a, b] < 100 else "k")
        ax.set_xticks(range(len(seps)), seps, rotation=30, fontsize=7)
        ax.set_yticks(range(len(sims)), sims, fontsize=7)
        ax.set_title(f"{ds}: capacity range at 90 % ({corr}, strict, all seeds; blank = not run)")
        fig.colorbar(im, ax=ax, label="log10 capacity K (geometric mid-range)")
    fig.tight_layout()
    save_figure(fig, path)


# --------------------------------------------------------------------------- main
def _split(s: str) -> list[str]:
    return [t.strip() for t in s.split(",") if t.strip()]


def main(argv=None) -> dict:
    parser = cap.make_parser(NAME, __doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default=None, help=f"comma-separated, from {', '.join(DATASETS)}")
    parser.add_argument("--data-dir", default=None, help="folder with the MNIST IDX / CIFAR-10 pickle files")
    parser.add_argument("--K", default=None, help="comma-separated numbers of stored images ('all' = whole dataset)")
    parser.add_argument("--similarities", default=None, help=f"comma-separated, from {', '.join(SIMILARITIES)}")
    parser.add_argument("--separations", default=None, help=f"comma-separated, from {', '.join(SEPARATIONS)}")
    parser.add_argument("--corruptions", default=None, help="comma-separated: half, noise<σ>, mask<fraction>")
    parser.add_argument("--queries", type=int, default=None,
                        help="corrupted queries per grid point (targets cycle over the K stored images)")
    parser.add_argument("--seeds", type=int, default=None,
                        help="number of seeds (stored sets): seed, seed + 1, ... (full: 2)")
    parser.add_argument("--bootstrap", type=int, default=None, help="bootstrap resamples per interval (full: 1000)")
    args = parser.parse_args(argv)
    mode = cap.mode_of(args)
    grid = dict(GRIDS[mode])
    for name in ("datasets", "similarities", "separations", "corruptions"):
        if getattr(args, name) is not None:
            grid[name] = _split(getattr(args, name))
    if args.K is not None:
        grid["K"] = [k if k == "all" else int(k) for k in _split(args.K)]
    for name in ("queries", "seeds", "bootstrap"):
        if getattr(args, name) is not None:
            grid[name] = getattr(args, name)

    # ---- validate everything before anything is written
    for d in grid["datasets"]:
        if d not in DATASETS:
            raise ValueError(f"unknown dataset {d!r}; valid names: {', '.join(DATASETS)}")
    for s in grid["similarities"]:
        if s not in SIMILARITIES:
            raise ValueError(f"unknown similarity {s!r}; valid names: {', '.join(SIMILARITIES)}")
    for s in grid["separations"]:
        if s not in SEPARATIONS:
            raise ValueError(f"unknown separation {s!r}; valid names: {', '.join(SEPARATIONS)}")
    for c in grid["corruptions"]:
        check_corruption(c)
    for name, low in (("queries", 1), ("seeds", 1), ("bootstrap", 10)):
        if grid[name] < low:
            raise ValueError(f"--{name} must be >= {low}, got {grid[name]}")
    grid["seed_list"] = [args.seed + i for i in range(grid["seeds"])]
    data = {}
    for d in grid["datasets"]:
        ds = load_dataset(d, args.data_dir)
        # the default grids skip the K above a dataset's size ('all' stores it whole); an asked K must fit
        Ks = sorted({len(ds) if k == "all" else int(k) for k in grid["K"]
                     if args.K is not None or k == "all" or int(k) <= len(ds)})
        bad = [k for k in Ks if k < 1 or k > len(ds)]
        if bad:
            raise ValueError(f"K = {bad} is outside 1..{len(ds)}: dataset {d!r} has only {len(ds)} images")
        flat = ds.flat()
        # a seed draws the stored set: the first K rows of its permutation of the dataset
        perms = {seed: flat[np.random.default_rng(seed).permutation(len(ds))] for seed in grid["seed_list"]}
        data[d] = (ds, perms, Ks)

    config = {"study": NAME, "mode": mode, "seed": args.seed, "level": LEVEL, "paper_threshold_784": PAPER_THRESHOLD,
              "paper_beta": PAPER_BETA, "neg_beta": NEG_BETA, **{k: v for k, v in grid.items()},
              "data_dir": None if args.data_dir is None else str(args.data_dir)}
    out = cap.Outputs(NAME, mode, args.results_dir)
    ck = out.checkpoint(config, fresh=args.fresh)
    # the cheap points first (small K), so a cut-off run has whole curves for its early seeds
    jobs = [(d, seed, s, K) for d in grid["datasets"] for seed in grid["seed_list"] for K in data[d][2]
            for s in grid["similarities"]]
    keys = [f"{d}|seed={seed}|{s}|K={K}" for d, seed, s, K in jobs]
    lookup = dict(zip(keys, jobs))

    def compute(k):
        d, seed, s, K = lookup[k]
        ds, perms, _ = data[d]
        return point(perms[seed], ds.image_shape, K, s, separations_for(s, grid["separations"]), grid["corruptions"],
                     grid["queries"], seed, grid["bootstrap"])

    t0 = time.perf_counter()
    done = cap.run_grid(keys, compute, ck, desc=f"uhn capacity ({mode})", progress=not args.no_progress)
    elapsed = time.perf_counter() - t0

    records, rows = summarise(done, grid, data)
    twins = max_twin_check(records)
    agree = [r["seeds_agree"] for r in records]
    result = {
        "study": NAME,
        "paper_claim": PAPER_CLAIM | {"measured": claim_table(records, grid)},
        "criteria": {"paper": "sum (x - x_hat)^2 <= 60 * D / 784 (60 at the paper's D = 784)",
                     "strict": "paper criterion and the stored image nearest to x_hat is the target"},
        "capacity_rule": ("per seed: from the largest K whose 95 % lower bound is >= 0.9 to the largest K whose "
                          "upper bound is >= 0.9 (point: the largest K whose accuracy is >= 0.9); reported: the "
                          "envelope over seeds"),
        "interval": (f"95 % percentile bootstrap over the queried images ({grid['bootstrap']} resamples; an image's "
                     "repeated queries for K < queries resample together)"),
        "common_random_numbers": ("at each (dataset, seed, K) every similarity x separation cell stores the same "
                                  "images and retrieves the same corrupted queries"),
        "seed_agreement": {"cells": len(agree), "ranges_overlap": int(sum(agree)),
                           "same_point_capacity": int(sum(r["same_point_capacity"] for r in records))},
        "max_twins": twins,
        "mean_image_check": {d: mean_image_check(data[d][0]) for d in grid["datasets"]},
        "dims": {d: data[d][0].dim for d in grid["datasets"]},
        "runtime_s": round(elapsed, 1),
        "records": records,
        "config": config,
    }
    write_json(out.path("json"), result)
    write_csv(out.path("csv"), rows)
    figure(records, grid["datasets"], out.path("png"))
    print_tables(records, grid)
    print(f"seed agreement: {result['seed_agreement']}; max twins identical at "
          f"{twins['identical']}/{twins['grid_points']} grid points; grid time {elapsed:.0f} s")
    print("wrote", out.path("json"))
    return result


def range_text(r: list[int]) -> str:
    return str(r[0]) if r[0] == r[1] else f"{r[0]}–{r[1]}"


def capacity_table(records, dataset: str, criterion: str, corruption: str) -> str:
    sims = [s for s in SIMILARITIES if any(r["similarity"] == s for r in records)]
    seps = [s for s in SEPARATIONS if any(r["separation"] == s for r in records)]
    lines = ["| similarity | " + " | ".join(seps) + " |", "|---" * (len(seps) + 1) + "|"]
    for s in sims:
        cells = []
        for sep in seps:
            r = next((r for r in records if r["dataset"] == dataset and r["similarity"] == s and r["separation"] == sep
                      and r["corruption"] == corruption and r["criterion"] == criterion), None)
            cells.append("–" if r is None else range_text(r["capacity_range"]))
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def print_tables(records, grid) -> None:
    for d in grid["datasets"]:
        for c in grid["corruptions"]:
            for crit in ("paper", "strict"):
                print(f"\n{d}, {c}, criterion={crit}: capacity range (95 %, all seeds)")
                print(capacity_table(records, d, crit, c))


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
