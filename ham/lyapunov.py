r"""Lyapunov verification: the energy must never rise along the dynamics.

For $\tau_A\dot x_A = -\partial E/\partial g_A$ (Krotov & Hopfield 2021, eq. 6),
$dE/dt = -\sum_A \tau_A\,\dot x_A^\top\,\nabla^2 L_A(x_A)\,\dot x_A \le 0$ whenever
every Lagrangian is convex.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

__all__ = ["LyapunovError", "check", "max_rise", "energy_rate"]


class LyapunovError(AssertionError):
    """The energy rose along a trajectory by more than the tolerance."""


def max_rise(sol, rtol: float = 1e-5, atol: float = 1e-6) -> np.ndarray:
    """Largest rise ``E[k+1] - E[k]`` along each trajectory, relative to the
    tolerance scale ``atol + rtol * max|E|`` (so a value > 1 means a violation)."""
    e = np.asarray(sol.energies, dtype=np.float64)
    m = np.asarray(sol.mask)
    diffs = np.where(m[..., 1:], np.diff(e, axis=-1), -np.inf)
    scale = atol + rtol * np.max(np.where(m, np.abs(e), 0.0), axis=-1)
    return np.max(diffs, axis=-1, initial=-np.inf) / scale


def check(sol, rtol: float = 1e-5, atol: float = 1e-6):
    """Raise [`LyapunovError`][] if any energy trace of ``sol`` rises by more than
    ``atol + rtol * max|E|`` between consecutive accepted steps; returns ``sol``.

    The tolerance covers floating-point round-off of the energy itself (in float32 an
    energy of magnitude 100 is only known to ~1e-5)."""
    e = np.asarray(sol.energies, dtype=np.float64)
    m = np.asarray(sol.mask)
    if not np.all(np.isfinite(np.where(m, e, 0.0))):
        raise LyapunovError("energy trace contains non-finite values (NaN/inf).")
    diffs = np.where(m[..., 1:], np.diff(e, axis=-1), -np.inf)
    scale = atol + rtol * np.max(np.where(m, np.abs(e), 0.0), axis=-1, keepdims=True)
    bad = diffs > scale
    if np.any(bad):
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        *b, k = where
        t = np.asarray(sol.times)[tuple(b)][k + 1]
        raise LyapunovError(
            f"energy rose along the trajectory{' of batch element ' + str(tuple(b)) if b else ''}: "
            f"step {k} -> {k + 1} (t={t:.4g}) went from {e[where]:.8g} to {e[tuple(b) + (k + 1,)]:.8g} "
            f"(+{diffs[where]:.3g} > tolerance {float(scale[tuple(b)][0]):.3g})."
        )
    return sol


def energy_rate(net, xs) -> Float[Array, "*batch"]:
    r"""$dE/dt = \sum_A \frac{\partial E}{\partial x_A}\cdot\dot x_A
    = -\sum_A \tau_A\,\dot x_A^\top \nabla^2 L_A(x_A)\,\dot x_A$ from the formula
    (Hessian–vector products by autodiff), one value per batch element. Written as
    $\sum_A (\nabla^2 L_A\, \partial E/\partial g_A)\cdot\dot x_A$ so that clamped
    layers ($\tau = \infty$, $\dot x = 0$) contribute exactly 0."""

    def one(x):
        d = net._dEdg(x)
        total = 0.0
        for k, layer in net.layers.items():
            dx = -d[k] / layer.tau
            _, hd = jax.jvp(jax.grad(layer.lagrangian), (x[k],), (d[k],))
            total = total + jnp.vdot(hd, dx)
        return total

    return net._vmap(one, dict(xs))
