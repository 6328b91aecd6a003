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
- ``rf_scale``: bytes, queries per second and agreement vs K up to 10⁷ (default) of a
  trigonometric memory with Y features, written online in chunks (the library's blocked
  ``write``), beside the exact ``modern`` memory sharded over all local devices (the default
  run sets ``--xla_force_host_platform_device_count=8`` before JAX starts: 8 virtual CPU
  devices, as ``bench_scale`` does) and retrieved with ``ham.memories.sharded_retrieve`` /
  ``sharded_energy`` in the same process. Patterns on the sphere of radius √D (then the L2
  log-sum-exp and ``modern`` have the same fixed points), made on the devices in row blocks
  from a key (the first K rows are the same at every K); queries ξ + N(0, 1/(βD)). Timed in
  interleaved rounds (medians): one update x − ∇E(x) (exact: one modern update) and the
  energy; agreement of the random-feature fixed point (``relax``) with the exact one (its
  update iterated). Checkpointed after every K (rows and the written tensor).
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
        rf_scale=dict(dim=16, y=256, ks=[1000, 4000], beta=1.0, queries=16, chunk=2000, gen_block=100,
                      max_steps=200, exact_steps=10, repeats=2, devices=None),
        epa_retrieval=dict(dim=4, ks=[16], beta_units=[1.0]),
        epa_census=dict(random_dim=4, random_ks=[16], digits_ks=[32], beta_units=[1.0], starts=64),
    ),
    "quick": dict(
        rf_error=dict(dim=16, k=16, betas=[0.03, 0.3, 1.0], ys=[64, 256, 1024, 2048, 4096, 8192, 16384], seeds=8,
                      queries=32),
        rf_agreement=dict(dim=16, ks=[16, 256], betas=[0.1, 1.0], ys=[256, 4096], queries=64),
        rf_scale=dict(dim=64, y=4096, ks=[1000, 10_000, 100_000], beta=1.0, queries=32, chunk=1_000_000,
                      gen_block=100, max_steps=300, exact_steps=20, repeats=3, devices=8),
        epa_retrieval=dict(dim=8, ks=[16, 128], beta_units=[0.5, 1.0, 2.0]),
        epa_census=dict(random_dim=8, random_ks=[32, 128], digits_ks=[128], beta_units=[0.5, 1.0, 2.0], starts=512),
    ),
    "default": dict(
        rf_error=dict(dim=16, k=16, betas=[0.03, 0.1, 0.3, 1.0],
                      ys=[64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536], seeds=16, queries=32),
        rf_agreement=dict(dim=16, ks=[16, 64, 256, 1024], betas=[0.1, 0.3, 1.0], ys=[256, 1024, 4096, 16384],
                          queries=128),
        rf_scale=dict(dim=64, y=4096, ks=[200, 1000, 4000, 10_000, 100_000, 1_000_000, 10_000_000], beta=1.0,
                      queries=32, chunk=1_000_000, gen_block=100, max_steps=300, exact_steps=20, repeats=5, devices=8),
        epa_retrieval=dict(dim=8, ks=[16, 64, 256, 1024], beta_units=[0.25, 0.5, 1.0, 2.0, 4.0]),
        epa_census=dict(random_dim=8, random_ks=[32, 128, 512], digits_ks=[128, 512], beta_units=[0.5, 1.0, 2.0, 4.0],
                        starts=1024),
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


def _sphere_patterns(key, num, dim, block, sharding=None):
    """``num`` patterns uniform on the sphere of radius sqrt(dim), row block i (``block`` rows)
    drawn from ``fold_in(key, i)``: the first K rows are the same for every ``num`` >= K.
    With ``sharding``, each device makes only its own rows (no host copy, no full-size
    temporary on one device)."""
    import jax
    import jax.numpy as jnp

    @functools.partial(jax.jit, static_argnums=(1, 2, 3))
    def rows(first, blocks, skip, count):
        def one(i):
            x = jax.random.normal(jax.random.fold_in(key, i), (block, dim), jnp.float32)
            return math.sqrt(dim) * x / jnp.linalg.norm(x, axis=-1, keepdims=True)

        return jax.vmap(one)(first + jnp.arange(blocks)).reshape(-1, dim)[skip:skip + count]

    def part(start, stop, device=None):
        b0, b1 = start // block, -(-stop // block)
        first = jnp.asarray(b0, jnp.int32) if device is None else jax.device_put(jnp.asarray(b0, jnp.int32), device)
        return rows(first, b1 - b0, start - b0 * block, stop - start)

    if sharding is None:
        return part(0, num)
    parts = []
    for device, index in sharding.addressable_devices_indices_map((num, dim)).items():
        sl = index[0]
        parts.append(jax.block_until_ready(part(sl.start or 0, num if sl.stop is None else sl.stop, device)))
    return jax.make_array_from_single_device_arrays((num, dim), sharding, parts)


def rf_scale(cfg, progress, checkpoint=None):
    """Bytes, queries/s and agreement vs K: a trigonometric random-feature memory, written
    online in chunks, beside the exact ``modern`` memory sharded over the mesh of all local
    devices (``sharded_retrieve``/``sharded_energy``), in the same process. Checkpointed per K
    (rows, the written tensor): a rerun resumes at the next K."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    import ham.memories as M

    from ._io import Checkpoint

    d, y, beta, b = cfg["dim"], cfg["y"], cfg["beta"], cfg["queries"]
    devices = jax.devices()
    mesh = Mesh(np.array(devices), ("patterns",))
    rows_sharding = NamedSharding(mesh, P("patterns", None))
    key = jax.random.key(0)
    ck = Checkpoint(checkpoint, cfg) if checkpoint is not None else None
    state = ck["state"] if ck is not None and "state" in ck else None
    rows = list(state["rows"]) if state else []
    mem, written = None, 0
    if state:  # resume: the tensor written so far (omega is redrawn from its key)
        first = _sphere_patterns(key, cfg["gen_block"], d, cfg["gen_block"])
        mem = M.random_features(first[:1], beta, y, key=jax.random.key(1))
        mem = eqx.tree_at(lambda m: (m.tensor, m.count), mem,
                          (jnp.asarray(state["tensor"], mem.dtype), jnp.asarray(state["written"], jnp.int32)))
        written = state["written"]

    rf_update = eqx.filter_jit(lambda m, q: q - m.gradient(q))
    rf_energy = eqx.filter_jit(lambda m, q: m.energy(q))

    @jax.jit
    def nearest(patterns, x):  # on the mesh: argmin over the sharded pattern axis
        sq = jnp.sum(jnp.square(patterns), axis=-1)
        return jnp.argmin(sq[None] - 2.0 * x @ patterns.T, axis=1)

    def clock(fn):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        return time.perf_counter() - t

    todo = [k for k in cfg["ks"] if k > (rows[-1]["k"] if rows else 0)]
    for k in _progress(todo, "rf_scale K", progress):
        if k % cfg["gen_block"] or k % len(devices):
            raise ValueError(f"rf_scale: K={k} must be a multiple of gen_block={cfg['gen_block']} and of the "
                             f"{len(devices)} devices")
        patterns = jax.block_until_ready(_sphere_patterns(key, k, d, cfg["gen_block"], rows_sharding))
        # write the new rows into the random-feature memory, chunk by chunk (online storage), each chunk
        # taken from the device shard that holds it (slicing the sharded array would gather it on every device)
        shards = sorted(((sh.index[0].start or 0, sh.data) for sh in patterns.addressable_shards),
                        key=lambda t: t[0])
        chunks = [(s0, data, a, min(a + cfg["chunk"], s0 + data.shape[0], k)) for s0, data in shards
                  for a in range(max(s0, written), min(s0 + data.shape[0], k), cfg["chunk"])]
        t_write, new = 0.0, k - written
        for s0, data, a, z in _progress(chunks, f"write K={k:,}", progress and len(chunks) > 1):
            block = jax.block_until_ready(jax.device_put(data[a - s0:z - s0], devices[0]))
            t = time.perf_counter()
            mem = (M.random_features(block, beta, y, key=jax.random.key(1)) if mem is None else mem.write(block))
            jax.block_until_ready(mem.tensor)
            t_write += time.perf_counter() - t
            del block
        written = k
        exact = M.shard_memory(M.modern(patterns, beta), mesh, pad=True)
        idx = jnp.arange(b) * (k // b)
        noise = jax.random.normal(jax.random.key(2), (b, d), jnp.float32) / math.sqrt(beta * d)
        cues = [jax.device_put(next(data[i - s0] for s0, data in reversed(shards) if s0 <= i), devices[0])
                for i in np.asarray(idx).tolist()]  # row by row from its shard (no gather of the patterns)
        queries = jnp.stack(cues) + noise  # beta/2 |noise|^2 ~ 1/2
        del shards, chunks
        # one update each (x - grad E: for patterns on a sphere modern's update is the L2 energy's), energy;
        # interleaved timing blocks, medians
        fns = dict(rf_update=lambda: rf_update(mem, queries), rf_energy=lambda: rf_energy(mem, queries),
                   exact_update=lambda: M.sharded_retrieve(exact, queries),
                   exact_energy=lambda: M.sharded_energy(exact, queries))
        for fn in fns.values():
            clock(fn)  # compile / warm up
        times = {name: [] for name in fns}
        for _ in range(cfg["repeats"]):
            for name, fn in fns.items():
                times[name].append(clock(fn))
        med = {name: float(np.median(v)) for name, v in times.items()}
        # fixed points: the exact model's update iterated; the random-feature flow relaxed (ham.relax)
        exact_fixed = M.sharded_retrieve(exact, queries, steps=cfg["exact_steps"])
        exact_moved = float(jnp.max(jnp.linalg.norm(M.sharded_retrieve(exact, exact_fixed) - exact_fixed, axis=-1)))
        mem.relax(queries, max_steps=cfg["max_steps"])  # compile
        t = time.perf_counter()
        sol = mem.relax(queries, max_steps=cfg["max_steps"])
        jax.block_until_ready(sol.states["x"])
        t_relax = time.perf_counter() - t
        out = sol.states["x"]
        replicated = NamedSharding(mesh, P())
        n_rf = np.asarray(nearest(patterns, jax.device_put(out, replicated)))
        n_exact = np.asarray(nearest(patterns, jax.device_put(exact_fixed, replicated)))
        rows.append(dict(
            k=k, dim=d, y=y, beta=beta, devices=len(devices), queries=b,
            rf_bytes=mem.nbytes, exact_bytes=int(patterns.nbytes),
            exact_bytes_per_device=max(int(sh.data.nbytes) for sh in exact.patterns.addressable_shards),
            rf_update_qps=b / med["rf_update"], exact_update_qps=b / med["exact_update"],
            rf_energy_qps=b / med["rf_energy"], exact_energy_qps=b / med["exact_energy"],
            update_speedup=med["exact_update"] / med["rf_update"], energy_speedup=med["exact_energy"] / med["rf_energy"],
            seconds=med, repeats=cfg["repeats"], rf_relax_qps=b / t_relax,
            rf_write_patterns_per_s=new / max(t_write, 1e-9), rf_write_seconds=t_write,
            agree=float(np.mean(_close(out, exact_fixed, beta))),
            fixed_point_distance_median=float(np.median(np.linalg.norm(np.asarray(out) - np.asarray(exact_fixed),
                                                                       axis=-1))),
            same_nearest=float(np.mean(n_rf == n_exact)),
            rf_retrieves_cue=float(np.mean(n_rf == np.asarray(idx))),
            exact_retrieves_cue=float(np.mean(n_exact == np.asarray(idx))),
            exact_fixed_point_residual=exact_moved,
            rf_steps_max=int(np.max(sol.num_steps)), rf_converged=float(np.mean(sol.converged)),
            clipped_at_start=float(np.mean(mem.clipped(queries))),
            kernel_noise_sqrt_k_over_2y=math.sqrt(k / (2 * y)),
            load=os.getloadavg()[0],
        ))
        del exact, patterns, exact_fixed
        if ck is not None:
            ck.put("state", dict(rows=rows, tensor=np.asarray(mem.tensor).tolist(), written=written))
    agreeing = [r["k"] for r in rows if r["agree"] >= 0.9]
    cue = [r["k"] for r in rows if r["rf_retrieves_cue"] >= 0.9]
    same = [r["k"] for r in rows if r["same_nearest"] >= 0.9]
    return dict(config=cfg, rows=rows, break_even_k=cfg["y"] * (1 + 2 / d),
                largest_k_agree_0p9=max(agreeing) if agreeing else None,
                largest_k_rf_retrieves_cue_0p9=max(cue) if cue else None,
                largest_k_same_nearest_0p9=max(same) if same else None,
                support_radius=math.sqrt(2 / beta), typical_pattern_distance=math.sqrt(2 * d),
                note="update = one step x - grad E(x) (exact: one sharded modern update, the same map for patterns "
                     "on a sphere); energy = E(x); timed in interleaved blocks (medians); fixed points: the exact "
                     "update iterated exact_steps times, the random-feature flow relaxed by ham.relax "
                     "(max_steps); agree = fixed points within 0.1 sqrt(2/beta); the random-feature kernel sum's "
                     "noise is about sqrt(K/2Y) against a self term <= 1",
                claim="storage and per-query cost independent of K (Hoover et al. 2024)")


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
        if "rf_update_qps" in rows[0]:
            ax2.loglog(ks, [r["rf_update_qps"] for r in rows], "-.o", color="C4", label="RF update q/s")
            ax2.loglog(ks, [r["exact_update_qps"] for r in rows], "-.s", color="C5", label="exact (sharded) update q/s")
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
    mode = "smoke" if args.smoke else "quick" if args.quick else "default"
    settings = SETTINGS[mode]
    devices = args.devices or (settings["rf_scale"].get("devices") if "rf_scale" in args.sections else None)
    if devices and "jax" not in sys.modules:  # virtual CPU devices for the sharded exact memory: before JAX starts
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={devices}").strip()
    out_dir = results_dir(args.results_dir)
    stem = "frontier_memories" + ("" if mode == "default" else f"_{mode}")
    command = ("python -m experiments.frontier_memories" + ("" if mode == "default" else f" --{mode}")
               + ("" if set(args.sections) == set(SECTIONS) else " --sections " + " ".join(args.sections)))

    def kept(path):
        """The sections of a results file computed with this mode's current settings."""
        old = (read_json(path, default={}) or {}).get("sections", {})
        return {k: v for k, v in old.items() if k in settings and v.get("config") == settings[k]}

    # each section resumes on its own: its checkpoint (a finished section, or rf_scale's finished K),
    # so that runs of different sections (in separate processes) do not overwrite each other
    def checkpoint(name):
        return out_dir / f"{stem}.{name}.checkpoint.json"

    done = kept(out_dir / f"{stem}.json")
    for name in args.rerun:
        done.pop(name, None)
        checkpoint(name).unlink(missing_ok=True)
    fns = dict(rf_error=rf_error, rf_agreement=rf_agreement, rf_scale=rf_scale, epa_retrieval=epa_retrieval,
               epa_census=epa_census)
    for name in args.sections:
        if name in done:
            continue
        saved = read_json(checkpoint(name), default={}) or {}
        if saved.get("config") == settings[name] and "result" in saved:
            done[name] = saved["result"]
            continue
        t = time.time()
        kwargs = dict(checkpoint=checkpoint(name)) if name == "rf_scale" else {}
        res = fns[name](settings[name], args.progress, **kwargs)
        res["seconds"] = time.time() - t
        res["command"] = command
        res["load_at_end"] = os.getloadavg()[0]
        done[name] = res
        write_json(checkpoint(name), dict(config=settings[name], result=res))
    import jax

    sections = kept(out_dir / f"{stem}.json")  # re-read: another process may have finished sections meanwhile
    sections.update({k: v for k, v in done.items()})
    result = dict(
        command=command, mode=mode, settings=settings,
        sections={k: sections[k] for k in SECTIONS if k in sections},
        machine=dict(devices=[str(d) for d in jax.devices()], cpu_count=os.cpu_count()),
    )
    write_json(out_dir / f"{stem}.json", result)
    figure(result, out_dir / f"{stem}.png")
    for name in args.sections:
        checkpoint(name).unlink(missing_ok=True)
    return result


if __name__ == "__main__":
    main()
