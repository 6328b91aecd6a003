"""Retrieval throughput of the modern Hopfield network: ``ham.memories.modern(...).retrieve``
(one update) against the same maths as plain jitted jnp (``softmax(β Q Xᵀ) X``), and
``relax`` of its two-layer HAM to the fixed point, all in one run.

Run: ``python -m experiments.bench_retrieval`` (``--quick`` for small cases). Prints one
JSON line per case and writes ``experiments/results/bench_retrieval.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp

import ham
from experiments._io import results_dir, write_json

FULL_CASES = [(1000, 64, 256), (10000, 128, 1024), (60000, 784, 128)]
QUICK_CASES = [(1000, 64, 256), (2000, 128, 128), (6000, 784, 32)]


@jax.jit
def plain_retrieve(queries, patterns, beta):
    """The modern Hopfield update written directly in jnp (the reference)."""
    return jax.nn.softmax(beta * queries @ patterns.T, axis=-1) @ patterns


def _load() -> dict:
    """The machine's load average and ``uptime`` line (the machine may be shared)."""
    import subprocess

    try:
        uptime = subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        uptime = None
    return {"loadavg": list(os.getloadavg()), "uptime": uptime, "cpus": os.cpu_count()}


def default_relax_batch(num_patterns, dim, batch):
    """Relaxing every query of the big cases takes minutes on a CPU: time a subset."""
    size = num_patterns * dim
    return batch if size < 1_000_000 else (32 if size < 10_000_000 else 4)


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        out.append(time.perf_counter() - t0)
    return out


def run_case(num_patterns, dim, batch, *, beta, repeats, relax_batch, seed=0):
    kp, kq = jax.random.split(jax.random.PRNGKey(seed))
    patterns = jax.random.normal(kp, (num_patterns, dim)) / jnp.sqrt(dim)
    idx = jnp.arange(batch) % num_patterns
    queries = patterns[idx] + 0.5 / jnp.sqrt(dim) * jax.random.normal(kq, (batch, dim))
    mem = ham.memories.modern(patterns, beta=beta)
    b = jnp.asarray(beta, patterns.dtype)

    t0 = time.perf_counter()
    jax.block_until_ready(mem.retrieve(queries))
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(plain_retrieve(queries, patterns, b))
    # warm-up, then interleave blocks of calls of the two so both see the same machine load
    # (a block: enough calls for about 20 ms, so that a sub-millisecond call is timed over many)
    per_call = min(timed(lambda: mem.retrieve(queries), 3) + timed(lambda: plain_retrieve(queries, patterns, b), 3))
    block = max(1, min(50, int(0.02 / max(per_call, 1e-6))))
    ham_t, plain_t = [], []
    for i in range(repeats):  # ABBA order: neither goes first every time
        pair = [(ham_t, lambda: mem.retrieve(queries)), (plain_t, lambda: plain_retrieve(queries, patterns, b))]
        for times, fn in (pair if i % 2 == 0 else pair[::-1]):
            times.append(sum(timed(fn, block)) / block)
    ham_qps = batch / statistics.median(ham_t)
    plain_qps = batch / statistics.median(plain_t)
    err = float(jnp.max(jnp.abs(mem.retrieve(queries) - plain_retrieve(queries, patterns, b))))

    rb = min(batch, relax_batch) if relax_batch else batch
    rq = queries[:rb]
    t0 = time.perf_counter()
    sol = mem.relax(rq)
    jax.block_until_ready(sol.states)
    relax_compile_s = time.perf_counter() - t0
    relax_t = timed(lambda: mem.relax(rq).states, 5)
    return {
        "case": f"{num_patterns}x{dim}/batch{batch}",
        "num_patterns": num_patterns, "dim": dim, "batch": batch, "beta": beta,
        "ham_qps": round(ham_qps, 1),
        "plain_qps": round(plain_qps, 1),
        "ratio": round(ham_qps / plain_qps, 3),
        "relax_qps": float(f"{rb / statistics.median(relax_t):.3g}"),
        "relax_steps": float(jnp.mean(sol.num_steps)),
        "relax_converged": float(jnp.mean(sol.converged)),
        "relax_batch": rb,
        "compile_s": round(compile_s, 3),
        "relax_compile_s": round(relax_compile_s, 2),
        "max_abs_diff": err,
        "repeats": repeats, "calls_per_block": block, "relax_repeats": 5,
        "note": "" if rb == batch else f"relax timed on the first {rb} of {batch} queries",
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small cases (a smoke test); writes bench_retrieval_quick.json")
    ap.add_argument("--repeats", type=int, default=41,
                    help="timed blocks of one-step retrieval (ham and plain interleaved, about 20 ms of calls a "
                    "block), median reported (>= 5); relax is timed 5 times")
    ap.add_argument("--beta", type=float, default=8.0, help="inverse temperature of the modern Hopfield network")
    ap.add_argument("--relax-batch", type=int, default=None,
                    help="queries used for relax timing (default: all for small cases, 32 for 10000x128, 4 for 60000x784)")
    ap.add_argument("--out", default=None, help="output JSON path (default experiments/results/bench_retrieval[_quick].json)")
    args = ap.parse_args(argv)
    if args.repeats < 5:
        ap.error("--repeats must be >= 5 (the median of at least 5 runs is reported)")
    cases = QUICK_CASES if args.quick else FULL_CASES
    out = args.out or results_dir() / ("bench_retrieval_quick.json" if args.quick else "bench_retrieval.json")
    rows = []
    load_start = _load()
    for k, d, b in cases:
        rb = args.relax_batch if args.relax_batch is not None else default_relax_batch(k, d, b)
        row = run_case(k, d, b, beta=args.beta, repeats=args.repeats, relax_batch=rb)
        rows.append(row)
        print(json.dumps(row), flush=True)
        write_json(out, {"device": str(jax.devices()[0]), "machine": platform.processor() or platform.machine(),
                         "jax": jax.__version__, "results": rows, "load_start": load_start, "load_end": _load(),
                         "timing": "one-step retrieval: ham and plain jnp alternate (ABBA) in blocks of calls "
                                   "(about 20 ms each), the median of the per-call block means; the machine may be shared "
                                   "(load average in load_start/load_end)"})
    return rows


if __name__ == "__main__":
    main()
