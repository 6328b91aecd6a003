r"""An exponential integrator for HAM dynamics, written as a diffrax solver.

Every layer's dynamics has a linear leak: $\tau_A\dot x_A = -x_A + N_A(x)$ with
$N_A = -\sum_{S\ni A}\partial E_S/\partial g_A$. An explicit Runge–Kutta solver must
resolve the fastest leak ($h \lesssim \tau_{\min}$, stiffness), although the leak is
solved exactly by an exponential. Exponential (Lawson / ETD) integrators (Cox &
Matthews 2002, "Exponential time differencing for stiff systems"; Hochbruck &
Ostermann 2010, "Exponential integrators") integrate it exactly and freeze $N$ over
the step:

$x_A \leftarrow e^{-h/\tau_A}x_A + (1-e^{-h/\tau_A})\,N_A(x)
      = x_A + \tau_A(1-e^{-h/\tau_A})\,\dot x_A .$

For $h \ll \tau_A$ this is explicit Euler; for $h \gg \tau_A$ it is the network's own
discrete update $x_A \leftarrow N_A(x)$ (for the modern Hopfield network, the
attention update $v \leftarrow \Xi^\top\mathrm{softmax}(\beta\Xi v)$ of Ramsauer et al.
2020). Layers without a leak (``legendre=False``) take the explicit Euler step.

Step sizes: the step is accepted only if the energy did not rise (beyond round-off),
and its local error, estimated against the second-order ETD2 step (the difference is
$c_2(h)\,(N_1 - N_0)/\tau$, $c_2 = \tau - \tau^2(1-e^{-h/\tau})/h$, from the same two
evaluations), is within the controller's tolerance. The energy is computed together
with the vector field (one ``jax.value_and_grad``), so a step costs one vector-field
evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from diffrax import AbstractTerm, LocalLinearInterpolation
from jaxtyping import Array

__all__ = ["ExponentialEuler", "EnergyGuard", "Monitored"]


class Monitored(eqx.Module):
    """The state an [`ham.ExponentialEuler`][] solve carries: the HAM states ``x`` and,
    for the current ``x``, its ``energy``, per-layer ``speed`` $\\|\\dot x_A\\|$ and
    ``distance``, an estimate of $\\|x_A - x^*_A\\|$ to the fixed point the steps
    converge to (the steady-state event and the energy trace read them, so none costs an
    extra vector-field evaluation).

    The distance is the classical stopping estimate of a contracting fixed-point
    iteration (e.g. Hairer & Wanner, *Solving ODEs II*, §IV.8): with $\\rho$ the observed
    contraction of the residual over the last step, $\\|x_n - x^*\\| \\le
    \\|x_{n+1}-x_n\\|/(1-\\rho)$, the next displacement being $\\phi_A(h)\\|\\dot x_A\\|$.
    A small residual alone is not enough: along a slow mode (rate $\\lambda \\ll
    1/\\tau$) the state is still $\\|\\dot x\\|/\\lambda$ away. It is infinite until a
    step has been taken and while the residual does not contract.
    """

    x: dict[str, Array]
    energy: Array
    speed: dict[str, Array]
    energy_scale: Array
    distance: dict[str, Array]


def _phi(h, tau, leak: bool):
    """tau (1 - e^{-h/tau}) for a leaky layer (h for tau = inf or no leak)."""
    if not leak:
        return h
    tau_safe = jnp.where(jnp.isinf(tau), 1.0, tau)
    return jnp.where(jnp.isinf(tau), h, -tau_safe * jnp.expm1(-h / tau_safe))


def _c2(h, tau, leak: bool):
    """Weight of the linear-in-time forcing over a step: tau - tau^2 (1 - e^{-h/tau}) / h."""
    if not leak:
        return 0.5 * h
    tau_safe = jnp.where(jnp.isinf(tau), 1.0, tau)
    z = h / tau_safe
    # tau * (z - 1 + e^{-z}) / z, with a series for small z (cancellation)
    big = tau_safe * (z + jnp.expm1(-z)) / jnp.where(z == 0, 1.0, z)
    small = tau_safe * (0.5 * z - z * z / 6.0)
    return jnp.where(jnp.isinf(tau), 0.5 * h, jnp.where(z < 1e-3, small, big))


def _is_clamped(layer) -> bool:
    """A layer with a concrete tau = inf never moves (traced taus are treated as free)."""
    try:
        return bool(jnp.all(jnp.isinf(jnp.asarray(layer.tau))))
    except jax.errors.ConcretizationTypeError:
        return False


def sweep_order(net) -> tuple[str, ...] | None:
    """Layers from slowest to fastest time constant, when the taus are concrete (the
    fastest layers, updated last, then sit at their equilibrium given the slow ones);
    ``None`` (the network's own order) when a tau is traced.

    Among equal taus, a layer joined by synapses to more other layers goes first (then
    the network's own order). On a layered net this is the red–black order of block
    Gauss–Seidel: the hidden layer, which sees all the others, first, then the layers
    that see only it (mutually independent given it), each set to its response to the
    updated hidden layer. Swept input-first instead, the input is first reset from a
    hidden layer that has not yet seen it: on the convolutional memory of
    ``experiments/bench_relax.py`` (pixels – features – memory, equal taus) the hidden-
    first order takes 4 steps instead of 5 (float32; 6 instead of 8 in float64) and
    6.9 evaluations a query instead of 9.1, to the same fixed point."""
    try:  # numpy, not jnp: no device computation per call for concrete taus
        taus = {k: float(np.max(np.asarray(layer.tau))) for k, layer in net.layers.items()}
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError, TypeError):
        return None
    neighbours = {k: set() for k in net.layers}
    for names in net.connections.values():
        for k in names:
            neighbours[k].update(n for n in names if n != k)
    return tuple(sorted(taus, key=lambda k: (-taus[k], -len(neighbours[k]))))


def _norm(x):
    return jnp.sqrt(jnp.sum(jnp.square(x)))


def evaluate(net, xs):
    """``(energy, dx/dt, per-layer speed, energy scale)`` of one unbatched state, in one pass."""
    energy, dEdg, scale = net._energy_and_dEdg(xs, with_scale=True)
    dx = {k: -dEdg[k] / layer.tau for k, layer in net.layers.items()}
    return energy, dx, {k: _norm(v) for k, v in dx.items()}, scale


def start_distance(speed) -> dict[str, Array]:
    """``Monitored.distance`` before any step: 0 for a layer at rest, else unknown (inf)."""
    return {k: jnp.where(v == 0, 0.0, jnp.inf).astype(v.dtype) for k, v in speed.items()}


def monitored(net, xs) -> Monitored:
    """The ``Monitored`` state of ``xs`` (one evaluation)."""
    energy, _, speed, scale = evaluate(net, xs)
    return Monitored(xs, energy, speed, scale, start_distance(speed))


def _distance(h, net, speed0, speed1, moving) -> dict[str, Array]:
    """Per-layer estimate of the distance to the fixed point after a step (``Monitored``)."""
    def ratio(s0, s1):  # residual contraction over the step; 0/0 = 0 (at rest), s/0 = inf
        return jnp.where(s0 > 0, s1 / jnp.where(s0 > 0, s0, 1.0), jnp.where(s1 > 0, jnp.inf, 0.0))

    ratios = [ratio(speed0[k], speed1[k]) for k in moving]
    rho = jnp.max(jnp.stack(ratios)) if ratios else jnp.zeros(())
    out = {}
    for k, layer in net.layers.items():
        disp = jnp.abs(_phi(h, layer.tau, layer.legendre)) * speed1[k]
        d = jnp.where(rho < 1, disp / jnp.where(rho < 1, 1 - rho, 1.0), jnp.inf)
        out[k] = jnp.where(speed1[k] == 0, 0.0, d).astype(speed1[k].dtype)
    return out


def monitored_vector_field(net, y: Monitored) -> Monitored:
    """dx/dt for the states, 0 for the monitors (they are recomputed, not integrated)."""
    _, dx, _, _ = evaluate(net, y.x)
    zero = jnp.zeros_like(y.energy)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, y.speed)
    return Monitored(dx, zero, zeros, zero, zeros)


class ExponentialEuler(diffrax.AbstractAdaptiveSolver):
    r"""Exponential Euler for HAM dynamics (the leak $-x_A/\tau_A$ integrated exactly),
    energy-safe, with an ETD2 error estimate for adaptive steps.

    $x_A \leftarrow x_A + \tau_A(1-e^{-h/\tau_A})\,\dot x_A$ (module docstring). Use it
    through [`ham.relax`][] (its default): the term's ``args`` must be the [`ham.HAM`][]
    and the state a [`ham.integrator.Monitored`][]. A step whose energy rises by more
    than ``energy_slack`` (relative, in units of the dtype's machine epsilon, with an
    absolute floor of the same size) reports an infinite error, so the step-size
    controller rejects it and shrinks the step: the energy never rises along the
    accepted steps.

    With ``error_estimate=False`` the step reports only that check (an infinite error
    where the energy rose, else zero), for [`ham.integrator.EnergyGuard`][]: what
    [`ham.relax`][] uses on a single-time-scale net, where its large step is the
    network's discrete update and the Lyapunov check is the only control it needs.
    """

    layer_order: tuple[str, ...] | None = eqx.field(static=True, default=None)
    energy_slack: float = eqx.field(static=True, default=16.0)
    error_estimate: bool = eqx.field(static=True, default=True)

    term_structure: ClassVar = AbstractTerm
    interpolation_cls: ClassVar[Callable[..., LocalLinearInterpolation]] = LocalLinearInterpolation

    def order(self, terms):
        """First order (diffrax solver interface)."""
        return 1

    def init(self, terms, t0, t1, y0, args):
        """The solver state: ``dx/dt`` at the initial state (diffrax solver interface)."""
        _, dx, _, _ = evaluate(args, y0.x)
        return dx

    def step(self, terms, t0, t1, y0: Monitored, args, solver_state, made_jump):
        """One exponential Euler step from ``t0`` to ``t1`` with its ETD2 error estimate
        (infinite when the energy rose), as diffrax's ``AbstractSolver.step``."""
        del made_jump
        net = args
        h = t1 - t0
        x = dict(y0.x)
        used = {}
        first = True
        names = list(self.layer_order) if self.layer_order is not None else list(net.layers)
        names += [k for k in net.layers if k not in names]
        for k in names:
            layer = net.layers[k]
            if _is_clamped(layer):
                continue
            # Gauss–Seidel: layer k sees the layers already updated in this step.
            used[k] = solver_state[k] if first else -net._dEdg_layer(x, k) / layer.tau
            first = False
            x[k] = x[k] + _phi(h, layer.tau, layer.legendre).astype(x[k].dtype) * used[k]
        e1, dx1, speed1, scale1 = evaluate(net, x)
        # ETD2 estimate of the local error: c2(h) (N_end - N_used) / tau, with N/tau =
        # dx/dt + x/tau for a leaky layer.
        err = {}
        for k, layer in net.layers.items():
            if not self.error_estimate:  # the energy check only: one number per layer
                err[k] = jnp.zeros((), x[k].dtype)
                continue
            if k not in used:
                err[k] = jnp.zeros_like(x[k])
                continue
            dforce = dx1[k] - used[k]
            if layer.legendre:
                dforce = dforce + jnp.where(jnp.isinf(layer.tau), 0.0, (x[k] - y0.x[k]) / layer.tau)
            err[k] = (_c2(h, layer.tau, layer.legendre) * dforce).astype(x[k].dtype)
        # the least precise of the states and the energy sets the round-off
        eps = max(float(jnp.finfo(d).eps) for d in {y0.energy.dtype, *(v.dtype for v in y0.x.values())})
        # round-off of E is relative to its terms, which may cancel to a much smaller E
        slack = self.energy_slack * eps * (1.0 + jnp.maximum(y0.energy_scale, scale1))
        rose = e1 > y0.energy + slack
        bad = rose | ~jnp.isfinite(e1)
        err = {k: jnp.where(bad, jnp.inf, v) for k, v in err.items()}
        y1 = Monitored(x, e1, speed1, scale1, _distance(h, net, y0.speed, speed1, list(used)))
        zero = jnp.zeros_like(e1)
        zeros = jax.tree_util.tree_map(jnp.zeros_like, speed1)
        y_error = Monitored(err, zero, zeros, zero, zeros)
        dense_info = dict(y0=y0, y1=y1)
        return y1, y_error, dense_info, dx1, diffrax.RESULTS.successful

    def func(self, terms, t0, y0: Monitored, args):
        """The vector field at ``y0`` (diffrax solver interface)."""
        return monitored_vector_field(args, y0)


class EnergyGuard(diffrax.AbstractStepSizeController):
    r"""Step-size control by the Lyapunov check alone, for
    ``ExponentialEuler(error_estimate=False)``: a step is kept iff the solver's error is
    finite (it is infinite exactly when the energy rose, or is not finite); a kept step
    lets the next one grow ``factormax`` times, up to ``dtmax``; a refused one is
    retried ``factormin`` times as large.

    Why: on a single-time-scale net (every moving layer with the same τ and a leak)
    with ``t1 = inf``, [`ham.relax`][] starts at ``dtmax`` ≫ τ, where the exponential
    step is the network's own synchronous discrete update (Gauss–Seidel over the
    layers); an error estimate of the trajectory only asks whether that update jumps
    further than the state's size, which the fixed point does not care about. Without it
    a step costs what the update costs plus the energy check (the ETD2 estimate, its NaN
    screen and its norm were three passes over the state a step; the Energy
    Transformer's loop body in ``bench_relax`` runs 69 XLA kernels a step instead of 75).
    A solver state kept across a refused step and ``max_steps`` counting attempted steps
    are diffrax's, as for any controller.
    """

    factormax: float = eqx.field(static=True, default=4.0)
    dtmax: float = eqx.field(static=True, default=math.inf)
    factormin: float = eqx.field(static=True, default=0.25)

    def __check_init__(self):
        if not self.factormax >= 1.0:
            raise ValueError(f"EnergyGuard: factormax must be >= 1, got {self.factormax!r}.")
        if not 0.0 < self.factormin < 1.0:
            raise ValueError(f"EnergyGuard: factormin must be in (0, 1), got {self.factormin!r}.")
        if not self.dtmax > 0.0:
            raise ValueError(f"EnergyGuard: dtmax must be > 0, got {self.dtmax!r}.")

    def wrap(self, direction):
        """Forward time only (diffrax interface): ``relax`` integrates from t0 = 0 up."""
        return self

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        """The first step ends at ``t0 + min(dt0, dtmax)``; no controller state."""
        if dt0 is None:
            raise ValueError("EnergyGuard: dt0 is required (ham.relax passes dtmax on a single-time-scale net).")
        return t0 + jnp.minimum(dt0, self.dtmax), None

    def adapt_step_size(self, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state):
        """Keep the step iff every error leaf is finite; grow or shrink the next one."""
        del y0, y1_candidate, args, error_order
        keep = jnp.all(jnp.stack([jnp.all(jnp.isfinite(e)) for e in jax.tree_util.tree_leaves(y_error)]))
        h = t1 - t0
        factor = jnp.where(keep, self.factormax, self.factormin).astype(jnp.result_type(h))
        next_t0 = jnp.where(keep, t1, t0)
        next_t1 = next_t0 + jnp.minimum(h * factor, self.dtmax)
        return keep, next_t0, next_t1, False, controller_state, diffrax.RESULTS.successful
