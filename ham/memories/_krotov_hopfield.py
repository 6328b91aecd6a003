r"""Krotov & Hopfield 2021, "Large associative memory problem in neurobiology and
machine learning": visible neurons $v$ ($N$) and hidden (memory) neurons $h$ ($K$),
two-body synapses $\xi$ only.

Energy (their eq. 2, here a [`ham.HAM`][] with two layers and one ``Dense``)

$E = [v\cdot g_v - L_v(v)] + [h\cdot g_h - L_h(h)] - g_h^\top\,\xi\, g_v$,

dynamics $\tau_v\dot v = -v + \xi^\top g_h$, $\tau_h\dot h = -h + \xi g_v$.
With fast hidden neurons ($\tau_h\to0$: $h = \xi g_v$) the hidden neurons integrate
out and the effective energy of the visible neurons is

$E(v) = [v\cdot g_v - L_v(v)] - L_h(\xi\,g_v(v))$,

with fixed points $v = \xi^\top g_h(\xi g_v(v))$. The paper's three limits:

- **model A** $L_h = \sum_\mu F(h_\mu)$: $E = \text{const} - \sum_\mu F(\xi_\mu\cdot
  g_v)$, Dense Associative Memory (Krotov & Hopfield 2016) for binary $g_v$. The
  paper's visible neurons are linear; here they are $\tanh(\beta_v v)$ (bounded, so
  the energy is bounded below for $n > 2$, and binary in the high-gain limit).
- **model B** $L_v = \tfrac12\|v\|^2$, $L_h = \beta^{-1}\log\sum e^{\beta h}$: the
  modern Hopfield network / attention (Ramsauer et al. 2020).
- **model C** $L_v = \|v\|$ (spherical, $g_v = v/\|v\|$), $L_h = \sum_\mu
  \max(h_\mu,0)^n/n$: $E = -\tfrac1n\sum_\mu \max(\xi_\mu\cdot v/\|v\|, 0)^n$.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Scalar

from .. import lagrangians
from ..layer import Layer
from ..network import HAM
from .._stream import memory_relax
from ..solve import Solution, relax, with_default_solver
from ..synapses import Dense
from .. import _checks as checks
from ._common import StoredPatterns, as_patterns, as_queries, check_positive, per_state

__all__ = ["LargeAssociativeMemory", "krotov_hopfield_2021"]

_MODELS = ("A", "B", "C")
_INTERACTIONS = ("polynomial", "exponential")


def power_interaction(h, n: int = 3, rectified: bool = True):
    r"""$L_h = \sum_\mu F(h_\mu)$, $F(z) = \max(z,0)^n$ (or $z^n$, even n)."""
    z = jnp.maximum(h, 0.0) if rectified else h
    return jnp.sum(z**n)


def exponential_interaction(h, beta=1.0):
    r"""$L_h = \sum_\mu e^{\beta h_\mu}$ (``beta`` × [`ham.lagrangians.exponential`][])."""
    return beta * lagrangians.exponential(h, beta=beta)


class LargeAssociativeMemory(StoredPatterns):
    r"""The visible + hidden model of Krotov & Hopfield 2021 (see the module docs).

    ``network`` is the HAM; ``relax`` runs it to a fixed point; ``retrieve`` returns the
    visible activations $g_v$ there; ``effective_energy`` and ``update`` are the
    fast-hidden-neuron reductions $E(v)$ and $v\mapsto\xi^\top g_h(\xi g_v(v))$.
    """

    patterns: Float[Array, "num_patterns dim"]
    visible_lagrangian: Callable
    hidden_lagrangian: Callable
    visible_tau: float = eqx.field(static=True, default=1.0)
    hidden_tau: float = eqx.field(static=True, default=0.1)
    model: str | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        check_positive("krotov_hopfield_2021", "visible_tau", self.visible_tau)
        check_positive("krotov_hopfield_2021", "hidden_tau", self.hidden_tau)

    def make_network(self, hidden_tau: float | None = None, check_convexity: bool = False) -> HAM:
        """The two-layer [`ham.HAM`][]: visible ``"v"`` and hidden ``"h"`` layers with their
        Lagrangians, joined by ``Dense(patterns.T)``; ``hidden_tau`` defaults to the model's."""
        hidden_tau = self.hidden_tau if hidden_tau is None else hidden_tau
        hidden_tau = check_positive("krotov_hopfield_2021.make_network", "hidden_tau", hidden_tau)
        return HAM(
            layers={
                "v": Layer(self.visible_lagrangian, shape=(self.dim,), tau=jnp.asarray(self.visible_tau, self.patterns.dtype),
                           check_convexity=check_convexity),
                "h": Layer(self.hidden_lagrangian, shape=(self.num_patterns,),
                           tau=jnp.asarray(hidden_tau, self.patterns.dtype),
                           check_convexity=check_convexity),
            },
            synapses={"xi": Dense(self.patterns.T)},
            connections={"xi": ("v", "h")},
        )

    @property
    def network(self) -> HAM:
        """The [`ham.HAM`][] of ``make_network()`` with its default arguments."""
        return self.make_network()

    # ---------------------------------------------------------------- fast-hidden reduction
    def _gv(self, v):
        return jax.grad(self.visible_lagrangian)(v)

    def _effective_energy_one(self, v) -> Scalar:
        g = self._gv(v)
        return jnp.vdot(v, g) - self.visible_lagrangian(v) - self.hidden_lagrangian(self.patterns @ g)

    def effective_energy(self, v: Float[Array, "*batch dim"]) -> Float[Array, "*batch"]:
        r"""$E(v) = v\cdot g_v - L_v(v) - L_h(\xi g_v(v))$ (hidden neurons integrated out)."""
        return per_state("krotov_hopfield_2021", self._effective_energy_one, v, self.dim)

    def _update_one(self, v):
        h = self.patterns @ self._gv(v)
        return self.patterns.T @ jax.grad(self.hidden_lagrangian)(h)

    def update(self, v: Float[Array, "*batch dim"]) -> Float[Array, "*batch dim"]:
        r"""$v \mapsto \xi^\top g_h(\xi\,g_v(v))$; its fixed points are the network's."""
        v = checks.real_array("krotov_hopfield_2021.update", "v", v)
        if v.ndim < 1 or v.shape[-1] != self.dim:
            raise ValueError(f"krotov_hopfield_2021.update: v must have shape (..., {self.dim}), got {tuple(v.shape)}.")
        v = checks.finite("krotov_hopfield_2021.update", "v", v, runtime=True)
        f = self._update_one
        for _ in range(v.ndim - 1):
            f = jax.vmap(f)
        return checks.finite_result("krotov_hopfield_2021.update", f(v), _OVERFLOW)

    # ---------------------------------------------------------------- HAM dynamics
    def init_states(self, queries) -> dict[str, Array]:
        r"""$v$ = query, hidden at equilibrium $h = \xi g_v(v)$."""
        q, single = as_queries("krotov_hopfield_2021", queries, self.dim, self.patterns.dtype)
        h = jax.vmap(lambda v: self.patterns @ self._gv(v))(q)
        return {"v": q[0], "h": h[0]} if single else {"v": q, "h": h}

    def relax(self, queries, hidden_tau: float | None = None, **relax_kwargs) -> Solution:
        """[`ham.relax`][] of ``network`` from ``init_states(queries)`` (jit-compiled; a batch
        of 256 or more queries is streamed, ``window="auto"``, unless ``window`` is given)."""
        net = self.make_network(hidden_tau)
        return memory_relax(net, self.init_states(queries), with_default_solver(net, relax_kwargs, ("v", "h")),
                            _relax_jit)

    def retrieve(self, queries: Float[Array, "*batch dim"], **relax_kwargs) -> Float[Array, "*batch dim"]:
        """Visible activations $g_v$ at the fixed point reached from ``queries``."""
        sol = self.relax(queries, **{"trace": False, **relax_kwargs})  # the states only: no trace buffers
        g = jax.vmap(self._gv)(sol.states["v"]) if sol.states["v"].ndim == 2 else self._gv(sol.states["v"])
        return checks.finite_result("krotov_hopfield_2021.retrieve", g, _OVERFLOW)

    def energy(self, state) -> Float[Array, "*batch"]:
        """The network energy of a state dict ``{"v", "h"}``, or the effective energy of
        a visible state array."""
        if isinstance(state, dict):
            return self.network.energy(state)
        return self.effective_energy(state)


_OVERFLOW = "the dynamics overflowed; lower beta / n or rescale the patterns or queries (or enable float64)"


@eqx.filter_jit
def _relax_jit(net, xs0, kwargs):
    return relax(net, xs0, **kwargs)


def krotov_hopfield_2021(
    patterns: Float[Array, "num_patterns dim"],
    model: str | None = None,
    *,
    visible_lagrangian: Callable | None = None,
    hidden_lagrangian: Callable | None = None,
    beta: float = 1.0,
    n: int = 3,
    rectified: bool = True,
    interaction: str = "polynomial",
    visible_beta: float = 1.0,
    visible_tau: float = 1.0,
    hidden_tau: float = 0.1,
) -> LargeAssociativeMemory:
    r"""Krotov & Hopfield 2021's visible + hidden model with memories $\xi$ = rows of
    ``patterns``.

    - ``model=None``: give both ``visible_lagrangian`` and ``hidden_lagrangian``
      (convex, checked).
    - ``model="A"``: $L_v$ = tanh (gain ``visible_beta``), $L_h = \sum F(h)$ with
      ``interaction="polynomial"`` ($F = \max(z,0)^n$, or $z^n$ with
      ``rectified=False`` and even n) or ``"exponential"`` ($F = e^{\beta z}$).
    - ``model="B"``: $L_v = \tfrac12\|v\|^2$, $L_h$ = softmax(β).
    - ``model="C"``: $L_v = \|v\|$, $L_h = \sum\max(h,0)^n/n$.

    A Lagrangian given explicitly overrides the model's choice.
    """
    p = as_patterns("krotov_hopfield_2021", patterns)
    beta = check_positive("krotov_hopfield_2021", "beta", beta)
    visible_beta = check_positive("krotov_hopfield_2021", "visible_beta", visible_beta)
    for name, fn in (("visible_lagrangian", visible_lagrangian), ("hidden_lagrangian", hidden_lagrangian)):
        if fn is not None and not callable(fn):
            raise TypeError(f"krotov_hopfield_2021: {name} must be callable, got {type(fn).__name__}.")
    if model is not None and model not in _MODELS:
        raise ValueError(f"krotov_hopfield_2021: unknown model {model!r}; valid models are {list(_MODELS)} or None.")
    vis = hid = None
    if model == "A":
        if interaction not in _INTERACTIONS:
            raise ValueError(
                f"krotov_hopfield_2021: unknown interaction {interaction!r}; valid are {list(_INTERACTIONS)}."
            )
        if interaction == "polynomial":
            if isinstance(n, bool) or not isinstance(n, int) or n < 2:
                raise ValueError(f"krotov_hopfield_2021: model A needs an integer n >= 2, got {n!r}.")
            if not rectified and n % 2:
                raise ValueError(
                    f"krotov_hopfield_2021: F(z) = z^{n} with odd n is not convex; use rectified=True or even n."
                )
            hid = eqx.Partial(power_interaction, n=n, rectified=rectified)
        else:
            hid = eqx.Partial(exponential_interaction, beta=beta)
        vis = eqx.Partial(lagrangians.tanh, beta=visible_beta)
    elif model == "B":
        vis, hid = lagrangians.identity, eqx.Partial(lagrangians.softmax, beta=beta)
    elif model == "C":
        if isinstance(n, bool) or not isinstance(n, numbers.Real) or not (1 <= n < math.inf):
            raise ValueError(f"krotov_hopfield_2021: model C needs n >= 1, got {n!r}.")
        vis, hid = lagrangians.spherical, eqx.Partial(lagrangians.rectified_polynomial, n=n)
    explicit = visible_lagrangian is not None or hidden_lagrangian is not None
    vis = visible_lagrangian if visible_lagrangian is not None else vis
    hid = hidden_lagrangian if hidden_lagrangian is not None else hid
    if vis is None or hid is None:
        raise ValueError(
            "krotov_hopfield_2021: give model='A'|'B'|'C' or both visible_lagrangian and hidden_lagrangian."
        )
    mem = LargeAssociativeMemory(
        patterns=p, visible_lagrangian=vis, hidden_lagrangian=hid, visible_tau=visible_tau,
        hidden_tau=hidden_tau, model=model,
    )
    if explicit:
        mem.make_network(check_convexity=True)  # probes user Lagrangians for convexity
    return mem
