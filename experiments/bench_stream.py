"""Streamed relaxation benchmark (issue 20, part 3, stream rows): ``ham.relax(net, xs0,
window=None)`` (vmapped: every query computed until the slowest stops; relax's default
is ``window="auto"``, itself a stream) against ``ham.relax(net, xs0,
window=W)`` (W slots, refilled as queries stop), for an explicit window and for
``window="auto"``, on ``bench_relax``'s case builders, in float32 and float64.

Per row: the vmapped run gives the steps (mean, max); explicit windows
``W_k = N·mean/(k·max)`` for k in ``WINDOW_FACTORS`` are each timed once warm and the
fastest is the "best" window; ``window="auto"`` chooses its own (pilot run: see
``ham.relax``). Then vmapped, best and auto are timed in interleaved rounds (median;
each call blocking; ``auto`` timed with its pilot, as a user calls it). Also: the loop
iterations of the stream against ``N·mean_attempted/W + max_attempted`` (the cost model),
the fractions of queries with the same ``num_steps`` and the same final state (within the
steady-state tolerance, every layer) as the vmapped solve, the machine load (``uptime``)
before and after, and the target: speed-up ≥ 0.6 × max/mean steps capped at 4×
(≥ 0.95× where max/mean < 1.5).

Run: ``python -m experiments.bench_stream`` (4096 queries for classical_tanh_400 and
modern_1000x64, 1024 for et_legendre; resumable per row); ``--quick`` (1024/256
queries, 2 rounds); ``--smoke`` (classical_tanh_400, 300 queries, float32, one window, for tests; written to
``bench_stream_smoke.json``).
Writes ``experiments/results/bench_stream.json`` and ``bench_stream.png``. ``float32``
rows run with x64 off (the solve in float32), ``float64`` rows with x64 on.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import ham
from ham import _stream
from ham.integrator import _is_clamped
from experiments._io import read_json, results_dir, save_figure, write_json
from experiments.bench_relax import build

CASES = ("classical_tanh_400", "modern_1000x64", "et_legendre")
QUERIES = {"classical_tanh_400": 4096, "modern_1000x64": 4096, "et_legendre": 1024}
QUICK_QUERIES = {"classical_tanh_400": 1024, "modern_1000x64": 1024, "et_legendre": 256}
WINDOW_FACTORS = (2, 4, 8)  # explicit windows tried: N·mean/(k·max)
MIN_BLOCK_S = 0.5  # a timed block repeats short calls until it lasts this long


def vmapped(net, xs):
    """The baseline: the plain vmapped solve (``window=None``), every query computed until
    the slowest stops. ``ham.relax``'s default (``window="auto"``) is itself a stream, so
    the baseline must say ``window=None``."""
    return ham.relax(net, xs, window=None)


def target(max_over_mean: float) -> float:
    """The speed-up asked for: 0.6 × max/mean steps, capped at 4×; 0.95× (never
    slower) where max/mean < 1.5, where streaming cannot win."""
    return 0.95 if max_over_mean < 1.5 else min(0.6 * max_over_mean, 4.0)


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _timed(fn) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0


def _compare(ref, got, dtype, batch) -> dict:
    tol = ham.default_tolerances(jnp.dtype(dtype))
    ratio = np.zeros(batch)  # per query, the largest layer distance in units of the steady-state tolerance
    for k, v in ref.states.items():
        a, b = np.asarray(v).reshape(batch, -1), np.asarray(got.states[k]).reshape(batch, -1)
        scale = tol["event_atol"] + tol["event_rtol"] * np.linalg.norm(a, axis=1)
        ratio = np.maximum(ratio, np.linalg.norm(a - b, axis=1) / scale)
    s_ref, s_got = np.asarray(ref.num_steps), np.asarray(got.num_steps)
    return {"same_steps": float(np.mean(s_got == s_ref)), "steps_differ_max": int(np.max(np.abs(s_got - s_ref))),
            "same_state": float(np.mean(ratio <= 1.0)), "state_distance_max_tol": float(ratio.max()),
            "same_reason": float(np.mean(np.asarray(got.reason_code) == np.asarray(ref.reason_code)))}


def _attempted(sol, net) -> np.ndarray:
    """Attempted steps per query, from the vmapped count of evaluations (one moving layer:
    3 + attempted; L moving layers: 3 + attempted·(1 + (L−1)/L))."""
    moving = sum(1 for layer in net.layers.values() if not _is_clamped(layer)) or 1
    per = 1.0 + (moving - 1) / len(net.layers)
    return (np.asarray(sol.num_evaluations, np.float64) - 3.0) / per


def run_case(name: str, dtype: str, batch: int, rounds: int, window: int | None = None, seed: int = 0,
             factors=WINDOW_FACTORS) -> dict:
    jax.config.update("jax_enable_x64", dtype == "float64")
    load_before = _load()
    case = build(name, jnp.dtype(dtype), batch, jax.random.PRNGKey(seed))
    net, xs = case.net, case.xs0

    t0 = time.perf_counter()
    ref = jax.block_until_ready(vmapped(net, xs))
    first_vmapped = time.perf_counter() - t0
    steps = np.asarray(ref.num_steps)
    mean, peak = float(steps.mean()), int(steps.max())
    att = _attempted(ref, net)

    # explicit windows: one warm call each, the fastest is the best
    cands = [window] if window is not None else sorted(
        {int(np.clip(batch * max(mean, 1.0) / (k * max(peak, 1)), 8, batch)) for k in factors})
    trial = {}
    for w in cands:
        _timed(lambda: ham.relax(net, xs, window=w).states)  # compile + run
        trial[w] = _timed(lambda: ham.relax(net, xs, window=w).states)
    best = min(trial, key=trial.get)
    wb = _stream.Window(best)
    got = ham.relax(net, xs, window=wb)

    wa = _stream.Window("auto")
    first_auto = _timed(lambda: ham.relax(net, xs, window=wa).states)
    auto = ham.relax(net, xs, window=wa)
    auto_w = wa.stats["window"]

    calls = {"vmapped": lambda: vmapped(net, xs).states,
             "streamed": lambda: ham.relax(net, xs, window=best).states,
             "auto": lambda: ham.relax(net, xs, window="auto").states}
    inner = dict.fromkeys(calls, 1)  # calls per block: 1, more after a first block shorter than MIN_BLOCK_S
    times = {m: [] for m in calls}
    for _ in range(rounds):  # interleaved: all see the same machine load
        for m, fn in calls.items():
            t0 = time.perf_counter()
            for _ in range(inner[m]):
                jax.block_until_ready(fn())
            block = time.perf_counter() - t0
            times[m].append(block / inner[m])
            if block < MIN_BLOCK_S:
                inner[m] = max(inner[m], math.ceil(MIN_BLOCK_S / max(block / inner[m], 1e-6)))
    sec = {m: statistics.median(v) for m, v in times.items()}
    ratio = peak / max(mean, 1e-9)
    model = batch * att.mean() / best + att.max()
    row = {
        "case": name, "dtype": dtype, "queries": batch, "rounds": rounds, "calls_per_block": inner,
        "mean_steps": mean, "max_steps": peak, "max_over_mean": ratio,
        "mean_attempted": float(att.mean()), "max_attempted": float(att.max()),
        "window_best": best, "window_trials_s": {str(k): v for k, v in trial.items()}, "chunk": wb.stats["chunk"],
        "window_auto": auto_w, "auto": wa.stats["auto"],
        "vmapped_seconds": sec["vmapped"], "streamed_seconds": sec["streamed"], "auto_seconds": sec["auto"],
        "speedup": sec["vmapped"] / sec["streamed"], "auto_speedup": sec["vmapped"] / sec["auto"],
        "target": target(ratio),
        "seconds_all": times,
        "vmapped_first_call_s": first_vmapped, "auto_first_call_s": first_auto,
        "iterations": wb.stats["iterations"], "refills": wb.stats["refills"],
        "iterations_model": model, "vmapped_iterations": float(att.max()),
        "slot_steps_streamed": wb.stats["iterations"] * best, "slot_steps_vmapped": float(att.max()) * batch,
        "slot_steps_useful": float(att.sum()),
        "auto_iterations": None if auto_w is None else wa.stats.get("iterations"),
        **_compare(ref, got, dtype, batch),
        **{f"auto_{k}": v for k, v in _compare(ref, auto, dtype, batch).items()},
        "converged": float(np.mean(np.asarray(got.converged))),
        "vmapped_converged": float(np.mean(np.asarray(ref.converged))),
        "load_before": load_before, "load_after": _load(),
    }
    row["meets_target"] = bool(row["speedup"] >= row["target"])
    row["auto_meets_target"] = bool(row["auto_speedup"] >= row["target"])
    return row


def rerun_auto(row: dict, rounds: int, seed: int = 0) -> dict:
    """``row`` with its ``window="auto"`` fields measured again (the vmapped solve and
    "auto" interleaved, as in ``run_case``), after a change of the auto rule; the best
    explicit window's fields are kept from the earlier run (``auto_rerun`` says so)."""
    name, dtype, batch = row["case"], row["dtype"], row["queries"]
    jax.config.update("jax_enable_x64", dtype == "float64")
    load_before = _load()
    case = build(name, jnp.dtype(dtype), batch, jax.random.PRNGKey(seed))
    net, xs = case.net, case.xs0
    ref = jax.block_until_ready(vmapped(net, xs))
    wa = _stream.Window("auto")
    auto = jax.block_until_ready(ham.relax(net, xs, window=wa))
    calls = {"vmapped": lambda: vmapped(net, xs).states, "auto": lambda: ham.relax(net, xs, window="auto").states}
    times = {m: [] for m in calls}
    for _ in range(rounds):
        for m, fn in calls.items():
            times[m].append(_timed(fn))
    sec = {m: statistics.median(v) for m, v in times.items()}
    new = dict(row, window_auto=wa.stats["window"], auto=wa.stats["auto"], auto_seconds=sec["auto"],
               auto_speedup=sec["vmapped"] / sec["auto"],
               auto_iterations=None if wa.stats["window"] is None else wa.stats.get("iterations"),
               **{f"auto_{k}": v for k, v in _compare(ref, auto, dtype, batch).items()})
    new["auto_meets_target"] = bool(new["auto_speedup"] >= new["target"])
    new["auto_rerun"] = {"rounds": rounds, "vmapped_seconds": sec["vmapped"], "seconds_all": times,
                         "tail_fraction": _stream.TAIL_FRACTION, "load_before": load_before, "load_after": _load(),
                         "note": "auto re-measured against the vmapped solve in a later run (rule changed); "
                                 "auto_speedup = this run's vmapped median / auto median"}
    return new


def markdown_table(rows) -> str:
    """The docs table, from result rows."""
    lines = ["| case | dtype | queries | mean / max steps | vmapped s | W best: s, speed-up | W auto: s, speed-up "
             "| target | loop iterations (model N·mean/W + max) | same steps / same state |",
             "|" + "---|" * 10]
    for r in rows:
        auto = "vmapped" if r["window_auto"] is None else str(r["window_auto"])
        lines.append(
            f"| {r['case']} | {r['dtype']} | {r['queries']} | {r['mean_steps']:.1f} / {r['max_steps']} "
            f"| {r['vmapped_seconds']:.2f} | {r['window_best']}: {r['streamed_seconds']:.2f}, **{r['speedup']:.2f}×** "
            f"| {auto}: {r['auto_seconds']:.2f}, {r['auto_speedup']:.2f}× | ≥ {r['target']:.2f}× "
            f"{'✓' if r['meets_target'] else '✗'} | {r['iterations']} ({r['iterations_model']:.0f}) "
            f"| {r['same_steps']:.3f} / {r['same_state']:.3f} |")
    return "\n".join(lines)


def figure(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.8))
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["speedup"] for r in rows], 0.4, label="best explicit W")
    ax.bar(x + 0.2, [r["auto_speedup"] for r in rows], 0.4, label='window="auto"')
    ax.scatter(x, [r["target"] for r in rows], color="tab:red", marker="_", s=400, zorder=3, label="target")
    ax.axhline(1.0, color="k", lw=0.5)
    ax.set_xticks(x, [f"{r['case']}\n{r['dtype']} N={r['queries']}" for r in rows], fontsize=7)
    ax.set_ylabel("vmapped s / streamed s")
    ax.set_title("ham.relax(window=W) against the vmapped solve (interleaved medians)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1024 queries (ET 256), 2 rounds")
    ap.add_argument("--smoke", action="store_true", help="tiny run for the tests (two small rows, 1 round)")
    ap.add_argument("--cases", nargs="*", default=None, help=f"subset of {CASES}")
    ap.add_argument("--dtypes", nargs="*", default=None, help="default float32 and float64 (smoke: float32)")
    ap.add_argument("--batch", type=int, default=None, help="queries per row (default by case)")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--window", type=int, default=None, help="one explicit window instead of the search")
    ap.add_argument("--factors", type=float, nargs="*", default=None,
                    help=f"explicit windows tried, N mean/(k max) for these k (default {WINDOW_FACTORS})")
    ap.add_argument("--out", default=None, help="results folder (default experiments/results)")
    ap.add_argument("--table", action="store_true", help="print the table from the results file, redraw its figure, exit")
    ap.add_argument("--rerun-auto", action="store_true",
                    help="measure window='auto' again (interleaved with the vmapped solve) on the rows of the results "
                         "file, keeping their explicit-window fields")
    args = ap.parse_args(argv)
    out_dir = results_dir(args.out)
    path = out_dir / ("bench_stream_smoke.json" if args.smoke else "bench_stream.json")
    if args.rerun_auto:
        data = read_json(path, {}) or {}
        old_x64 = jax.config.jax_enable_x64
        try:
            for i, row in enumerate(data.get("results", [])):
                if args.cases and row["case"] not in args.cases:
                    continue
                if row.get("auto_rerun", {}).get("tail_fraction") == _stream.TAIL_FRACTION:
                    continue  # resume
                data["results"][i] = rerun_auto(row, args.rounds or 2)
                write_json(path, data)
                print(json.dumps({k: data["results"][i][k] for k in ("case", "dtype", "window_auto", "auto_speedup",
                                                                      "target", "auto_same_steps")}), flush=True)
        finally:
            jax.config.update("jax_enable_x64", old_x64)
        figure(data["results"], path.with_suffix(".png"))
        print(markdown_table(data["results"]))
        return data["results"]
    if args.table:  # the table (and the figure) from the results file
        rows = (read_json(path, {}) or {}).get("results", [])
        print(markdown_table(rows))
        if rows:
            figure(rows, path.with_suffix(".png"))
        return rows
    cases = args.cases or (["classical_tanh_400"] if args.smoke else list(CASES))
    dtypes = args.dtypes or (["float32"] if args.smoke else ["float32", "float64"])
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        ap.error(f"unknown case(s) {unknown}; known: {list(CASES)}")
    bad = sorted(set(dtypes) - {"float32", "float64"})
    if bad:
        ap.error(f"unknown dtype(s) {bad}; known: float32, float64")
    rounds = args.rounds or (1 if args.smoke else 2 if args.quick else 3)

    def size(c):
        return args.batch or (300 if args.smoke else QUICK_QUERIES[c] if args.quick else QUERIES[c])

    done = {} if args.smoke else {(r["case"], r["dtype"], r["queries"]): r
                                   for r in (read_json(path, {}) or {}).get("results", [])}
    old_x64 = jax.config.jax_enable_x64
    rows = []
    from tqdm import tqdm

    try:
        for c, d in tqdm([(c, d) for c in cases for d in dtypes], desc="bench_stream", disable=args.smoke):
            key = (c, d, size(c))
            row = done.get(key)
            if row is None:  # resume: finished rows are kept
                row = run_case(c, d, size(c), rounds, args.window, factors=args.factors or ((2,) if args.smoke else WINDOW_FACTORS))
                done[key] = row
                write_json(path, {"results": list(done.values()), "platform": platform.platform(),
                                  "processor": platform.processor(), "device": str(jax.devices()[0]),
                                  "jax": jax.__version__, "cpu_count": os.cpu_count(),
                                  "mode": "smoke" if args.smoke else "quick" if args.quick else "full",
                                  "note": "timed on a shared machine (2 cores, other jobs running): load_before/"
                                          "load_after are os.getloadavg(); ratios are interleaved medians"})
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k not in ("seconds_all", "auto")}), flush=True)
    finally:
        jax.config.update("jax_enable_x64", old_x64)
    if rows:  # every row of the results file (earlier runs' included)
        figure(list(done.values()) if not args.smoke else rows, path.with_suffix(".png"))
    print(markdown_table(list(done.values()) if not args.smoke else rows))
    return rows


if __name__ == "__main__":
    main()
