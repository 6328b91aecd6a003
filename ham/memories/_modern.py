r"""The modern continuous Hopfield network (Ramsauer et al. 2020, "Hopfield networks is
all you need") as a two-layer HAM."""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Scalar

from .. import lagrangians
from ..layer import Layer
from ..network import HAM
from .._stream import memory_relax
from ..solve import Solution, relax, with_default_solver
from ..synapses import Dense
from .. import _checks as checks
from ._common import (
    StoredPatterns, active_rows, as_active, as_patterns, as_queries, check_active, check_positive,
    check_stored_patterns, fast_method, per_state,
)

__all__ = ["ModernHopfield", "modern"]


def modern_update(patterns: Float[Array, "K D"], beta, q: Float[Array, " D"]) -> Float[Array, " D"]:
    r"""One update $\xi \leftarrow \Xi^\top \mathrm{softmax}(\beta\,\Xi\xi)$ of one query."""
    return patterns.T @ jax.nn.softmax(beta * (patterns @ q))


def _batched_update(patterns, beta, queries, active=None):
    # ``vmap(modern_update)`` written as two matrix products: XLA lowers the vmapped
    # matrix-vector form with extra transposes (about 2x slower on CPU).
    a = (beta * queries) @ patterns.T
    if active is not None:  # inactive patterns never win or contribute
        a = jnp.where(active, a, -jnp.inf)
    return jax.nn.softmax(a, axis=-1) @ patterns


_OVERFLOW = ("beta * (patterns @ query) overflows the dtype; lower beta or rescale the patterns or "
             "queries (or enable float64)")


@functools.partial(jax.jit, static_argnames=("steps",))
def _retrieve(patterns, beta, queries, steps: int, active=None):
    if steps == 1:
        out = _batched_update(patterns, beta, queries, active)
    else:
        out = jax.lax.fori_loop(0, steps, lambda _, x: _batched_update(patterns, beta, x, active), queries)
    # the queries' finiteness and the overflow in one on-device check (no host sync per call)
    return checks.finite_input_and_result("modern.retrieve", "queries", queries, out, _OVERFLOW)


class ModernHopfield(StoredPatterns):
    r"""Modern continuous Hopfield network (Ramsauer et al. 2020).

    - update (eq. 3): $\xi \leftarrow \Xi^\top\mathrm{softmax}(\beta\,\Xi\xi)$, one step
      retrieves (the paper's one-step retrieval); it is softmax attention with the
      query $\xi$ and keys = values = the stored patterns $\Xi$ (rows).
    - energy (eq. 2): $E(\xi) = -\beta^{-1}\log\sum_\mu e^{\beta\xi_\mu\cdot\xi}
      + \tfrac12\xi^\top\xi + \beta^{-1}\log K + \tfrac12 M^2$, $M = \max_\mu\|\xi_\mu\|$.
    - ``network``: a visible layer with the identity Lagrangian and a hidden layer with
      the softmax Lagrangian (gain β) joined by ``Dense(Ξᵀ)`` (Krotov & Hopfield 2021,
      model B). With fast hidden neurons ($\tau_h\to 0$, $h = \Xi v$) its dynamics are
      $\tau_v\dot v = -v + \Xi^\top\mathrm{softmax}(\beta\Xi v)$, whose fixed points are
      the fixed points of the update, and its energy equals $E$ up to a constant.
    - ``active``: an optional boolean mask over the stored patterns; inactive rows
      (padding) never take part ($K$ and $M$ above count the active ones only).
    """

    patterns: Float[Array, "num_patterns dim"]
    beta: float | Array = eqx.field(default=1.0, converter=checks.positive_converter("modern", "beta"))
    hidden_tau: float = eqx.field(static=True, default=0.1)
    active: Bool[Array, " num_patterns"] | None = None

    def __check_init__(self):
        check_stored_patterns("modern", self.patterns, None)
        check_positive("modern", "hidden_tau", self.hidden_tau)
        check_active("modern", self.active, self.patterns.shape[0])

    @fast_method
    def retrieve(self, queries: Float[Array, "*batch dim"], steps: int = 1) -> Float[Array, "*batch dim"]:
        """``steps`` updates $\\xi \\leftarrow \\Xi^\\top\\mathrm{softmax}(\\beta\\Xi\\xi)$
        of ``queries`` (``(dim,)`` or ``(batch, dim)``), jit-compiled and vmapped."""
        fields = vars(self)  # not self.patterns: Module.__getattribute__ costs ~2 µs an access
        p = fields["patterns"]
        if steps.__class__ is not int or steps < 1:
            steps = checks.integer("modern.retrieve", "steps", steps)
        if (isinstance(queries, jax.Array) and queries.dtype == p.dtype and queries.ndim == 2
                and queries.shape[1] == p.shape[1] and queries.shape[0] and not queries.weak_type):
            # the hot path (a device array of the right shape and dtype): no conversion, no host check
            return _retrieve(p, fields["beta"], queries, steps, fields["active"])
        # host data are checked here (naming the first bad entry); device arrays in the kernel
        q, single = as_queries("modern", queries, p.shape[1], p.dtype, check=not isinstance(queries, jax.Array))
        out = _retrieve(p, fields["beta"], q, steps, fields["active"])
        return out[0] if single else out

    def _energy_one(self, x) -> Scalar:
        p = self.patterns
        a, norms, count = self.beta * (p @ x), jnp.sum(p * p, axis=-1), self.num_patterns
        if self.active is not None:
            a, norms = jnp.where(self.active, a, -jnp.inf), jnp.where(self.active, norms, 0.0)
            count = jnp.sum(self.active)
        lse = jax.nn.logsumexp(a) / self.beta
        return -lse + 0.5 * jnp.vdot(x, x) + jnp.log(count) / self.beta + 0.5 * jnp.max(norms)

    def energy(self, state: Float[Array, "*batch dim"]) -> Float[Array, "*batch"]:
        """Ramsauer et al.'s energy $E(\\xi)$ (per batch element)."""
        return per_state("modern", self._energy_one, state, self.dim)

    def make_network(self, hidden_tau: float | None = None, visible_tau: float = 1.0) -> HAM:
        """The two-layer HAM (visible identity, hidden softmax(β), ``Dense(Ξᵀ)``); with an
        ``active`` mask, of the active patterns only (the mask must be concrete)."""
        if self.active is not None:
            return self._active_only("make_network").make_network(hidden_tau, visible_tau)
        hidden_tau = self.hidden_tau if hidden_tau is None else hidden_tau
        hidden_tau = check_positive("modern.make_network", "hidden_tau", hidden_tau)
        visible_tau = check_positive("modern.make_network", "visible_tau", visible_tau, allow_inf=True)
        dt = self.patterns.dtype  # array leaves: new values of beta/tau do not recompile a jitted relax
        return HAM(
            layers={
                "v": Layer(lagrangians.identity, shape=(self.dim,), tau=jnp.asarray(visible_tau, dt), check_convexity=False),
                "h": Layer(eqx.Partial(lagrangians.softmax, beta=jnp.asarray(self.beta, dt)), shape=(self.num_patterns,),
                           tau=jnp.asarray(hidden_tau, dt), check_convexity=False),
            },
            synapses={"xi": Dense(self.patterns.T)},
            connections={"xi": ("v", "h")},
        )

    def _active_only(self, caller: str) -> "ModernHopfield":
        """The same memory holding only its active patterns, without a mask."""
        patterns = active_rows(f"modern.{caller}", self.patterns, self.active)
        return ModernHopfield(patterns=patterns, beta=self.beta, hidden_tau=self.hidden_tau)

    @property
    def network(self) -> HAM:
        """The [`ham.HAM`][] of ``make_network()`` with its default arguments."""
        return self.make_network()

    def init_states(self, queries) -> dict[str, Array]:
        """HAM states for ``queries``: $v$ = query, hidden at its equilibrium $h = \\Xi v$."""
        if self.active is not None:
            return self._active_only("init_states").init_states(queries)
        q, single = as_queries("modern", queries, self.dim, self.patterns.dtype)
        xs = {"v": q, "h": q @ self.patterns.T}
        return {k: v[0] for k, v in xs.items()} if single else xs

    def relax(self, queries, hidden_tau: float | None = None, **relax_kwargs) -> Solution:
        """Run the HAM dynamics from ``init_states(queries)`` to a fixed point with
        [`ham.relax`][] (jit-compiled; a batch of 256 or more queries is streamed,
        ``window="auto"``, unless ``window`` is given); ``solution.states["v"]`` is the
        retrieved pattern."""
        net = self.make_network(hidden_tau)
        return memory_relax(net, self.init_states(queries), with_default_solver(net, relax_kwargs, ("v", "h")),
                            _relax_jit)


@eqx.filter_jit
def _relax_jit(net, xs0, kwargs):
    return relax(net, xs0, **kwargs)


def modern(
    patterns: Float[Array, "num_patterns dim"], beta: float = 1.0, *, hidden_tau: float = 0.1,
    active: Bool[Array, " num_patterns"] | None = None,
) -> ModernHopfield:
    r"""Modern continuous Hopfield network (Ramsauer et al. 2020) storing the rows of
    ``patterns`` with inverse temperature ``beta`` > 0. ``hidden_tau`` is the hidden
    layer's time constant in ``network``/``relax`` (small = the fast-hidden limit);
    ``active`` an optional boolean mask of the patterns that take part (padding rows
    are ``False``)."""
    p = as_patterns("modern", patterns)
    return ModernHopfield(patterns=p, beta=beta, hidden_tau=hidden_tau, active=as_active("modern", active))
