"""Relaxation to fixed points: continuous dynamics with diffrax, or discrete descent."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import optimistix.internal as optxi
from jaxtyping import Array, Bool, Float, Int

from . import _checks as checks
from .integrator import (EnergyGuard, ExponentialEuler, Monitored, _is_clamped, evaluate, monitored,
                         monitored_vector_field, start_distance, sweep_order)
from .network import HAM

__all__ = ["Solution", "relax", "descend", "default_tolerances"]

# Reasons a solve stopped, as stored in ``Solution.reason_code``.
REASONS = (
    "converged: steady state reached (|dx/dt| below the event tolerance)",
    "not converged: max_steps reached before a steady state",
    "not converged: the state became non-finite (NaN or inf)",
    "not converged: the solver failed (step size collapsed or another diffrax error)",
    "not converged: the final residual |dx/dt| is above tolerance",
)


class Solution(eqx.Module):
    r"""The result of [`ham.relax`][] or [`ham.descend`][].

    For a batch of initial states (leading ``batch`` shape), every field carries that
    leading shape.

    - ``states``: the final states (a dict like the initial one); the fixed point when
      ``converged``.
    - ``energies``, ``times``: the energy trace, one entry for the initial state and one
      per accepted step, padded to a fixed length (jit needs static shapes): entries
      past ``num_steps`` repeat the final energy/time, and ``mask`` marks the real
      ones. ``trace()`` returns the trimmed NumPy arrays.
    - ``num_steps``: accepted steps; ``converged``: steady state reached with finite
      states; ``reason``: a readable explanation (outside jit).
    - ``residual``: $\|\dot x\|$ of the final state (all layers).
    - ``num_evaluations``: the work, in vector-field evaluations (all layers' forces
      once; a single layer's force counts 1/number of layers), rejected steps included
      — see [`ham.relax`][] for how each solver is counted.
    """

    states: dict[str, Array]
    energies: Float[Array, "*batch steps"]
    times: Float[Array, "*batch steps"]
    num_steps: Int[Array, "*batch"]
    converged: Bool[Array, "*batch"]
    reason_code: Int[Array, "*batch"]
    residual: Float[Array, "*batch"]
    num_evaluations: Float[Array, "*batch"]

    @property
    def mask(self) -> Bool[Array, "*batch steps"]:
        """True for the real entries of ``energies`` and ``times`` (index <= ``num_steps``)."""
        idx = jnp.arange(self.energies.shape[-1])
        return idx <= self.num_steps[..., None]

    @property
    def reason(self) -> str | list:
        """Why the solve stopped, as text (a nested list for a batch)."""
        codes = np.asarray(self.reason_code)
        if codes.ndim == 0:
            return REASONS[int(codes)]
        return np.vectorize(lambda c: REASONS[int(c)], otypes=[object])(codes).tolist()

    def trace(self, index: tuple[int, ...] = ()):
        """``(times, energies)`` of one trajectory as NumPy arrays, padding removed."""
        n = int(np.asarray(self.num_steps)[index])
        return (np.asarray(self.times)[index][: n + 1], np.asarray(self.energies)[index][: n + 1])

    def raise_if_not_converged(self) -> "Solution":
        """Return ``self``, or raise ``RuntimeError`` naming the first batch index that did
        not converge, with its ``reason``, steps and residual."""
        codes = np.asarray(self.reason_code)
        if np.any(codes != 0):
            bad = np.argwhere(codes.reshape(codes.shape or (1,)) != 0)[0]
            c = codes.reshape(codes.shape or (1,))[tuple(bad)]
            raise RuntimeError(
                f"relaxation did not converge for batch index {tuple(bad) if codes.ndim else ()}: {REASONS[int(c)]} "
                f"(steps={np.asarray(self.num_steps).reshape(codes.shape or (1,))[tuple(bad)]}, "
                f"residual={np.asarray(self.residual).reshape(codes.shape or (1,))[tuple(bad)]:.3g})."
            )
        return self


def default_tolerances(dtype, solver=None, accurate: bool = False) -> dict[str, float]:
    r"""Step-size controller (``rtol``, ``atol``) and steady-state (``event_rtol``,
    ``event_atol``) tolerances for a dtype and a solver.

    The steady state is judged per layer: every layer's $\|\dot x_A\| \le$
    ``event_atol + event_rtol``$\,\|x_A\|$. For an explicit Runge–Kutta solver the event
    must sit well above the controller's error floor (DESIGN.md §2): near equilibrium
    its state jitters at the controller tolerance, so a tighter event is never met. The
    [`ham.ExponentialEuler`][] default has no such floor (a fixed point of the dynamics
    is a fixed point of its step); its controller only guards against jumps larger than
    the state (the energy check keeps steps downhill), so its tolerance is loose, unless
    ``accurate`` (what [`ham.relax`][] asks for when ``t1`` is finite: the state at time
    ``t1`` is then wanted, not only the fixed point).
    """
    f64 = jnp.dtype(dtype) == jnp.float64
    event = dict(event_rtol=1e-6, event_atol=1e-8) if f64 else dict(event_rtol=1e-4, event_atol=1e-4)
    if solver is None or isinstance(solver, ExponentialEuler):
        if accurate:  # a finite t1 asks for the state at that time: follow the trajectory
            return dict(rtol=1e-6, atol=1e-8, **event) if f64 else dict(rtol=1e-4, atol=1e-6, **event)
        return dict(rtol=1.0, atol=1.0, **event)
    return dict(rtol=1e-8, atol=1e-10, **event) if f64 else dict(rtol=1e-5, atol=1e-6, **event)


def _tree_norm(tree) -> Array:
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in leaves))


def _check_finite(net: HAM, xs, caller: str = "ham.relax"):
    out = {}
    for k in net.layers:
        out[k] = checks.error_if(
            xs[k], ~jnp.all(jnp.isfinite(xs[k])), f"{caller}: the initial state of layer {k!r} is not finite (NaN or inf)."
        )
    return out


def _vf(t, y, net):
    if isinstance(y, Monitored):  # the ExponentialEuler state: dx/dt, and 0 for the monitors
        return monitored_vector_field(net, y)
    return net.vector_field(t, y)


# ----------------------------------------------------------------------------- relax
def _layer_norms(tree):
    return {k: _tree_norm(v) for k, v in tree.items()}


def _steady(speed, x, rtol, atol):
    """Per-layer steady state: every layer's |dx_A/dt| <= atol + rtol |x_A|."""
    xn = _layer_norms(x)
    return jnp.all(jnp.stack([speed[k] <= atol + rtol * xn[k] for k in speed]))


# a residual this far below the steady-state tolerance is accepted without the distance
# estimate: there the residual is near round-off, where its contraction ratio is noise
_SETTLED = 0.01


def _at_fixed_point(y: Monitored, rtol, atol):
    """The ``ExponentialEuler`` steady state, per layer: the residual is small *and* the
    estimated distance to the fixed point (``Monitored.distance``) is within the same
    tolerance (in state units), or the residual is ``_SETTLED`` times smaller still."""
    small = _steady(y.speed, y.x, rtol, atol)
    near = _steady(y.distance, y.x, rtol, atol)
    settled = _steady(y.speed, y.x, _SETTLED * rtol, _SETTLED * atol)
    return small & (near | settled)


def _solve(inputs, share_start: bool = False):
    r"""One unbatched diffrax solve; returns (final state, (trace, stats, residual)).

    With ``ExponentialEuler`` the final residual $\|\dot x\|$ is read from the final
    ``Monitored`` state (its per-layer speeds), not evaluated again; with
    ``share_start`` (the primal of the implicit adjoint, never differentiated: diffrax
    refuses a passed solver state under differentiation) one evaluation at ``xs0``
    gives both the monitor and the solver's first force."""
    net, xs0, static = inputs
    (solver, controller, event_rtol, event_atol, max_steps, t1, dt0, adjoint, trace) = static.value
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(xs0))
    t0, dt0 = _start_times(net, dt0, solver, dtype)
    # diffrax promotes every state to the time dtype; promote here, so a start evaluation
    # passed in as the solver state (share_start) has the dtypes of the states it steps
    xs0 = jax.tree_util.tree_map(lambda a: a.astype(dtype), xs0)
    solver_state = None
    if isinstance(solver, ExponentialEuler):
        if share_start and type(solver).init is ExponentialEuler.init:
            e0, solver_state, speed0, scale0 = evaluate(net, xs0)
            y0 = Monitored(xs0, e0, speed0, scale0, start_distance(speed0))
        else:
            y0 = monitored(net, xs0)
        energy = lambda t, y, args: y.energy  # noqa: E731
        cond = lambda t, y, args, **kw: _at_fixed_point(y, event_rtol, event_atol)  # noqa: E731
        final_of = lambda y: y.x  # noqa: E731
    else:
        y0 = xs0
        energy = lambda t, y, args: args._energy(y)  # noqa: E731

        def cond(t, y, args, **kw):
            return _steady(_layer_norms(args.vector_field(t, y)), y, event_rtol, event_atol)

        final_of = lambda y: y  # noqa: E731
    term = diffrax.ODETerm(_vf)
    if trace:
        saveat = diffrax.SaveAt(
            subs=[diffrax.SubSaveAt(t1=True), diffrax.SubSaveAt(t0=True, steps=True, fn=energy)]
        )
    else:  # the summary (start and end of the trace): no (max_steps + 1)-long buffers to fill and pad
        saveat = diffrax.SaveAt(subs=[diffrax.SubSaveAt(t1=True), diffrax.SubSaveAt(t0=True, t1=True, fn=energy)])
    sol = diffrax.diffeqsolve(
        term, solver, t0=t0, t1=t1, dt0=dt0, y0=y0, args=net, saveat=saveat,
        stepsize_controller=controller, event=diffrax.Event(cond), max_steps=max_steps, throw=False,
        adjoint=adjoint, solver_state=solver_state,
    )
    final = jax.tree_util.tree_map(lambda y: y[-1], final_of(sol.ys[0]))
    if isinstance(solver, ExponentialEuler):  # the monitor holds |dx_A/dt| of the final state
        speed = jax.tree_util.tree_map(lambda s: s[-1], sol.ys[0].speed)
        residual = jnp.sqrt(sum(jnp.square(s) for s in speed.values()))
    else:
        residual = _tree_norm(net.vector_field(0.0, final))
    stats = (sol.stats["num_accepted_steps"], sol.stats["num_steps"])
    return final, (sol.ys[1], sol.ts[1], stats, sol.result, residual)


def _solve_primal(inputs):
    """``_solve`` as the implicit adjoint's primal (not differentiated: one start evaluation)."""
    return _solve(inputs, share_start=True)


@dataclasses.dataclass(frozen=True)
class _FirstStep:
    """The default first step of ``ExponentialEuler`` with ``t1 = inf``: ``dtmax`` on a
    single-time-scale net, the smallest tau otherwise (resolved by ``_start_times``)."""

    dtmax: float


def _first_step(net: HAM, dtmax: float):
    """``dtmax`` where every moving layer has a leak and all finite taus are equal (see
    [`single_time_scale`][]; decided on the values, so that a net whose taus are traced
    under ``jit`` starts as the concrete one does), else the smallest tau."""
    moving = [layer for layer in net.layers.values() if not _is_clamped(layer)]
    if not moving or not all(layer.legendre for layer in moving):
        return _min_tau(net)
    taus = jnp.concatenate([jnp.ravel(jnp.asarray(layer.tau)) for layer in moving])
    finite = jnp.isfinite(taus)
    lo = jnp.min(jnp.where(finite, taus, jnp.inf))
    hi = jnp.max(jnp.where(finite, taus, -jnp.inf))
    return jnp.where(lo == hi, jnp.asarray(dtmax, lo.dtype), _min_tau(net))


def _start_times(net, dt0, solver, dtype):
    """``(t0, dt0)`` in the state ``dtype``: diffrax takes its time dtype from them and
    promotes the states to it, so a float64 time (a Python-float tau under x64) would run
    a float32 solve in float64. ``dt0`` defaults to the smallest tau for
    ``ExponentialEuler`` (``None``: diffrax's own first-step choice for other solvers), or
    to ``dtmax`` on a single-time-scale net when ``t1`` is infinite (``_FirstStep``)."""
    if isinstance(dt0, _FirstStep):
        dt0 = _first_step(net, dt0.dtmax)
    elif isinstance(solver, ExponentialEuler) and dt0 is None:
        dt0 = _min_tau(net)
    return jnp.zeros((), dtype), (None if dt0 is None else jnp.asarray(dt0).astype(dtype))


def _in_state_dtype(net: HAM, dtype) -> HAM:
    """``net`` with its array time constants cast to the state ``dtype`` (a float64 tau
    would promote float32 states to float64: relax computes in the state dtype)."""
    def cast(tau):
        return isinstance(tau, jax.Array) and jnp.issubdtype(tau.dtype, jnp.floating) and tau.dtype != dtype

    names = [k for k, layer in net.layers.items() if cast(layer.tau)]
    if not names:
        return net
    return eqx.tree_at(lambda n: [n.layers[k].tau for k in names], net,
                       [net.layers[k].tau.astype(dtype) for k in names])


def _rewrite(root, residual, inputs):
    """The fixed-point condition f(x*) = 0 for the implicit function theorem. A clamped
    layer (tau = inf) has f = 0 identically, which would make the Jacobian singular: its
    condition is x* = x0 instead (so its derivative with respect to x0 is the identity)."""
    net, x0 = inputs[0], inputs[1]
    f = net.vector_field(0.0, root)
    return {k: jnp.where(jnp.isinf(jnp.asarray(layer.tau)), root[k] - x0[k], f[k]) for k, layer in net.layers.items()}


def with_default_solver(net: HAM, relax_kwargs: dict, fallback_order: tuple[str, ...] | None = None) -> dict:
    """``relax_kwargs`` with ``solver`` defaulting to [`ham.ExponentialEuler`][] sweeping the
    layers slowest first. Call it where the taus are concrete (before ``jit``), so the
    order is known; ``fallback_order`` is used when they are traced."""
    kw = dict(relax_kwargs)
    if kw.get("solver") is None:
        kw["solver"] = _default_solver(sweep_order(net) or fallback_order)
    return kw


@functools.lru_cache(maxsize=64)
def _default_solver(layer_order: tuple[str, ...] | None, error_estimate: bool = True) -> ExponentialEuler:
    return ExponentialEuler(layer_order=layer_order, error_estimate=error_estimate)


@functools.lru_cache(maxsize=64)
def _energy_guard(factormax: float, dtmax: float) -> EnergyGuard:
    """The step-size control of ``relax`` on a single-time-scale net (built once per setting)."""
    return EnergyGuard(factormax=factormax, dtmax=dtmax)


@functools.lru_cache(maxsize=64)
def _exponential_controller(rtol: float, atol: float, factormax: float, dtmax: float) -> diffrax.PIDController:
    """The step-size controller of ``ExponentialEuler`` (built once per setting: the
    modules are immutable, and building them costs more than a small solve's dispatch)."""
    return diffrax.PIDController(rtol=rtol, atol=atol, norm=_monitored_rms, pcoeff=0.0, icoeff=1.0,
                                 factormax=factormax, factormin=0.25, safety=0.9, dtmax=dtmax)


def _solver_number(name: str, value, *, low: float = 0.0, **kw) -> float:
    """A solver setting of ``ham.relax``, checked by ``_checks.param`` (> ``low``,
    finite unless ``allow_inf``); a Python float, since it configures the (static) solver."""
    if checks.is_traced(value):
        raise TypeError(f"ham.relax: {name} must be a Python number (it configures the solver), got a traced array.")
    return float(checks.param("ham.relax", name, value, low=low, **kw))


def _monitored_rms(y):
    leaves = jax.tree_util.tree_leaves(y.x)
    total = sum(jnp.sum(jnp.square(v)) for v in leaves)
    return jnp.sqrt(total / sum(v.size for v in leaves))


def single_time_scale(net: HAM) -> bool:
    """True when every moving layer has the same concrete, finite τ and a leak
    (``legendre``): there the largest step of [`ham.ExponentialEuler`][] is the
    network's own synchronous discrete update (each layer set to its input, in sweep
    order), the step that Euler at dt = τ takes, so [`ham.relax`][] starts with it
    instead of growing from dt0 = τ (which took more steps than the update and, on the
    Energy Transformer, ended at other fixed points for 6–12 % of queries)."""
    try:
        taus = [np.ravel(np.asarray(layer.tau)) for layer in net.layers.values()]
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError, TypeError):
        return False
    moving = [(t, layer) for t, layer in zip(taus, net.layers.values()) if not np.all(np.isinf(t))]
    if not moving or not all(layer.legendre for _, layer in moving):
        return False
    values = np.concatenate([t for t, _ in moving])
    return bool(np.all(np.isfinite(values)) and np.all(values == values[0]))


def _max_finite_tau(net: HAM) -> float:
    try:
        taus = [float(t) for layer in net.layers.values() for t in np.ravel(np.asarray(layer.tau))]
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError, TypeError):
        return 1e4
    finite = [t for t in taus if math.isfinite(t)]
    return max(finite) if finite else 1.0


def _min_tau(net: HAM):
    taus = [jnp.min(jnp.asarray(layer.tau)) for layer in net.layers.values()]
    m = jnp.min(jnp.stack(taus))
    return jnp.where(jnp.isfinite(m), m, 1.0)


class _Static(eqx.Module):
    value: tuple = eqx.field(static=True)


def relax(
    net: HAM,
    xs0: Mapping[str, Array],
    *,
    solver: diffrax.AbstractAdaptiveSolver | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    event_rtol: float | None = None,
    event_atol: float | None = None,
    max_steps: int = 4096,
    t1: float = math.inf,
    dt0: float | None = None,
    adjoint: diffrax.AbstractAdjoint | None = None,
    factormax: float = 4.0,
    dtmax: float | None = None,
    window: int | str | None = "auto",
    trace: bool = True,
) -> Solution:
    r"""Integrate $\tau_A\dot x_A = -\partial E/\partial g_A$ from ``xs0`` with diffrax
    until a steady state: an ``Event`` fires when every layer has
    $\|\dot x_A\| \le$ ``event_atol`` + ``event_rtol``$\,\|x_A\|$ (judged per layer, so
    a large saturated layer cannot hide the residual of another).

    The default ``solver`` is [`ham.ExponentialEuler`][]: each layer's leak $-x_A/\tau_A$
    is integrated exactly, the layers are swept Gauss–Seidel from the slowest to the
    fastest, and a step is accepted only if the energy did not rise (beyond round-off);
    a ``PIDController(rtol, atol)`` on its ETD2 error estimate adapts the step, capped at
    ``dtmax`` (default 100 × the largest finite τ). Why: the dynamics are stiff (fast
    hidden layers, τ_h ≪ τ_v), so explicit Runge–Kutta (``diffrax.Tsit5()``, the previous
    default, still selectable with ``solver=``) is held to steps ≲ τ_h by stability; the
    exponential step has no such limit and, for large steps, becomes the model's own
    discrete update (for the modern Hopfield network, attention), which for layers joined
    only to other layers (no self-coupling) is block-coordinate descent of the energy.
    Measured on the suite of ``experiments/bench_relax.py``: see the README. Layers with
    ``legendre=False`` (no leak) take explicit Euler steps, accepted only downhill.
    On a single-time-scale net (every moving layer with the same τ and a leak;
    ``ham.solve.single_time_scale``) with ``t1 = inf`` the first step is ``dtmax``,
    the network's discrete update, and unless ``rtol``/``atol`` are given the steps are
    kept by the energy check alone ([`ham.integrator.EnergyGuard`][]): no error
    estimate, so a step costs the update plus the Lyapunov check.
    Tolerances default by dtype and solver ([`ham.solve.default_tolerances`][]). The solve
    runs in the states' dtype: the times (``t0``, ``dt0``) and array time constants are
    cast to it, so a float32 solve stays float32 under x64.

    A batch of states (any leading shape) is solved query by query: every query has its
    own step sizes, stopping time and ``num_steps``. How the batch is run is ``window``'s
    choice (below); ``window=None`` is the plain ``vmap`` of one query's ``diffeqsolve``.

    The solve never raises on failure: ``converged`` is False and ``reason`` says why
    (``max_steps`` reached, non-finite state, solver failure). Non-finite *initial*
    states are refused with an error naming the layer.

    Gradients: with the default ``adjoint=diffrax.ImplicitAdjoint()`` the final state
    is differentiated by the implicit function theorem at the fixed point,
    $dx^*/d\theta = -(\partial f/\partial x)^{-1}\partial f/\partial\theta$ — the same
    rule as diffrax's ``ImplicitAdjoint``, applied here so the energy trace can be
    recorded in the same solve (diffrax's own one only allows ``SaveAt(t1=True)``).
    The trace and stats are not differentiable in this mode. Any other diffrax adjoint
    (e.g. ``RecursiveCheckpointAdjoint()`` to backpropagate through the solver steps)
    is passed to ``diffeqsolve`` unchanged.

    Streaming (``window=W``, a positive integer): instead of ``vmap`` (where every query
    is computed until the slowest one stops), the batch is relaxed with ``W`` slots in
    flight, a slot being refilled with the next query as soon as its query stops, so
    the cost is about ``N · mean steps / W + max steps`` steps of ``W`` slots rather than
    ``N × max steps``. Each query's result is the one the vmapped solve gives (the same
    ``num_steps``, ``converged`` and ``reason``; in float32 a stop may move by a step or
    two with round-off), ``num_evaluations`` too. Default solver only; gradients by the
    implicit function theorem only. See ``ham/_stream.py``.

    ``trace=False`` (with or without a window) keeps only the start and the end of each
    energy trace (``energies``/``times`` of length 2; ``mask`` and ``trace()`` as usual),
    so memory does not grow with ``max_steps`` × queries, and a short solve does not pay
    for filling and padding ``max_steps + 1`` entries per query (on the 5-step
    ``conv_image`` solve of ``bench_relax`` that was about a fifth of its time). Every
    accepted step is still checked not to raise the energy.

    ``window="auto"`` (the default) chooses:

    - N ≥ 256 concrete queries: a pilot of P = clip(N/16, 16, 64) queries (a fixed-seed
      random subset, streamed through max(P/4, 8) slots; their results are kept and the
      other N − P queries streamed) gives the mean steps and, its largest extrapolated
      to N draws (mean + (pilot max − mean) ln N / ln P), the slowest; W = N · mean /
      (4 · max), at least 8 (more for states under 512 numbers, so that a loop
      iteration has enough work). Why: streaming costs the useful work N · mean plus a
      tail of at most W · max slot steps, vmapping N · max; this W keeps the tail
      within a quarter of the useful work, a gain of at least (max/mean)/1.25, with a
      margin for a pilot that misses the rare slowest queries. The vmapped solve
      instead when max/mean < 1.5 or the predicted gain N·max / (N·mean + W·max) < 1.25.
    - Fewer queries, or traced ones (under ``jit``/``grad``, where no pilot can run):
      the whole batch in flight (W = N), the window shrinking at the tail. Once no
      query is left to load, the slots still busy are gathered into W/4 slots (then
      W/16) as soon as they fit, so the slowest queries no longer keep every slot
      stepping; a batch whose queries stop together costs about what the vmapped solve
      costs. On the 64-query ``bench_relax`` cases (committed run) this takes
      0.34–0.56× the vmapped time on the Energy Transformer and 0.35–0.40× on the
      classical net (their slowest query takes 2.7–7× the mean steps), 0.69–0.98× on
      the modern, dense and Krotov–Hopfield memories, and up to 1.24× on the 4–6-step
      convolutional solves where every query stops at the same step (the stream's own
      bookkeeping, about 1 ms).
    - The vmapped solve when N < 4 × that minimum window (nothing to shrink), for a
      solver other than ``ExponentialEuler`` or an adjoint other than the implicit one
      (neither is streamed), and for sharded queries with fewer than 256 a device.

    Every window streams the whole queue first and shrinks at the tail the same way.
    Sharded queries (a ``NamedSharding`` over the batch axis) stream per device
    (``shard_map``; the window and this rule per device), results sharded alike.
    """
    xs0 = {k: v if isinstance(v, jax.Array) else jnp.asarray(v) for k, v in dict(xs0).items()}
    batch = net.batch_shape(xs0)
    dtype = jnp.result_type(*xs0.values())
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.zeros(()).dtype
        xs0 = {k: v.astype(dtype) for k, v in xs0.items()}
    default_solver = solver is None
    solver = _default_solver(sweep_order(net)) if default_solver else solver
    # the default controller's tolerances (not the user's): a single-time-scale net then
    # needs no error estimate (see below)
    loose = rtol is None and atol is None
    tol = default_tolerances(dtype, solver, accurate=math.isfinite(t1) if isinstance(t1, (int, float)) else False)
    rtol = tol["rtol"] if rtol is None else rtol
    atol = tol["atol"] if atol is None else atol
    event_rtol = tol["event_rtol"] if event_rtol is None else event_rtol
    event_atol = tol["event_atol"] if event_atol is None else event_atol
    if not (isinstance(max_steps, (int, np.integer)) and not isinstance(max_steps, bool) and max_steps >= 1):
        raise ValueError(f"ham.relax: max_steps must be a positive integer (the trace needs it), got {max_steps}.")
    rtol, atol, event_rtol, event_atol = (
        _solver_number(name, value, inclusive=True)
        for name, value in (("rtol", rtol), ("atol", atol), ("event_rtol", event_rtol), ("event_atol", event_atol))
    )
    if event_rtol == 0 and event_atol == 0:
        raise ValueError("ham.relax: event_rtol and event_atol are both 0: the steady state could never be reached.")
    t1 = _solver_number("t1", t1, allow_inf=True)
    dt0 = None if dt0 is None else _solver_number("dt0", dt0)
    dtmax = None if dtmax is None else _solver_number("dtmax", dtmax)
    factormax = _solver_number("factormax", factormax, low=1.0)
    if isinstance(solver, ExponentialEuler):
        if dtmax is None:  # beyond ~10 tau the step is the discrete update; the cap only bounds t
            dtmax = 100.0 * _max_finite_tau(net)
        if dt0 is None and not math.isfinite(t1):  # dtmax on single-time-scale nets, else min tau
            dt0 = _FirstStep(dtmax)
        if default_solver and loose and not math.isfinite(t1) and single_time_scale(net):
            # the large step is the discrete update: guarded by the energy alone
            solver = _default_solver(solver.layer_order, error_estimate=False)
            controller = _energy_guard(factormax, dtmax)
        else:
            controller = _exponential_controller(rtol, atol, factormax, dtmax)
    else:
        controller = diffrax.PIDController(rtol=rtol, atol=atol, norm=_tree_norm)
    if adjoint is None:
        adjoint = _IMPLICIT
    inner_adjoint = _CHECKPOINT if isinstance(adjoint, diffrax.ImplicitAdjoint) else adjoint
    if not isinstance(trace, (bool, np.bool_)):
        raise TypeError(f"ham.relax: trace must be True (the energy at every accepted step) or False (only the "
                        f"start and the end), got {trace!r}.")
    static = _static((solver, controller, event_rtol, event_atol, int(max_steps), t1, dt0, inner_adjoint, bool(trace)))
    if window is not None:
        from . import _stream

        return _stream.relax(net, xs0, static, adjoint, batch, window)
    return _relax(net, xs0, static, adjoint, batch)


_IMPLICIT = diffrax.ImplicitAdjoint()  # the defaults, built once (a module costs more than a small solve's dispatch)
_CHECKPOINT = diffrax.RecursiveCheckpointAdjoint()


@functools.lru_cache(maxsize=256)
def _static_cached(value: tuple) -> "_Static":
    return _Static(value)


def _static(value: tuple) -> "_Static":
    """``_Static(value)``, the same object for the same settings (jit hashes it anyway)."""
    try:
        return _static_cached(value)
    except TypeError:  # an unhashable user-given solver or adjoint: jit will say so
        return _Static(value)


@eqx.filter_jit
def _relax(net, xs0, static, adjoint, batch):
    implicit = isinstance(adjoint, diffrax.ImplicitAdjoint)
    net = _in_state_dtype(net, jnp.result_type(*xs0.values()))

    def one(x0):
        inputs = (net, x0, static)
        if implicit:
            final, aux = optxi.implicit_jvp(_solve_primal, _rewrite, inputs, adjoint.tags, adjoint.linear_solver)
        else:
            final, aux = _solve(inputs)
        energies, times, (nsteps, nattempted), result, res = aux
        n = nsteps.astype(jnp.int32)
        if static.value[8]:  # the full trace: entries past n repeat the last
            idx = jnp.arange(energies.shape[0])
            valid = idx <= n
            energies = jnp.where(valid, energies, energies[n])
            times = jnp.where(valid, times, times[n])
        evals = _count_evaluations(net, static.value[0], nsteps, nattempted)
        finite = jnp.all(jnp.asarray([jnp.all(jnp.isfinite(v)) for v in jax.tree_util.tree_leaves(final)]))
        event = result == diffrax.RESULTS.event_occurred
        maxed = result == diffrax.RESULTS.max_steps_reached
        code = jnp.where(
            ~finite | ~jnp.isfinite(res), 2,
            jnp.where(event, 0, jnp.where(maxed, 1, 3)),
        )
        return final, energies, times, n, code == 0, code, res, evals

    fn = one
    for _ in batch:
        fn = jax.vmap(fn)
    return Solution(*fn(_check_finite(net, xs0)))


def _count_evaluations(net, solver, accepted, attempted):
    """Vector-field evaluations of one solve (for solvers other than ``ExponentialEuler``,
    the final residual check included)."""
    attempted = attempted.astype(jnp.float32)
    accepted = accepted.astype(jnp.float32)
    if isinstance(solver, ExponentialEuler):
        moving = sum(1 for layer in net.layers.values() if not _is_clamped(layer)) or 1
        # the initial energy + field (one evaluation serves the monitor and the solver),
        # then per attempted step the layers after the first of the sweep (one layer each)
        # and the full field (with the energy) at its end, whose speeds are the residual
        return 1.0 + attempted * (1.0 + (moving - 1) / len(net.layers))
    if isinstance(solver, diffrax.AbstractRungeKutta):
        stages = len(solver.tableau.c) + 1
        fsal = bool(solver.tableau.fsal)
        per_step = stages - 1 if fsal else stages
    else:
        per_step = 1
    # initial field, the stages, and per step the steady-state event and the energy
    return 1.0 + attempted * per_step + accepted * 2.0 + 1.0


# ----------------------------------------------------------------------------- descend
def descend(
    net: HAM,
    xs0: Mapping[str, Array],
    *,
    step_size: float = 0.1,
    steps: int = 100,
    rtol: float | None = None,
    atol: float | None = None,
) -> Solution:
    r"""Discrete gradient descent $x_A \leftarrow x_A - \alpha\,\tau_A^{-1}\,\partial
    E/\partial g_A$ for ``steps`` steps (explicit Euler on the same dynamics; the
    Energy Transformer's inference, Hoover et al. 2023). The energy decreases for a
    small enough ``step_size`` α.

    Returns a [`ham.Solution`][] with ``steps + 1`` energies; ``converged`` is True when
    the final $\|\dot x\|$ is below ``atol + rtol‖x‖`` (defaults as for ``relax``'s
    steady-state event).
    """
    xs0 = {k: jnp.asarray(v) for k, v in dict(xs0).items()}
    batch = net.batch_shape(xs0)
    if not (isinstance(steps, (int, np.integer)) and not isinstance(steps, bool) and steps >= 0):
        raise ValueError(f"ham.descend: steps must be an integer >= 0, got {steps!r}.")
    # a non-positive step climbs the energy (or stands still): refused, never taken silently
    step_size = checks.param("ham.descend", "step_size", step_size)
    dtype = jnp.result_type(*xs0.values())
    tol = default_tolerances(dtype)
    rtol = tol["event_rtol"] if rtol is None else rtol
    atol = tol["event_atol"] if atol is None else atol
    return _descend(net, xs0, step_size, int(steps), rtol, atol, batch)


@eqx.filter_jit
def _descend(net, xs0, step_size, steps, rtol, atol, batch):
    def one(x0):
        def step(x, _):
            dx = net.vector_field(0.0, x)
            x = jax.tree_util.tree_map(lambda a, b: a + step_size * b, x, dx)
            return x, net._energy(x)

        final, es = jax.lax.scan(step, x0, None, length=steps)
        energies = jnp.concatenate([net._energy(x0)[None], es])
        times = step_size * jnp.arange(steps + 1, dtype=energies.dtype)
        res = _tree_norm(net.vector_field(0.0, final))
        finite = jnp.isfinite(res) & jnp.all(jnp.isfinite(energies))
        ok = res < atol + rtol * _tree_norm(final)
        code = jnp.where(~finite, 2, jnp.where(ok, 0, 4))
        evals = jnp.asarray(steps + 1, jnp.float32)
        return final, energies, times, jnp.asarray(steps, jnp.int32), code == 0, code, res, evals

    fn = one
    for _ in batch:
        fn = jax.vmap(fn)
    return Solution(*fn(_check_finite(net, xs0, "ham.descend")))
