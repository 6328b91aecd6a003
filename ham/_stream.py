r"""Streamed relaxation: a large batch of queries through a window of solver slots.

``ham.relax(net, xs0, window=W)`` relaxes a batch of ``N`` queries with ``W`` slots in
flight. A vmapped solve computes every query until the slowest one stops (its cost is
``N × max steps``); here a slot whose query has stopped (steady state, ``max_steps``,
``t1`` or failure) is refilled with the next query, so the cost is about
``N · mean steps / W + max steps`` loop iterations.

The loop is a thin driver around diffrax's parts, written at batch level: one
``lax.while_loop`` whose carry holds ``W`` slots (the ``Monitored`` state, the solver and
step-size controller states, the times and counters, and the query each slot works on),
stepped with the solver's own ``step`` and the controller's own ``adapt_step_size``
(``vmap``-ed over the slots: the carry itself is never copied per slot). It follows
``diffrax.diffeqsolve`` where the result depends on it:

- the steady-state test (``_at_fixed_point``) runs at ``t0`` too (a query at rest takes
  0 steps) and after every attempted step;
- ``max_steps`` bounds the *attempted* steps, ``num_steps`` counts the accepted ones;
- a rejected step keeps the old state and solver state (the controller's state and the
  times move on, as in diffrax); NaN error estimates become ``inf``;
- a finite ``t1`` is met by diffrax's end clipping (a step ending within 100 ULPs of
  ``t1`` is stretched to it);
- a refilled slot starts with fresh solver and controller states.

Refills come in fixed-size chunks: once ``chunk`` slots are free (fewer when fewer
queries remain), the next ``chunk`` queries are gathered (repeatedly, while a whole chunk
of slots is free), their start evaluated (one
vector-field evaluation gives the ``Monitored`` state and the solver's first force, on at
least ``START_BATCH`` rows so that XLA compiles it as it does the vmapped solve's), and
scattered into the free slots. A finished slot's result (its final state, counters and
reason) is scattered to the query's row of the output; its residual is the one the
``Monitored`` state already holds (no extra evaluation).

The tail shrinks: once no query is left to load, the busy slots are gathered into a
window of ``W/4`` slots as soon as they fit (then ``W/16``; [`tail_widths`][]), each slot
carrying its state, solver and controller state, so the slowest queries do not keep
``W`` slots stepping. This is also what ``window="auto"`` runs on a batch of fewer than
``AUTO_MIN_QUERIES`` queries, or on traced ones: the whole batch in flight, no refill,
no pilot.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix.internal as optxi

from .integrator import ExponentialEuler, Monitored, evaluate, monitored

# slot status codes (a slot with query == N is empty)
_RUNNING, _EVENT, _MAXED, _ENDED = 0, 1, 2, 3


@dataclasses.dataclass
class Window:
    """A window with a chosen refill ``chunk`` (private: tests and benchmarks). Passed as
    ``ham.relax(..., window=Window(size, chunk))``; after an eager call, ``stats`` holds
    the loop's ``iterations``, ``refills`` and ``slot_steps`` (the window's width summed
    over the iterations: the work), the ``window``, ``chunk`` and ``tail`` widths (and, for
    ``size="auto"``, the rule's ``auto`` info; ``window`` is ``None`` for the vmapped solve)."""

    size: int | str
    chunk: int | None = None
    stats: dict | None = None


#: The fewest rows a refill's start evaluation runs on (see ``_run``'s ``load``).
START_BATCH = 16


def default_chunk(window: int) -> int:
    """Queries loaded per refill: an eighth of the window (at least 1)."""
    return max(1, window // 8)


# ----------------------------------------------------------------------------- window="auto"
AUTO_MIN_QUERIES = 256  # smaller batches run no pilot (it would cost about what it saves): W = N, shrinking
PILOT_QUERIES = 64  # at most this many queries relaxed (vmapped) to estimate the mean and slowest steps
PILOT_FRACTION = 16  # and at most 1/16 of the batch (at least 16), so that the pilot stays a small cost
AUTO_MIN_SPREAD = 1.5  # max/mean steps below this: a vmapped batch wastes under a third; vmapped
AUTO_MIN_GAIN = 1.25  # predicted work ratio vmapped/streamed below this: vmapped
TAIL_FRACTION = 0.25  # the tail (W slots for the slowest query's steps) at most this × the useful work
PILOT_WINDOW_FRACTION = 4  # the pilot streams its P queries through P/4 slots (at least 8)


def min_window(state_size: int) -> int:
    """The fewest slots worth a loop iteration: 8, more for small states (W × state size
    ≥ 4096 numbers, so that the per-iteration cost of the loop and of the refill is
    spread over enough work), at most 128."""
    return int(np.clip(-(-4096 // max(int(state_size), 1)), 8, 128))


SHRINK = 4  # once the queue is empty, the window shrinks this many times when its busy slots fit
SHRINK_LEVELS = 2  # at most this many narrower windows (each compiles another copy of the loop)


def tail_widths(size: int, state_size: int) -> tuple[int, ...]:
    """The narrower windows of a stream's tail: ``size/4``, ``size/16`` (at most
    ``SHRINK_LEVELS``), none below [`min_window`][]. Once no query is left to load, the
    busy slots are gathered into the next width as soon as they fit in it, so the slowest
    queries no longer keep a whole window of idle slots stepping: the tail costs about
    a quarter of the ``W · max`` slot steps it cost. Per query nothing changes (a slot
    carries its state, solver and controller state with it)."""
    out, w, floor = [], size, min_window(state_size)
    while len(out) < SHRINK_LEVELS and w // SHRINK >= floor:
        w //= SHRINK
        out.append(w)
    return tuple(out)


def pick_window(n: int, state_size: int, mean_steps: float, max_steps: float) -> int | None:
    """The rule of ``window="auto"``: the window for ``n`` queries of ``state_size``
    numbers whose pilot took ``mean_steps`` on average and ``max_steps`` at most, or
    ``None`` for the vmapped solve.

    Streaming ``n`` queries through ``W`` slots costs about ``n·mean/W + max`` iterations
    of ``W`` slots, i.e. the useful work ``n·mean`` plus a tail of at most ``W·max`` slot
    steps (the slowest query finishing with the other slots idle); vmapped, it costs
    ``n·max``. Keeping the tail within ``TAIL_FRACTION`` = 1/4 of the useful work,
    ``W = n·mean/(4·max)``, bounds the streamed cost by 1.25 × the useful work, a gain of
    at least ``(max/mean)/1.25``, and leaves a margin for a pilot that underestimates the
    slowest query (measured in ``bench_stream``: with W = n·mean/(2·max) from the pilot,
    "auto" missed the target on modern float64 and the ET float32, its W twice the best);
    ``W`` is at least [`min_window`][] (per-iteration cost).
    Vmapped when ``n < AUTO_MIN_QUERIES``, when ``max/mean < AUTO_MIN_SPREAD`` (the
    vmapped solve then wastes less than the stream's tail and loop cost) or when the
    predicted work ratio ``n·max / (n·mean + W·max)`` is below ``AUTO_MIN_GAIN``."""
    if n < AUTO_MIN_QUERIES:
        return None
    mean, peak = max(float(mean_steps), 1.0), max(float(max_steps), 1.0)
    if peak / mean < AUTO_MIN_SPREAD:
        return None
    w = min(max(int(TAIL_FRACTION * n * mean / peak), min_window(state_size)), n)
    if n * peak / (n * mean + w * peak) < AUTO_MIN_GAIN:
        return None
    return w


def pilot_indices(n: int, population: int | None = None) -> np.ndarray:
    """``clip(n // 16, 16, 64)`` query indices drawn without replacement (a fixed seed:
    the choice is deterministic), sorted; all of them when ``n`` is smaller. The pilot
    costs about ``P · max`` slot steps against the stream's ``≈ 1.25 n · mean``: at most a
    fifth of it for max/mean ≤ 4 once ``n ≥ 1024``. Drawn from ``population`` queries
    when given (sharded queries: the rule counts one device's ``n``, the pilot draws from
    all)."""
    population = n if population is None else population
    p = int(np.clip(n // PILOT_FRACTION, 16, PILOT_QUERIES))
    if population <= p:
        return np.arange(population)
    return np.sort(np.random.default_rng(0).choice(population, p, replace=False))


def estimate_max(pilot_steps, n: int, limit: int | None = None) -> float:
    """The slowest of ``n`` queries' steps, extrapolated from a pilot sample: the largest of
    ``P`` draws underestimates the largest of ``n ≫ P`` (on ``modern_1000x64``, 64 pilot
    queries saw 23 steps, the 4096 took 44). For an exponential-like tail the expected
    maximum of ``m`` draws grows as ``mean + σ ln m``, so ``mean + (pilot max − mean) ·
    ln n / ln P``; never below the pilot's maximum, never above ``limit`` (``max_steps``)."""
    steps = np.asarray(pilot_steps, np.float64).ravel()
    p, mean, peak = steps.size, float(steps.mean()), float(steps.max())
    est = peak if p < 2 or n <= p else mean + (peak - mean) * math.log(n) / math.log(p)
    return float(min(max(est, peak), limit)) if limit is not None else float(max(est, peak))


def _concrete(tree) -> bool:
    return not any(isinstance(a, jax.core.Tracer) for a in jax.tree_util.tree_leaves(tree))


def pilot_window(p: int) -> int:
    """Slots of the streamed pilot run on ``p`` queries: a quarter of them, at least 8
    (all of them when fewer)."""
    return min(p, max(p // PILOT_WINDOW_FRACTION, 8))


def auto_window(net, xs0, static, batch) -> tuple[int | None, dict, tuple | None]:
    """Resolve ``window="auto"`` (see [`pick_window`][]): relax a pilot subset of the
    queries (streamed through [`pilot_window`][] slots, no gradient), read its mean
    ``num_steps`` and extrapolate its largest to the whole batch ([`estimate_max`][]).
    Returns ``(window or None, info, pilot)``, ``pilot = (indices, outputs of _run)``:
    its queries' results are final (per query those of the vmapped solve), so the caller
    streams only the others; ``None`` when no pilot ran or the queries are sharded.

    The pilot is streamed rather than vmapped because a vmapped pilot pays its slowest
    query on every pilot query: on the Energy Transformer bench case (max/mean 6.9) a
    vmapped 64-query pilot cost about a third of the whole stream's work.

    Below ``AUTO_MIN_QUERIES`` queries (a pilot would cost about what it saves), and for
    traced queries or network (under ``jit``/``grad``, where no pilot can run), the whole
    batch is in flight (``W = N``) and the window shrinks at the tail ([`tail_widths`][]):
    no pilot is needed, a batch whose queries all stop together costs what the vmapped
    solve costs, and the slowest queries no longer keep every slot stepping. Vmapped when
    ``N`` is too small to shrink (``N < 4 ×`` [`min_window`][]) or the queries are sharded
    with fewer than ``AUTO_MIN_QUERIES`` a device (``info["reason"]`` says which)."""
    n = math.prod(batch)
    state_size = _state_size(net)
    info = {"queries": n, "state_size": state_size}
    sharded = data_sharding(xs0, batch)
    if sharded:  # the rule applies to each device's shard (one stream per device)
        devices = math.prod(sharded[0].shape[a] for a in sharded[2])
        n = n // devices
        info = dict(info, devices=devices, queries_per_device=n)
    if sharded and n < AUTO_MIN_QUERIES:
        return None, dict(info, reason=f"fewer than {AUTO_MIN_QUERIES} queries per device"), None
    traced = not (_concrete(xs0) and _concrete(net))
    if traced or n < AUTO_MIN_QUERIES:
        why = "traced inputs: no pilot run under jit/grad" if traced else f"fewer than {AUTO_MIN_QUERIES} queries"
        if not tail_widths(n, state_size):
            return None, dict(info, reason=f"{why}; too few to shrink a window: vmapped"), None
        return n, dict(info, window=n, reason=f"{why}: the whole batch in flight, the window shrinking at the tail"), None
    idx = pilot_indices(n, math.prod(batch))
    sub = {k: jnp.reshape(v, (math.prod(batch), *net.layers[k].shape))[idx] for k, v in xs0.items()}
    wp = pilot_window(len(idx))
    cfg = _Config(tuple(static.value[:7]) + (wp, default_chunk(wp), static.value[8], ()))
    out, (iterations, _, _) = _run(net, sub, cfg)
    steps = np.asarray(out[3])
    mean, peak = float(steps.mean()), estimate_max(steps, n, static.value[4])
    w = pick_window(n, state_size, mean, peak)
    info = dict(info, pilot_queries=len(idx), pilot_window=wp, pilot_iterations=int(iterations),
                pilot_mean_steps=mean, pilot_max_steps=int(steps.max()), estimated_max_steps=peak, window=w,
                reason="streamed" if w is not None else "max/mean or predicted gain too small")
    return w, info, (None if sharded else (idx, out))


def streamable(solver, adjoint) -> bool:
    """Whether a solve can be streamed: the default solver, the implicit adjoint."""
    return isinstance(solver, ExponentialEuler) and (adjoint is None or isinstance(adjoint, diffrax.ImplicitAdjoint))


def check_window(window, solver, adjoint) -> tuple[int, int | None]:
    """``(size, chunk)`` of a ``window`` argument of ``ham.relax``, or a clear error."""
    chunk = None
    if isinstance(window, Window):
        window, chunk = window.size, window.chunk
        if chunk is not None and not (isinstance(chunk, (int, np.integer)) and not isinstance(chunk, bool) and chunk >= 1):
            raise ValueError(f"ham.relax: the window's refill chunk must be a positive integer, got {chunk!r}.")
    if not (isinstance(window, (int, np.integer)) and not isinstance(window, bool)):
        raise TypeError(f"ham.relax: window must be a positive integer (slots in flight) or None, got {window!r}.")
    if window < 1:
        raise ValueError(f"ham.relax: window must be a positive integer (slots in flight), got {window}.")
    if not isinstance(solver, ExponentialEuler):
        raise ValueError(
            f"ham.relax: window= streams the default solver ham.ExponentialEuler only, got solver={type(solver).__name__}; "
            "drop window (vmapped solve) to use another solver."
        )
    if adjoint is not None and not isinstance(adjoint, diffrax.ImplicitAdjoint):
        raise ValueError(
            f"ham.relax: a streamed solve (window=...) is differentiated by the implicit function theorem only; "
            f"got adjoint={type(adjoint).__name__}. Drop window to backpropagate through the solver steps."
        )
    return int(window), (None if chunk is None else int(chunk))


def _given_root(inputs):
    """The root already computed by the streamed solve (for ``implicit_jvp``)."""
    return inputs[2], None


def _nondiff(tree):
    return jax.tree_util.tree_map(lambda a: jax.lax.stop_gradient(a) if eqx.is_inexact_array(a) else a, tree)


def relax(net, xs0, static, adjoint, batch, window) -> "Solution":  # noqa: F821
    """Entry from [`ham.relax`][] (arguments already checked; ``static.value[8]`` is its
    ``trace``): stream, then restore the batch shape; with the implicit adjoint, the final
    states get their derivative from the fixed-point condition, query by query."""
    from .solve import _relax

    holder = window if isinstance(window, Window) else None
    if holder is not None:
        holder.stats = None
    spec = holder.size if holder is not None else window
    n = math.prod(batch)
    if isinstance(spec, str):
        if spec != "auto":
            raise ValueError(f"ham.relax: window must be a positive integer (slots in flight), 'auto' or None, "
                             f"got {spec!r}.")
        if n == 0 or not streamable(static.value[0], adjoint):  # "auto" is then the vmapped solve
            if holder is not None:
                holder.stats = {"auto": {"queries": n, "reason": "empty batch" if n == 0 else
                                         "solver or adjoint not streamed"}, "window": None}
            return _relax(net, xs0, static, adjoint, batch)
        size, info, pilot = auto_window(net, xs0, static, batch)
        if holder is not None:
            holder.stats = {"auto": info, "window": size}
        if size is None:  # the vmapped solve (small batch, narrow spread, or traced inputs)
            return _relax(net, xs0, static, adjoint, batch)
        window = Window(size, None if holder is None else holder.chunk)
    else:
        pilot = None
    size, chunk = check_window(window, static.value[0], adjoint)
    if n == 0:
        raise ValueError("ham.relax: window= needs at least one query; the batch is empty.")
    sharded = data_sharding(xs0, batch)
    # the pilot's queries are done (not sharded): the stream runs the others
    rest = None if pilot is None else np.setdiff1d(np.arange(n), pilot[0])  # never empty: n > PILOT_QUERIES
    per_device = (n // math.prod(sharded[0].shape[a] for a in sharded[2]) if sharded
                  else n if rest is None else len(rest))
    size = min(size, per_device)
    chunk = min(default_chunk(size) if chunk is None else chunk, size)
    cfg = _config(static, size, chunk, _state_size(net))
    if not sharded and pilot is None:  # one program: the stream, the implicit rule, the shapes
        sol, stats = _whole(net, xs0, cfg, adjoint, batch)
        _record(holder, stats, cfg)
        return sol
    xs = {k: jnp.reshape(v, (n, *net.layers[k].shape)) for k, v in xs0.items()}
    run_xs = xs if rest is None else {k: v[rest] for k, v in xs.items()}
    if sharded:
        out, stats = _run_sharded(net, xs, cfg, sharded[0], sharded[1])
        if holder is not None:
            holder.stats = dict(holder.stats or {}, devices=len(stats[0]), queries_per_device=per_device,
                                iterations_per_device=[int(i) for i in stats[0]])
        stats = (jnp.max(stats[0]), jnp.sum(stats[1]), jnp.sum(stats[2]))
    else:
        out, stats = _run(net, run_xs, cfg)
    if pilot is not None:
        out = _merge(out, pilot[1], np.argsort(np.concatenate([rest, pilot[0]])).astype(np.int32))
    _record(holder, stats, cfg)
    return _solution(net, xs, out, adjoint, batch)


def _record(holder, stats, cfg):
    """A ``Window``'s ``stats`` after an eager stream: loop iterations, refills, slot
    steps (the work: the window's width summed over the iterations), window, chunk, tail."""
    if holder is not None and not isinstance(stats[0], jax.core.Tracer):
        holder.stats = dict(holder.stats or {}, iterations=int(stats[0]), refills=int(stats[1]),
                            slot_steps=int(stats[2]), window=cfg.value[7], chunk=cfg.value[8], tail=cfg.value[10])


def _solution(net, xs, out, adjoint, batch) -> "Solution":  # noqa: F821
    """The ``Solution`` of a stream's outputs ``out`` (queries flattened to ``xs``' rows):
    the implicit rule on the final states, the batch shape restored."""
    from .solve import Solution

    final, energies, times, nsteps, code, res, evals = out
    if isinstance(adjoint, diffrax.ImplicitAdjoint):
        final = _implicit(net, xs, final, adjoint)

    def shaped(a, tail=()):
        return jnp.reshape(a, (*batch, *tail))

    final = {k: shaped(v, net.layers[k].shape) for k, v in final.items()}
    s = energies.shape[-1]
    return Solution(final, shaped(energies, (s,)), shaped(times, (s,)), shaped(nsteps), shaped(code == 0),
                    shaped(code), shaped(res), shaped(evals))


@eqx.filter_jit
def _whole(net, xs0, cfg, adjoint, batch):
    """A stream of the whole batch as one compiled program: the reshapes, the implicit
    rule and the outputs are not dispatched one by one, as on the sharded and pilot paths
    (which need the concrete queries between programs)."""
    n = math.prod(batch)
    xs = {k: jnp.reshape(v, (n, *net.layers[k].shape)) for k, v in xs0.items()}
    out, stats = _run(net, xs, cfg)
    return _solution(net, xs, out, adjoint, batch), stats


@eqx.filter_jit
def _merge(streamed, pilot, order):
    """The streamed queries' outputs followed by the pilot's, put back in query order
    (``order``: the inverse of the permutation ``[streamed indices, pilot indices]``)."""
    return jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b])[order], streamed, pilot)


@eqx.filter_jit
def _implicit(net, xs, final, adjoint):
    """The final states with the implicit-function-theorem derivative, per query (the
    identity on values): ``dx*/dθ = -(∂f/∂x)⁻¹ ∂f/∂θ`` at each query's fixed point."""
    from .solve import _in_state_dtype, _rewrite

    net = _in_state_dtype(net, jnp.result_type(*xs.values()))

    def one(x0, root):
        return optxi.implicit_jvp(_given_root, _rewrite, (net, x0, root), adjoint.tags, adjoint.linear_solver)[0]

    return jax.vmap(one)(xs, final)


# ----------------------------------------------------------------------------- sharded queries
def data_sharding(xs0, batch):
    """``(mesh, spec, axes)`` when the queries are concrete arrays whose one batch axis is
    sharded over mesh axes ``axes`` (the same ``NamedSharding`` batch spec on every layer,
    nothing else sharded, the batch divisible by the devices), else ``None``."""
    from jax.sharding import NamedSharding

    if len(batch) != 1:
        return None
    first = None
    for a in xs0.values():
        if isinstance(a, jax.core.Tracer) or not isinstance(getattr(a, "sharding", None), NamedSharding):
            return None
        spec = tuple(a.sharding.spec) + (None,) * (a.ndim - len(a.sharding.spec))
        if spec[0] is None or any(x is not None for x in spec[1:]):
            return None
        key = (a.sharding.mesh, spec[0])
        if first is None:
            first = key
        elif key != first:
            return None
    mesh, lead = first
    axes = lead if isinstance(lead, tuple) else (lead,)
    if batch[0] % math.prod(mesh.shape[x] for x in axes):
        return None
    return mesh, lead, axes


def _shard_map():
    try:  # JAX >= 0.6
        return jax.shard_map
    except AttributeError:  # pragma: no cover - older JAX
        from jax.experimental.shard_map import shard_map

        return shard_map


@eqx.filter_jit
def _run_sharded(net, xs, cfg, mesh, lead):
    """``_run`` on every device's shard of the queries (``shard_map`` over the data axis,
    the window per device), results sharded the same way; the network replicated. Returns
    the per-device ``(iterations, refills)``."""
    from jax.sharding import PartitionSpec as P

    params, rest = eqx.partition(net, eqx.is_array)

    def local(params, xs):
        out, stats = _run(eqx.combine(params, rest), xs, cfg)
        return out, tuple(jnp.reshape(a, (1,)) for a in stats)

    fn = _shard_map()(local, mesh=mesh, in_specs=(P(), P(lead)), out_specs=(P(lead), P(lead)), check_vma=False)
    return fn(params, xs)


class _Config(eqx.Module):
    value: tuple = eqx.field(static=True)


@functools.lru_cache(maxsize=256)
def _config_cached(static, size, chunk, tail):
    return _Config(tuple(static.value[:7]) + (size, chunk, static.value[8], tail))


def _config(static, size: int, chunk: int, state_size: int) -> _Config:
    """The stream's settings (relax's ``static`` + window, chunk, trace, tail), the same
    object for the same settings (building and hashing a new one costs a short solve's
    dispatch)."""
    tail = tail_widths(size, state_size)
    try:
        return _config_cached(static, size, chunk, tail)
    except TypeError:  # an unhashable user-given solver: jit will say so
        return _Config(tuple(static.value[:7]) + (size, chunk, static.value[8], tail))


def _state_size(net) -> int:
    return sum(math.prod(layer.shape) for layer in net.layers.values())


@eqx.filter_jit
def _run(net, xs, cfg):
    from .solve import _at_fixed_point, _check_finite, _count_evaluations, _vf

    (solver, controller, event_rtol, event_atol, max_steps, t1_, dt0, size, chunk, trace, tail) = cfg.value
    net, xs = _nondiff(net), _nondiff(_check_finite(net, xs))
    n = next(iter(xs.values())).shape[0]
    terms = diffrax.ODETerm(_vf)
    error_order = solver.error_order(terms)

    # times and state dtypes as the vmapped solve's diffeqsolve chooses them: the solve
    # runs in the state dtype (t0, dt0 and array taus cast to it)
    from .solve import _in_state_dtype, _start_times

    sdtype = jnp.result_type(*xs.values())
    net = _in_state_dtype(net, sdtype)
    t0, dt0 = _start_times(net, dt0, solver, sdtype)
    with jax.numpy_dtype_promotion("standard"):
        tdtype = jnp.result_type(t0, t1_, dt0)
        ydtype = {k: jnp.result_type(v.dtype, tdtype) for k, v in xs.items()}
    t0 = jnp.asarray(t0, tdtype)
    t1 = jnp.asarray(t1_, tdtype)
    dt0 = jnp.asarray(dt0, tdtype)
    clip_floor = np.asarray(t1_, tdtype)
    for _ in range(100):  # diffrax's end clipping: within 100 ULPs of t1 a step ends at t1
        clip_floor = np.nextafter(clip_floor, np.asarray(-np.inf, tdtype))
    clip_floor = jnp.asarray(clip_floor, tdtype)
    fast_init = type(solver).init is ExponentialEuler.init

    def start(x):
        """One query's initial slot: Monitored state, solver and controller state, times,
        status (the steady-state test at t0)."""
        x = {k: v.astype(ydtype[k]) for k, v in x.items()}
        if fast_init:  # one evaluation serves the monitors and the solver's first force
            energy, dx, speed, scale = evaluate(net, x)
            inf = {k: jnp.where(v == 0, 0.0, jnp.inf).astype(v.dtype) for k, v in speed.items()}
            y = Monitored(x, energy, speed, scale, inf)
        else:
            y = monitored(net, x)
        tnext, cstate = controller.init(terms, t0, t1, y, dt0, net, solver.func, error_order)
        tnext = jnp.minimum(tnext, t1)
        sstate = dx if fast_init else solver.init(terms, t0, tnext, y, net)
        cstate = jax.tree_util.tree_map(jnp.asarray, cstate)
        status = jnp.where(_at_fixed_point(y, event_rtol, event_atol), _EVENT, _RUNNING).astype(jnp.int32)
        return y, sstate, cstate, t0, tnext, status

    # shapes of one slot, for the empty carry
    one = jax.eval_shape(start, jax.tree_util.tree_map(lambda a: a[0], xs))
    slots = jax.tree_util.tree_map(lambda s: jnp.zeros((size, *s.shape), s.dtype), one)
    y_s, ss_s, cs_s, tp_s, tn_s, st_s = slots
    zeros_i = jnp.zeros((size,), jnp.int32)
    slot = dict(y=y_s, sstate=ss_s, cstate=cs_s, tprev=tp_s, tnext=tn_s, status=st_s,
                nacc=zeros_i, natt=zeros_i, query=jnp.full((size,), n, jnp.int32))
    length = max_steps + 1 if trace else 2
    edtype, xdt = one[0].energy.dtype, one[0].x
    out = dict(x={k: jnp.zeros((n, *v.shape), v.dtype) for k, v in xdt.items()},
               nacc=jnp.zeros((n,), jnp.int32), natt=jnp.zeros((n,), jnp.int32),
               status=jnp.zeros((n,), jnp.int32), residual=jnp.zeros((n,), edtype), energy=jnp.zeros((n,), edtype),
               energies=jnp.zeros((n, length), edtype), times=jnp.zeros((n, length), tdtype))

    def put(a, idx, v):
        return a.at[idx].set(v, mode="drop")

    def load(carry, k):
        """Gather the next ``k`` queries into the first ``k`` free slots."""
        slot, out, nxt = carry["slot"], carry["out"], carry["next"]
        q = nxt + jnp.arange(k, dtype=jnp.int32)
        valid = q < n
        free = slot["query"] >= n
        idx = jnp.nonzero(free, size=k, fill_value=size)[0].astype(jnp.int32)
        idx = jnp.where(valid, idx, size)
        # the start evaluation runs on at least START_BATCH rows (the extra ones repeat the
        # last query and are dropped): XLA:CPU compiles a batch of 4 ET queries to other
        # kernels than the vmapped solve's, whose last-bit differences grew to 4-step
        # differences in float32 (11 % of 256 queries); from 8 rows on the steps agree
        qc = jnp.minimum(nxt + jnp.arange(max(k, START_BATCH), dtype=jnp.int32), n - 1)
        x = {name: v[qc] for name, v in xs.items()}
        y, ss, cs, tp, tn, st = jax.tree_util.tree_map(lambda a: a[:k], jax.vmap(start)(x))
        new = dict(y=y, sstate=ss, cstate=cs, tprev=jnp.broadcast_to(tp, (k,)), tnext=tn, status=st,
                   nacc=jnp.zeros((k,), jnp.int32), natt=jnp.zeros((k,), jnp.int32), query=q)
        if k == size == n:  # the whole batch into an empty window: the slots are the starts
            slot = new
        else:
            slot = jax.tree_util.tree_map(lambda a, b: put(a, idx, b), slot, new)
        if not trace:  # (with the trace, the start energy is written at the query's first step)
            out = dict(out, energies=out["energies"].at[jnp.where(valid, q, n), 0].set(y.energy, mode="drop"))
        return dict(carry, slot=slot, out=out, next=jnp.minimum(nxt + k, n), refills=carry["refills"] + 1)

    def step(carry):
        """One attempted step of every running slot (the others are left as they are)."""
        slot, out = carry["slot"], carry["out"]
        active = (slot["query"] < n) & (slot["status"] == _RUNNING)
        y0, tprev0, tnext0 = slot["y"], slot["tprev"], slot["tnext"]
        y1, yerr, _, ss1, sres = jax.vmap(solver.step, in_axes=(None, 0, 0, 0, None, 0, None))(
            terms, tprev0, tnext0, y0, net, slot["sstate"], False)
        yerr = jax.tree_util.tree_map(lambda e: jnp.where(jnp.isnan(e), jnp.inf, e), yerr)
        keep, tprev, tnext, _, cs1, cres = jax.vmap(
            controller.adapt_step_size, in_axes=(0, 0, 0, 0, None, 0, None, 0))(
            tprev0, tnext0, y0, y1, net, yerr, error_order, slot["cstate"])
        tprev = jnp.minimum(tprev, t1)
        clip = tnext > clip_floor
        tnext = jnp.where(clip, jnp.where(keep, t1, tprev + 0.5 * (t1 - tprev)), tnext)

        def sel(mask):
            def f(new, old):
                m = jnp.reshape(mask, mask.shape + (1,) * (new.ndim - 1))
                return jnp.where(m, new, old)
            return f

        accept = keep & active
        y = jax.tree_util.tree_map(sel(accept), y1, y0)
        sstate = jax.tree_util.tree_map(sel(accept), ss1, slot["sstate"])
        cstate = jax.tree_util.tree_map(sel(active), cs1, slot["cstate"])
        tprev = jnp.where(active, tprev, tprev0)
        tnext = jnp.where(active, tnext, tnext0)
        natt = slot["natt"] + active.astype(jnp.int32)
        nacc = slot["nacc"] + accept.astype(jnp.int32)
        ok = jnp.broadcast_to(sres == diffrax.RESULTS.successful, keep.shape) | ~keep
        ok = ok & jnp.broadcast_to(cres == diffrax.RESULTS.successful, keep.shape)
        event = jax.vmap(lambda yy: _at_fixed_point(yy, event_rtol, event_atol))(y)
        status = jnp.where(event, _EVENT, jnp.where(~ok | (tprev >= t1), _ENDED,
                                                    jnp.where(natt >= max_steps, _MAXED, _RUNNING)))
        status = jnp.where(active, status, slot["status"]).astype(jnp.int32)
        slot = dict(slot, y=y, sstate=sstate, cstate=cstate, tprev=tprev, tnext=tnext, natt=natt, nacc=nacc,
                    status=status)
        if trace:  # the start energy at a query's first step; the accepted step's energy and time
            qs = jnp.where(active & (natt == 1), slot["query"], n)
            qa = jnp.where(accept, slot["query"], n)
            energies = out["energies"].at[qs, 0].set(y0.energy, mode="drop")
            out = dict(out, energies=energies.at[qa, nacc].set(y.energy, mode="drop"),
                       times=out["times"].at[qa, nacc].set(tprev, mode="drop"))
        return dict(carry, slot=slot, out=out)

    def finish(carry):
        """Write the stopped slots' results to their queries' rows and free the slots."""
        slot, out = carry["slot"], carry["out"]
        done = (slot["query"] < n) & (slot["status"] != _RUNNING)
        qi = jnp.where(done, slot["query"], n)
        y = slot["y"]
        residual = jnp.sqrt(sum(jnp.square(s) for s in y.speed.values()))
        out = dict(out, x={k: put(out["x"][k], qi, v) for k, v in y.x.items()},
                   nacc=put(out["nacc"], qi, slot["nacc"]), natt=put(out["natt"], qi, slot["natt"]),
                   status=put(out["status"], qi, slot["status"]), residual=put(out["residual"], qi, residual),
                   energy=put(out["energy"], qi, y.energy))
        if not trace:  # the summary: start and end of the trace
            out = dict(out, energies=out["energies"].at[qi, 1].set(y.energy, mode="drop"),
                       times=out["times"].at[qi, 1].set(slot["tprev"], mode="drop"))
        slot = dict(slot, query=jnp.where(done, n, slot["query"]))
        return dict(carry, slot=slot, out=out)

    def any_done(carry):
        s = carry["slot"]
        return jnp.any((s["query"] < n) & (s["status"] != _RUNNING))

    def refill_due(carry):
        """A chunk is loaded once ``chunk`` slots are free (or all the remaining queries fit)."""
        free = jnp.sum(carry["slot"]["query"] >= n)
        remaining = n - carry["next"]
        return (remaining > 0) & (free >= jnp.minimum(chunk, remaining))

    def body(carry):
        carry = step(carry)
        if n > size:  # a queue to serve: free the stopped slots and refill them
            # (the full trace buffers are kept out of the cond and the inner loop, which
            # never touch them)
            big = {k: carry["out"][k] for k in (("energies", "times") if trace else ())}
            carry = dict(carry, out={k: v for k, v in carry["out"].items() if k not in big})
            carry = jax.lax.cond(any_done(carry), finish, lambda c: c, carry)
            # as many fixed-size chunks as there are free slots for (short solves free more
            # than one chunk per step)
            carry = jax.lax.while_loop(refill_due, lambda c: load(c, chunk), carry)
            carry = dict(carry, out=dict(carry["out"], **big))
        # else the whole batch is in flight: a stopped slot just idles (no longer stepped)
        # until the window shrinks or the loop ends, where finish writes it out
        width = carry["slot"]["query"].shape[0]
        return dict(carry, iterations=carry["iterations"] + 1, slot_steps=carry["slot_steps"] + width)

    def cond(carry):
        s = carry["slot"]
        return jnp.any((s["query"] < n) & (s["status"] == _RUNNING)) | (carry["next"] < n)

    carry = dict(slot=slot, out=out, next=jnp.asarray(0, jnp.int32), iterations=jnp.asarray(0, jnp.int32),
                 refills=jnp.asarray(-1, jnp.int32), slot_steps=jnp.asarray(0, jnp.int32))
    def running(carry):
        s = carry["slot"]
        return jnp.sum((s["query"] < n) & (s["status"] == _RUNNING))

    def compact(carry, width):
        """The slots still at work gathered into a narrower window of ``width`` slots
        (every other slot is free: the caller has finished them)."""
        slot = carry["slot"]
        wide = slot["query"].shape[0]
        idx = jnp.nonzero(slot["query"] < n, size=width, fill_value=wide)[0]
        slot = jax.tree_util.tree_map(lambda a: jnp.take(a, idx, axis=0, mode="fill", fill_value=0), slot)
        slot = dict(slot, query=jnp.where(idx < wide, slot["query"], n).astype(jnp.int32))
        return dict(carry, slot=slot)

    carry = load(carry, size)  # the first window (not counted as a refill)
    for width in tail:  # the tail: once the queue is empty, fewer slots for the last queries
        carry = jax.lax.while_loop(lambda c, w=width: (c["next"] < n) | (running(c) > w), body, carry)
        carry = compact(finish(carry), width)
    carry = jax.lax.while_loop(cond, body, carry)
    carry = finish(carry)  # slots that stopped at t0 in the last refill
    out = carry["out"]

    nsteps = out["nacc"]
    energies, times = out["energies"], out["times"].at[:, 0].set(t0)
    if trace:  # entries past num_steps repeat the final energy and time (as the vmapped solve)
        # a query that stopped at t0 took no step: its trace is its (start = final) energy
        energies = energies.at[:, 0].set(jnp.where(out["natt"] == 0, out["energy"], energies[:, 0]))
        idx = jnp.arange(length)[None, :]
        last = nsteps[:, None]
        energies = jnp.where(idx <= last, energies, jnp.take_along_axis(energies, last, axis=1))
        times = jnp.where(idx <= last, times, jnp.take_along_axis(times, last, axis=1))
    finite = jnp.stack([jnp.all(jnp.isfinite(v.reshape(n, -1)), axis=1) for v in out["x"].values()]).all(0)
    res = out["residual"]
    st = out["status"]
    code = jnp.where(~finite | ~jnp.isfinite(res), 2,
                     jnp.where(st == _EVENT, 0, jnp.where(st == _MAXED, 1, 3))).astype(jnp.int32)
    # the vmapped solve's count (one start evaluation; the residual read from the monitor)
    evals = _count_evaluations(net, solver, nsteps, out["natt"])
    return (out["x"], energies, times, nsteps, code, res, evals), (carry["iterations"], carry["refills"],
                                                                    carry["slot_steps"])


# ----------------------------------------------------------------------------- callers' default
def default_window(relax_kwargs: dict, num_queries: int) -> dict:
    """``relax_kwargs`` with ``window="auto"`` added where the library's own callers (the
    memories' ``relax``, the landscape census) stream by default: no ``window`` given,
    at least ``AUTO_MIN_QUERIES`` queries, the default solver and the implicit adjoint
    (the only ones streamed). A ``window`` the caller gave is kept as given."""
    if "window" in relax_kwargs or num_queries < AUTO_MIN_QUERIES:
        return relax_kwargs
    solver, adjoint = relax_kwargs.get("solver"), relax_kwargs.get("adjoint")
    if solver is not None and not isinstance(solver, ExponentialEuler):
        return relax_kwargs
    if adjoint is not None and not isinstance(adjoint, diffrax.ImplicitAdjoint):
        return relax_kwargs
    return dict(relax_kwargs, window="auto")


def num_queries(xs0: dict, net) -> int:
    """The number of queries in a dict of (batched) layer states."""
    return math.prod(net.batch_shape(xs0))


def memory_relax(net, xs0: dict, relax_kwargs: dict, jitted):
    """A memory's ``relax``: ``jitted(net, xs0, relax_kwargs)`` (``ham.relax``'s default in
    one jit: traced queries, so ``"auto"`` keeps the whole batch in flight and shrinks the
    window at the tail, or vmaps a batch too small to shrink) unless a window applies —
    given, or ``"auto"`` on concrete queries for a large batch ([`default_window`][]) —
    then [`ham.relax`][] itself (its parts are jitted; the pilot of ``"auto"`` and
    per-device streaming need the concrete queries)."""
    name = next(iter(xs0))
    n = math.prod(jnp.shape(xs0[name])) // max(math.prod(net.layers[name].shape), 1)
    kw = default_window(relax_kwargs, n)
    if kw.get("window") is None:
        return jitted(net, xs0, {k: v for k, v in kw.items() if k != "window"})
    from .solve import relax

    return relax(net, xs0, **kw)
