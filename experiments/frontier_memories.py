"""Study of the two newest Dense Associative Memories (issue 22): the random-feature
DenseAM (Hoover et al. 2024) and the Epanechnikov / log-sum-ReLU energy (Hoover et al. 2025).

Run: ``python -m experiments.frontier_memories`` (``--quick``: a smaller grid, minutes;
``--smoke``: seconds, for the tests). Writes ``experiments/results/frontier_memories.json``
and ``frontier_memories.png`` (``--quick``: ``frontier_memories_quick.*``; ``--results-dir``
elsewhere). Sections (each resumable: finished sections are kept in a git-ignored
``*.checkpoint.json`` and skipped on a rerun with the same settings):

- ``rf_error``: the random-feature estimate against the exact L2 log-sum-exp
  (``ham.memories.log_sum_exp``) on queries near memories (ξ_μ + N(0, 1/(4βD))): relative
  error of the kernel sum, absolute energy error and relative gradient error (RMS over
  queries and seeds), vs the number of features Y, for both feature kinds and several β;
  the log-log slope of the energy error vs Y fitted (least squares, 95 % t-interval) over
  the points where the kernel sum's relative error is < 0.1 and no query is clipped.
- ``rf_agreement``: retrieval (relaxation to a fixed point) of noisy queries by the
  random-feature memory vs the exact memory, vs Y, K and β, both kinds: ``agree`` = the
  fraction of queries whose two fixed points are within 0.1 × √(2/β) of each other,
  ``same_nearest`` = same nearest stored pattern, ``clipped_at_start``.
- ``rf_scale``: bytes and queries per second vs K (patterns written in chunks, online) of a
  trigonometric memory with Y features beside the exact ``modern`` memory retrieved with
  ``ham.memories.sharded_retrieve`` (mesh over the local devices) in the same process, and
  agreement with it. Patterns on the sphere of radius √D (then the L2 log-sum-exp and
  ``modern`` have the same fixed points).
- ``epa_retrieval``: Epanechnikov, random Gaussian patterns: the fraction of stored patterns
  that are exact fixed points (relaxation from ξ_μ does not move) vs K and β, beside the
  prediction "min_ν ||ξ_μ − ξ_ν||² ≥ 2/β", and the fraction retrieved from a start 0.3
  radii away.
- ``epa_census``: the number of distinct local minima (``ham.landscape.census``) reached
  from starts drawn uniformly inside the supports (outside every support each point is
  a fixed point on the plateau: excluded), classified stored (within 0.1 radii of a
  stored pattern) vs emergent, beside the log-sum-exp memory at the same β from the same
  starts, on random patterns and on scikit-learn digits (scaled to [0, 1]); β in units
  of β₀ = 2 / median nearest-neighbour squared distance (at β₀ half the patterns are
  isolated). Barriers: for each emergent minimum, the maximum of the energy on the
  straight segment to its nearest stored minimum, minus its energy (a path maximum, not
  a refined saddle: barriers sit on ReLU kinks).
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from ._io import read_json, results_dir, write_json

# --------------------------------------------------------------------------- settings
SETTINGS = {
    "smoke": dict(
        rf_error=dict(dim=8, k=16, betas=[0.3], ys=[64, 256, 1024], seeds=4, queries=8),
        rf_agreement=dict(dim=8, ks=[16], betas=[0.3], ys=[256], queries=8),
        rf_scale=dict(dim=16, y=256, ks=[1000, 4000], beta=0.5, queries=32, chunk=2000, max_steps=200),
        epa_retrieval=dict(dim=4, ks=[16], beta_units=[1.0]),
        epa_census=dict(random_dim=4, random_ks=[16], digits_ks=[32], beta_units=[1.0], starts=64),
    ),
    "quick": dict(
        rf_error=dict(dim=16, k=16, betas=[0.03, 0.3, 1.0], ys=[64, 256, 1024, 2048, 4096, 8192, 16384], seeds=8,
                      queries=32),
        rf_agreement=dict(dim=16, ks=[16, 256], betas=[0.1, 1.0], ys=[256, 4096], queries=64),
        rf_scale=dict(dim=64, y=4096, ks=[1000, 10_000, 100_000], beta=0.25, queries=64, chunk=50_000,
                      max_steps=1000),
        epa_retrieval=dict(dim=8, ks=[16, 128], beta_units=[0.5, 1.0, 2.0]),
        epa_census=dict(random_dim=8, random_ks=[32, 128], digits_ks=[128], beta_units=[0.5, 1.0, 2.0], starts=512),
    ),
    "default": dict(
        rf_error=dict(dim=16, k=16, betas=[0.03, 0.1, 0.3, 1.0],
                      ys=[64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536], seeds=16, queries=32),
        rf_agreement=dict(dim=16, ks=[16, 64, 256, 1024], betas=[0.1, 0.3, 1.0], ys=[256, 1024, 4096, 16384],
                          queries=128),
        rf_scale=dict(dim=64, y=4096, ks=[1000, 10_000, 100_000, 1_000_000], beta=0.25, queries=64, chunk=50_000,
                      max_steps=1000),
        epa_retrieval=dict(dim=8, ks=[16, 64, 256, 1024], beta_units=[0.25, 0.5, 1.0, 2.0, 4.0]),
        epa_census=dict(random_dim=8, random_ks=[32, 128, 512], digits_ks=[128, 512], beta_units=[0.5, 1.0, 2.0, 4.0],
                        starts=2048),
    ),
}
SECTIONS = ("rf_error", "rf_agreement", "rf_scale", "epa_retrieval", "epa_census")


def _progress(iterable, desc, enabled):
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, disable=not enabled, file=sys.stderr)


def _fit_slope(x, y):
    """Least-squares slope of log y on log x with its 95 % t-interval."""
    from scipy import stats

    lx, ly = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    n = len(lx)
    if n < 3:
        return dict(slope=None, ci95=None, points=n)
    res = stats.linregress(lx, ly)
    half = stats.t.ppf(0.975, n - 2) * res.stderr
    return dict(slope=float(res.slope), ci95=[float(res.slope - half), float(res.slope + half)], points=n)


# --------------------------------------------------------------------------- random features
def rf_error(cfg, progress):
    import jax
    import jax.numpy as jnp

    import ham.memories as M

    rng = np.random.default_rng(0)
    d, k = cfg["dim"], cfg["k"]
    patterns = rng.normal(size=(k, d))
    rows, fits = [], []
    for kind in ("trigonometric", "positive"):
        for beta in cfg["betas"]:
            idx = rng.integers(0, k, cfg["queries"])
            queries = jnp.asarray(patterns[idx] + 0.5 * rng.normal(size=(cfg["queries"], d)) / math.sqrt(beta * d),
                                  jnp.float32)
            exact = M.log_sum_exp(patterns, beta)
            e_exact = np.asarray(exact.energy(queries), np.float64)
            s_exact = np.asarray(exact.kernel_sum(queries), np.float64)
            g_exact = np.asarray(exact.gradient(queries), np.float64)
            keys = jax.random.split(jax.random.key(1), cfg["seeds"])
            for y in _progress(cfg["ys"], f"rf_error {kind} beta={beta}", progress):
                def one(key, y=y, beta=beta, kind=kind):
                    mem = M.random_features(patterns.astype(np.float32), beta, y, kind=kind, key=key)
                    return mem.estimate(queries), mem.energy(queries), mem.gradient(queries), mem.clipped(queries)

                s, e, g, c = (np.asarray(a, np.float64) for a in jax.jit(jax.vmap(one))(keys))
                rel_s = float(np.sqrt(np.mean(((s - s_exact) / s_exact) ** 2)))
                err_e = float(np.sqrt(np.nanmean(np.where(c > 0, np.nan, e - e_exact) ** 2))) if not c.all() else None
                gn = np.linalg.norm(g_exact, axis=-1)
                rel_g = float(np.sqrt(np.nanmean((np.linalg.norm(g - g_exact, axis=-1) / gn) ** 2)))
                rows.append(dict(kind=kind, beta=beta, y=y, kernel_rel_error=rel_s, energy_error=err_e,
                                 gradient_rel_error=rel_g, clipped_fraction=float(c.mean())))
            sel = [r for r in rows if r["kind"] == kind and r["beta"] == beta and r["kernel_rel_error"] < 0.1
                   and r["clipped_fraction"] == 0 and r["energy_error"]]
            fit = _fit_slope([r["y"] for r in sel], [r["energy_error"] for r in sel])
            gfit = _fit_slope([r["y"] for r in sel], [r["gradient_rel_error"] for r in sel])
            fits.append(dict(kind=kind, beta=beta, energy=fit, gradient=gfit, ys=[r["y"] for r in sel]))
    return dict(config=cfg, rows=rows, fits=fits,
                claim="energy error ~ Y^(-1/2) while the kernel sum's relative error << 1 (Hoover et al. 2024, Thm 1)")


def _close(a, b, beta):
    """Fixed points within 0.1 support radii sqrt(2/beta) of each other."""
    return np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64), axis=-1) <= 0.1 * math.sqrt(2 / beta)


def _nearest(x, patterns):
    x = np.asarray(x, np.float64)
    return np.argmin((x**2).sum(-1)[:, None] - 2 * x @ patterns.T + (patterns**2).sum(-1)[None], axis=1)


def rf_agreement(cfg, progress):
    import jax
    import jax.numpy as jnp

    import ham.memories as M

    rng = np.random.default_rng(2)
    d = cfg["dim"]
    rows = []
    grid = [(k, b) for k in cfg["ks"] for b in cfg["betas"]]
    for k, beta in _progress(grid, "rf_agreement", progress):
        patterns = rng.normal(size=(k, d)).astype(np.float32)
        idx = rng.integers(0, k, cfg["queries"])
        queries = jnp.asarray(patterns[idx] + 0.3 * rng.normal(size=(cfg["queries"], d)) / math.sqrt(beta * d),
                              jnp.float32)
        exact = np.asarray(M.log_sum_exp(patterns, beta).retrieve(queries))
        for kind in ("trigonometric", "positive"):
            for y in cfg["ys"]:
                mem = M.random_features(patterns, beta, y, kind=kind, key=jax.random.key(y))
                sol = mem.relax(queries)
                out = np.asarray(sol.states["x"])
                rows.append(dict(kind=kind, k=k, beta=beta, y=y,
                                 agree=float(_close(out, exact, beta).mean()),
                                 same_nearest=float((_nearest(out, patterns) == _nearest(exact, patterns)).mean()),
                                 exact_retrieves_cue=float((_nearest(exact, patterns) == idx).mean()),
                                 clipped_at_start=float(np.asarray(mem.clipped(queries)).mean()),
                                 converged=float(np.asarray(sol.converged).mean())))
    return dict(config=cfg, rows=rows)


def rf_scale(cfg, progress):
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh

    import ham.memories as M

    d, y, beta, b = cfg["dim"], cfg["y"], cfg["beta"], cfg["queries"]
    mesh = Mesh(np.array(jax.devices()), ("patterns",))

    @functools.partial(jax.jit, static_argnums=1)
    def sphere(key, n):
        x = jax.random.normal(key, (n, d), jnp.float32)
        return math.sqrt(d) * x / jnp.linalg.norm(x, axis=-1, keepdims=True)

    def timed(fn, min_time=1.0, repeats=3):
        jax.block_until_ready(fn())  # compile / warm up
        times = []
        while len(times) < repeats or (sum(times) < min_time and len(times) < 20):
            t = time.perf_counter()
            jax.block_until_ready(fn())
            times.append(time.perf_counter() - t)
        return float(np.median(times))

    rows = []
    key = jax.random.key(0)
    mem = None
    written = 0
    chunks = []  # the patterns, kept for the exact memory (generated once, chunk by chunk)
    for k in _progress(cfg["ks"], "rf_scale", progress):
        t_write = 0.0
        while written < k:
            n = min(cfg["chunk"], k - written)
            block = sphere(jax.random.fold_in(key, written), n)
            chunks.append(block)
            t = time.perf_counter()
            if mem is None:
                mem = M.random_features(block, beta, y, key=jax.random.key(1))
            else:
                mem = mem.write(block)
            jax.block_until_ready(mem.tensor)
            t_write += time.perf_counter() - t
            written += n
        patterns = jnp.concatenate(chunks) if len(chunks) > 1 else chunks[0]
        chunks = [patterns]
        noise = jax.random.normal(jax.random.key(2), (b, d), jnp.float32)
        queries = patterns[:b] + 0.5 * noise
        exact = M.shard_memory(M.modern(patterns, beta), mesh, pad=True)
        # the exact fixed point: modern's update iterated (same fixed points as the L2 energy on the sphere)
        t_exact = timed(lambda: M.sharded_retrieve(exact, queries))
        exact_fixed = M.sharded_retrieve(exact, queries, steps=20)
        t_exact_energy = timed(lambda: M.sharded_energy(exact, queries))
        t_rf_energy = timed(lambda: mem.energy(queries))
        steps = cfg["max_steps"]
        out = mem.relax(queries, max_steps=steps)  # compiles and warms up; then one timed relaxation
        t = time.perf_counter()
        jax.block_until_ready(mem.relax(queries, max_steps=steps).states["x"])
        t_rf = time.perf_counter() - t
        rows.append(dict(
            k=k, dim=d, y=y, beta=beta, devices=len(jax.devices()),
            rf_bytes=mem.nbytes, exact_bytes=int(exact.patterns.nbytes),
            rf_retrieve_qps=b / t_rf, rf_energy_qps=b / t_rf_energy,
            exact_retrieve_qps=b / t_exact, exact_energy_qps=b / t_exact_energy,
            rf_write_patterns_per_s=(k - (rows[-1]["k"] if rows else 0)) / max(t_write, 1e-9),
            agree=float(_close(out.states["x"], exact_fixed, beta).mean()),
            same_nearest=float((_nearest(out.states["x"], np.asarray(patterns)) ==
                                _nearest(exact_fixed, np.asarray(patterns))).mean()),
            exact_retrieves_cue=float((_nearest(exact_fixed, np.asarray(patterns)) == np.arange(b)).mean()),
            rf_steps_max=int(np.max(out.num_steps)), rf_converged=float(np.mean(out.converged)),
            clipped_at_start=float(np.mean(mem.clipped(queries))),
        ))
    return dict(config=cfg, rows=rows, break_even_k=cfg["y"] * (1 + 2 / d),
                note="rf retrieve = relaxation to a fixed point (ham.relax); exact retrieve = one sharded modern update")


# --------------------------------------------------------------------------- Epanechnikov
def _beta0(patterns):
    """2 / median nearest-neighbour squared distance, nudged 1e-4 down so that no pair sits
    exactly on a support edge at beta = beta0 (where float32 rounding would decide)."""
    d2 = ((patterns[:, None] - patterns[None]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    return (1 - 1e-4) * 2.0 / float(np.median(d2.min(1))), d2


def epa_retrieval(cfg, progress):
    import jax.numpy as jnp

    import ham.memories as M

    rng = np.random.default_rng(3)
    rows = []
    for k in _progress(cfg["ks"], "epa_retrieval", progress):
        patterns = rng.normal(size=(k, cfg["dim"]))
        beta0, d2 = _beta0(patterns)
        for unit in cfg["beta_units"]:
            beta = unit * beta0
            mem = M.epanechnikov(patterns.astype(np.float32), beta)
            p32 = jnp.asarray(patterns, jnp.float32)
            stays = np.all(np.asarray(mem.retrieve(p32)) == np.asarray(p32), axis=-1)
            predicted = d2.min(1) >= 2 / beta
            u = rng.normal(size=patterns.shape)
            start = p32 + 0.3 * math.sqrt(2 / beta) * u / np.linalg.norm(u, axis=1, keepdims=True)
            back = _close(mem.retrieve(jnp.asarray(start, jnp.float32)), patterns, beta) & stays
            rows.append(dict(k=k, beta_units=unit, beta=beta, fixed_fraction=float(stays.mean()),
                             predicted_fraction=float(predicted.mean()),
                             prediction_matches=float((stays == predicted).mean()),
                             retrieved_from_0p3_radius=float(back.mean())))
    return dict(config=cfg, rows=rows,
                claim="xi_mu is an exact fixed point iff min_nu |xi_mu - xi_nu|^2 >= 2/beta (Hoover et al. 2025)")


def _census_one(mem, patterns, starts, beta, relax_kwargs):
    import jax.numpy as jnp

    from ham.landscape import census

    c = census(mem.network, {"x": jnp.asarray(starts, jnp.float32)}, **relax_kwargs)
    pts = np.asarray(c.points["x"], np.float64)
    near = _nearest(pts, patterns)
    dist = np.linalg.norm(pts - patterns[near], axis=-1)
    stored = dist <= 0.1 * math.sqrt(2 / beta)
    return c, pts, stored, near


def epa_census(cfg, progress):
    import ham.memories as M

    from .data import load_dataset

    rng = np.random.default_rng(4)
    sets = [("random", k, rng.normal(size=(k, cfg["random_dim"]))) for k in cfg["random_ks"]]
    digits = load_dataset("digits").images.reshape(-1, 64).astype(np.float64)  # in [0, 1]
    perm = np.random.default_rng(5).permutation(len(digits))
    sets += [("digits", k, digits[perm[:k]]) for k in cfg["digits_ks"]]
    rows = []
    grid = [(s, u) for s in sets for u in cfg["beta_units"]]
    for (name, k, patterns), unit in _progress(grid, "epa_census", progress):
        patterns = np.unique(patterns, axis=0)
        beta0, _ = _beta0(patterns)
        beta = unit * beta0
        r = math.sqrt(2 / beta)
        d = patterns.shape[1]
        idx = rng.integers(0, len(patterns), cfg["starts"])
        u = rng.normal(size=(cfg["starts"], d))
        radius = r * rng.uniform(size=(cfg["starts"], 1)) ** (1 / d)
        starts = patterns[idx] + radius * u / np.linalg.norm(u, axis=1, keepdims=True)  # uniform in the supports
        epa = M.epanechnikov(patterns.astype(np.float32), beta)
        lse = M.log_sum_exp(patterns.astype(np.float32), beta)
        row = dict(data=name, k=len(patterns), dim=d, beta_units=unit, beta=beta, starts=cfg["starts"])
        for label, mem in (("epanechnikov", epa), ("log_sum_exp", lse)):
            # census relaxes the raw network: give it the memory's own step cap (see OneLayerMemory)
            c, pts, stored, near = _census_one(mem, patterns, starts, beta, {"dtmax": mem._default_dtmax})
            row[label] = dict(minima=int(len(pts)), stored=int(stored.sum()), emergent=int((~stored).sum()),
                              converged=float(np.mean(c.converged)),
                              starts_to_emergent=float(np.sum(np.asarray(c.counts)[~stored]) / cfg["starts"]))
            if label == "epanechnikov":
                # float32 round-off of the split energy (1/2|x|^2 + (E - 1/2|x|^2)) grows with |x|^2: a start
                # within ~1e-3 of a support's edge (gradient ~ 1/(eps + S)) can be thrown onto the plateau
                # with the step accepted; those endpoints (outside every support) are not minima: excluded
                counts = np.asarray(epa.support_counts(pts.astype(np.float32)))
                off = counts == 0
                row[label]["escaped_to_plateau_starts"] = float(np.sum(np.asarray(c.counts)[off]) / cfg["starts"])
                stored_all = stored
                stored, pts_in, counts = stored[~off], pts[~off], counts[~off]
                energies_in = np.asarray(c.energies)[~off]
                row[label].update(minima=int(len(pts_in)), stored=int(stored.sum()), emergent=int((~stored).sum()),
                                  starts_to_emergent=float(np.sum(np.asarray(c.counts)[~off][~stored]) / cfg["starts"]))
                del stored_all
                pts = pts_in
                row[label]["supports_at_emergent_median"] = float(np.median(counts[~stored])) if (~stored).any() else None
                barriers = []
                stored_pts = pts[stored]
                for x in pts[~stored][:50]:
                    if not len(stored_pts):
                        break
                    target = stored_pts[np.argmin(np.linalg.norm(stored_pts - x, axis=1))]
                    path = x[None] + np.linspace(0, 1, 201)[:, None] * (target - x)[None]
                    e = np.asarray(epa.energy(path.astype(np.float32)), np.float64)
                    barriers.append(float(e.max() - e[0]))
                row[label]["barrier_median"] = float(np.median(barriers)) if barriers else None
                row[label]["barrier_zero_fraction"] = float(np.mean(np.asarray(barriers) <= 1e-6)) if barriers else None
                row[label]["emergent_energy_below_stored_fraction"] = (
                    float(np.mean(energies_in[~stored] < -np.log(1 + epa.eps) / beta))
                    if (~stored).any() else None)
        rows.append(row)
    return dict(config=cfg, rows=rows, census="ham.landscape.census",
                claim="log-sum-ReLU has many emergent local minima beside perfect recall of stored patterns, "
                      "log-sum-exp at the same beta few (Hoover et al. 2025)")


# --------------------------------------------------------------------------- figure, main
def figure(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(19, 4.2))
    sec = result["sections"]
    ax = axes[0]
    if "rf_error" in sec:
        for kind, ls in (("trigonometric", "-"), ("positive", "--")):
            for beta in sec["rf_error"]["config"]["betas"]:
                rows = [r for r in sec["rf_error"]["rows"] if r["kind"] == kind and r["beta"] == beta and r["energy_error"]]
                if rows:
                    ax.loglog([r["y"] for r in rows], [r["energy_error"] for r in rows], ls, marker="o", ms=3,
                              label=f"{kind[:4]} β={beta}")
        ax.set_xlabel("features Y")
        ax.set_ylabel("RMS energy error")
        ax.set_title("random features: energy error vs Y")
        ax.legend(fontsize=7)
    ax = axes[1]
    if "rf_agreement" in sec:
        rows = sec["rf_agreement"]["rows"]
        for kind, ls in (("trigonometric", "-"), ("positive", "--")):
            for k in sorted({r["k"] for r in rows}):
                for beta in sorted({r["beta"] for r in rows}):
                    rr = [r for r in rows if r["kind"] == kind and r["k"] == k and r["beta"] == beta]
                    ax.semilogx([r["y"] for r in rr], [r["agree"] for r in rr], ls, marker="o", ms=3,
                                label=f"{kind[:4]} K={k} β={beta}")
        ax.set_xlabel("features Y")
        ax.set_ylabel("agreement with exact fixed point")
        ax.set_title("retrieval agreement")
        ax.legend(fontsize=5, ncol=2)
    ax = axes[2]
    if "rf_scale" in sec:
        rows = sec["rf_scale"]["rows"]
        ks = [r["k"] for r in rows]
        ax.loglog(ks, [r["rf_bytes"] for r in rows], "-o", label="random features: bytes")
        ax.loglog(ks, [r["exact_bytes"] for r in rows], "-s", label="modern (exact): bytes")
        ax.set_xlabel("stored patterns K")
        ax.set_ylabel("bytes")
        ax2 = ax.twinx()
        ax2.loglog(ks, [r["rf_energy_qps"] for r in rows], ":o", color="C2", label="RF energy q/s")
        ax2.loglog(ks, [r["exact_energy_qps"] for r in rows], ":s", color="C3", label="exact energy q/s")
        ax2.set_ylabel("queries / s")
        ax.legend(fontsize=7, loc="upper left")
        ax2.legend(fontsize=7, loc="lower left")
        ax.set_title("footprint and speed vs K")
    ax = axes[3]
    if "epa_census" in sec:
        rows = sec["epa_census"]["rows"]
        labels = [f"{r['data'][:4]} K={r['k']} {r['beta_units']}β₀" for r in rows]
        x = np.arange(len(rows))
        ax.bar(x - 0.2, [r["epanechnikov"]["stored"] for r in rows], 0.4, label="LSR stored")
        ax.bar(x - 0.2, [r["epanechnikov"]["emergent"] for r in rows], 0.4,
               bottom=[r["epanechnikov"]["stored"] for r in rows], label="LSR emergent")
        ax.bar(x + 0.2, [r["log_sum_exp"]["stored"] for r in rows], 0.4, label="LSE stored")
        ax.bar(x + 0.2, [r["log_sum_exp"]["emergent"] for r in rows], 0.4,
               bottom=[r["log_sum_exp"]["stored"] for r in rows], label="LSE other")
        ax.set_xticks(x, labels, rotation=70, fontsize=6)
        ax.set_ylabel("distinct local minima found")
        ax.set_title("Epanechnikov (LSR) vs log-sum-exp minima")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parser():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smaller grid (minutes)")
    ap.add_argument("--smoke", action="store_true", help="a tiny grid (seconds; for the tests)")
    ap.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    ap.add_argument("--rerun", nargs="+", choices=SECTIONS, default=[], help="recompute these sections")
    ap.add_argument("--results-dir", type=Path, default=None)
    ap.add_argument("--devices", type=int, default=None,
                    help="virtual CPU devices for the sharded exact memory (sets XLA_FLAGS before JAX starts)")
    ap.add_argument("--no-progress", dest="progress", action="store_false")
    return ap


def main(argv=None):
    args = parser().parse_args(argv)
    if args.devices:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={args.devices}").strip()
    mode = "smoke" if args.smoke else "quick" if args.quick else "default"
    settings = SETTINGS[mode]
    out_dir = results_dir(args.results_dir)
    stem = "frontier_memories" + ("" if mode == "default" else f"_{mode}")
    checkpoint = out_dir / f"{stem}.checkpoint.json"
    done = read_json(checkpoint, default={}) or {}
    if done.get("settings") != settings:  # a finished run with the same settings keeps its other sections
        done = read_json(out_dir / f"{stem}.json", default={}) or {}
        done = {"settings": settings, "sections": done.get("sections", {}) if done.get("settings") == settings else {}}
    for name in args.rerun:
        done["sections"].pop(name, None)
    fns = dict(rf_error=rf_error, rf_agreement=rf_agreement, rf_scale=rf_scale, epa_retrieval=epa_retrieval,
               epa_census=epa_census)
    for name in args.sections:
        if name in done["sections"]:
            continue
        t = time.time()
        res = fns[name](settings[name], args.progress)
        res["seconds"] = time.time() - t
        done["sections"][name] = res
        write_json(checkpoint, done)
    import jax

    result = dict(
        command="python -m experiments.frontier_memories" + ("" if mode == "default" else f" --{mode}")
        + ("" if set(args.sections) == set(SECTIONS) else " --sections " + " ".join(args.sections)),
        mode=mode, settings=settings, sections=dict(done["sections"]),
        machine=dict(devices=[str(d) for d in jax.devices()], cpu_count=os.cpu_count()),
    )
    write_json(out_dir / f"{stem}.json", result)
    figure(result, out_dir / f"{stem}.png")
    if checkpoint.exists() and set(args.sections) <= set(done["sections"]):
        checkpoint.unlink()
    return result


if __name__ == "__main__":
    main()
