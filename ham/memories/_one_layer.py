r"""Memories whose energy is a function $E(x)$ of one state, as a one-layer HAM.

An energy such as the log-sum-ReLU $-\beta^{-1}\log(\varepsilon + \sum_\mu
\mathrm{ReLU}(\cdot))$ is concave in the kernel sum, so it has no convex-Lagrangian
hidden layer to integrate out. It is written as the core's one-layer network: a layer
with the identity Lagrangian $L(x) = \tfrac12\|x\|^2$ (so $g = x$) and one synapse with
energy $E_S(g) = E(g)$. The layer is built with ``legendre=False``: its Legendre term
$\tfrac12\|x\|^2$ and its leak are left out, so the total energy is $E(x)$ and the dynamics
$\tau\dot x = -\partial E_S/\partial g = -\nabla E(x)$ are gradient descent on $E$
($dE/dt = -\tau\|\dot x\|^2 \le 0$). It is the same system as the identity layer *with* its
Legendre term plus a synapse $E(g) - \tfrac12\|g\|^2$ (same energy, same flow) without two
terms of size $\tfrac12\|x\|^2$ that cancel: in float32 their round-off grows with
$\|x\|^2$, and [`ham.ExponentialEuler`][]'s energy check (whose slack scales with the
terms' magnitudes) accepted, in that form, a step from near a support's edge far onto the
Epanechnikov plateau, a rise of the energy. ``retrieve`` relaxes the flow with
[`ham.relax`][] to the local minimum the query reaches.

This module holds that shared shape (the synapse, the network, ``relax``, ``retrieve``,
``energy``) and the exact L2 log-sum-exp memory
$E(x) = -\beta^{-1}\log\sum_\mu e^{-\frac\beta2\|x-\xi_\mu\|^2}$ that both the random-
feature memory (its approximation) and the Epanechnikov memory (its comparison) refer to.
"""

from __future__ import annotations

import abc
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Scalar

from .. import _checks as checks
from .. import lagrangians
from ..layer import Layer
from ..network import HAM
from .._stream import memory_relax
from ..solve import Solution, relax, with_default_solver
from ..synapses import Synapse
from ..synapses._base import shape_error
from ._common import (
    StoredPatterns, as_active, as_patterns, as_queries, check_positive, check_stored_patterns, over_states, per_state,
)

__all__ = ["EnergySynapse", "OneLayerMemory", "LogSumExpMemory", "log_sum_exp", "squared_distances"]


def squared_distances(patterns: Float[Array, "K D"], x: Float[Array, " D"]) -> Float[Array, " K"]:
    r"""$\|x - \xi_\mu\|^2$ for every row, as $\|x\|^2 - 2\xi_\mu\cdot x + \|\xi_\mu\|^2$
    clamped at 0 (no ``(K, D)`` difference array). Its gradient in $x$ is
    $2x - 2\xi_\mu$, exactly 0 at $x = \xi_\mu$."""
    acc = jnp.promote_types(patterns.dtype, jnp.float32)
    xa = x.astype(acc)
    dots = jnp.matmul(patterns, x.astype(patterns.dtype), preferred_element_type=acc)
    norms = jnp.sum(jnp.square(patterns.astype(acc)), axis=-1)
    return jnp.maximum(jnp.vdot(xa, xa) - 2.0 * dots + norms, 0.0)


class EnergySynapse(Synapse):
    r"""The synapse of a one-layer memory: $E_S(g) = E(g)$, the ``memory``'s energy of one
    state. Joined to an identity-Lagrangian layer without its Legendre term
    (``legendre=False``), the total energy is $E$ and the dynamics are
    $\tau\dot x = -\nabla E(x)$."""

    memory: "OneLayerMemory"

    def energy(self, g: Float[Array, " dim"]) -> Scalar:
        """$E(g)$."""
        return self.memory.energy_of(g)

    def check_shapes(self, name, shapes):
        """One joined layer of shape ``(dim,)``."""
        shapes = tuple(tuple(s) for s in shapes)
        if len(shapes) != 1 or shapes[0] != (self.memory.dim,):
            raise shape_error(name, "EnergySynapse", f"joins one layer of shape ({self.memory.dim},)", shapes)


class OneLayerMemory(eqx.Module):
    r"""A memory with an energy $E(x)$ of one state, relaxed by $\tau\dot x = -\nabla E(x)$
    (the one-layer HAM of this module's docstring). Subclasses define ``energy_of`` (one
    unbatched state), ``dim``, ``dtype`` and ``_name``.

    ``relax`` caps the step of [`ham.ExponentialEuler`][] (explicit, energy-checked steps
    $x \leftarrow x - h\nabla E(x)$ for a layer without leak) at ``dtmax`` =
    ``_default_dtmax`` (unless given): a step $h$ oscillates around a minimum (period 2, at
    nearly constant energy, which the energy check cannot reject) where the curvature of $E$
    exceeds $2/h$. With $h \le 1/2$ all of 400 relaxations from random starts inside
    Epanechnikov supports converged in <= 27 steps; uncapped, 29 % did not.
    """

    _default_dtmax: ClassVar[float | None] = 0.5

    @property
    @abc.abstractmethod
    def dim(self) -> int:
        """The state dimension."""

    @property
    @abc.abstractmethod
    def dtype(self):
        """The floating dtype of states."""

    @property
    @abc.abstractmethod
    def _name(self) -> str: ...

    @abc.abstractmethod
    def energy_of(self, x: Float[Array, " dim"]) -> Scalar:
        """$E(x)$ of one unbatched state (no checks: the hot path)."""

    def energy(self, state: Float[Array, "*batch dim"]) -> Float[Array, "*batch"]:
        """$E(x)$ of a state or a batch of states (checked: finite, right shape)."""
        return per_state(self._name, self.energy_of, state, self.dim)

    def gradient(self, state: Float[Array, "*batch dim"]) -> Float[Array, "*batch dim"]:
        r"""$\nabla E(x)$ by autodiff (per state); $-\nabla E/\tau$ is the dynamics."""
        s = jnp.asarray(state)
        if s.ndim < 1 or s.shape[-1] != self.dim:
            raise ValueError(f"{self._name}: state must have shape (..., {self.dim}), got {tuple(s.shape)}.")
        return over_states(self.energy_of, s, grad=True)

    def make_network(self, tau: float = 1.0) -> HAM:
        """The one-layer HAM: layer ``"x"`` (identity Lagrangian, ``legendre=False``, time
        constant ``tau``) and synapse ``"memory"`` ([`EnergySynapse`][ham.memories.EnergySynapse])."""
        tau = check_positive(f"{self._name}.make_network", "tau", tau)
        layer = Layer(lagrangians.identity, shape=(self.dim,), tau=jnp.asarray(tau, self.dtype), check_convexity=False,
                      legendre=False)
        return HAM(layers={"x": layer}, synapses={"memory": EnergySynapse(self)}, connections={"memory": ("x",)})

    @property
    def network(self) -> HAM:
        """The [`ham.HAM`][] of ``make_network()``."""
        return self.make_network()

    def init_states(self, queries) -> dict[str, Array]:
        """HAM states ``{"x": queries}`` (checked: shape ``(dim,)`` or ``(batch, dim)``, finite)."""
        q, single = as_queries(self._name, queries, self.dim, self.dtype)
        return {"x": q[0] if single else q}

    def relax(self, queries, **relax_kwargs) -> Solution:
        """Relax $\\tau\\dot x = -\\nabla E(x)$ from ``queries`` with [`ham.relax`][]
        (jit-compiled; keyword arguments go to it; a batch of 256 or more queries is
        streamed, ``window="auto"``, unless ``window`` is given); ``solution.states["x"]`` is the
        local minimum reached, and ``solution.energies`` the energy trace."""
        net = self.make_network()
        if self._default_dtmax is not None and relax_kwargs.get("solver") is None:
            relax_kwargs = {"dtmax": self._default_dtmax, **relax_kwargs}
        return memory_relax(net, self.init_states(queries), with_default_solver(net, relax_kwargs, ("x",)), _relax_jit)

    def retrieve(self, queries: Float[Array, "*batch dim"], **relax_kwargs) -> Float[Array, "*batch dim"]:
        """The local minimum each query relaxes to (``relax(queries).states["x"]``), the
        same shape as ``queries``: ``(dim,)`` or ``(batch, dim)``."""
        return self.relax(queries, **{"trace": False, **relax_kwargs}).states["x"]  # no trace buffers


@eqx.filter_jit
def _relax_jit(net, xs0, kwargs):
    return relax(net, xs0, **kwargs)


class PatternOneLayerMemory(StoredPatterns, OneLayerMemory):
    """A one-layer memory storing the rows of ``patterns`` (``active`` masks padding rows
    out): the checks and properties the log-sum-exp and Epanechnikov memories share."""

    active: eqx.AbstractVar[Bool[Array, " num_patterns"] | None]

    def __check_init__(self):
        check_stored_patterns(self._name, self.patterns, self.active)

    @property
    def dtype(self):
        """The floating dtype of states (the stored arrays\')."""
        return self.patterns.dtype


class LogSumExpMemory(PatternOneLayerMemory):
    r"""The exact L2 log-sum-exp Dense Associative Memory
    $E(x) = -\beta^{-1}\log\sum_\mu \exp(-\tfrac\beta2\|x - \xi_\mu\|^2)$.

    It is the modern Hopfield energy (Ramsauer et al. 2020) with a hidden bias
    $-\tfrac12\|\xi_\mu\|^2$: $E = \tfrac12\|x\|^2 - \beta^{-1}\log\sum_\mu
    e^{\beta(\xi_\mu\cdot x - \|\xi_\mu\|^2/2)}$, so for patterns of equal norm it has
    [`modern`][ham.memories.modern]'s fixed points. It is the energy that
    [`random_features`][ham.memories.random_features] approximates (Hoover et al. 2024)
    and the log-sum-exp that [`epanechnikov`][ham.memories.epanechnikov] is compared with
    (Hoover et al. 2025). ``active`` masks padding rows out.
    """

    _default_dtmax: ClassVar[float | None] = 1.0  # curvature I - beta Cov <= I; h = 1 is the attention update

    patterns: Float[Array, "num_patterns dim"]
    beta: float | Array = eqx.field(default=1.0, converter=checks.positive_converter("log_sum_exp", "beta"))
    active: Bool[Array, " num_patterns"] | None = None

    @property
    def _name(self) -> str:
        return "log_sum_exp"

    def energy_of(self, x):
        """$E(x)$ of one unbatched state (the formula of the class docstring; no checks)."""
        a = -0.5 * jnp.asarray(self.beta, x.dtype) * squared_distances(self.patterns, x)
        if self.active is not None:
            a = jnp.where(self.active, a, -jnp.inf)
        return (-jax.nn.logsumexp(a) / self.beta).astype(x.dtype)

    def kernel_sum(self, state: Float[Array, "*batch dim"]) -> Float[Array, "*batch"]:
        r"""$\sum_\mu e^{-\frac\beta2\|x-\xi_\mu\|^2}$ (what random features estimate)."""
        return jnp.exp(-self.beta * self.energy(state))


def log_sum_exp(
    patterns: Float[Array, "num_patterns dim"], beta: float = 1.0, *, active: Bool[Array, " num_patterns"] | None = None,
) -> LogSumExpMemory:
    r"""The exact L2 log-sum-exp memory $E(x) = -\beta^{-1}\log\sum_\mu
    e^{-\frac\beta2\|x-\xi_\mu\|^2}$ storing the rows of ``patterns`` (see
    [`LogSumExpMemory`][ham.memories.LogSumExpMemory])."""
    p = as_patterns("log_sum_exp", patterns)
    return LogSumExpMemory(patterns=p, beta=beta, active=as_active("log_sum_exp", active))
