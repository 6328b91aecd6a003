"""Capacity of Dense Associative Memories: polynomial F(z) = zⁿ (Krotov & Hopfield 2016)
and exponential F(z) = eᶻ (Demircigil et al. 2017).

K random ±1 patterns of N bits are stored in ``ham.memories.dense(patterns, n)`` or
``ham.memories.exponential(patterns)``; each queried pattern is run through asynchronous
sign dynamics (random order per sweep) from the pattern itself to a fixed point, and
counts as retrieved when the fixed point equals it exactly. **K_max(N) is the number of
patterns at which the fraction retrieved exactly falls to 90 %**, found by a geometric
search in K (ratio √2, then one refinement at ratio 2^¼) and interpolated in log K between
the two bracketing loads.

Theory: K_max ≈ N^(n−1) / (2 (2n−3)!! ln N) (Krotov & Hopfield 2016), so log K_max grows
with slope n − 1 in log N (minus 1/ln N from the logarithm, reported as
``slope_log_corrected`` = slope of log(K_max ln N)); the exponential DAM stores
exp(αN) patterns (Demircigil et al. 2017 prove α ≥ ln 2 / 2 for exact patterns).

Implementation note: each (model, N) is compiled once for a padded pattern count
K_cap ≥ K; rows beyond K are zero vectors, which are exactly inert in these dynamics
(F(0) = 0 for zⁿ; for eᶻ they add the same constant to both sides of the update
comparison, so no sign changes), and only real patterns are queried.

    python -m experiments.dense_capacity [--quick | --smoke] [--results-dir DIR] [--seed S]
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

NAME = "dense"
LEVEL = 0.9  # fraction of patterns retrieved exactly at K_max
MAX_SWEEPS = 100
MAX_QUERIES = 256

GRIDS = {
    "full": dict(
        poly={2: [64, 128, 256, 512, 1024], 3: [16, 24, 32, 48, 64, 96, 128], 4: [12, 16, 24, 32, 48, 64]},
        exp=[6, 8, 10, 12, 14, 16, 18, 20], patterns_per_point=1024,
    ),
    "quick": dict(poly={2: [32, 64, 128], 3: [16, 32, 64], 4: [12, 24, 48]}, exp=[8, 12, 16],
                  patterns_per_point=256),
    "smoke": dict(poly={2: [32, 64]}, exp=[8, 12], patterns_per_point=64),
}


def double_factorial(k: int) -> int:
    return math.prod(range(k, 0, -2)) if k > 0 else 1


def theory_poly(N: int, n: int) -> float:
    """Krotov & Hopfield 2016: K_max ≈ N^(n−1) / (2 (2n−3)!! ln N)."""
    return N ** (n - 1) / (2 * double_factorial(2 * n - 3) * math.log(N))


def guess(model: str, N: int) -> float:
    """Where the search in K starts (only a starting point; the search brackets the truth)."""
    if model == "exp":
        return max(2.0, math.exp(0.6 * N) / 20)
    return max(2.0, theory_poly(N, int(model)))


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5, 6))
def _accuracy(key, K, N: int, K_cap: int, Q: int, T: int, model: str):
    """Fraction of Q queried stored patterns (per trial, T trials) whose async fixed point
    equals them; K (traced) real patterns padded to K_cap rows that the memory's active
    mask switches off (one compilation serves every K of a bucket)."""

    def trial(key):
        k_pat, k_pick, k_ord = jax.random.split(key, 3)
        real = jnp.arange(K_cap) < K
        xi = jax.random.rademacher(k_pat, (K_cap, N)).astype(jnp.float32) * real[:, None]
        memory = (ham.memories.exponential(xi, active=real) if model == "exp"
                  else ham.memories.dense(xi, n=int(model), active=real))
        # Q distinct patterns, real ones first in random order (pads only if Q > K; masked out)
        pick = jnp.argsort(jax.random.uniform(k_pick, (K_cap,)) + 2.0 * (~real))[:Q]
        valid = real[pick]
        # padded query slots re-query the first picked (real) pattern, masked out below: a
        # zero query would wander from sign(0) = +1…1 for many sweeps and stall the batch
        queries = xi[jnp.where(valid, pick, pick[0])]
        states = memory.retrieve(queries, mode="async", max_sweeps=MAX_SWEEPS, key=k_ord)
        ok = jnp.all(states == queries, axis=1) & valid
        return jnp.sum(ok), jnp.sum(valid)

    ok, n = jax.lax.map(trial, jax.random.split(key, T))
    return jnp.sum(ok), jnp.sum(n)


def next_pow2(x: float) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1.0, x))))


def point(model: str, N: int, K: int, patterns_per_point: int, seed: int) -> dict:
    K_cap = next_pow2(max(K, 2 * guess(model, N)))
    Q = min(K_cap, MAX_QUERIES)
    # trials per point depend on the bucket only (so one compilation serves the bucket);
    # the search keeps K >= K_cap / 4 in practice, so each point sees >= patterns_per_point queries
    T = max(1, math.ceil(patterns_per_point / max(1, min(Q, K_cap // 4))))
    key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), N), K),
                             0 if model == "exp" else int(model))
    ok, n = _accuracy(key, jnp.int32(K), N, K_cap, Q, T, model)
    return {"model": model, "N": N, "K": K, "accuracy": float(ok) / float(n), "queries": int(n)}


def search(model: str, N: int, evaluate) -> tuple[float, list[dict]]:
    """Geometric search for the K where accuracy crosses LEVEL; returns (K_max, points)."""
    g = guess(model, N)
    seen: dict[int, dict] = {}

    def acc(K):
        K = max(1, int(round(K)))
        if K not in seen:
            seen[K] = evaluate(K)
        return K, seen[K]["accuracy"]

    lo = hi = None
    K, a = acc(g)
    step = math.sqrt(2.0)
    if a >= LEVEL:
        lo = K
        for _ in range(12):
            K2, a2 = acc(max(K + 1, K * step))
            if a2 < LEVEL:
                hi = K2
                break
            lo, K = K2, K2
    else:
        hi = K
        for _ in range(12):
            if K == 1:
                break
            K2, a2 = acc(min(K - 1, K / step))
            if a2 >= LEVEL:
                lo = K2
                break
            hi, K = K2, K2
    if lo is not None and hi is not None and hi - lo > 1:
        mid, am = acc(math.sqrt(lo * hi))
        if lo < mid < hi:
            lo, hi = (mid, hi) if am >= LEVEL else (lo, mid)
    pts = sorted(seen.values(), key=lambda p: p["K"])
    if lo is None:
        return float("nan"), pts
    if hi is None:
        return float(lo), pts
    a_lo, a_hi = seen[lo]["accuracy"], seen[hi]["accuracy"]
    t = (a_lo - LEVEL) / (a_lo - a_hi) if a_lo != a_hi else 0.0
    return float(math.exp(math.log(lo) + t * (math.log(hi) - math.log(lo)))), pts


def figure(result: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    for i, n in enumerate(result["n"]):
        c = result["curves"][str(n)]
        Ns, Ks = np.asarray(c["N"], float), np.asarray(c["K_max"], float)
        color = f"C{i}"
        ax1.loglog(Ns, Ks, "o", color=color, label=f"n={n}: measured, slope {result['slope'][i]:.2f} (theory {n - 1})")
        fit = np.polyfit(np.log(Ns), np.log(Ks), 1)
        nn = np.geomspace(Ns.min(), Ns.max(), 50)
        ax1.loglog(nn, np.exp(np.polyval(fit, nn * 0 + np.log(nn))), "-", color=color, lw=1)
        ax1.loglog(nn, [theory_poly(x, n) for x in nn], "--", color=color, lw=1, alpha=0.7,
                   label=f"n={n}: N^{n - 1}/(2(2n−3)!! ln N)")
    ax1.set_xlabel("neurons N")
    ax1.set_ylabel("capacity K_max (90 % of patterns exact)")
    ax1.set_title("Polynomial DAM, F(z) = zⁿ (Krotov & Hopfield 2016)")
    ax1.legend(fontsize=7)

    Ne, Ke = np.asarray(result["exp_N"], float), np.asarray(result["exp_capacity"], float)
    ax2.semilogy(Ne, Ke, "o", color="C3", label=f"exponential DAM: measured, rate {result['exp_rate']:.3f} per neuron")
    fit = np.polyfit(Ne, np.log(Ke), 1)
    ax2.semilogy(Ne, np.exp(np.polyval(fit, Ne)), "-", color="C3", lw=1, label="fit K = A·exp(rate·N)")
    ax2.semilogy(Ne, 2 ** (Ne / 2), "--", color="k", lw=1, label="2^(N/2) (Demircigil et al. bound: rate ln2/2)")
    ax2.set_xlabel("neurons N")
    ax2.set_ylabel("capacity K_max (90 % of patterns exact)")
    ax2.set_title("Exponential DAM, F(z) = eᶻ (Demircigil et al. 2017)")
    ax2.legend(fontsize=7)
    save_figure(fig, path)


def main(argv=None) -> dict:
    args, mode, grid, config, out, ck = cap.start(NAME, __doc__, GRIDS, argv, lambda grid: {
        "level": LEVEL, "max_sweeps": MAX_SWEEPS, "max_queries": MAX_QUERIES,
        "poly": {str(k): v for k, v in grid["poly"].items()}, "exp": grid["exp"],
        "patterns_per_point": grid["patterns_per_point"]})
    from tqdm import tqdm

    jobs = [(str(n), N) for n, Ns in grid["poly"].items() for N in Ns] + [("exp", N) for N in grid["exp"]]
    capacities: dict[tuple[str, int], float] = {}
    points: list[dict] = []
    bar = tqdm(jobs, desc=f"dense capacity ({mode})", disable=args.no_progress, dynamic_ncols=True)
    for model, N in bar:
        bar.set_postfix_str(f"model={model},N={N}")

        def evaluate(K, model=model, N=N):
            k = f"model={model},N={N},K={K}"
            if k not in ck:
                ck.put(k, point(model, N, K, grid["patterns_per_point"], args.seed))
            return ck[k]

        capacities[(model, N)], pts = search(model, N, evaluate)
        points += pts

    result: dict = {"study": NAME,
                    "criterion": "K_max = number of stored random ±1 patterns at which 90 % of the queried stored "
                                 "patterns are still exact fixed points of async sign dynamics started from them "
                                 "(log-interpolated between bracketing K)",
                    "n": [], "slope": [], "slope_theory": [], "slope_log_corrected": [], "curves": {}}
    for n, Ns in grid["poly"].items():
        Ks = [capacities[(str(n), N)] for N in Ns]
        result["n"].append(n)
        result["slope"].append(cap.loglog_slope(Ns, Ks))
        result["slope_theory"].append(n - 1)
        result["slope_log_corrected"].append(cap.loglog_slope(Ns, [k * math.log(N) for k, N in zip(Ks, Ns)]))
        result["curves"][str(n)] = {"N": Ns, "K_max": Ks, "K_theory": [theory_poly(N, n) for N in Ns]}
    result["exp_N"] = list(grid["exp"])
    result["exp_capacity"] = [capacities[("exp", N)] for N in grid["exp"]]
    result["exp_rate"] = cap.semilog_slope(result["exp_N"], result["exp_capacity"])
    result["exp_rate_bound"] = math.log(2) / 2
    result["config"] = config
    result["points"] = points
    write_json(out.path("json"), result)
    write_csv(out.path("csv"), points)
    figure(result, out.path("png"))
    for n, s, sc in zip(result["n"], result["slope"], result["slope_log_corrected"]):
        c = result["curves"][str(n)]
        print(f"n={n}: slope {s:.3f} (theory {n - 1}; log-corrected {sc:.3f});  K_max",
              {N: round(K, 1) for N, K in zip(c["N"], c["K_max"])})
    print(f"exponential: K_max", {N: round(K, 1) for N, K in zip(result["exp_N"], result["exp_capacity"])},
          f"rate {result['exp_rate']:.3f} per neuron (ln2/2 = {result['exp_rate_bound']:.3f})")
    print("wrote", out.path("json"))
    return result


if __name__ == "__main__":
    main()
