"""Scale-out benchmark: one-step retrieval (``ham.memories.sharded_retrieve`` on a
``ham.memories.modern`` memory: softmax, log-sum-exp merge) with K = 10⁴ … 10⁷ stored
patterns split over 1 and 8 devices, dim 64 and 128, float32 and bfloat16: queries per
second, seconds per batch, bytes of patterns per device, and a log–log fit of seconds
against K (linear cost: slope 1).

Run: ``python -m experiments.bench_scale`` (``--quick``: K = 10⁴ and 10⁵, dim 64, some seconds;
``--ks``/``--dims``/``--dtypes``/``--devices``/``--batch`` change the grid). Writes
``experiments/results/bench_scale.json`` = ``{"results": [rows], "slope": …, …}`` and
``bench_scale.png`` (``--quick``: ``bench_scale_quick.*``; ``--results-dir`` elsewhere).

How it is measured:

- Each device count runs in its own Python process (this script re-invoked with
  ``--worker``), because the number of devices is fixed when JAX starts. On a CPU the n
  devices are virtual (``XLA_FLAGS=--xla_force_host_platform_device_count=n``: n XLA
  devices sharing the host's cores and memory); on GPUs/TPUs the real devices are used,
  at most as many as there are, and each row reports the ``devices`` actually used (a
  count above what the machine has is run once, with all its devices). The library runs
  with default XLA flags in every process (only the device count is set).
- The worker processes stay alive side by side and the main process drives them point by
  point: at each grid point both make their patterns, then blocks of timed calls
  alternate between them (one call a block when a call takes over 0.25 s), so that the
  1-device and n-device figures see the same machine load; ``one_vs_many`` holds their
  ratio per point (``ratio`` = 1-device q/s over n-device q/s), and ``load_start`` /
  ``load_end`` / each row's ``load_before`` the machine's load average (the machine may
  be shared). Both processes hold their patterns at once, so ``--max-gb`` is their sum.
- ``gflops``: 4·K·D·batch / seconds, the flops of the two matrix products (scores and
  weighted sum); the exp/max/sum work is not counted. ``cpu_per_wall``: the process's CPU
  seconds per wall second of a call (about the number of busy cores).
- Profile (points with K ≥ ``--profile-min-k``, default 10⁶): the retrieval alternated
  with a control that runs the same blocked loop with only its two matrix products per
  block (same blocks, same slicing); ``profile.matmul_s`` is the control's time,
  ``profile.exp_phase_s`` = full − control (max, exp, sums, masking), with CPU/wall of each;
  two more controls time each product alone (``scores_s``: ``q Ξ_bᵀ``; ``weighted_sum_s``:
  ``s Ξ_b``, whose ``(batch, D)`` output is small) with their CPU/wall, which shows which
  product leaves a core idle on one device.
- The patterns are made on the devices, already sharded over the mesh axis
  ``"patterns"`` (``jax.jit(..., out_shardings=NamedSharding(mesh, P("patterns", None)))``),
  never as one host array: i.i.d. uniform entries of variance 1/D (so ‖ξ_μ‖ ≈ 1) from a
  counter-based hash of (seed, row, column) (the murmur3 finaliser). ``jax.random`` gives
  the same kind of array but takes 5–10× longer on one CPU device (single-threaded), and
  the values do not change the cost of retrieval.
- ``bytes_per_device`` is the pattern bytes each device holds (``patterns.addressable_shards``).
  Memory per grid point: on a CPU the process's peak RSS over the point (``rss_peak_bytes``,
  the peak count restarted before each point; ``peak_bytes_per_pattern`` = its growth / K;
  ``peak_over_pattern_bytes`` = its growth over the pattern bytes, and the same at the end
  of the constructor, ``constructor_peak_over_pattern_bytes``, and resident after the first
  call, ``resident_after_first_call_over_pattern_bytes``), and XLA's scratch for the
  compiled retrieval of the eager call (``temp_bytes_per_device``, from ``memory_analysis``). ``largest_K_fit``: the memory (a CPU's devices share the host RAM:
  ``MemTotal``; accelerators: their ``bytes_limit``) over the bytes per pattern at the
  largest K run (measured where there is a measurement, else XLA's); an upper bound, as
  the runtime and other processes need memory too.
- A point is skipped (``skipped_points``) when it would need more than ``--max-gb``: on a
  CPU the peak RSS extrapolated linearly in K from the previous point of the same
  configuration (default cap 12 GB for the worker processes together), on an accelerator
  XLA's bytes per device (default 90% of its memory).
- A fixed batch of queries (noisy copies of stored patterns: ξ_μ + 0.5·N(0, 1/D)),
  β = 64 (retrieval still picks the right pattern at K = 10⁷: ``retrieval_cos_min`` is the
  smallest cosine between a result and its pattern). One warm-up call (compiles), then
  the median of timed calls of ``sharded_retrieve`` (the public, eager call: argument
  checks, dispatch and the result's finiteness check included), ``block_until_ready``;
  at least ``--repeats`` (5) calls and more until ``--min-time`` (3 s) has been spent
  (at most 20), the profile's full calls included; ``qps`` = batch / median seconds
  (``seconds_min``: the fastest call).
- The fit: least squares of log seconds on log K over the points with K ≥ ``--fit-min-k``
  (default 10⁵: below it the per-call overhead dominates), per configuration (``fits``) and
  pooled over all configurations with one slope and an intercept per configuration
  (``slope``); also over K ≥ 10 × ``--fit-min-k`` (``slope_large_K``) and of the fastest
  calls (``slope_seconds_min``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from experiments._io import Checkpoint, read_json, results_dir, save_figure, write_json

FULL_KS = (10_000, 30_000, 100_000, 300_000, 1_000_000, 3_000_000, 10_000_000)
QUICK_KS = (10_000, 100_000)
BETA = 64.0
NOISE = 0.5
SEED = 0
MAX_REPEATS = 20
DEFAULT_MAX_GB_CPU = 12.0
ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- worker (one process per device count)
def _fmix32(h):
    """The murmur3 32-bit finaliser: a bijection of uint32 with full avalanche."""
    import jax.numpy as jnp

    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def make_patterns(num: int, dim: int, dtype, sharding, seed: int = SEED):
    """``(num, dim)`` patterns with i.i.d. uniform entries of variance 1/dim, computed on the
    devices of ``sharding`` (each its own rows; no host copy, no full-size temporary)."""
    import jax
    import jax.numpy as jnp

    def gen():
        rows = jax.lax.broadcasted_iota(jnp.uint32, (num, 1), 0)
        cols = jax.lax.broadcasted_iota(jnp.uint32, (1, dim), 1)
        row_hash = _fmix32(rows ^ jnp.uint32((0x9E3779B9 * (seed + 1)) & 0xFFFFFFFF))  # distinct rows
        h = _fmix32(row_hash + cols * jnp.uint32(0x9E3779B1))
        u = (h >> 8).astype(jnp.float32) * (1.0 / (1 << 24)) - 0.5  # uniform on [-1/2, 1/2)
        return (u * math.sqrt(12.0 / dim)).astype(dtype)

    return jax.jit(gen, out_shardings=sharding)()


def _rss() -> tuple[int, int]:
    """(current, peak) resident set size of this process in bytes (0, 0 where unknown)."""
    try:
        with open("/proc/self/status") as f:
            v = dict(line.split(":", 1) for line in f if line.startswith(("VmRSS", "VmHWM")))
        return int(v["VmRSS"].split()[0]) * 1024, int(v["VmHWM"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):  # pragma: no cover - not Linux
        return 0, 0


def _reset_peak_rss() -> None:
    """Restart the peak RSS count (Linux: ``5`` to ``/proc/self/clear_refs``), so that each
    grid point reports its own peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # pragma: no cover - not Linux, or not allowed
        pass


def _host_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    return 0


def device_memory(devices) -> tuple[int, str]:
    """(bytes available to the run, where the number comes from): the sum of the devices'
    ``bytes_limit`` where the runtime reports one (GPU/TPU), else the host RAM, which a
    CPU's devices share."""
    if devices[0].platform != "cpu":
        try:
            limits = [int((d.memory_stats() or {}).get("bytes_limit", 0)) for d in devices]
        except Exception:  # noqa: BLE001 - a backend without memory_stats
            limits = []
        if limits and all(limits):
            return sum(limits), "sum of the devices' memory_stats()['bytes_limit']"
    return _host_memory(), "host MemTotal (shared by the CPU devices)"


def _peak_device_bytes(devices) -> int | None:
    try:
        return max(int((d.memory_stats() or {})["peak_bytes_in_use"]) for d in devices)
    except Exception:  # noqa: BLE001 - not reported on CPU
        return None


def _matmul_only(mesh, num: int, dim: int, batch: int, dtype, which: str = "both"):
    """The profile's controls: the blocked softmax's loop with only its matrix products per
    block (same blocks, same slicing, no max/exp/sum), so that full − control is the time of
    the exp phase. ``which``: ``"both"`` (scores ``q Ξ_bᵀ`` and the weighted sum ``s Ξ_b``),
    ``"scores"`` (the scores only) or ``"weighted_sum"`` (the weighted sum only, of fixed
    weights ``s`` of the block's shape), to tell which product leaves cores idle."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import PartitionSpec as P

    from ham.memories import _sharded

    n = len(list(mesh.devices.flat))
    k_local = num // n
    acc = jnp.promote_types(dtype, jnp.float32)
    c = _sharded._block_rows(k_local, batch, dim * jnp.dtype(dtype).itemsize)

    def local(patterns, queries):
        if which == "weighted_sum":  # fixed weights of a block's shape
            fixed = jnp.matmul(queries, patterns[:c].T, preferred_element_type=acc)

        def body(carry, i):
            block = _sharded._slice_rows(patterns, jnp.minimum(i * c, k_local - c), c)
            if which == "weighted_sum":
                return carry + fixed @ block.astype(acc), None
            s = jnp.matmul(queries, block.T, preferred_element_type=acc)
            if which == "scores":
                return carry + s[:, :dim], None
            return carry + s @ block.astype(acc), None

        out, _ = jax.lax.scan(body, jnp.zeros((batch, dim), acc), jnp.arange(-(-k_local // c)))
        return jax.lax.psum(out, "patterns")

    return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P("patterns", None), P()), out_specs=P(),
                                 check_vma=False))


def _timed(fn, reps: int) -> list[list[float]]:
    """``reps`` calls of ``fn``: [wall seconds, process CPU seconds] each."""
    import jax

    out = []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn())
        out.append([time.perf_counter() - t0, time.process_time() - c0])
    return out


class Point:
    """One grid point in a worker: the patterns made on the mesh, the memory, the queries;
    ``time`` runs timed calls of ``sharded_retrieve`` (the public, eager call), ``profile``
    alternates it with the matrix-products-only control, ``finish`` returns the row."""

    def __init__(self, num: int, dim: int, dtype_name: str, mesh, batch: int, max_bytes: int,
                 previous: dict | None = None):
        import equinox as eqx
        import jax
        import jax.numpy as jnp
        from jax.sharding import NamedSharding
        from jax.sharding import PartitionSpec as P

        import ham

        devices = list(mesh.devices.flat)
        n = len(devices)
        self.on_cpu = devices[0].platform == "cpu"
        self.mesh, self.num, self.dim, self.batch = mesh, num, dim, batch
        dtype = self.dtype = jnp.dtype(dtype_name)
        rows = NamedSharding(mesh, P("patterns", None))
        pattern_bytes = num * dim * dtype.itemsize

        # XLA's scratch for the compiled retrieval, from shapes only (nothing allocated yet): the
        # program of the eager call (the memory built outside it, as for the timed calls)
        t0 = time.perf_counter()
        small = ham.memories.modern(jnp.zeros((n, dim), dtype), beta=BETA)
        shaped = eqx.tree_at(lambda m: m.patterns, small, jax.ShapeDtypeStruct((num, dim), dtype, sharding=rows))
        compiled = jax.jit(lambda m, q: ham.memories.sharded_retrieve(m, q, mesh)).lower(
            shaped, jax.ShapeDtypeStruct((batch, dim), dtype, sharding=NamedSharding(mesh, P()))).compile()
        analysis_s = time.perf_counter() - t0
        mem = compiled.memory_analysis()
        temp = int(getattr(mem, "temp_size_in_bytes", 0) or 0) if mem is not None else 0
        del compiled
        xla_bytes = pattern_bytes + n * temp
        rss_before, _ = _rss()
        if self.on_cpu:
            if previous and not previous.get("skipped") and previous.get("rss_peak_bytes"):
                grow = max(previous["rss_peak_bytes"] - previous["rss_base_bytes"], 0)
                predicted = rss_before + grow * num / previous["K"]
            else:
                predicted = rss_before + xla_bytes
        else:
            predicted = pattern_bytes // n + temp  # per device
        self.row = {"K": num, "dim": dim, "dtype": dtype.name, "devices": n, "predicted_peak_bytes": int(predicted),
                    "xla_bytes_total": xla_bytes, "temp_bytes_per_device": temp, "max_bytes": max_bytes,
                    "compile_check_s": analysis_s}
        self.skipped = predicted > max_bytes
        if self.skipped:
            self.row["skipped"] = True
            return
        self.rss_base = _rss()[0]
        _reset_peak_rss()
        t0 = time.perf_counter()
        self.patterns = jax.block_until_ready(make_patterns(num, dim, dtype, rows))
        self.row["generate_s"] = time.perf_counter() - t0
        self.memory = ham.memories.modern(self.patterns, beta=BETA)
        self.constructor_peak = _rss()[1]
        idx = jnp.arange(batch) * (num // batch)
        self.targets = self.patterns[idx].astype(jnp.float32)
        noise = jax.random.normal(jax.random.PRNGKey(SEED + 1), (batch, dim), jnp.float32)
        self.queries = jax.block_until_ready((self.targets + NOISE / math.sqrt(dim) * noise).astype(dtype))
        t0 = time.perf_counter()
        self.out = jax.block_until_ready(self.call())
        self.row["first_call_s"] = time.perf_counter() - t0
        self.resident_after_first = _rss()[0]
        self.times: list[list[float]] = []

    def call(self):
        import ham

        return ham.memories.sharded_retrieve(self.memory, self.queries)

    def time(self, reps: int) -> list[list[float]]:
        t = _timed(self.call, reps)
        self.times += t
        return t

    def profile(self, reps: int) -> dict:
        """Alternate the full retrieval with the controls (both matrix products, the scores
        only, the weighted sum only): medians of wall and CPU seconds of each (the full calls
        count as timed calls too)."""
        controls = {w: _matmul_only(self.mesh, self.num, self.dim, self.batch, self.dtype, w)
                    for w in ("both", "scores", "weighted_sum")}
        for control in controls.values():
            _timed(lambda control=control: control(self.patterns, self.queries), 1)  # compiles
        full, runs = [], {w: [] for w in controls}
        for _ in range(reps):
            full += self.time(1)
            for w, control in controls.items():
                runs[w] += _timed(lambda control=control: control(self.patterns, self.queries), 1)
        med = lambda xs, i: statistics.median(x[i] for x in xs)  # noqa: E731
        return {"full_s": med(full, 0), "full_cpu_s": med(full, 1), "matmul_s": med(runs["both"], 0),
                "matmul_cpu_s": med(runs["both"], 1), "scores_s": med(runs["scores"], 0),
                "scores_cpu_s": med(runs["scores"], 1), "weighted_sum_s": med(runs["weighted_sum"], 0),
                "weighted_sum_cpu_s": med(runs["weighted_sum"], 1), "reps": reps}

    def finish(self) -> dict:
        import jax.numpy as jnp

        if self.skipped:
            return self.row
        devices = list(self.mesh.devices.flat)
        walls = [t[0] for t in self.times]
        cpus = [t[1] for t in self.times]
        sec = statistics.median(walls)
        out, targets = self.out, self.targets
        cos = jnp.sum(out * targets, -1) / (jnp.linalg.norm(out, axis=-1) * jnp.linalg.norm(targets, axis=-1))
        rss, peak = _rss()
        shards = self.patterns.addressable_shards
        pb = int(self.patterns.nbytes)
        row = self.row | {
            "qps": self.batch / sec, "gflops": gflops(self.num, self.dim, self.batch, sec),
            "bytes_per_device": max(int(s.data.nbytes) for s in shards), "device_kind": devices[0].device_kind,
            "seconds": sec, "seconds_min": min(walls), "seconds_all": walls,
            "cpu_per_wall": statistics.median(c / w for c, w in zip(cpus, walls)),
            "repeats": len(walls), "batch": self.batch, "bytes_total": pb, "num_shards": len(shards),
            "retrieval_cos_min": float(jnp.min(cos)),
            "rss_base_bytes": self.rss_base, "rss_bytes": rss, "rss_peak_bytes": peak, "platform": devices[0].platform,
        }
        if self.on_cpu and peak > self.rss_base:
            row["peak_bytes_per_pattern"] = (peak - self.rss_base) / self.num  # patterns + scratch + queries
            row["peak_over_pattern_bytes"] = (peak - self.rss_base) / pb
            row["constructor_peak_over_pattern_bytes"] = (self.constructor_peak - self.rss_base) / pb
            row["resident_after_first_call_over_pattern_bytes"] = (self.resident_after_first - self.rss_base) / pb
        peak_dev = _peak_device_bytes(devices)
        if peak_dev is not None:
            row["device_peak_bytes"] = peak_dev  # since the process started
        del self.out, self.memory, self.patterns, self.queries, self.targets
        return row


def gflops(num: int, dim: int, batch: int, seconds: float) -> float:
    """GFLOP/s of the two matrix products (scores and weighted sum: 2·K·D multiply-adds a
    query each, ``4·K·D·batch`` flops); the exp/max/sum work is not counted."""
    return 4.0 * num * dim * batch / seconds / 1e9


def serve(args) -> None:
    """The worker: one process per device count, driven by JSON lines on stdin (``setup``,
    ``time``, ``profile``, ``finish``, ``exit``), so that the main process alternates blocks
    of timed calls between the device counts (both see the same machine load)."""
    import gc

    import jax
    import numpy as onp
    from jax.sharding import Mesh

    available = jax.devices()
    n = min(args.devices, len(available))
    hello = {"devices": n, "platform": available[0].platform, "device_kind": available[0].device_kind,
             "jax": jax.__version__}
    if n < args.devices and n == 1 and args.devices > 1:
        print(json.dumps(hello | {"skipped": True, "note": f"only {len(available)} {available[0].platform} "
                                  f"device(s): the {args.devices}-device run is skipped"}), flush=True)
        return
    mesh = Mesh(onp.array(available[:n]), ("patterns",))
    capacity, capacity_source = device_memory(available[:n])
    on_cpu = available[0].platform == "cpu"
    if on_cpu:  # the process's peak RSS (the workers run side by side: they share the cap)
        max_bytes = int((args.max_gb or DEFAULT_MAX_GB_CPU) * 1e9 / max(args.workers, 1))
    else:  # per device
        max_bytes = int(args.max_gb * 1e9) if args.max_gb else int(0.9 * capacity / n)
    print(json.dumps(hello | {"capacity_bytes": capacity, "capacity_source": capacity_source, "max_bytes": max_bytes,
                              "max_bytes_means": "peak RSS of the process" if on_cpu else "bytes per device"}),
          flush=True)
    point, previous = None, {}
    for line in sys.stdin:
        msg = json.loads(line)
        cmd = msg["cmd"]
        if cmd == "setup":
            point = Point(msg["K"], msg["dim"], msg["dtype"], mesh, args.batch, max_bytes,
                          previous.get((msg["dim"], msg["dtype"])))
            reply = {"skipped": point.skipped}
        elif cmd == "time":
            reply = {"times": point.time(msg["reps"])}
        elif cmd == "profile":
            reply = point.profile(msg["reps"])
        elif cmd == "finish":
            reply = point.finish()
            if not reply.get("skipped"):
                previous[(reply["dim"], reply["dtype"])] = reply
            point = None
            gc.collect()
        else:
            return
        print(json.dumps(reply), flush=True)


# ----------------------------------------------------------------------------- analysis (main process, no JAX)
def loglog_fit(ks, secs) -> dict:
    """Least squares log10(seconds) = slope log10(K) + intercept."""
    x, y = np.log10(np.asarray(ks, float)), np.log10(np.asarray(secs, float))
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (slope * x + intercept)
    ss = float(np.sum((y - y.mean()) ** 2))
    return {"slope": float(slope), "intercept": float(intercept),
            "r2": 1.0 - float(np.sum(resid ** 2)) / ss if ss > 0 else 1.0, "K": [int(k) for k in ks]}


def config_of(r) -> tuple:
    return (r["dim"], r["dtype"], r["devices"])


def fits(rows, min_k: int, field: str = "seconds") -> tuple[list[dict], dict]:
    """Per-configuration fits of ``field`` against K and the pooled one (a common slope,
    one intercept per configuration: least squares on logs centred within each
    configuration)."""
    groups: dict[tuple, list] = {}
    for r in rows:
        if r["K"] >= min_k and field in r:
            groups.setdefault(config_of(r), []).append(r)
    per, xs, ys = [], [], []
    for (dim, dtype, dev), rs in sorted(groups.items()):
        rs = sorted(rs, key=lambda r: r["K"])
        if len(rs) < 2:
            continue
        per.append({"dim": dim, "dtype": dtype, "devices": dev,
                    **loglog_fit([r["K"] for r in rs], [r[field] for r in rs])})
        x, y = np.log10([r["K"] for r in rs]), np.log10([r[field] for r in rs])
        xs.append(x - x.mean())
        ys.append(y - y.mean())
    if not xs:
        return per, {"slope": None, "points": 0, "min_K": int(min_k)}
    x, y = np.concatenate(xs), np.concatenate(ys)
    slope = float(np.sum(x * y) / np.sum(x * x))
    r2 = 1.0 - float(np.sum((y - slope * x) ** 2) / np.sum(y * y)) if np.sum(y * y) > 0 else 1.0
    return per, {"slope": slope, "r2_within": r2, "points": int(x.size), "configurations": len(xs),
                 "min_K": int(min_k), "slope_range": [min(f["slope"] for f in per), max(f["slope"] for f in per)]}


def largest_fit(rows, capacity: dict) -> list[dict]:
    """Per configuration, at its largest measured K: the bytes each stored pattern costs
    (measured: the peak RSS growth over the point, on a CPU; and XLA's buffer assignment:
    patterns + scratch) and the K that would fill the memory (``largest_K_fit``: measured
    where available, else XLA's; rounded down to a multiple of the device count)."""
    best: dict[tuple, dict] = {}
    for r in rows:
        if r.get("skipped"):  # predicted over --max-gb: not run, nothing measured
            continue
        c = config_of(r)
        if c not in best or r["K"] > best[c]["K"]:
            best[c] = r
    out = []
    for (dim, dtype, dev), r in sorted(best.items()):
        cap = capacity.get(dev)
        xla = (r["bytes_total"] + dev * r["temp_bytes_per_device"]) / r["K"]
        measured = r.get("peak_bytes_per_pattern")
        base = r.get("rss_base_bytes", 0) if measured else 0

        def fit(per_pattern, cap=cap, base=base, dev=dev):
            return int((cap - base) // per_pattern) // dev * dev if cap and per_pattern else None

        out.append({"dim": dim, "dtype": dtype, "devices": dev, "largest_K_run": r["K"],
                    "pattern_bytes_per_pattern": r["bytes_total"] / r["K"],
                    "measured_bytes_per_pattern": measured, "xla_bytes_per_pattern": xla,
                    "memory_bytes": cap, "largest_K_fit": fit(measured or xla), "largest_K_fit_xla": fit(xla)})
    return out


def figure(data, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = data["results"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
    colors = {}
    palette = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    fit_by = {(f["dim"], f["dtype"], f["devices"]): f for f in data["fits"]}
    for c in sorted({config_of(r) for r in rows}):
        dim, dtype, dev = c
        rs = sorted((r for r in rows if config_of(r) == c), key=lambda r: r["K"])
        color = colors.setdefault((dim, dtype), palette[len(colors) % len(palette)])
        ls, marker = ("-", "o") if dev > 1 else ("--", "s")
        label = f"D={dim} {dtype}, {dev} dev"
        ks = [r["K"] for r in rs]
        axes[0].plot(ks, [r["qps"] for r in rs], ls=ls, marker=marker, color=color, label=label, ms=4)
        axes[1].plot(ks, [r["seconds"] for r in rs], ls="none", marker=marker, color=color, ms=4)
        f = fit_by.get(c)
        if f:
            kk = np.array([min(f["K"]), max(f["K"])], float)
            axes[1].plot(kk, 10 ** (f["slope"] * np.log10(kk) + f["intercept"]), ls=ls, color=color,
                         label=f"{label}: slope {f['slope']:.2f}")
        axes[2].plot(ks, [r["bytes_per_device"] for r in rs], ls=ls, marker=marker, color=color, label=label, ms=4)
    axes[0].set_ylabel("queries / second")
    axes[1].set_ylabel(f"seconds per batch of {rows[0]['batch']}")
    axes[2].set_ylabel("pattern bytes per device")
    slope = data["slope"]
    axes[1].set_title(f"fit K ≥ {data['slope_fit']['min_K']:.0e}: pooled slope "
                      + (f"{slope:.3f}" if slope is not None else "n/a"), fontsize=9)
    axes[0].set_title("sharded_retrieve throughput", fontsize=9)
    axes[2].set_title("bytes of patterns per device", fontsize=9)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("stored patterns K")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=6)
    axes[1].legend(fontsize=5.5)
    fig.suptitle(f"ham.memories.sharded_retrieve (modern, softmax) on {data['device_kind']} — "
                 f"{data['platform_host']}", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def _qps(q: float) -> str:
    return f"{q:,.0f}" if q >= 100 else f"{q:.3g}"


def markdown_table(data) -> str:
    """The README tables: queries per second at each K, one column per configuration;
    then per configuration the fitted slopes, bytes per device and the largest K."""
    rows = data["results"]
    configs = sorted({config_of(r) for r in rows}, key=lambda c: (c[0], c[1] != "float32", c[2]))
    ks = sorted({r["K"] for r in rows})
    by = {(config_of(r), r["K"]): r for r in rows}
    head = "| K | " + " | ".join(f"D={d} {t} {n} dev" for d, t, n in configs) + " |"
    lines = [head, "|" + "---|" * (len(configs) + 1)]
    for k in ks:
        cells = [_qps(by[(c, k)]["qps"]) if (c, k) in by else "–" for c in configs]
        lines.append(f"| {k:,} | " + " | ".join(cells) + " |")
    lines.append("")
    lo, hi = data["slope_fit"]["min_K"], data.get("slope_large_K", {}).get("min_K")
    lines.append(f"| configuration | slope K ≥ {lo:,} (r²) | slope K ≥ {hi:,} | largest K run "
                 "| pattern bytes/device there | peak bytes per pattern (measured) | largest K that fits (est.) |")
    lines.append("|---|---|---|---|---|---|---|")
    fit_by = {(f["dim"], f["dtype"], f["devices"]): f for f in data["fits"]}
    big_by = {(f["dim"], f["dtype"], f["devices"]): f for f in data.get("slope_large_K", {}).get("per_configuration", [])}
    lf_by = {(f["dim"], f["dtype"], f["devices"]): f for f in data["largest_K"]}
    for c in configs:
        f, b, lf = fit_by.get(c), big_by.get(c), lf_by[c]
        top = by[(c, lf["largest_K_run"])]
        per = lf["measured_bytes_per_pattern"] or lf["xla_bytes_per_pattern"]
        lines.append(f"| D={c[0]} {c[1]}, {c[2]} dev | " + (f"{f['slope']:.2f} ({f['r2']:.3f})" if f else "–")
                     + " | " + (f"{b['slope']:.2f}" if b else "–")
                     + f" | {lf['largest_K_run']:,} | {top['bytes_per_device'] / 1e6:,.0f} MB | {per:,.0f} B | "
                     + (f"{lf['largest_K_fit'] / 1e6:.0f} M |" if lf["largest_K_fit"] else "– |"))
    return "\n".join(lines)


def comparison_table(data) -> str:
    """One device against n devices on the same cores, timed alternately at each point:
    q/s and GFLOP/s of each, their ratio, CPU/wall, and the profile's split (1 device)."""
    comps = data.get("one_vs_many") or []
    if not comps:
        return ""
    by = {(r["K"], r["dim"], r["dtype"], r["devices"]): r for r in data["results"]}
    n = comps[0]["devices"]
    lines = [f"| K | D | dtype | 1 dev q/s (GFLOP/s) | {n} dev q/s (GFLOP/s) | 1 / {n} | CPU/wall 1 dev, {n} dev "
             f"| 1 dev: matrix products / exp phase (s) | 1 dev: scores, weighted sum alone (s, CPU/wall) | load |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c in sorted(comps, key=lambda c: (c["dim"], c["dtype"] != "float32", c["K"])):
        prof = by.get((c["K"], c["dim"], c["dtype"], 1), {}).get("profile")
        split = (f"{prof['matmul_s']:.3g} / {prof['exp_phase_s']:.3g}" if prof else "–")
        alone = (f"{prof['scores_s']:.3g} ({prof['cpu_per_wall_scores']:.2f}), "
                 f"{prof['weighted_sum_s']:.3g} ({prof['cpu_per_wall_weighted_sum']:.2f})"
                 if prof and "scores_s" in prof else "–")
        load = c.get("load_before")
        lines.append(
            f"| {c['K']:,} | {c['dim']} | {c['dtype']} | {_qps(c['qps_1'])} ({c['gflops_1']:.0f}) | "
            f"{_qps(c['qps_many'])} ({c['gflops_many']:.0f}) | **{c['ratio']:.2f}** | "
            f"{c['cpu_per_wall_1']:.2f}, {c['cpu_per_wall_many']:.2f} | {split} | {alone} | "
            + (f"{load[0]:.1f}" if load else "–") + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main
def _worker_env(devices: int) -> dict:
    env = dict(os.environ)
    flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", env.get("XLA_FLAGS", "")).strip()
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def _git_commit() -> str | None:
    """The commit of the checkout the run used (with ``+dirty`` if ham/ had changes)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "ham"], cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def _parse_ints(s: str) -> list[int]:
    return [int(float(x)) for x in s.split(",") if x.strip()]


def _load() -> dict:
    """The machine's load: ``os.getloadavg()`` and the ``uptime`` line (the machine may be shared)."""
    try:
        uptime = subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        uptime = None
    try:
        avg = list(os.getloadavg())
    except OSError:  # pragma: no cover - not Unix
        avg = None
    return {"loadavg": avg, "uptime": uptime, "cpus": os.cpu_count()}


class Workers:
    """One worker process per device count, alive side by side (``serve``), asked in turn."""

    def __init__(self, args):
        self.procs, self.hello = {}, {}
        for n in dict.fromkeys(args.devices):
            cmd = [sys.executable, "-m", "experiments.bench_scale", "--worker", "--devices", str(n),
                   "--workers", str(len(set(args.devices))), "--batch", str(args.batch)] + (
                ["--max-gb", str(args.max_gb)] if args.max_gb else [])
            proc = subprocess.Popen(cmd, cwd=ROOT, env=_worker_env(n), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    text=True)
            hello = json.loads(proc.stdout.readline())
            if hello.get("skipped") or any(h["devices"] == hello["devices"] for h in self.hello.values()):
                print(json.dumps({"note": f"{n} device(s) requested: {hello['devices']} available, already "
                                  "measured or skipped"}), flush=True)
                proc.stdin.close()
                proc.wait()
                continue
            self.procs[n], self.hello[n] = proc, hello | {"requested": n}

    def ask(self, n: int, msg: dict) -> dict:
        proc = self.procs[n]
        proc.stdin.write(json.dumps(msg) + "\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"bench_scale: the {n}-device worker stopped (exit code {proc.wait()})")
        return json.loads(line)

    def close(self) -> None:
        for proc in self.procs.values():
            try:
                proc.stdin.write(json.dumps({"cmd": "exit"}) + "\n")
                proc.stdin.close()
            except (OSError, ValueError):
                pass
            proc.wait()

    def summary(self, rows) -> list[dict]:
        return [h | {"skipped_points": [r for r in rows if r.get("skipped") and r["devices"] == h["devices"]]}
                for h in self.hello.values()]


def run_grid(args, pool: Workers, checkpoint_path: Path) -> tuple[list[dict], list[dict]]:
    """Every grid point on every device count, the timed calls alternating between the
    device counts in blocks (at least ``--repeats`` calls each and more until ``--min-time``
    is spent, at most 20), and at K ≥ ``--profile-min-k`` a profile (full retrieval
    alternated with its matrix-products-only control). Rows and the 1-vs-n comparison of
    each point go to a resumable checkpoint."""
    from tqdm import tqdm

    ns = list(pool.procs)
    ck = Checkpoint(checkpoint_path, {"devices": ns, "batch": args.batch, "beta": BETA, "repeats": args.repeats,
                                      "min_time": args.min_time, "profile_min_k": args.profile_min_k})
    grid = [(d, t, k) for d in args.dims for t in args.dtypes for k in sorted(args.ks)]
    bad = [k for k in args.ks for n in pool.hello.values() if k % n["devices"] or k < args.batch]
    if bad:
        raise SystemExit(f"bench_scale: K = {sorted(set(bad))} must be multiples of the device counts "
                         f"{[h['devices'] for h in pool.hello.values()]} and ≥ the batch {args.batch}")
    rows, comparisons = [], []
    for d, t, k in tqdm(grid, desc="bench_scale", disable=not args.progress, file=sys.stderr):
        key = f"{d}/{t}/{k}"
        if key not in ck:
            before = _load()
            live = [n for n in ns if not pool.ask(n, {"cmd": "setup", "K": k, "dim": d, "dtype": t})["skipped"]]
            spent = {n: [] for n in live}
            while live and any(len(spent[n]) < args.repeats or sum(spent[n]) < args.min_time for n in live) and all(
                    len(spent[n]) < MAX_REPEATS for n in live):
                for n in live:  # a block of calls each, in turn
                    per = max(spent[n]) if spent[n] else 0.0
                    reps = 1 if per > 0.25 or not spent[n] else max(1, min(5, int(0.5 / max(per, 1e-4))))
                    reps = min(reps, MAX_REPEATS - len(spent[n]))
                    spent[n] += [w for w, _ in pool.ask(n, {"cmd": "time", "reps": reps})["times"]]
            profiles = {}
            if live and k >= args.profile_min_k:
                for _ in range(args.profile_reps):  # one full/control pair each, in turn
                    for n in live:
                        profiles.setdefault(n, []).append(pool.ask(n, {"cmd": "profile", "reps": 1}))
            point = {"rows": [], "comparison": None}
            for n in ns:
                row = pool.ask(n, {"cmd": "finish"})
                if n in profiles:
                    row["profile"] = _profile_summary(profiles[n])
                row["load_before"] = before["loadavg"]
                point["rows"].append(row)
            point["comparison"] = _compare(point["rows"], _load())
            ck.put(key, point)
        rows += ck[key]["rows"]
        if ck[key]["comparison"]:
            comparisons.append(ck[key]["comparison"])
        for r in ck[key]["rows"]:
            print(json.dumps({k_: v for k_, v in r.items() if k_ != "seconds_all"}), flush=True)
    checkpoint_path.unlink(missing_ok=True)
    return rows, comparisons


def _profile_summary(pairs: list[dict]) -> dict:
    """Medians over the full/control rounds: seconds of the matrix products (the control),
    of the rest (full − control: the exp/max/sum phase and the loop), of each product alone
    (scores, weighted sum), and CPU seconds per wall second of each (about the number of
    busy cores)."""
    med = lambda key: statistics.median(p[key] for p in pairs)  # noqa: E731
    full, mm, full_cpu, mm_cpu = med("full_s"), med("matmul_s"), med("full_cpu_s"), med("matmul_cpu_s")
    out = {"full_s": full, "matmul_s": mm, "exp_phase_s": max(full - mm, 0.0), "matmul_fraction": mm / full,
           "cpu_per_wall_full": full_cpu / full, "cpu_per_wall_matmul": mm_cpu / mm,
           "cpu_per_wall_exp_phase": (full_cpu - mm_cpu) / (full - mm) if full > mm else None,
           "pairs": len(pairs), "method": "full retrieval and controls with only its matrix products per "
           "block (same blocks and slicing: both products, the scores alone, the weighted sum alone), "
           "alternated; exp phase = full - control with both"}
    for w in ("scores", "weighted_sum"):
        sec, cpu = med(f"{w}_s"), med(f"{w}_cpu_s")
        out[f"{w}_s"], out[f"cpu_per_wall_{w}"] = sec, cpu / sec
    return out


def _compare(point_rows: list[dict], load_after: dict) -> dict | None:
    """One device against the most devices at one grid point (timed alternately)."""
    done = {r["devices"]: r for r in point_rows if not r.get("skipped")}
    if 1 not in done or len(done) < 2:
        return None
    one, many = done[1], done[max(done)]
    return {"K": one["K"], "dim": one["dim"], "dtype": one["dtype"], "devices": many["devices"],
            "qps_1": one["qps"], f"qps_{many['devices']}": many["qps"], "qps_many": many["qps"],
            "gflops_1": one["gflops"], "gflops_many": many["gflops"], "ratio": one["qps"] / many["qps"],
            "cpu_per_wall_1": one["cpu_per_wall"], "cpu_per_wall_many": many["cpu_per_wall"],
            "load_before": one.get("load_before"), "load_after": load_after["loadavg"]}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="K = 1e4, 1e5 at dim 64 (seconds)")
    ap.add_argument("--ks", type=_parse_ints, default=None, help="comma-separated K (default 1e4,3e4,…,1e7)")
    ap.add_argument("--dims", type=_parse_ints, default=None, help="comma-separated dims (default 64,128)")
    ap.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated dtypes")
    ap.add_argument("--devices", type=_parse_ints, default=[1, 8], help="device counts (default 1,8)")
    ap.add_argument("--batch", type=int, default=32, help="queries per call (default 32)")
    ap.add_argument("--repeats", type=int, default=None, help="least number of timed calls (default 5; quick 2)")
    ap.add_argument("--min-time", type=float, default=None,
                    help="time more calls until this many seconds are spent (default 3; quick 0.1)")
    ap.add_argument("--fit-min-k", type=int, default=None, help="fit K ≥ this (default 1e5; quick 1e4)")
    ap.add_argument("--max-gb", type=float, default=None,
                    help="skip a point predicted to need more than this many GB: the process's peak RSS on a "
                    f"CPU (default {DEFAULT_MAX_GB_CPU:g}), per device on an accelerator (default 90%% of its memory)")
    ap.add_argument("--results-dir", default=None, help="results folder (default experiments/results)")
    ap.add_argument("--no-progress", dest="progress", action="store_false", help="no tqdm bars")
    ap.add_argument("--table", action="store_true", help="print the README table from the results file and exit")
    ap.add_argument("--profile-min-k", type=int, default=None,
                    help="profile (matrix products vs exp phase) the points with K >= this (default 1e6; quick 1e5)")
    ap.add_argument("--profile-reps", type=int, default=3, help="full/control pairs per profiled point (default 3)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    return ap


def main(argv=None):
    ap = parser()
    args = ap.parse_args(argv)
    args.ks = args.ks or list(QUICK_KS if args.quick else FULL_KS)
    args.dims = args.dims or ([64] if args.quick else [64, 128])
    args.dtypes = [t.strip() for t in args.dtypes.split(",") if t.strip()]
    args.repeats = args.repeats or (2 if args.quick else 5)
    args.min_time = args.min_time if args.min_time is not None else (0.1 if args.quick else 3.0)
    fit_min_k = args.fit_min_k or (10_000 if args.quick else 100_000)
    for t in args.dtypes:
        if t not in ("float32", "bfloat16", "float16"):
            ap.error(f"unknown dtype {t!r}; use float32, bfloat16 or float16")
    args.profile_min_k = args.profile_min_k or (100_000 if args.quick else 1_000_000)
    if args.worker:
        args.devices = args.devices[0]
        return serve(args)

    out_dir = results_dir(args.results_dir)
    name = "bench_scale_quick" if args.quick else "bench_scale"
    path = out_dir / f"{name}.json"
    if args.table:
        print(markdown_table(read_json(path)))
        return read_json(path)

    t_start = time.perf_counter()
    load_start = _load()
    pool = Workers(args)
    try:
        rows, comparisons = run_grid(args, pool, out_dir / f".{name}.checkpoint.json")
    finally:
        pool.close()
    workers = pool.summary(rows)
    per, pooled = fits(rows, fit_min_k)
    per_large, pooled_large = fits(rows, 10 * fit_min_k)
    per_min, pooled_min = fits(rows, fit_min_k, "seconds_min")
    capacity = {w["devices"]: w["capacity_bytes"] for w in workers}
    data = {
        "results": rows,
        "slope": pooled["slope"],
        "slope_fit": pooled | {"method": "least squares of log10(seconds) on log10(K), K >= min_K; pooled: one "
                               "slope, one intercept per (dim, dtype, devices)"},
        "fits": per,
        "slope_large_K": pooled_large | {"per_configuration": [
            {k: f[k] for k in ("dim", "dtype", "devices", "slope", "r2")} for f in per_large]},
        "slope_seconds_min": pooled_min | {"per_configuration": [
            {k: f[k] for k in ("dim", "dtype", "devices", "slope", "r2")} for f in per_min]},
        "largest_K": largest_fit(rows, capacity),
        "largest_K_run": max(r["K"] for r in rows),
        "batch": args.batch, "beta": BETA, "query_noise": NOISE,
        "device_kind": rows[0]["device_kind"], "platform_host": platform.platform(),
        "one_vs_many": comparisons,
        "gflops_means": "4 K D batch / seconds: the two matrix products (scores, weighted sum); exp not counted",
        "timing": "one worker process per device count, alive side by side; at each point blocks of timed calls "
                  "alternate between them (medians)",
        "load_start": load_start, "load_end": _load(),
        "workers": workers, "wall_s": time.perf_counter() - t_start,
        "command": " ".join(["python -m experiments.bench_scale", *(sys.argv[1:] if argv is None else argv)]),
        "git_commit": _git_commit(),
    }
    write_json(path, data)
    figure(data, path.with_suffix(".png"))
    print(json.dumps({"slope": data["slope"], "fits": [(f["dim"], f["dtype"], f["devices"], round(f["slope"], 3))
                                                       for f in per], "wall_s": data["wall_s"]}), flush=True)
    return data


if __name__ == "__main__":
    main()
