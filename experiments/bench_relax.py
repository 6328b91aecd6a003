"""Relaxation engine benchmark: ``ham.relax`` (default: [`ham.ExponentialEuler`][]) against
the previous default (diffrax ``Tsit5`` + PID) and a fixed-step explicit Euler loop at
dt = min τ and min τ / 2 (the batch as one state), on a suite of networks, in float32
and float64, all methods interleaved in one run. Seconds: the median over ``repeats`` rounds of one
timed block per method, a block being as many calls (each blocking) as fill
``MIN_BLOCK_S``.

Run: ``python -m experiments.bench_relax`` (``--quick``: fewer queries and repeats,
``--smoke``: tiny, for tests). Prints one JSON line per case and writes
``experiments/results/bench_relax.json`` = ``{"results": [rows]}``.

How work is counted (``Solution.num_evaluations``): one evaluation = the forces on
every layer (the vector field) once. Euler: one per step, plus the initial one.
``ExponentialEuler``: per attempted step (rejected ones included) the full field with the
energy at the end of the step (one ``value_and_grad``, whose speeds also give the final
residual) plus, for a Gauss–Seidel sweep over L moving layers, L − 1 single-layer forces
counted 1/L each; plus the initial field (shared by the energy monitor and the solver). ``Tsit5``: 6 stages per attempted step (FSAL), 1 for the
steady-state event and 1 for the energy per accepted step, the initial field and the
final check. For a batch the counts are those of the slowest query (every query of a
vmapped solve runs until the last one stops, as Euler's batch does).

Stop rule (all methods): every layer of every query has
|dx_A/dt| ≤ event_atol + event_rtol |x_A| (defaults: 1e-4/1e-4 in float32, 1e-8/1e-6
in float64). Reference: Tsit5, rtol 1e-8, atol 1e-10, float64, with a 100× tighter
steady state. ``same_fixed_point``: the fraction of queries whose final state is within
``FP_FACTOR`` × the steady-state tolerance of the reference in every layer
(|x_A − x*_A| ≤ FP_FACTOR (event_atol + event_rtol |x*_A|)); ``same_retrieval``: the
fraction whose retrieved memory (nearest stored pattern, or argmax of the memory layer)
equals the reference's.

Targets (``meets_target`` per row): on single-time-scale nets (every finite τ equal:
``classical_tanh_400``, ``conv_image``, ``et_legendre``) Euler at dt = τ is the network's
synchronous discrete update, so ``wall_ratio_vs_discrete_update`` = relax seconds / Euler
seconds must be ≤ ``TARGET_SINGLE_TIME_SCALE`` (1.25), with the energy never rising and
``same_fixed_point`` no lower than Euler's (``same_fixed_point_as_euler``: the fraction of
queries where relax and Euler end within ``FP_FACTOR`` × the tolerance of each other), and
the same ratio for ``ham.relax(..., trace=False)`` (``wall_ratio_vs_discrete_update_no_trace``,
``meets_target_no_trace``: the same solve, states bit-identical, keeping only each energy
trace's start and end, as the discrete update keeps none); on
two-time-scale nets (the modern, dense, KH2021 and ``conv_fast_memory``, the
convolutional memory with τ_memory = 0.1) ≥ 5× fewer evaluations and ≥ 3× less wall-clock
than Euler at dt = min τ. Each row records the 1-minute load average before and after.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import ham
from experiments._io import read_json, results_dir, save_figure, write_json

FP_FACTOR = 10.0
MIN_BLOCK_S = 0.2
CASE_NAMES = ("modern_1000x64", "modern_10000x128", "classical_tanh_400", "dense_n3", "kh2021_model_A",
              "conv_image", "conv_fast_memory", "et_legendre")
# Targets (issue 20): on single-time-scale nets (every finite tau equal) Euler at dt = tau is
# the network's synchronous discrete update, so relax must cost at most this much of its
# wall-clock, reach the same fixed point and match the reference no worse; on two-time-scale
# nets, at least this many times fewer evaluations and less wall-clock than Euler at dt = min tau.
TARGET_SINGLE_TIME_SCALE = 1.25
TARGET_EVALS_RATIO, TARGET_SPEEDUP = 5.0, 3.0


@dataclasses.dataclass
class Case:
    name: str
    net: ham.HAM
    xs0: dict
    retrieved: Callable  # states -> (batch,) int


def _nearest(patterns, layer="v", act=None):
    def f(net, states):
        g = net.activations(states)[layer] if act is None else act(states[layer])
        g = g.reshape(g.shape[0], -1)
        p = patterns.reshape(patterns.shape[0], -1).astype(g.dtype)
        d = jnp.sum(g * g, -1, keepdims=True) - 2 * g @ p.T + jnp.sum(p * p, -1)
        return jnp.argmin(d, axis=-1)
    return f


def build(name: str, dtype, batch: int, key) -> Case:
    k1, k2, k3 = jax.random.split(key, 3)
    if name.startswith("modern"):
        num, dim = (1000, 64) if name == "modern_1000x64" else (10000, 128)
        x = (jax.random.normal(k1, (num, dim)) / np.sqrt(dim)).astype(dtype)
        q = x[jnp.arange(batch) % num] + (0.5 / np.sqrt(dim)) * jax.random.normal(k2, (batch, dim), dtype)
        mem = ham.memories.modern(x, beta=8.0)
        return Case(name, mem.network, mem.init_states(q), _nearest(x))
    if name == "classical_tanh_400":
        n, k = 400, 40
        p = jnp.where(jax.random.bernoulli(k1, 0.5, (k, n)), 1.0, -1.0).astype(dtype)
        flips = jnp.where(jax.random.bernoulli(k2, 0.1, (batch, n)), -1.0, 1.0).astype(dtype)
        q = p[jnp.arange(batch) % k] * flips
        mem = ham.memories.classical(p)
        net = mem.make_network(beta=4.0)
        return Case(name, net, {"v": 0.5 * q}, _nearest(p, act=jnp.sign))
    if name in ("dense_n3", "kh2021_model_A"):
        if name == "dense_n3":  # ±1 patterns, rectified cubic interaction (Krotov & Hopfield 2016)
            n, k = 100, 200
            p = jnp.where(jax.random.bernoulli(k1, 0.5, (k, n)), 1.0, -1.0).astype(dtype)
            mem = ham.memories.krotov_hopfield_2021(p / jnp.sqrt(jnp.asarray(n, dtype)), model="A", n=3)
            q = p[jnp.arange(batch) % k] * jnp.where(jax.random.bernoulli(k2, 0.15, (batch, n)), -1.0, 1.0).astype(dtype)
        else:  # digits scaled to [-1, 1], model A (tanh visible, rectified polynomial n = 2 hidden)
            from experiments.data import load_dataset

            d = load_dataset("digits")
            p = jnp.asarray(d.flat()[:300] * 2.0 - 1.0, dtype)
            mem = ham.memories.krotov_hopfield_2021(p / 8.0, model="A", n=2)
            q = p[jnp.arange(batch) % 300] + 0.3 * jax.random.normal(k2, (batch, p.shape[1]), dtype)
            q = jnp.arctanh(jnp.clip(q, -0.95, 0.95))
        xs0 = mem.init_states(q.astype(dtype))
        return Case(name, mem.network, xs0, _nearest(p))
    if name in ("conv_image", "conv_fast_memory"):
        from experiments.data import load_dataset

        d = load_dataset("digits")
        imgs = jnp.asarray(d.flat()[:64].reshape(-1, 8, 8, 1), dtype)
        # conv_fast_memory: the same net with a fast memory layer (tau_memory = 0.1), a
        # two-time-scale image net
        tau_memory = 0.1 if name == "conv_fast_memory" else 1.0
        mem = ham.memories.convolutional(imgs, key=k1, num_features=4, beta=4.0, tau_memory=tau_memory)
        q = imgs[jnp.arange(batch) % 64] + 0.2 * jax.random.normal(k2, (batch, 8, 8, 1), dtype)
        return Case(name, mem.network, mem.initial_state(q), _nearest(imgs, layer="pixels"))
    if name == "et_legendre":
        et = ham.energy_transformer.EnergyTransformer(16, 32, heads=4, legendre=True, key=k1)
        net = jax.tree_util.tree_map(lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, et.network)
        x0 = jax.random.normal(k2, (batch, 16, 32), dtype)
        xi = net.synapses["hopfield"]

        def tokens_memory(net, states):  # the Hopfield memory each token ends closest to (argmax)
            g = net.activations(states)["tokens"]
            w = jnp.asarray(jax.tree_util.tree_leaves(xi)[0], g.dtype)
            return jnp.argmax(g @ w.T, axis=-1).reshape(g.shape[0], -1)

        return Case(name, net, {"tokens": x0}, tokens_memory)
    raise ValueError(f"bench_relax: unknown case {name!r}; known: {CASE_NAMES}")


# ----------------------------------------------------------------------------- batch as one ODE
class _SumOverBatch(eqx.Module):
    """The Lagrangian of a batch of independent copies of a layer: sum over the batch."""

    fn: Callable

    def __call__(self, x):
        return jnp.sum(jax.vmap(self.fn)(x))


class _BatchSynapse(ham.synapses.Synapse):
    """A synapse applied to each copy of a batch, energies summed."""

    synapse: ham.synapses.Synapse

    def energy(self, *gs):
        return jnp.sum(jax.vmap(self.synapse.energy)(*gs))


def batch_as_one(net: ham.HAM, batch: int) -> ham.HAM:
    """One HAM whose state is the whole batch: the same dynamics, one ODE, one step size
    and one (batch-level, per-layer) stopping rule for all queries."""
    layers = {k: ham.Layer(_SumOverBatch(layer.lagrangian), (batch, *layer.shape), tau=layer.tau,
                           legendre=layer.legendre, check_convexity=False) for k, layer in net.layers.items()}
    synapses = {k: _BatchSynapse(s) for k, s in net.synapses.items()}
    return ham.HAM(layers=layers, synapses=synapses, connections=net.connections)


# ----------------------------------------------------------------------------- methods
def _min_tau(net):
    return min(float(jnp.min(jnp.asarray(layer.tau))) for layer in net.layers.values())


def single_time_scale(net) -> bool:
    """Every finite tau equal: Euler at dt = tau is then the synchronous discrete update."""
    taus = np.concatenate([np.ravel(np.asarray(layer.tau, np.float64)) for layer in net.layers.values()])
    taus = taus[np.isfinite(taus)]
    return bool(taus.size and np.all(taus == taus[0]))


def _per_layer_ok(net, xs, dx, rtol, atol):
    ok = None
    for k, layer in net.layers.items():
        axes = tuple(range(1, xs[k].ndim))
        s = jnp.sqrt(jnp.sum(dx[k] ** 2, axis=axes))
        n = jnp.sqrt(jnp.sum(xs[k] ** 2, axis=axes))
        o = s <= atol + rtol * n
        ok = o if ok is None else ok & o
    return ok


@eqx.filter_jit
def euler(net, xs0, dt, rtol, atol, max_steps: int = 100_000):
    """Fixed-step explicit Euler, the batch as one state, until every query meets the stop rule."""

    def field(xs):
        dx = net.vector_field(0.0, xs)
        return dx, _per_layer_ok(net, xs, dx, rtol, atol)

    def cond(c):
        return (~jnp.all(c[2])) & (c[3] < max_steps)

    def body(c):
        xs, dx, _, n = c
        xs = {k: xs[k] + dt * dx[k] for k in xs}
        dx, ok = field(xs)
        return xs, dx, ok, n + 1

    dx, ok = field(xs0)
    xs, _, ok, n = jax.lax.while_loop(cond, body, (xs0, dx, ok, jnp.asarray(0)))
    return xs, n, ok


@eqx.filter_jit
def euler_relax_stop(net, xs0, dt, rtol, atol, max_steps: int = 100_000):
    """The same update (Euler at ``dt``), stopped by ``ham.relax``'s own rule rather than
    by the residual alone: per query, the library's steady-state test
    (``ham.solve._at_fixed_point``: every layer's residual within tolerance and its
    estimated distance to the fixed point, ``ham.integrator._distance``, within it too,
    or the residual ``_SETTLED`` times below it), with the displacement of relax's own
    step on a single-time-scale net (h = dtmax = 100 τ, where τ(1 − e^{−h/τ}) = τ = dt).
    Timed on single-time-scale nets only, to split relax's extra cost into its stop
    rule's and its per-step overhead."""
    from ham.integrator import Monitored, _distance, _norm, start_distance
    from ham.solve import _at_fixed_point, _max_finite_tau

    h = 100.0 * _max_finite_tau(net)  # relax's dtmax: its step on a single-time-scale net
    moving = list(xs0)

    def stop(xs, dx, speed_prev):  # one query: relax's steady-state test, and its speeds
        speed = {k: _norm(dx[k]) for k in xs}
        distance = start_distance(speed) if speed_prev is None else _distance(h, net, speed_prev, speed, moving)
        zero = jnp.zeros((), next(iter(speed.values())).dtype)
        return _at_fixed_point(Monitored(xs, zero, speed, zero, distance), rtol, atol), speed

    def cond(c):
        return (~jnp.all(c[3])) & (c[4] < max_steps)

    def body(c):
        xs, dx, speed_prev, _, n = c
        xs = {k: xs[k] + dt * dx[k] for k in xs}
        dx = net.vector_field(0.0, xs)
        ok, speed = jax.vmap(stop)(xs, dx, speed_prev)
        return xs, dx, speed, ok, n + 1

    dx = net.vector_field(0.0, xs0)
    ok, speed = jax.vmap(lambda x, d: stop(x, d, None))(xs0, dx)
    xs, _, _, ok, n = jax.lax.while_loop(cond, body, (xs0, dx, speed, ok, jnp.asarray(0)))
    return xs, n, ok


def methods(case: Case, tol):
    dt = _min_tau(case.net)
    r, a = tol["event_rtol"], tol["event_atol"]

    def relax_default():
        sol = ham.relax(case.net, case.xs0)
        return sol.states, jnp.max(sol.num_evaluations), jnp.max(sol.num_steps), jnp.all(sol.converged), sol

    def relax_vmapped():  # window=None: every query stepped until the slowest one stops
        sol = ham.relax(case.net, case.xs0, window=None)
        return sol.states, jnp.max(sol.num_evaluations), jnp.max(sol.num_steps), jnp.all(sol.converged), sol

    def relax_tsit5():
        sol = ham.relax(case.net, case.xs0, solver=diffrax.Tsit5())
        return sol.states, jnp.max(sol.num_evaluations), jnp.max(sol.num_steps), jnp.all(sol.converged), sol

    one_net = batch_as_one(case.net, next(iter(case.xs0.values())).shape[0])

    def relax_batch_as_one():
        sol = ham.relax(one_net, case.xs0)
        return sol.states, sol.num_evaluations, sol.num_steps, sol.converged, None

    def eul(factor):
        def run():
            xs, n, ok = euler(case.net, case.xs0, dt * factor, r, a)
            return xs, n + 1, n, jnp.all(ok), None
        return run

    out = {"relax": relax_default, "vmapped": relax_vmapped, "tsit5": relax_tsit5, "euler": eul(1.0), "euler_half": eul(0.5),
           "batch_as_one": relax_batch_as_one}
    if single_time_scale(case.net):  # the discrete update keeps no trace: relax with only its summary too
        def relax_no_trace():
            sol = ham.relax(case.net, case.xs0, trace=False)
            return sol.states, jnp.max(sol.num_evaluations), jnp.max(sol.num_steps), jnp.all(sol.converged), sol

        out["no_trace"] = relax_no_trace

        def euler_same_stop():
            xs, n, ok = euler_relax_stop(case.net, case.xs0, dt, r, a)
            return xs, n + 1, n, jnp.all(ok), None

        out["euler_relax_stop"] = euler_same_stop
    return out


def reference(case: Case):
    """Tsit5 at rtol 1e-8 in float64 with a 100x tighter steady state: the accurate fixed point."""
    net64 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, case.net)
    xs64 = {k: v.astype(jnp.float64) for k, v in case.xs0.items()}
    sol = ham.relax(net64, xs64, solver=diffrax.Tsit5(), rtol=1e-8, atol=1e-10, event_rtol=1e-8, event_atol=1e-10,
                    max_steps=20000)
    return net64, sol


def compare(case: Case, states, ref_net, ref_states, tol):
    fp = None
    for k in case.net.layers:
        x = jnp.asarray(states[k], jnp.float64).reshape(states[k].shape[0], -1)
        xr = ref_states[k].reshape(x.shape)
        d = jnp.linalg.norm(x - xr, axis=-1) / (tol["event_atol"] + tol["event_rtol"] * jnp.linalg.norm(xr, axis=-1))
        fp = d if fp is None else jnp.maximum(fp, d)
    s64 = {k: jnp.asarray(v, jnp.float64) for k, v in states.items()}
    same = case.retrieved(ref_net, s64) == case.retrieved(ref_net, ref_states)
    same = jnp.all(same.reshape(same.shape[0], -1), axis=-1)
    return float(jnp.mean(fp <= FP_FACTOR)), float(jnp.max(fp)), float(jnp.mean(same))


def run_case(name, dtype, batch, repeats, seed=0):
    case = build(name, dtype, batch, jax.random.PRNGKey(seed))
    tol = ham.default_tolerances(dtype)
    ms = methods(case, tol)
    out = {"case": name, "dtype": jnp.dtype(dtype).name, "batch": batch, "min_tau": _min_tau(case.net),
           "repeats": repeats, "load_1min_start": os.getloadavg()[0]}
    first, times, cpu, res = {}, {m: [] for m in ms}, {m: [] for m in ms}, {}
    for m, fn in ms.items():  # first call = compile + one run
        t0 = time.perf_counter()
        res[m] = jax.block_until_ready(fn())
        first[m] = time.perf_counter() - t0
    # calls per timed block, so that a block lasts >= MIN_BLOCK_S: a millisecond solve timed
    # once is at the mercy of the timer and of dispatch jitter (each call still blocks)
    inner = {}
    for m, fn in ms.items():
        t0 = time.perf_counter()
        jax.block_until_ready(fn()[0])
        inner[m] = max(1, math.ceil(MIN_BLOCK_S / max(time.perf_counter() - t0, 1e-6)))
    for _ in range(repeats):  # interleaved so all methods see the same machine load
        for m, fn in ms.items():
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(inner[m]):
                jax.block_until_ready(fn()[0])
            times[m].append((time.perf_counter() - t0) / inner[m])
            cpu[m].append((time.process_time() - c0) / inner[m])
    ref_net, ref = reference(case)
    ref_ok = bool(jnp.all(ref.converged))
    for m in ms:
        states, evals, steps, conv, sol = res[m]
        sec = statistics.median(times[m])
        same_fp, fp_max, same_ret = compare(case, states, ref_net, ref.states, tol)
        key = "" if m == "relax" else f"{m}_"
        out[f"{key}evals"] = float(evals)
        out[f"{key}steps"] = int(steps)
        out[f"{key}seconds"] = sec
        # CPU time of this process (all its threads): less sensitive than wall-clock to the
        # other processes sharing the cores
        out[f"{key}cpu_seconds"] = statistics.median(cpu[m])
        out[f"{key}compile_s"] = max(first[m] - sec, 0.0)
        out[f"{key}converged"] = bool(conv)
        out[f"{key}same_fixed_point"] = same_fp
        out[f"{key}fp_distance_max"] = fp_max
        out[f"{key}same_retrieval"] = same_ret
        if m == "relax":
            try:
                ham.lyapunov.check(sol)
                out["energy_never_rose"] = True
            except ham.lyapunov.LyapunovError as e:
                out["energy_never_rose"] = False
                out["lyapunov_error"] = str(e)
            out["mean_steps"] = float(jnp.mean(sol.num_steps))
    out["reference_converged"] = ref_ok
    # how the default (window="auto") ran the batch, and its work in slot steps (the
    # window's width summed over the loop's iterations) against the vmapped solve's
    # (every query stepped for as many iterations as the slowest one takes)
    from ham import _stream

    holder = _stream.Window("auto")
    jax.block_until_ready(ham.relax(case.net, case.xs0, window=holder).states)
    st = holder.stats
    out["window"], out["window_rule"] = st["window"], st["auto"]["reason"]
    if st["window"] is not None:
        out["tail"], out["slot_steps"] = list(st["tail"]), st["slot_steps"]
        out["vmapped_slot_steps"] = batch * st["iterations"]
    out["wall_ratio_vs_vmapped"] = out["seconds"] / out["vmapped_seconds"]
    out["load_1min_end"] = os.getloadavg()[0]  # the shared machine's load (`uptime`) around the timings
    out["evals_ratio_vs_euler"] = out["euler_evals"] / out["evals"]
    out["speedup_vs_euler"] = out["euler_seconds"] / out["seconds"]
    out["single_time_scale"] = single_time_scale(case.net)
    # relax's final states against the Euler loop's (the discrete update on single-time-scale
    # nets): the fraction of queries within FP_FACTOR x the steady-state tolerance of each other
    euler_states = {k: jnp.asarray(v, jnp.float64) for k, v in res["euler"][0].items()}
    out["same_fixed_point_as_euler"], _, _ = compare(case, res["relax"][0], ref_net, euler_states, tol)
    if out["single_time_scale"]:
        out["wall_ratio_vs_discrete_update"] = out["seconds"] / out["euler_seconds"]
        out["vmapped_wall_ratio_vs_discrete_update"] = out["vmapped_seconds"] / out["euler_seconds"]
        out["cpu_ratio_vs_discrete_update"] = out["cpu_seconds"] / out["euler_cpu_seconds"]
        out["target_single_time_scale"] = TARGET_SINGLE_TIME_SCALE
        sound = out["energy_never_rose"] and out["converged"] and out["same_fixed_point"] >= out["euler_same_fixed_point"]
        out["meets_target"] = bool(out["wall_ratio_vs_discrete_update"] <= TARGET_SINGLE_TIME_SCALE and sound)
        out["meets_target_cpu_time"] = bool(out["cpu_ratio_vs_discrete_update"] <= TARGET_SINGLE_TIME_SCALE and sound)
        # relax(trace=False): the same solve and energy check, only the trace's start and end
        # kept (the discrete update records no trace at all)
        out["wall_ratio_vs_discrete_update_no_trace"] = out["no_trace_seconds"] / out["euler_seconds"]
        out["cpu_ratio_vs_discrete_update_no_trace"] = out["no_trace_cpu_seconds"] / out["euler_cpu_seconds"]
        same = all(bool(jnp.all(res["no_trace"][0][k] == res["relax"][0][k])) for k in res["relax"][0])
        out["no_trace_same_states"] = same
        out["meets_target_no_trace"] = bool(
            out["wall_ratio_vs_discrete_update_no_trace"] <= TARGET_SINGLE_TIME_SCALE and sound and same)
        # not the target (that is judged against the update stopped on its residual, above):
        # the same update stopped by relax's own rule, which splits relax's extra cost into
        # its stop rule's (more steps) and its per-step overhead
        out["wall_ratio_vs_update_with_relax_stop"] = out["seconds"] / out["euler_relax_stop_seconds"]
        out["wall_ratio_vs_update_with_relax_stop_no_trace"] = out["no_trace_seconds"] / out["euler_relax_stop_seconds"]
    else:
        out["target_evals_ratio"], out["target_speedup"] = TARGET_EVALS_RATIO, TARGET_SPEEDUP
        out["meets_target"] = bool(
            out["evals_ratio_vs_euler"] >= TARGET_EVALS_RATIO and out["speedup_vs_euler"] >= TARGET_SPEEDUP
            and out["energy_never_rose"] and out["converged"])
    out["speedup_vs_tsit5"] = out["tsit5_seconds"] / out["seconds"]
    # vmap overhead: seconds per evaluation of the per-query (vmapped) solve over those of
    # the same solver on the batch as one ODE (whose single step size and batch-level stop
    # rule make its step count differ, so per-evaluation cost is the fair comparison)
    out["vmap_cost_per_eval_ratio"] = (out["seconds"] / out["evals"]) / (
        out["batch_as_one_seconds"] / out["batch_as_one_evals"])
    return out


EULER_FRACTIONS = (1.0, 0.5, 0.25, 0.125)
RELAX_TOLERANCES = ((1.0, 1.0), (1e-1, 1e-3), (1e-2, 1e-4), (1e-3, 1e-5))  # (rtol, atol); the first is the default


def fidelity_case(name, dtype, batch, seed=0):
    """How much work following the trajectory costs on one case: for Euler at dt = min τ × f
    (batch as one state, ``EULER_FRACTIONS``) and ham.relax at controller tolerances
    (``RELAX_TOLERANCES``, the default first), the evaluations (slowest query) and the fractions of
    queries at the reference's fixed point / retrieval; and the reference against itself at
    100× tighter tolerances (``reference_self``: below 1 when the trajectory's end is
    sensitive at the reference's own accuracy)."""
    case = build(name, dtype, batch, jax.random.PRNGKey(seed))
    tol = ham.default_tolerances(dtype)
    ref_net, ref = reference(case)
    tight = ham.relax(ref_net, jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), case.xs0),
                      solver=diffrax.Tsit5(), rtol=1e-10, atol=1e-12, event_rtol=1e-8, event_atol=1e-10,
                      max_steps=40000)
    self_fp, _, self_ret = compare(case, tight.states, ref_net, ref.states, tol)
    rows = []
    dt = _min_tau(case.net)
    for f in EULER_FRACTIONS:
        xs, n, ok = euler(case.net, case.xs0, dt * f, tol["event_rtol"], tol["event_atol"])
        fp, _, ret = compare(case, xs, ref_net, ref.states, tol)
        rows.append({"method": f"euler dt={f:g} min tau", "evals": float(n) + 1.0, "converged": bool(jnp.all(ok)),
                     "same_fixed_point": fp, "same_retrieval": ret})
    for r, a in RELAX_TOLERANCES:
        sol = ham.relax(case.net, case.xs0, rtol=r, atol=a)
        fp, _, ret = compare(case, sol.states, ref_net, ref.states, tol)
        rows.append({"method": f"ham.relax rtol={r:g}", "atol": a, "evals": float(jnp.max(sol.num_evaluations)),
                     "mean_evals": float(jnp.mean(sol.num_evaluations)), "converged": bool(jnp.all(sol.converged)),
                     "same_fixed_point": fp, "same_retrieval": ret})
    euler_evals = rows[0]["evals"]
    good = [x for x in rows if x["same_fixed_point"] >= 0.99 and x["converged"]]
    cheapest = min(good, key=lambda x: x["evals"]) if good else None
    return {"case": name, "dtype": jnp.dtype(dtype).name, "batch": batch,
            "reference_self_same_fixed_point": self_fp, "reference_self_same_retrieval": self_ret,
            "methods": rows, "cheapest_99": None if cheapest is None else cheapest["method"],
            "cheapest_99_evals_vs_euler": None if cheapest is None else cheapest["evals"] / euler_evals}


def fidelity_table(rows) -> str:
    """Markdown: per case, the cheapest method at the reference's fixed point for ≥ 99 % of queries."""
    lines = ["| case | dtype | reference vs 100× tighter | Euler dt=min τ: evals, same fixed point | "
             "ham.relax default: evals, same fixed point | cheapest at ≥ 99 % same fixed point (evals / Euler's) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        m = {x["method"]: x for x in r["methods"]}
        e, d = m["euler dt=1 min tau"], m["ham.relax rtol=1"]
        best = "none tried" if r["cheapest_99"] is None else f"{r['cheapest_99']} ({r['cheapest_99_evals_vs_euler']:.2f}×)"
        lines.append(f"| {r['case']} | {r['dtype']} | {r['reference_self_same_fixed_point']:.2f} | "
                     f"{e['evals']:.0f}, {e['same_fixed_point']:.2f} | {d['evals']:.0f}, {d['same_fixed_point']:.2f} | {best} |")
    return "\n".join(lines)


def figure(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    labels = [f"{r['case']}\n{r['dtype']}" for r in rows]
    xs = np.arange(len(rows))
    single = [bool(r.get("single_time_scale", False)) for r in rows]
    for ax, field, title in ((axes[0], "evals_ratio_vs_euler", "Euler evaluations / ham.relax evaluations"),
                             (axes[1], "speedup_vs_euler", "Euler seconds / ham.relax seconds")):
        ax.bar(xs, [r[field] for r in rows], color=["tab:orange" if s else "tab:blue" for s in single])
        # per-row targets: two-time-scale >= 5x evaluations / >= 3x wall; single-time-scale
        # (orange: Euler at dt = tau is the discrete update) wall >= 1/1.25 of the update's speed
        for i, s in enumerate(single):
            target = (None if "evals" in field else 1.0 / TARGET_SINGLE_TIME_SCALE) if s else (
                TARGET_EVALS_RATIO if "evals" in field else TARGET_SPEEDUP)
            if target is not None:
                ax.plot([i - 0.4, i + 0.4], [target, target], color="tab:red", lw=1.5,
                        label="target" if i == 0 or (s and not single[0] and i == single.index(True)) else None)
        ax.set_yscale("log")
        ax.set_xticks(xs, labels, rotation=70, fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(f"ham.relax (ExponentialEuler) vs fixed-step Euler at dt = min τ (orange: single time scale, "
                 f"Euler = the discrete update) — {platform.processor() or 'CPU'}", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def first_call(name: str, dtype: str, batch: int) -> dict:
    """Compile cost of ham.relax on one case: first call minus a warm call, in this process."""
    case = build(name, jnp.dtype(dtype), batch, jax.random.PRNGKey(0))
    t0 = time.perf_counter()
    jax.block_until_ready(ham.relax(case.net, case.xs0).states)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    jax.block_until_ready(ham.relax(case.net, case.xs0).states)
    warm = time.perf_counter() - t0
    return {"case": name, "dtype": dtype, "batch": batch, "first_call_s": first, "warm_s": warm,
            "compile_s": first - warm}


def compile_times(cases, dtypes, batch) -> list[dict]:
    """``first_call`` for every case, each in a fresh Python process (no shared caches)."""
    import subprocess
    import sys

    rows = []
    for c in cases:
        for d in dtypes:
            code = ("import json, jax; jax.config.update('jax_enable_x64', True); "
                    "from experiments.bench_relax import first_call; "
                    f"print(json.dumps(first_call({c!r}, {d!r}, {batch})))")
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def target_text(r) -> str:
    """The row's target and whether it is met (rows measured before the targets: "–")."""
    if "meets_target" not in r:
        return "–"
    mark = "met" if r["meets_target"] else "NOT met"
    if r.get("single_time_scale"):
        text = f"≤ {r['target_single_time_scale']:g}× the discrete update: {r['wall_ratio_vs_discrete_update']:.2f}×, {mark}"
        if "meets_target_no_trace" in r:
            text += (f"; trace=False {r['wall_ratio_vs_discrete_update_no_trace']:.2f}×, "
                     f"{'met' if r['meets_target_no_trace'] else 'NOT met'}")
        if "vmapped_wall_ratio_vs_discrete_update" in r:  # the same solve without the shrinking window
            text += f"; vmapped (window=None) {r['vmapped_wall_ratio_vs_discrete_update']:.2f}×"
        if "wall_ratio_vs_update_with_relax_stop" in r:  # the per-step overhead alone (same stop rule, same steps)
            text += (f" (against the update stopped by relax's rule: {r['wall_ratio_vs_update_with_relax_stop']:.2f}×, "
                     f"trace=False {r['wall_ratio_vs_update_with_relax_stop_no_trace']:.2f}×)")
        return text
    return f"≥ {r['target_evals_ratio']:g}× evals, ≥ {r['target_speedup']:g}× wall: {mark}"


def _window_text(r) -> str:
    """How ``window="auto"`` (relax's default) ran the row's batch."""
    if "window" not in r:
        return "–"
    if r["window"] is None:
        return "vmapped"
    tail = "→".join(str(w) for w in [r["window"], *r.get("tail", [])])
    return (f"{tail} slots: {r['slot_steps'] / r['vmapped_slot_steps']:.2f}, "
            f"{r['wall_ratio_vs_vmapped']:.2f}× the vmapped time")


def markdown_table(rows) -> str:
    """The README table, from result rows."""
    head = ("| case | dtype | ham.relax evals (steps) | Euler dt=min τ evals | evals ratio | ham.relax s | Euler s "
            "| speed-up | Tsit5 evals | same fixed point / retrieval | energy never rose | target | compile s "
            "| window (slot steps / vmapped's) |")
    lines = [head, "|" + "---|" * 14]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['dtype']} | {r['evals']:.0f} ({r['steps']}) | {r['euler_evals']:.0f} "
            f"| {r['evals_ratio_vs_euler']:.1f}× | {r['seconds']:.3f} | {r['euler_seconds']:.3f} "
            f"| {r['speedup_vs_euler']:.1f}× | {r['tsit5_evals']:.0f} | {r['same_fixed_point']:.2f} / "
            f"{r['same_retrieval']:.2f} | {'yes' if r['energy_never_rose'] else 'NO'} | {target_text(r)} "
            f"| {r['compile_s']:.1f} | {_window_text(r)} |"
        )
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="64 queries, 5 repeats")
    ap.add_argument("--smoke", action="store_true", help="tiny run for the tests (two cases, 4 queries)")
    ap.add_argument("--cases", nargs="*", default=None, help=f"subset of {CASE_NAMES}")
    ap.add_argument("--dtypes", nargs="*", default=["float32", "float64"])
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--out", default=None, help="results folder (default experiments/results)")
    ap.add_argument("--table", action="store_true", help="print the README table from the results file and exit")
    ap.add_argument("--fidelity", action="store_true",
                    help="what following the trajectory costs: Euler at dt = min tau x 1, 1/2, 1/4, 1/8 and ham.relax "
                    "at rtol 1 .. 1e-3 against the reference (writes bench_relax_fidelity.json)")
    ap.add_argument("--compile", action="store_true",
                    help="only measure ham.relax's first-call compile time per case, each in a fresh process "
                    "(writes bench_relax_compile.json)")
    args = ap.parse_args(argv)
    if args.table:
        rows = (read_json(results_dir(args.out) / "bench_relax.json", {}) or {}).get("results", [])
        print(markdown_table(rows))
        fid = (read_json(results_dir(args.out) / "bench_relax_fidelity.json", {}) or {}).get("results", [])
        if fid:
            print()
            print(fidelity_table(fid))
        return rows
    old_x64 = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)  # float64 cases and the reference
    try:
        return _run(args, ap)
    finally:
        jax.config.update("jax_enable_x64", old_x64)


def _run(args, ap):
    if args.compile:
        cases = args.cases or list(CASE_NAMES)
        rows = compile_times(cases, args.dtypes, args.batch or 64)
        write_json(results_dir(args.out) / "bench_relax_compile.json",
                   {"results": rows, "platform": platform.platform(), "jax": jax.__version__})
        return rows
    cases = args.cases or (["modern_1000x64", "classical_tanh_400"] if args.smoke else list(CASE_NAMES))
    unknown = sorted(set(cases) - set(CASE_NAMES))
    if unknown:
        ap.error(f"unknown case(s) {unknown}; known: {list(CASE_NAMES)}")
    batch = args.batch or (4 if args.smoke else 64 if args.quick else 256)
    if args.fidelity:
        return _fidelity(args, cases, batch)
    repeats = args.repeats or (1 if args.smoke else 5)
    out_dir = results_dir(args.out)
    path = out_dir / ("bench_relax_smoke.json" if args.smoke else "bench_relax.json")
    done = {(r["case"], r["dtype"], r["batch"]): r for r in (read_json(path, {}) or {}).get("results", [])}
    rows = []
    from tqdm import tqdm

    grid = [(c, d) for c in cases for d in args.dtypes]
    for c, d in tqdm(grid, desc="bench_relax", disable=args.smoke):
        if (c, d, batch) in done and not args.smoke:  # resume
            row = done[(c, d, batch)]
        else:
            row = run_case(c, jnp.dtype(d), batch, repeats)
            done[(c, d, batch)] = row
            write_json(path, {"results": list(done.values()), "platform": platform.platform(),
                              "device": str(jax.devices()[0]), "jax": jax.__version__})
        rows.append(row)
        print(json.dumps(row), flush=True)
    figure(rows, path.with_suffix(".png"))
    return rows


def _fidelity(args, cases, batch):
    from tqdm import tqdm

    path = results_dir(args.out) / ("bench_relax_fidelity_smoke.json" if args.smoke else "bench_relax_fidelity.json")
    done = {(r["case"], r["dtype"], r["batch"]): r for r in (read_json(path, {}) or {}).get("results", [])}
    rows = []
    for c, d in tqdm([(c, d) for c in cases for d in args.dtypes], desc="fidelity", disable=args.smoke):
        row = done.get((c, d, batch)) if not args.smoke else None
        if row is None:  # resume: finished cases are kept
            row = fidelity_case(c, jnp.dtype(d), batch)
            done[(c, d, batch)] = row
            write_json(path, {"results": list(done.values()), "platform": platform.platform(), "jax": jax.__version__})
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(fidelity_table(rows))
    return rows


if __name__ == "__main__":
    main()
