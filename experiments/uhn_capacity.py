"""Capacity of Universal Hopfield Networks on real images (Millidge et al. 2022).

K images are stored in ``ham.memories.universal(images, similarity, separation, ...)``;
each of (up to) ``Q`` of them is corrupted and retrieved single-shot. Grid: similarity ×
separation × corruption × K, on each dataset.

Following the paper's published code: images in [0, 1]; similarities dot product,
cosine, and the reciprocal distances 1/Σ|q−m| (``manhattan_reciprocal``, the paper's
"Manhattan") and 1/Σ(q−m)² (``euclidean_reciprocal``, the paper's "Euclidean"), with the
scores normalised to sum 1 before and after the separation function; separations
identity, polynomial n ∈ {2, 3, 5, 10}, softmax (β = 1000, the code's default) and max.
The negative-distance variants −Σ(q−m)² (``euclidean``) and −Σ|q−m| (``manhattan``) are run
without normalisation and only with softmax (β = 1) and max: identity and polynomial
separations are not order-preserving on negative scores.

Corruptions: ``half`` (bottom half of the image zeroed), ``noise{σ}`` (Gaussian noise,
clamped to [0, 1]), ``mask{f}`` (each pixel zeroed with probability f).

Criteria: ``paper`` — Σ(x − x̂)² ≤ 60 · D / 784 (60 for a 784-pixel image, scaled to D
values); ``strict`` — the paper's criterion **and** the stored pattern nearest to x̂ is the
target. The strict one exists because the paper's threshold is degenerate on small
images: on 8×8 digits 60·64/784 ≈ 4.9 exceeds the mean image's median squared error to a
digit, so blurred blends count as successes (``mean_image_check`` in the JSON measures
this). Capacity = the largest K on the grid with accuracy ≥ 90 % at that K and every
smaller K.

    python -m experiments.uhn_capacity [--quick | --smoke] [--datasets digits,patches]
        [--data-dir DIR] [--K 2,5,10,...] [--results-dir DIR] [--seed S]
"""

from __future__ import annotations

import functools
import sys

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
    "full": dict(datasets=["digits", "patches"], K=[2, 5, 10, 20, 50, 100, 200, 500, 1000, "all"],
                 queries=100, similarities=list(SIMILARITIES), separations=list(SEPARATIONS),
                 corruptions=list(CORRUPTIONS)),
    "quick": dict(datasets=["digits"], K=[2, 10, 50, 200, 1000, "all"], queries=64,
                  similarities=list(SIMILARITIES), separations=list(SEPARATIONS),
                  corruptions=["half", "noise0.1", "noise0.5", "mask0.5"]),
    "smoke": dict(datasets=["digits"], K=[2, 20, 200], queries=24,
                  similarities=["dot", "euclidean_reciprocal", "euclidean"], separations=["identity", "softmax", "max"],
                  corruptions=["half", "noise0.3"]),
}


def threshold_for(dim: int) -> float:
    """The paper's error threshold, 60 for 784 values, scaled by D / 784."""
    return PAPER_THRESHOLD * dim / 784.0


def separations_for(similarity: str, separations: list[str]) -> list[str]:
    return [s for s in separations if similarity in PAPER_SIMS or s in NEG_SEPARATIONS]


def make_memory(patterns, similarity: str, separation: str):
    kw = dict(SEPARATIONS[separation])
    paper = similarity in PAPER_SIMS
    if kw["separation"] == "softmax":
        kw["beta"] = PAPER_BETA if paper else NEG_BETA
    return ham.memories.universal(patterns, similarity=similarity, normalize=paper, **kw)


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
def criteria(outputs, targets, memories, threshold: float):
    """Per output: (paper, strict) correctness. ``targets`` are indices into ``memories``.

    paper: Σ(x − x̂)² ≤ threshold; strict: paper and argmin_μ ‖x̂ − m_μ‖² is the target.
    A NaN output is never correct."""
    err = jnp.sum((outputs - memories[targets]) ** 2, axis=1)
    paper = err <= threshold  # False for NaN
    d2 = jnp.sum(outputs**2, 1)[:, None] - 2 * outputs @ memories.T + jnp.sum(memories**2, 1)[None, :]
    nearest = jnp.argmin(d2, axis=1)
    return paper, paper & (nearest == targets)


# --------------------------------------------------------------------------- one grid point
@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5, 6))
def _evaluate(key, memories, similarity: str, separations: tuple, corruptions: tuple, image_shape: tuple, Q: int):
    """For every (separation, corruption): number correct (paper, strict) and NaN outputs
    over Q queries; query j corrupts stored image j mod K (all K images are targets once
    K >= Q; for small K each image is queried several times with fresh corruptions)."""
    K, D = memories.shape
    targets = jnp.arange(Q) % K
    keys = jax.random.split(key, len(corruptions))
    queries = jnp.stack([
        jax.vmap(lambda k, x, c=c: corrupt(k, x, c, image_shape))(jax.random.split(kk, Q), memories[targets])
        for kk, c in zip(keys, corruptions)
    ])  # (C, Q, D)
    flat = queries.reshape(-1, D)
    # dot/cosine batch into one matrix product; distance similarities build a (chunk, K, D)
    # difference array per call, so their chunks are kept to ~16 M values
    per_query = K if similarity in ("dot", "cosine") else K * D
    chunk = int(max(1, min(flat.shape[0], 16_000_000 // per_query)))
    threshold = threshold_for(D)
    out = {}
    for sep in separations:
        memory = make_memory(memories, similarity, sep)
        z = jax.lax.map(memory.retrieve, flat, batch_size=chunk).reshape(len(corruptions), Q, D)
        for i, c in enumerate(corruptions):
            paper, strict = criteria(z[i], targets, memories, threshold)
            out[(sep, c)] = (jnp.sum(paper), jnp.sum(strict), jnp.sum(jnp.any(jnp.isnan(z[i]), axis=1)))
    return out


def point(images: np.ndarray, image_shape, K: int, similarity: str, separations, corruptions, Q: int, seed: int):
    memories = jnp.asarray(images[:K])
    key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), K), SIMILARITIES.index(similarity))
    res = _evaluate(key, memories, similarity, tuple(separations), tuple(corruptions), tuple(image_shape), Q)
    return {f"{sep}|{c}": {"paper": int(v[0]) / Q, "strict": int(v[1]) / Q, "nan": int(v[2]) / Q}
            for (sep, c), v in res.items()} | {"queries": Q}


def mean_image_check(ds) -> dict:
    """How the dataset's mean image scores as a 'retrieval' of every image (it must fail)."""
    x = jnp.asarray(ds.flat())
    mean = jnp.mean(x, axis=0)
    outputs = jnp.broadcast_to(mean, x.shape)
    err = np.asarray(jnp.sum((x - mean) ** 2, axis=1))
    paper, strict = criteria(outputs, jnp.arange(len(x)), x, threshold_for(ds.dim))
    return {"threshold": threshold_for(ds.dim), "median_sq_error_of_mean_image": float(np.median(err)),
            "paper_accuracy_of_mean_image": float(jnp.mean(paper)), "strict_accuracy_of_mean_image": float(jnp.mean(strict))}


# --------------------------------------------------------------------------- figure
def figure(records: list[dict], datasets: list[str], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(datasets), 2, figsize=(13, 4.2 * len(datasets)), squeeze=False)
    for row, ds in enumerate(datasets):
        # left: accuracy vs K by similarity (max separation, noise0.1 if present) — strict criterion
        recs = [r for r in records if r["dataset"] == ds and r["criterion"] == "strict"]
        corr = "noise0.1" if any(r["corruption"] == "noise0.1" for r in recs) else recs[0]["corruption"]
        ax = axes[row, 0]
        for i, sim in enumerate(sorted({r["similarity"] for r in recs}, key=SIMILARITIES.index)):
            for sep, ls in (("max", "-"), ("identity", ":"), ("softmax", "--")):
                r = next((r for r in recs if r["similarity"] == sim and r["separation"] == sep and r["corruption"] == corr), None)
                if r is None:
                    continue
                ks = [int(k) for k in r["accuracy_by_K"]]
                ax.plot(ks, list(r["accuracy_by_K"].values()), ls, marker="o", ms=3, color=f"C{i}",
                        label=f"{sim} / {sep}")
        ax.axhline(LEVEL, color="k", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel("images stored K")
        ax.set_ylabel("fraction retrieved (strict criterion)")
        ax.set_title(f"{ds}: retrieval vs K ({corr})")
        ax.legend(fontsize=6, ncol=2)
        # right: capacity heat map similarity × separation, strict criterion, same corruption
        ax = axes[row, 1]
        sims = sorted({r["similarity"] for r in recs}, key=SIMILARITIES.index)
        seps = [s for s in SEPARATIONS if any(r["separation"] == s for r in recs)]
        grid = np.full((len(sims), len(seps)), np.nan)
        for a, sim in enumerate(sims):
            for b, sep in enumerate(seps):
                caps = [r["capacity"] for r in recs
                        if r["similarity"] == sim and r["separation"] == sep and r["corruption"] == corr]
                if caps:
                    grid[a, b] = caps[0]
        im = ax.imshow(np.log10(np.maximum(grid, 1)), cmap="viridis", aspect="auto")
        for a in range(len(sims)):
            for b in range(len(seps)):
                if np.isfinite(grid[a, b]):
                    ax.text(b, a, f"{int(grid[a, b])}", ha="center", va="center", fontsize=7,
                            color="w" if grid[a, b] < 100 else "k")
        ax.set_xticks(range(len(seps)), seps, rotation=30, fontsize=7)
        ax.set_yticks(range(len(sims)), sims, fontsize=7)
        ax.set_title(f"{ds}: capacity K at 90 % ({corr}, strict; blank = not defined)")
        fig.colorbar(im, ax=ax, label="log10 capacity K")
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
    args = parser.parse_args(argv)
    mode = cap.mode_of(args)
    grid = dict(GRIDS[mode])
    for name in ("datasets", "similarities", "separations", "corruptions"):
        if getattr(args, name) is not None:
            grid[name] = _split(getattr(args, name))
    if args.K is not None:
        grid["K"] = [k if k == "all" else int(k) for k in _split(args.K)]
    if args.queries is not None:
        grid["queries"] = args.queries

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
    if grid["queries"] < 1:
        raise ValueError(f"--queries must be >= 1, got {grid['queries']}")
    data = {}
    for d in grid["datasets"]:
        ds = load_dataset(d, args.data_dir)
        Ks = sorted({len(ds) if k == "all" else int(k) for k in grid["K"]})
        bad = [k for k in Ks if k < 1 or k > len(ds)]
        if bad:
            raise ValueError(f"K = {bad} is outside 1..{len(ds)}: dataset {d!r} has only {len(ds)} images")
        perm = np.random.default_rng(args.seed).permutation(len(ds))
        data[d] = (ds, ds.flat()[perm], Ks)

    config = {"study": NAME, "mode": mode, "seed": args.seed, "level": LEVEL, "paper_threshold_784": PAPER_THRESHOLD,
              "paper_beta": PAPER_BETA, "neg_beta": NEG_BETA, **{k: v for k, v in grid.items()},
              "data_dir": None if args.data_dir is None else str(args.data_dir)}
    out = cap.Outputs(NAME, mode, args.results_dir)
    ck = out.checkpoint(config, fresh=args.fresh)
    jobs = [(d, s, K) for d in grid["datasets"] for s in grid["similarities"] for K in data[d][2]]
    keys = [f"{d}|{s}|K={K}" for d, s, K in jobs]
    lookup = dict(zip(keys, jobs))

    def compute(k):
        d, s, K = lookup[k]
        ds, images, _ = data[d]
        return point(images, ds.image_shape, K, s, separations_for(s, grid["separations"]), grid["corruptions"],
                     grid["queries"], args.seed)

    done = cap.run_grid(keys, compute, ck, desc=f"uhn capacity ({mode})", progress=not args.no_progress)

    records, rows = [], []
    for d in grid["datasets"]:
        Ks = data[d][2]
        for s in grid["similarities"]:
            for sep in separations_for(s, grid["separations"]):
                for c in grid["corruptions"]:
                    for crit in ("paper", "strict"):
                        acc = {str(K): done[f"{d}|{s}|K={K}"][f"{sep}|{c}"][crit] for K in Ks}
                        nan = max(done[f"{d}|{s}|K={K}"][f"{sep}|{c}"]["nan"] for K in Ks)
                        rec = {"dataset": d, "similarity": s, "separation": sep, "corruption": c, "criterion": crit,
                               "capacity": cap.capacity_from_accuracy(Ks, list(acc.values()), LEVEL),
                               "accuracy_by_K": acc, "normalize": s in PAPER_SIMS, "max_nan_fraction": nan}
                        records.append(rec)
                        rows.append({k: v for k, v in rec.items() if k != "accuracy_by_K"}
                                    | {f"acc_K{K}": a for K, a in acc.items()})
    result = {
        "study": NAME,
        "criteria": {"paper": "sum (x - x_hat)^2 <= 60 * D / 784",
                     "strict": "paper criterion and the stored image nearest to x_hat is the target"},
        "capacity_rule": "largest K on the grid with accuracy >= 0.9 at that K and every smaller K",
        "mean_image_check": {d: mean_image_check(data[d][0]) for d in grid["datasets"]},
        "records": records,
        "config": config,
    }
    write_json(out.path("json"), result)
    write_csv(out.path("csv"), rows)
    figure(records, grid["datasets"], out.path("png"))
    print_tables(records, grid)
    print("wrote", out.path("json"))
    return result


def capacity_table(records, dataset: str, criterion: str, corruption: str) -> str:
    sims = [s for s in SIMILARITIES if any(r["similarity"] == s for r in records)]
    seps = [s for s in SEPARATIONS if any(r["separation"] == s for r in records)]
    lines = ["| similarity | " + " | ".join(seps) + " |", "|---" * (len(seps) + 1) + "|"]
    for s in sims:
        cells = []
        for sep in seps:
            r = next((r for r in records if r["dataset"] == dataset and r["similarity"] == s and r["separation"] == sep
                      and r["corruption"] == corruption and r["criterion"] == criterion), None)
            cells.append("–" if r is None else str(r["capacity"]))
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def print_tables(records, grid) -> None:
    for d in grid["datasets"]:
        for c in grid["corruptions"][:2]:
            for crit in ("paper", "strict"):
                print(f"\n{d}, {c}, criterion={crit}: capacity")
                print(capacity_table(records, d, crit, c))


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
