"""Streamed relaxation benchmark: ``ham.relax(net, xs0)`` (vmapped: every query computed
until the slowest stops) against ``ham.relax(net, xs0, window=W)`` (W slots, refilled as
queries stop), timed interleaved (median over rounds, each call blocking).

Run: ``python -m experiments.bench_stream`` (``--quick``: 1024 queries, 3 rounds;
``--smoke``: tiny, for tests). Prints one JSON line per case and writes
``experiments/results/bench_stream.json`` = ``{"results": [rows]}`` (``--out`` to change
the folder). ``float32`` cases run with x64 off (the solve in float32), ``float64`` cases
with x64 on.

Window: ``--window W``, or by default W = N·mean/(2·max) steps of the vmapped run (the
bound of issue 20: iterations ≈ N·mean/W + max stay within 1.5 × N·mean/W), clipped to
[8, N]. Per row: seconds of each, mean/max steps, the loop iterations of the stream, and
the fractions of queries with the same ``num_steps`` and the same final state (within the
steady-state tolerance, every layer) as the vmapped solve, the largest state distance in
units of that tolerance and the largest step difference.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import ham
from ham import _stream
from experiments._io import results_dir, write_json
from experiments.bench_relax import build

CASES = ("classical_tanh_400", "modern_1000x64")


def run_case(name: str, dtype: str, batch: int, rounds: int, window: int | None, seed: int = 0) -> dict:
    jax.config.update("jax_enable_x64", dtype == "float64")
    case = build(name, jnp.dtype(dtype), batch, jax.random.PRNGKey(seed))
    net, xs = case.net, case.xs0

    t0 = time.perf_counter()
    ref = jax.block_until_ready(ham.relax(net, xs))
    first_vmapped = time.perf_counter() - t0
    steps = np.asarray(ref.num_steps)
    mean, peak = float(steps.mean()), int(steps.max())
    if window is None:
        window = int(np.clip(batch * mean / (2 * max(peak, 1)), 8, batch))
    w = _stream.Window(window)
    t0 = time.perf_counter()
    got = jax.block_until_ready(ham.relax(net, xs, window=w))
    first_streamed = time.perf_counter() - t0

    times = {"vmapped": [], "streamed": []}
    calls = {"vmapped": lambda: ham.relax(net, xs), "streamed": lambda: ham.relax(net, xs, window=window)}
    for _ in range(rounds):  # interleaved: both see the same machine load
        for m, fn in calls.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn().states)
            times[m].append(time.perf_counter() - t0)
    tol = ham.default_tolerances(jnp.dtype(dtype))
    ratio = np.zeros(batch)  # per query, the largest layer distance in units of the steady-state tolerance
    for k, v in ref.states.items():
        a, b = np.asarray(v).reshape(batch, -1), np.asarray(got.states[k]).reshape(batch, -1)
        scale = tol["event_atol"] + tol["event_rtol"] * np.linalg.norm(a, axis=1)
        ratio = np.maximum(ratio, np.linalg.norm(a - b, axis=1) / scale)
    same_state = ratio <= 1.0
    sec_v, sec_s = statistics.median(times["vmapped"]), statistics.median(times["streamed"])
    return {
        "case": name, "dtype": dtype, "queries": batch, "window": window, "chunk": w.stats["chunk"],
        "rounds": rounds, "vmapped_seconds": sec_v, "streamed_seconds": sec_s, "speedup": sec_v / sec_s,
        "vmapped_first_call_s": first_vmapped, "streamed_first_call_s": first_streamed,
        "mean_steps": mean, "max_steps": peak, "max_over_mean": peak / max(mean, 1e-9),
        "streamed_mean_steps": float(np.mean(np.asarray(got.num_steps))),
        "streamed_max_steps": int(np.max(np.asarray(got.num_steps))),
        "iterations": w.stats["iterations"], "refills": w.stats["refills"],
        "vmapped_iterations_equiv": batch / window * peak,
        "same_steps": float(np.mean(np.asarray(got.num_steps) == steps)),
        "same_reason": float(np.mean(np.asarray(got.reason_code) == np.asarray(ref.reason_code))),
        "same_state": float(np.mean(same_state)), "state_distance_max_tol": float(ratio.max()),
        "steps_differ_max": int(np.max(np.abs(np.asarray(got.num_steps) - steps))),
        "converged": float(np.mean(np.asarray(got.converged))),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1024 queries, 3 rounds")
    ap.add_argument("--smoke", action="store_true", help="tiny run for the tests (32 queries, 1 round)")
    ap.add_argument("--cases", nargs="*", default=list(CASES), help=f"subset of {CASES}")
    ap.add_argument("--dtypes", nargs="*", default=["float32", "float64"])
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--window", type=int, default=None)
    ap.add_argument("--out", default=None, help="results folder (default experiments/results)")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.cases) - set(CASES))
    if unknown:
        ap.error(f"unknown case(s) {unknown}; known: {list(CASES)}")
    bad = sorted(set(args.dtypes) - {"float32", "float64"})
    if bad:
        ap.error(f"unknown dtype(s) {bad}; known: float32, float64")
    batch = args.batch or (32 if args.smoke else 1024 if args.quick else 4096)
    rounds = args.rounds or (1 if args.smoke else 3 if args.quick else 5)
    old_x64 = jax.config.jax_enable_x64
    rows = []
    try:
        for name in args.cases:
            for dtype in args.dtypes:
                row = run_case(name, dtype, batch, rounds, args.window)
                print(json.dumps(row), flush=True)
                rows.append(row)
    finally:
        jax.config.update("jax_enable_x64", old_x64)
    write_json(results_dir(args.out) / "bench_stream.json",
               {"results": rows, "platform": platform.platform(), "jax": jax.__version__,
                "note": "timed on a shared, heavily loaded machine" if not args.smoke else "smoke"})
    return rows


if __name__ == "__main__":
    main()
