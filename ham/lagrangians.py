r"""Lagrangians of neuron layers (Krotov & Hopfield 2021, "Large associative memory
problem in neurobiology and machine learning"; Hoover et al. 2023, "Energy
Transformer").

Each Lagrangian is a pure convex function ``L(x) -> scalar`` of one (unbatched)
layer state. The layer's activation is ``g = ∂L/∂x`` and is always obtained by
``jax.grad`` — the closed forms quoted in the docstrings below are what the tests
check the autodiff result against, never code paths of the library.

Lagrangians that act "per vector" (softmax, layernorm, spherical) treat the last axis
as the vector and sum over all leading axes, so a layer of shape ``(tokens, dim)`` is a
set of independent tokens.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from . import _checks
from jaxtyping import Array, ArrayLike, Float, Scalar

__all__ = [
    "identity",
    "relu",
    "sigmoid",
    "tanh",
    "softmax",
    "layernorm",
    "spherical",
    "rectified_polynomial",
    "exponential",
    "check_convex",
]


def _check_positive(
    name: str, value, what: str = "beta", low: float = 0.0, inclusive: bool = False, scalar: bool = True
) -> None:
    # Concrete values (numbers and arrays) are checked eagerly; traced ones pass through
    # here (a Lagrangian runs inside every vector-field evaluation): the models and
    # layers that hold a traced parameter check it with eqx.error_if where they store it.
    # Shapes are static and always checked.
    if scalar and getattr(value, "shape", ()) != ():
        raise ValueError(f"{name}: {what} must be a scalar, got an array of shape {tuple(value.shape)}.")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if (value >= low if inclusive else value > low) and math.isfinite(value):
            return
    elif isinstance(value, jax.core.Tracer):
        return
    _checks.param(name, what, value, low=low, inclusive=inclusive, shapes=None)


def _check_broadcast(name: str, x, **params) -> None:
    """Array parameters must broadcast against the state (shapes are static, so this
    also runs under ``jit``)."""
    for what, value in params.items():
        shape = getattr(value, "shape", ())
        if shape:
            try:
                np.broadcast_shapes(tuple(shape), tuple(jnp.shape(x)))
            except ValueError:
                raise ValueError(
                    f"{name}: {what} of shape {tuple(shape)} does not broadcast against the state of shape "
                    f"{tuple(jnp.shape(x))}."
                ) from None


def identity(x: Float[Array, "..."]) -> Scalar:
    r"""$L = \tfrac12\|x\|^2$, activation $g = x$ (linear neurons)."""
    return 0.5 * jnp.sum(x * x)


def relu(x: Float[Array, "..."]) -> Scalar:
    r"""$L = \tfrac12\|\max(x, 0)\|^2$, activation $g = \max(x, 0)$."""
    r = jnp.maximum(x, 0)
    return 0.5 * jnp.sum(r * r)


def sigmoid(x: Float[Array, "..."], beta: float | ArrayLike = 1.0) -> Scalar:
    r"""$L = \beta^{-1}\sum_i \log(1 + e^{\beta x_i})$, activation $g = \sigma(\beta x)$.

    Written with ``softplus``, finite for any $|\beta x|$.
    """
    _check_positive("sigmoid", beta)
    return jnp.sum(jax.nn.softplus(beta * x)) / beta


def _log_cosh(z):
    # log cosh z = |z| + log(1 + e^{-2|z|}) - log 2, no overflow for large |z|.
    a = jnp.abs(z)
    return a + jax.nn.softplus(-2.0 * a) - math.log(2.0)


def tanh(x: Float[Array, "..."], beta: float | ArrayLike = 1.0) -> Scalar:
    r"""$L = \beta^{-1}\sum_i \log\cosh(\beta x_i)$, activation $g = \tanh(\beta x)$
    (the continuous classical Hopfield neuron, Hopfield 1984)."""
    _check_positive("tanh", beta)
    return jnp.sum(_log_cosh(beta * x)) / beta


def softmax(x: Float[Array, "... n"], beta: float | ArrayLike = 1.0) -> Scalar:
    r"""$L = \beta^{-1}\log\sum_i e^{\beta x_i}$ over the last axis, activation
    $g = \mathrm{softmax}(\beta x)$ (Ramsauer et al. 2020; Krotov & Hopfield 2021).

    ``logsumexp`` subtracts the maximum, so large $\beta x$ cannot overflow.
    """
    _check_positive("softmax", beta)
    return jnp.sum(jax.nn.logsumexp(beta * x, axis=-1)) / beta


def layernorm(
    x: Float[Array, "... d"],
    gamma: float | ArrayLike = 1.0,
    delta: float | ArrayLike = 0.0,
    eps: float = 1e-5,
) -> Scalar:
    r"""Energy Transformer layer norm (Hoover et al. 2023, eq. 2):

    $L = D\gamma\sqrt{\tfrac1D\sum_i (x_i - \bar x)^2 + \epsilon} + \sum_i \delta_i x_i$,

    activation $g = \gamma (x - \bar x)/\sqrt{\mathrm{var}(x) + \epsilon} + \delta$.
    Convex for $\gamma \ge 0$; ``gamma`` is a scalar, ``delta`` a scalar or a per-feature
    vector of length $D$ (the last axis).
    """
    _check_positive("layernorm", gamma, "gamma", inclusive=True)
    _check_positive("layernorm", eps, "eps")
    _check_broadcast("layernorm", x, gamma=gamma, delta=delta)
    d = x.shape[-1]
    xc = x - jnp.mean(x, axis=-1, keepdims=True)
    sd = jnp.sqrt(jnp.mean(xc * xc, axis=-1) + eps)
    return jnp.sum(d * gamma * sd) + jnp.sum(delta * x)


def spherical(x: Float[Array, "... d"], eps: float = 0.0) -> Scalar:
    r"""$L = \|x\|$ over the last axis (summed over leading axes), activation
    $g = x/\|x\|$: neurons on the unit sphere (Krotov & Hopfield 2021, §3).

    ``eps`` > 0 smooths the origin: $L = \sqrt{\|x\|^2 + \epsilon}$. At ``eps=0`` the
    gradient at exactly $x = 0$ is taken as 0 rather than NaN.
    """
    sq = jnp.sum(x * x, axis=-1) + eps
    safe = jnp.where(sq > 0, sq, 1.0)
    return jnp.sum(jnp.where(sq > 0, jnp.sqrt(safe), 0.0))


def rectified_polynomial(x: Float[Array, "..."], n: float = 2) -> Scalar:
    r"""$L = \sum_i \max(x_i, 0)^n / n$, activation $g = \max(x, 0)^{n-1}$: the
    rectified polynomial interaction of Dense Associative Memory (Krotov & Hopfield
    2016). Convex for $n \ge 1$."""
    _check_positive("rectified_polynomial", n, "n", low=1.0, inclusive=True)
    r = jnp.maximum(x, 0)
    # r**n has an infinite/NaN derivative at 0 for n < 2 unless guarded.
    safe = jnp.where(r > 0, r, 1.0)
    return jnp.sum(jnp.where(r > 0, safe**n, 0.0)) / n


def exponential(
    x: Float[Array, "..."], beta: float | ArrayLike = 1.0, max_exponent: float = 60.0
) -> Scalar:
    r"""$L = \beta^{-1}\sum_i e^{\beta x_i}$, activation $g = e^{\beta x}$ (the
    exponential interaction of Demircigil et al. 2017).

    To stay finite, for $z = \beta x > z_{max}$ (``max_exponent``, default 60, so that
    even the value stays finite in float32 for $z$ up to ~$10^{12}$) the exponential is continued by its tangent line
    $e^{z_{max}}(1 + z - z_{max})$: still convex and $C^1$, and $g$ saturates at
    $e^{z_{max}}$ instead of overflowing to ``inf``.
    """
    _check_positive("exponential", beta)
    z = beta * x
    zc = jnp.where(z > max_exponent, max_exponent, z)
    e = jnp.exp(zc)
    return jnp.sum(jnp.where(z > max_exponent, e * (1.0 + z - max_exponent), e)) / beta


@functools.lru_cache(maxsize=256)
def _compiled_probe(lagrangian):
    """``(xs, vs) -> (v^T H(x) v, L(x))`` for a batch of points ``x`` and directions ``v``,
    jit-compiled (one program per Lagrangian and shape)."""

    def curvature(x, v):
        _, hv = jax.jvp(jax.grad(lagrangian), (x,), (v,))
        return jnp.vdot(v, hv), lagrangian(x)

    return jax.jit(jax.vmap(curvature))


def check_convex(
    lagrangian, shape: tuple[int, ...], *, key=None, num_probes: int = 4, scale: float = 3.0,
    name: str = "layer",
) -> None:
    r"""Probe a Lagrangian for convexity: the second directional derivative
    $v^\top \nabla^2 L(x)\, v$ must be $\ge 0$ at random points $x$ along random
    directions $v$. Also checks that $L$ is a finite scalar.

    Raises ``ValueError`` naming the layer when a probe finds negative curvature.
    This is a necessary check, not a proof: it catches a wrong choice such as
    ``lambda x: -identity(x)``.
    """
    out = jax.eval_shape(lagrangian, jax.ShapeDtypeStruct(tuple(shape), jnp.result_type(float)))
    if out.shape != ():
        raise ValueError(
            f"{name}: the Lagrangian must return a scalar, got shape {out.shape} "
            f"for a state of shape {shape}."
        )
    # The probe points come from NumPy seeded by the key, and the probe is one compiled program
    # per Lagrangian and shape: drawn with jax.random and run op by op, the check took 1-3 s for
    # every new layer shape (the random draws and each operation compiled for that shape).
    seed = np.zeros(2, np.uint32) if key is None else jax.random.key_data(key)  # key None: PRNGKey(0)'s data
    if isinstance(seed, jax.core.Tracer):  # a traced key: nothing concrete to check
        return
    rng = np.random.default_rng(np.asarray(seed).ravel())
    dtype = jnp.result_type(float)
    xs = jnp.asarray(scale * rng.standard_normal((num_probes, *shape)), dtype)
    vs = jnp.asarray(rng.standard_normal((num_probes, *shape)), dtype)
    try:
        probe = _compiled_probe(lagrangian)
    except TypeError:  # an unhashable Lagrangian (e.g. a module holding arrays): compiled for this call only
        probe = _compiled_probe.__wrapped__(lagrangian)
    curv, vals = probe(xs, vs)
    if isinstance(curv, jax.core.Tracer):
        return
    if not bool(jnp.all(jnp.isfinite(vals))):
        raise ValueError(f"{name}: the Lagrangian is not finite at random states of shape {shape}.")
    tol = 1e-4 * (1.0 + float(jnp.max(jnp.abs(curv))))
    worst = float(jnp.min(curv))
    if worst < -tol:
        raise ValueError(
            f"{name}: the Lagrangian is not convex: found v^T H v = {worst:.3g} < 0 "
            f"at a random state of shape {shape}. Energies are only Lyapunov functions "
            "for convex Lagrangians (positive semidefinite Hessian)."
        )
