"""A layer of neurons: a state shape, a convex Lagrangian and a time constant."""

from __future__ import annotations

import numbers
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Scalar

from . import _checks as checks
from .lagrangians import check_convex

__all__ = ["Layer"]


def _shape(shape) -> tuple[int, ...]:
    if isinstance(shape, (str, bytes)) or not hasattr(shape, "__iter__"):
        raise TypeError(f"Layer: shape must be a tuple of positive ints, got {shape!r}.")
    dims = tuple(shape)
    for d in dims:
        if isinstance(d, (bool, np.bool_)) or not isinstance(d, numbers.Integral):
            raise TypeError(f"Layer: shape must be a tuple of positive ints, got {shape!r}.")
    return tuple(int(d) for d in dims)


def _tau(tau):
    # eager check for concrete values (numbers and arrays), eqx.error_if for traced ones
    return checks.param("Layer", "tau", tau, allow_inf=True, shapes=None)


class Layer(eqx.Module):
    r"""A layer $A$ of neurons with internal state $x_A$ of shape ``shape``.

    - activation $g_A = \partial L_A/\partial x_A$ (``jax.grad`` of the Lagrangian);
    - energy (Legendre transform) $E_A = x_A\cdot g_A - L_A(x_A)$;
    - time constant $\tau_A$ of the dynamics $\tau_A \dot x_A = -\partial E/\partial g_A$.
      ``tau=jnp.inf`` freezes (clamps) the layer.

    ``legendre=False`` leaves the layer's Legendre term out of the network energy, so
    its dynamics are $\tau_A \dot x_A = -\partial E_{syn}/\partial g_A$ with no leak
    $-x_A$: the Energy Transformer's formulation (Hoover et al. 2023, whose energy is
    attention + Hopfield only). The Lyapunov argument is unchanged
    ($dE/dt = -\tau_A \dot x_A^\top \nabla^2 L_A \dot x_A \le 0$), but the energy is only
    bounded below when the activations are bounded (layer norm, softmax, sigmoid, …).

    ``lagrangian`` is any convex ``x -> scalar`` (see [`ham.lagrangians`][]); bind
    parameters with ``functools.partial`` or pass an ``eqx.Module`` (learnable ones,
    such as the Energy Transformer's layer-norm γ, δ). On construction the Lagrangian is
    probed for convexity unless ``check_convexity=False``.
    """

    lagrangian: Callable[[Array], Scalar]
    shape: tuple[int, ...] = eqx.field(static=True, converter=_shape)
    tau: float | Array = eqx.field(default=1.0, converter=_tau)
    check_convexity: bool = eqx.field(static=True, default=True, repr=False)
    legendre: bool = eqx.field(static=True, default=True)

    def __check_init__(self):
        if any(d < 1 for d in self.shape):
            raise ValueError(f"Layer: shape must have positive dimensions, got {self.shape}.")
        tau_shape = tuple(jnp.shape(self.tau))
        if len(tau_shape) > len(self.shape) or any(
            t not in (1, d) for t, d in zip(tau_shape[::-1], self.shape[::-1])
        ):
            raise ValueError(
                f"Layer: tau must be a scalar or broadcast to the layer shape {self.shape}, "
                f"got an array of shape {tau_shape}."
            )
        if not callable(self.lagrangian):
            raise TypeError(f"Layer: lagrangian must be callable, got {type(self.lagrangian)}.")
        if self.check_convexity:
            name = getattr(self.lagrangian, "__name__", None) or type(self.lagrangian).__name__
            check_convex(self.lagrangian, self.shape, name=f"Layer({name}, shape={self.shape})")

    def activation(self, x: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
        r"""$g = \partial L/\partial x$ for one unbatched state."""
        return jax.grad(self.lagrangian)(x)

    def energy(self, x: Float[Array, "*shape"], g: Float[Array, "*shape"] | None = None) -> Scalar:
        r"""Legendre energy $E = x\cdot g - L(x)$ for one unbatched state."""
        if g is None:
            g = self.activation(x)
        return jnp.vdot(x, g) - self.lagrangian(x)
