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
  count above what the machine has is run once, with all its devices).
- The patterns are made on the devices, already sharded over the mesh axis
  ``"patterns"`` (``jax.jit(..., out_shardings=NamedSharding(mesh, P("patterns", None)))``),
  never as one host array: i.i.d. uniform entries of variance 1/D (so ‖ξ_μ‖ ≈ 1) from a
  counter-based hash of (seed, row, column) (the murmur3 finaliser). ``jax.random`` gives
  the same kind of array but takes 5–10× longer on one CPU device (single-threaded), and
  the values do not change the cost of retrieval.
- ``bytes_per_device`` is the pattern bytes each device holds (``patterns.addressable_shards``).
  Memory per grid point: on a CPU the process's peak RSS over the point (``rss_peak_bytes``,
  the peak count restarted before each point; ``peak_bytes_per_pattern`` = its growth / K),
  and XLA's scratch for the compiled retrieval (``temp_bytes_per_device``, from
  ``memory_analysis``; for float32 it counts a patterns-size buffer that the measured RSS
  does not show). ``largest_K_fit``: the memory (a CPU's devices share the host RAM:
  ``MemTotal``; accelerators: their ``bytes_limit``) over the bytes per pattern at the
  largest K run (measured where there is a measurement, else XLA's); an upper bound, as
  the runtime and other processes need memory too.
- A point is skipped (``skipped_points``) when it would need more than ``--max-gb``: on a
  CPU the peak RSS extrapolated linearly in K from the previous point of the same
  configuration (default cap 10 GB), on an accelerator XLA's bytes per device (default
  90% of its memory).
- A fixed batch of queries (noisy copies of stored patterns: ξ_μ + 0.5·N(0, 1/D)),
  β = 64 (retrieval still picks the right pattern at K = 10⁷: ``retrieval_cos_min`` is the
  smallest cosine between a result and its pattern). One warm-up call (compiles), then
  the median of timed calls of ``sharded_retrieve`` (the public, eager call: argument
  checks, dispatch and the result's finiteness check included), ``block_until_ready``;
  at least ``--repeats`` (5) calls and more until ``--min-time`` (3 s) has been spent
  (at most 20); ``qps`` = batch / median seconds (``seconds_min``: the fastest call).
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
DEFAULT_MAX_GB_CPU = 10.0
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


def measure(num: int, dim: int, dtype_name: str, mesh, batch: int, repeats: int, min_time: float,
            max_bytes: int, previous: dict | None = None) -> dict:
    """One grid point: make the patterns on the mesh, time ``sharded_retrieve``.

    Skipped (a row with ``"skipped": True``) when it would need more than ``max_bytes``:
    on a CPU the process's peak RSS, extrapolated linearly in K from ``previous`` (the
    last point of the same configuration; XLA's scratch estimate for the first one); on
    an accelerator the per-device bytes of XLA's buffer assignment (patterns + scratch).
    """
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import ham

    devices = list(mesh.devices.flat)
    n = len(devices)
    on_cpu = devices[0].platform == "cpu"
    dtype = jnp.dtype(dtype_name)
    rows = NamedSharding(mesh, P("patterns", None))
    pattern_bytes = num * dim * dtype.itemsize

    # XLA's scratch for the compiled retrieval, from shapes only (nothing allocated yet).
    def retrieve_jit(p, q):
        return ham.memories.sharded_retrieve(ham.memories.modern(p, beta=BETA), q, mesh)

    t0 = time.perf_counter()
    compiled = jax.jit(retrieve_jit).lower(
        jax.ShapeDtypeStruct((num, dim), dtype, sharding=rows),
        jax.ShapeDtypeStruct((batch, dim), dtype, sharding=NamedSharding(mesh, P()))).compile()
    analysis_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    temp = int(getattr(mem, "temp_size_in_bytes", 0) or 0) if mem is not None else 0
    del compiled
    xla_bytes = pattern_bytes + n * temp
    rss_before, _ = _rss()
    if on_cpu:
        if previous and not previous.get("skipped") and previous.get("rss_peak_bytes"):
            grow = max(previous["rss_peak_bytes"] - previous["rss_base_bytes"], 0)
            predicted = rss_before + grow * num / previous["K"]
        else:
            predicted = rss_before + xla_bytes
    else:
        predicted = pattern_bytes // n + temp  # per device
    row = {"K": num, "dim": dim, "dtype": dtype.name, "devices": n, "predicted_peak_bytes": int(predicted),
           "xla_bytes_total": xla_bytes, "temp_bytes_per_device": temp, "max_bytes": max_bytes}
    if predicted > max_bytes:
        return row | {"skipped": True}

    rss_base = _rss()[0]
    _reset_peak_rss()
    t0 = time.perf_counter()
    patterns = jax.block_until_ready(make_patterns(num, dim, dtype, rows))
    gen_s = time.perf_counter() - t0
    shards = patterns.addressable_shards
    per_device = [int(s.data.nbytes) for s in shards]
    memory = ham.memories.modern(patterns, beta=BETA)
    idx = jnp.arange(batch) * (num // batch)
    targets = patterns[idx].astype(jnp.float32)
    noise = jax.random.normal(jax.random.PRNGKey(SEED + 1), (batch, dim), jnp.float32)
    queries = jax.block_until_ready((targets + NOISE / math.sqrt(dim) * noise).astype(dtype))

    t0 = time.perf_counter()
    out = jax.block_until_ready(ham.memories.sharded_retrieve(memory, queries))
    first = time.perf_counter() - t0
    times: list[float] = []
    while len(times) < MAX_REPEATS and (len(times) < repeats or sum(times) < min_time):
        t0 = time.perf_counter()
        out = jax.block_until_ready(ham.memories.sharded_retrieve(memory, queries))
        times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    cos = jnp.sum(out * targets, -1) / (jnp.linalg.norm(out, axis=-1) * jnp.linalg.norm(targets, axis=-1))
    rss, peak = _rss()
    row |= {
        "qps": batch / sec, "bytes_per_device": max(per_device), "device_kind": devices[0].device_kind,
        "seconds": sec, "seconds_min": min(times), "seconds_all": times, "repeats": len(times), "batch": batch,
        "bytes_total": int(patterns.nbytes), "num_shards": len(shards),
        "first_call_s": first, "compile_check_s": analysis_s, "generate_s": gen_s,
        "retrieval_cos_min": float(jnp.min(cos)),
        "rss_base_bytes": rss_base, "rss_bytes": rss, "rss_peak_bytes": peak, "platform": devices[0].platform,
    }
    if on_cpu and peak > rss_base:
        row["peak_bytes_per_pattern"] = (peak - rss_base) / num  # measured: patterns + scratch + queries
    peak_dev = _peak_device_bytes(devices)
    if peak_dev is not None:
        row["device_peak_bytes"] = peak_dev  # since the process started
    del out, memory, patterns, queries, targets, shards
    return row


def worker(args) -> None:
    """Run the grid on ``args.devices`` devices; rows go to a resumable checkpoint file."""
    import gc

    import jax
    import numpy as onp
    from jax.sharding import Mesh

    available = jax.devices()
    n = min(args.devices, len(available))
    if n < args.devices and n == 1 and args.devices > 1:
        print(json.dumps({"note": f"only {len(available)} {available[0].platform} device(s): the "
                          f"{args.devices}-device run is skipped"}), flush=True)
        write_json(args.rows_file, {"devices": 1, "skipped": True, "rows": []})
        return
    mesh = Mesh(onp.array(available[:n]), ("patterns",))
    capacity, capacity_source = device_memory(available[:n])
    on_cpu = available[0].platform == "cpu"
    if on_cpu:  # the process's peak RSS
        max_bytes = int((args.max_gb or DEFAULT_MAX_GB_CPU) * 1e9)
    else:  # per device
        max_bytes = int(args.max_gb * 1e9) if args.max_gb else int(0.9 * capacity / n)
    ck = Checkpoint(args.rows_file.with_suffix(".checkpoint.json"),
                    {"devices": n, "batch": args.batch, "beta": BETA, "platform": available[0].platform,
                     "device_kind": available[0].device_kind, "max_bytes": max_bytes})
    grid = [(d, t, k) for d in args.dims for t in args.dtypes for k in sorted(args.ks)]
    bad = [k for k in args.ks if k % n or k < args.batch]
    if bad:
        raise SystemExit(f"bench_scale: K = {bad} must be multiples of {n} devices and ≥ the batch {args.batch}")
    from tqdm import tqdm

    rows, previous = [], {}
    for d, t, k in tqdm(grid, desc=f"bench_scale {n} device(s)", disable=not args.progress, file=sys.stderr):
        key = f"{d}/{t}/{k}"
        if key not in ck:
            ck.put(key, measure(k, d, t, mesh, args.batch, args.repeats, args.min_time, max_bytes,
                                previous.get((d, t))))
            gc.collect()
        rows.append(ck[key])
        if not rows[-1].get("skipped"):
            previous[(d, t)] = rows[-1]
        print(json.dumps({k_: v for k_, v in rows[-1].items() if k_ != "seconds_all"}), flush=True)
    write_json(args.rows_file, {"devices": n, "rows": rows,
                                "rss_peak_bytes": max((r.get("rss_peak_bytes", 0) for r in rows), default=0),
                                "capacity_bytes": capacity, "capacity_source": capacity_source,
                                "max_bytes": max_bytes, "max_bytes_means": "peak RSS of the process" if on_cpu
                                else "bytes per device", "device_kind": available[0].device_kind,
                                "platform": available[0].platform, "jax": jax.__version__})


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
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--rows-file", type=Path, default=None, help=argparse.SUPPRESS)
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
    if args.worker:
        args.devices = args.devices[0]
        return worker(args)

    out_dir = results_dir(args.results_dir)
    name = "bench_scale_quick" if args.quick else "bench_scale"
    path = out_dir / f"{name}.json"
    if args.table:
        print(markdown_table(read_json(path)))
        return read_json(path)

    t_start = time.perf_counter()
    rows, workers = [], []
    for n in args.devices:
        rows_file = out_dir / f".{name}.devices{n}.json"
        cmd = [sys.executable, "-m", "experiments.bench_scale", "--worker", "--devices", str(n),
               "--rows-file", str(rows_file), "--ks", ",".join(map(str, args.ks)),
               "--dims", ",".join(map(str, args.dims)), "--dtypes", ",".join(args.dtypes),
               "--batch", str(args.batch), "--repeats", str(args.repeats), "--min-time", str(args.min_time),
               ] + (["--max-gb", str(args.max_gb)] if args.max_gb else []) + ([] if args.progress else ["--no-progress"])
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, env=_worker_env(n), check=True)
        w = read_json(rows_file)
        w["wall_s"] = time.perf_counter() - t0
        new = [r for r in w["rows"] if not r.get("skipped")]
        if w.get("skipped") or any(x["devices"] == w["devices"] for x in workers):
            print(json.dumps({"note": f"{n} device(s) requested: {w['devices']} available, already measured"}))
        else:
            rows += new
            workers.append({k: v for k, v in w.items() if k != "rows"}
                           | {"requested": n, "skipped_points": [r for r in w["rows"] if r.get("skipped")]})
        rows_file.unlink(missing_ok=True)
        rows_file.with_suffix(".checkpoint.json").unlink(missing_ok=True)
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
        "workers": workers, "wall_s": time.perf_counter() - t_start,
        "command": "python -m experiments.bench_scale" + (" --quick" if args.quick else ""),
        "git_commit": _git_commit(),
    }
    write_json(path, data)
    figure(data, path.with_suffix(".png"))
    print(json.dumps({"slope": data["slope"], "fits": [(f["dim"], f["dtype"], f["devices"], round(f["slope"], 3))
                                                       for f in per], "wall_s": data["wall_s"]}), flush=True)
    return data


if __name__ == "__main__":
    main()
