"""Capacity of the classical Hopfield network: the critical load α_c = K/N.

Random ±1 patterns are stored with Hebbian weights (``ham.memories.classical``) and each
stored pattern — and a copy with 10 % of its bits flipped — is run through asynchronous
sign dynamics (random neuron order per sweep) to a fixed point. At each load α the
study records the fraction of wrong bits at the fixed point, pattern by pattern.

Criterion (stated once, used everywhere): **α_c(N) is the smallest load at which the mean
fraction of wrong bits at the fixed point reached from the stored pattern is ≥ 1.5 %**,
linearly interpolated between the two grid loads that bracket it. This is the
Amit–Gutfreund–Sompolinsky (1985) transition: below α_c ≈ 0.138 the retrieval state has
overlap m ≥ 0.967, i.e. at most (1 − m)/2 ≈ 1.6 % wrong bits; above it, retrieval
collapses into spin-glass states far from the pattern. The same threshold applied to the
10 %-flipped starts gives ``alpha_c_flipped``. Perfect recall (no wrong bit at all in
≥ 90 % of the patterns) is compared with the classical N/(2 ln N) bound
(McEliece et al. 1987), i.e. α = 1/(2 ln N).

    python -m experiments.classical_capacity [--quick | --smoke] [--results-dir DIR] [--seed S]
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

import ham

from . import _capacity as cap
from ._io import save_figure, write_csv, write_json

NAME = "classical"
ALPHA_C_THEORY = 0.138
ERROR_LEVEL = 0.015  # wrong-bit fraction defining breakdown (AGS: 1.6 % at α_c)
PERFECT_LEVEL = 0.9  # fraction of patterns recalled with no wrong bit
FLIP_FRACTION = 0.10
MAX_SWEEPS = 100

GRIDS = {
    "full": dict(
        Ns=[100, 200, 400, 800],
        alphas=[0.04, 0.06, 0.08, 0.10, 0.11, 0.12, 0.13, 0.14, 0.15, 0.16, 0.18, 0.20],
        bits_per_point=320_000, min_patterns=400,
    ),
    "quick": dict(Ns=[100, 200], alphas=[0.06, 0.10, 0.12, 0.14, 0.16, 0.20], bits_per_point=40_000,
                  min_patterns=200),
    "smoke": dict(Ns=[64], alphas=[0.06, 0.14, 0.24], bits_per_point=3_200, min_patterns=50),
}
# patterns per grid point: max(min_patterns, bits_per_point / N), so every N gets the same
# number of bits in its statistics (and the cost stays moderate at large N)


CHUNK = 64  # queries run side by side (vmap); chunks run one after another (lax.map)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _trials(key, N: int, K: int, T: int):
    """T independent trials of K random patterns of N bits. Returns, per pattern, the
    fraction of wrong bits at the fixed point from the pattern itself and from a
    10 %-flipped copy, the sweeps used and whether a fixed point was reached."""

    def trial(key):
        k_pat, k_flip, k_ord = jax.random.split(key, 3)
        xi = jax.random.rademacher(k_pat, (K, N)).astype(jnp.float32)
        memory = ham.memories.classical(xi)
        n_flip = int(round(FLIP_FRACTION * N))
        ranks = jnp.argsort(jnp.argsort(jax.random.uniform(k_flip, (K, N)), axis=1), axis=1)
        flipped = jnp.where(ranks < n_flip, -xi, xi)
        starts = jnp.concatenate([xi, flipped])
        keys = jax.random.split(k_ord, 2 * K)

        def retrieve(args):  # one query; lax.map batches CHUNK of them with vmap
            q, k = args
            return memory.run(q, mode="async", max_sweeps=MAX_SWEEPS, key=k)

        s, sweeps, conv = jax.lax.map(retrieve, (starts, keys), batch_size=CHUNK)
        err = jnp.mean(s != jnp.concatenate([xi, xi]), axis=1)
        return err[:K], err[K:], sweeps, conv

    return jax.lax.map(trial, jax.random.split(key, T))


def _summary(err: np.ndarray) -> dict:
    return {
        "mean_error": float(err.mean()),
        "median_error": float(np.median(err)),
        "frac_perfect": float(np.mean(err == 0)),
        "frac_over_level": float(np.mean(err >= ERROR_LEVEL)),
        "frac_collapsed": float(np.mean(err > 0.05)),
    }


def point(N: int, alpha: float, bits_per_point: int, min_patterns: int, seed: int) -> dict:
    K = max(1, int(round(alpha * N)))
    patterns_per_point = max(min_patterns, bits_per_point // N)
    T = max(1, math.ceil(patterns_per_point / K))
    key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), N), K)
    e1, e2, sweeps, conv = _trials(key, N, K, T)
    e1, e2 = np.asarray(e1).ravel(), np.asarray(e2).ravel()
    return {
        "N": N, "alpha": alpha, "K": K, "load": K / N, "trials": T, "patterns": int(e1.size),
        "stored": _summary(e1), "flipped": _summary(e2),
        "max_sweeps_used": int(np.max(sweeps)), "all_converged": bool(np.all(conv)),
    }


def analyse(points: list[dict], Ns: list[int]) -> dict:
    out = {"N": [], "alpha_c": [], "alpha_c_flipped": [], "alpha_perfect": [], "alpha_perfect_theory": []}
    for N in Ns:
        rows = sorted((p for p in points if p["N"] == N), key=lambda p: p["load"])
        loads = [p["load"] for p in rows]
        out["N"].append(N)
        out["alpha_c"].append(cap.first_crossing(loads, [p["stored"]["mean_error"] for p in rows], ERROR_LEVEL))
        out["alpha_c_flipped"].append(
            cap.first_crossing(loads, [p["flipped"]["mean_error"] for p in rows], ERROR_LEVEL))
        out["alpha_perfect"].append(
            cap.first_crossing(loads, [p["stored"]["frac_perfect"] for p in rows], PERFECT_LEVEL, rising=False))
        out["alpha_perfect_theory"].append(1.0 / (2.0 * math.log(N)))
    return out


def figure(points: list[dict], summary: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.6))
    colors = plt.cm.viridis(np.linspace(0, 0.85, len(summary["N"])))
    for N, c in zip(summary["N"], colors):
        rows = sorted((p for p in points if p["N"] == N), key=lambda p: p["load"])
        loads = [p["load"] for p in rows]
        ax1.plot(loads, [100 * p["stored"]["mean_error"] for p in rows], "o-", color=c, label=f"N={N}, from pattern")
        ax1.plot(loads, [100 * p["flipped"]["mean_error"] for p in rows], "s--", color=c, alpha=0.6,
                 label=f"N={N}, from 10% flipped")
    ax1.axhline(100 * ERROR_LEVEL, color="k", lw=0.8, ls=":", label="1.5 % criterion")
    ax1.axvline(ALPHA_C_THEORY, color="r", lw=1, label="α_c = 0.138 (AGS 1985)")
    ax1.set_yscale("log")
    ax1.set_ylim(1e-2, 60)
    ax1.set_xlabel("load α = K / N")
    ax1.set_ylabel("wrong bits at the fixed point (%)")
    ax1.set_title("Retrieval error vs load (async sign dynamics)")
    ax1.legend(fontsize=7, ncol=2)

    Ns = np.asarray(summary["N"], float)
    nn = np.geomspace(Ns.min() * 0.9, Ns.max() * 1.1, 100)
    ax2.axhspan(0.85 * ALPHA_C_THEORY, 1.15 * ALPHA_C_THEORY, color="r", alpha=0.1, label="0.138 ± 15 %")
    ax2.axhline(ALPHA_C_THEORY, color="r", lw=1, label="α_c = 0.138 (theory)")
    nan = lambda v: np.nan if v is None else v  # noqa: E731
    ax2.plot(Ns, [nan(v) for v in summary["alpha_c"]], "o-", color="C0", label="α_c measured (from pattern)")
    ax2.plot(Ns, [nan(v) for v in summary["alpha_c_flipped"]], "s--", color="C0", alpha=0.6,
             label="α_c measured (from 10 % flipped)")
    ax2.plot(Ns, [nan(v) for v in summary["alpha_perfect"]], "^-", color="C2", label="perfect recall (90 % of patterns)")
    ax2.plot(nn, 1 / (2 * np.log(nn)), color="C2", lw=1, label="1 / (2 ln N) (perfect-recall theory)")
    ax2.set_xscale("log")
    ax2.set_xticks(Ns, [str(int(n)) for n in Ns])
    ax2.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax2.set_xlabel("neurons N")
    ax2.set_ylabel("critical load K / N")
    ax2.set_ylim(0, 0.2)
    ax2.set_title("Capacity of the classical Hopfield network")
    ax2.legend(fontsize=7)
    save_figure(fig, path)


def main(argv=None) -> dict:
    args, mode, grid, config, out, ck = cap.start(NAME, __doc__, GRIDS, argv, lambda grid: {
        "error_level": ERROR_LEVEL, "flip_fraction": FLIP_FRACTION, "max_sweeps": MAX_SWEEPS, **grid})
    keys = [f"N={N},alpha={a:.3f}" for N in grid["Ns"] for a in grid["alphas"]]
    params = {f"N={N},alpha={a:.3f}": (N, a) for N in grid["Ns"] for a in grid["alphas"]}
    done = cap.run_grid(
        keys, lambda k: point(*params[k], grid["bits_per_point"], grid["min_patterns"], args.seed), ck,
        desc=f"classical capacity ({mode})", progress=not args.no_progress,
    )
    points = [done[k] for k in keys]
    summary = analyse(points, grid["Ns"])
    result = {
        "study": NAME,
        "criterion": ("alpha_c = smallest load K/N at which the mean fraction of wrong bits at the fixed point "
                      "reached from the stored pattern (async sign dynamics, random order) is >= 1.5 %, "
                      "linearly interpolated between grid loads; alpha_c_flipped: the same from 10 %-flipped "
                      "starts; alpha_perfect: load at which fewer than 90 % of patterns are recalled with no "
                      "wrong bit"),
        "alpha_c_theory": ALPHA_C_THEORY,
        **summary,
        "config": config,
        "points": points,
    }
    write_json(out.path("json"), result)
    write_csv(out.path("csv"), [
        {"N": p["N"], "K": p["K"], "load": p["load"], "patterns": p["patterns"],
         **{f"stored_{k}": v for k, v in p["stored"].items()},
         **{f"flipped_{k}": v for k, v in p["flipped"].items()},
         "max_sweeps_used": p["max_sweeps_used"], "all_converged": p["all_converged"]}
        for p in points
    ])
    figure(points, summary, out.path("png"))
    print("N        :", summary["N"])
    print("alpha_c  :", [None if v is None else round(v, 4) for v in summary["alpha_c"]], f"(theory {ALPHA_C_THEORY})")
    print("flipped  :", [None if v is None else round(v, 4) for v in summary["alpha_c_flipped"]])
    print("perfect  :", [None if v is None else round(v, 4) for v in summary["alpha_perfect"]],
          "(1/(2 ln N):", [round(v, 4) for v in summary["alpha_perfect_theory"]], ")")
    print("wrote", out.path("json"))
    return result


if __name__ == "__main__":
    main()
