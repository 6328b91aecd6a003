r"""Binary (±1) memories with discrete sign dynamics: the classical Hopfield network
(Hopfield 1982), Dense Associative Memory (Krotov & Hopfield 2016) and the
exponential DAM (Demircigil et al. 2017).

All three share one discrete engine: neuron ``i`` is set to whichever sign gives the
lower energy (a tie keeps the current value), one neuron at a time (``mode="async"``)
or all at once (``mode="sync"``), sweep after sweep until nothing changes or
``max_sweeps`` is reached. Asynchronous updates can therefore never raise the energy.
"""

from __future__ import annotations

import abc
import math
import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, PRNGKeyArray, Scalar

from .. import lagrangians
from ..layer import Layer
from ..network import HAM
from .._stream import memory_relax
from ..solve import Solution, relax, with_default_solver
from ..synapses import Bias, Dense
from .. import _checks as checks
from ._common import (
    active_rows, as_active, as_patterns, as_queries, binarize, check_active, check_pm1, check_positive, per_state,
)

__all__ = ["ClassicalHopfield", "DenseAssociativeMemory", "ExponentialAssociativeMemory",
           "classical", "dense", "exponential"]

_MODES = ("async", "sync")


def _sign_keep(score: Array, current: Array) -> Array:
    """sign(score), keeping ``current`` where score == 0."""
    return jnp.where(score > 0, 1.0, jnp.where(score < 0, -1.0, current)).astype(current.dtype)


class _BinaryMemory(eqx.Module):
    """Shared discrete dynamics. Subclasses define the local score of neuron ``i`` (its
    sign is the preferred value) through an auxiliary quantity kept up to date across
    single-neuron flips (local fields or pattern overlaps)."""

    patterns: eqx.AbstractVar[Float[Array, "num_patterns dim"]]

    @property
    def dim(self) -> int:
        """The dimension of a pattern (and of a query)."""
        return self.patterns.shape[1]

    # --- per subclass -------------------------------------------------------
    @abc.abstractmethod
    def _aux(self, s: Array) -> Array: ...

    @abc.abstractmethod
    def _score(self, aux: Array, s: Array, i: Array) -> Scalar: ...

    @abc.abstractmethod
    def _flip(self, aux: Array, i: Array, ds: Array) -> Array: ...

    @abc.abstractmethod
    def _energy_one(self, s: Array) -> Scalar: ...

    # --- engine ---------------------------------------------------------------
    def _run_one(self, s0: Array, key: Array, mode: str, max_sweeps: int, random_order: bool):
        n = s0.shape[0]

        def sync_sweep(s, aux, k):
            scores = jax.vmap(lambda i: self._score(aux, s, i))(jnp.arange(n))
            new = _sign_keep(scores, s)
            return new, self._aux(new), jnp.any(new != s)

        def async_sweep(s, aux, k):
            order = jax.random.permutation(jax.random.fold_in(key, k), n) if random_order else jnp.arange(n)

            def body(j, c):
                s, aux, changed = c
                i = order[j]
                new_i = _sign_keep(self._score(aux, s, i), s[i])
                ds = new_i - s[i]
                aux = self._flip(aux, i, ds)
                return s.at[i].set(new_i), aux, changed | (ds != 0)

            return jax.lax.fori_loop(0, n, body, (s, aux, jnp.asarray(False)))

        sweep = async_sweep if mode == "async" else sync_sweep

        def cond(c):
            _, _, k, changed = c
            return changed & (k < max_sweeps)

        def step(c):
            s, aux, k, _ = c
            s, aux, changed = sweep(s, aux, k)
            return s, aux, k + 1, changed

        s, _, k, changed = jax.lax.while_loop(cond, step, (s0, self._aux(s0), jnp.asarray(0), jnp.asarray(True)))
        return s, k, ~changed

    def async_energy_trace(
        self, query: Float[Array, " dim"], sweeps: int = 2, key: PRNGKeyArray | None = None
    ) -> tuple[Float[Array, "updates dim"], Float[Array, " updates"]]:
        """States and energies after every single-neuron update of ``sweeps`` asynchronous
        sweeps from ``sign(query)`` (the same rule as ``retrieve(mode="async")``, for
        inspecting the descent); the first row is the initial state."""
        owner = f"{type(self).__name__}.async_energy_trace"
        q, single = as_queries(type(self).__name__, query, self.dim, self.patterns.dtype, name="query")
        if not single:
            raise ValueError(f"{owner}: takes one query of shape ({self.dim},).")
        sweeps = checks.integer(owner, "sweeps", sweeps)
        if key is not None:
            checks.prng_key(owner, "key", key)
        return _trace(self, binarize(q[0]), key, sweeps)

    def _check_mode(self, mode, max_sweeps, key=None):
        owner = f"{type(self).__name__}.retrieve"
        if not isinstance(mode, str) or mode not in _MODES:
            raise ValueError(f"{owner}: mode must be one of {_MODES}, got {mode!r}.")
        if key is not None:
            checks.prng_key(owner, "key", key)
        return checks.integer(owner, "max_sweeps", max_sweeps)

    def run(
        self, queries, mode: str = "async", max_sweeps: int = 100, key: PRNGKeyArray | None = None
    ) -> tuple[Array, Array, Array]:
        """Like ``retrieve`` but also returns ``(states, sweeps, converged)``: the number
        of sweeps made and whether the last sweep changed nothing (a fixed point)."""
        max_sweeps = self._check_mode(mode, max_sweeps, key)
        # NaN queries are refused here: sign() would silently turn them into -1.
        q, single = as_queries(type(self).__name__, queries, self.dim, self.patterns.dtype)
        s, k, conv = _run_batch(self, binarize(q.astype(self.patterns.dtype)), key, mode, max_sweeps)
        if single:
            return s[0], k[0], conv[0]
        return s, k, conv

    def retrieve(
        self, queries: Float[Array, "*batch dim"], mode: str = "async", max_sweeps: int = 100,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "*batch dim"]:
        """Sign dynamics from ``sign(queries)`` (0 -> +1) to a fixed point.

        **Arguments:**
        - ``queries``: ``(dim,)`` or ``(batch, dim)``; batched with ``vmap``, jit-compiled.
        - ``mode``: ``"async"`` (one neuron at a time; energy never rises) or ``"sync"``
          (all neurons at once; may end in a 2-cycle).
        - ``max_sweeps``: at most this many sweeps over all neurons.
        - ``key``: a PRNG key for a random neuron order in each async sweep (one
          independent order per query); ``None`` sweeps neurons in order ``0..dim-1``.

        **Returns:** the ±1 states, the shape of ``queries``.
        """
        return self.run(queries, mode, max_sweeps, key)[0]

    def energy(self, state: Float[Array, "*batch dim"]) -> Float[Array, "*batch"]:
        """The model's energy of a state (one value per batch element)."""
        return per_state(type(self).__name__, self._energy_one, state, self.dim)


@functools.partial(eqx.filter_jit)
def _run_batch(model: _BinaryMemory, s0, key, mode, max_sweeps):
    b = s0.shape[0]
    random_order = key is not None
    keys = jax.random.split(key, b) if random_order else jnp.zeros((b, 2), jnp.uint32)
    fn = lambda s, k: model._run_one(s, k, mode, max_sweeps, random_order)  # noqa: E731
    return jax.vmap(fn)(s0, keys)


@eqx.filter_jit
def _trace(model: _BinaryMemory, s0, key, sweeps):
    n = s0.shape[0]

    def sweep(c, k):
        order = jax.random.permutation(jax.random.fold_in(key, k), n) if key is not None else jnp.arange(n)

        def update(c, i):
            s, aux = c
            new_i = _sign_keep(model._score(aux, s, i), s[i])
            aux = model._flip(aux, i, new_i - s[i])
            s = s.at[i].set(new_i)
            return (s, aux), s

        return jax.lax.scan(update, c, order)

    _, states = jax.lax.scan(sweep, (s0, model._aux(s0)), jnp.arange(sweeps))
    states = jnp.concatenate([s0[None], states.reshape(-1, n)])
    return states, jax.vmap(model._energy_one)(states)


# ============================================================================ classical
class ClassicalHopfield(_BinaryMemory):
    r"""The classical Hopfield network (Hopfield 1982; continuous version Hopfield 1984).

    Hebbian weights $W = \frac1N\sum_\mu \xi_\mu\xi_\mu^\top$ with zero diagonal,
    energy $E(s) = -\tfrac12 s^\top W s - b\cdot s$, update $s_i \leftarrow
    \mathrm{sign}(\sum_j W_{ij}s_j + b_i)$.

    ``network`` is the continuous version as a [`ham.HAM`][]: one layer with the tanh
    Lagrangian of gain ``beta`` (activation $\tanh(\beta x)$) and a recurrent
    [`ham.synapses.Dense`][] of weights $W$ (+ a [`ham.synapses.Bias`][]), so
    $\tau\dot x = -x + W\tanh(\beta x) + b$.
    """

    patterns: Float[Array, "num_patterns dim"]
    weights: Float[Array, "dim dim"]
    bias: Float[Array, " dim"] | None
    beta: float | Array = eqx.field(default=1.0, converter=checks.positive_converter("classical", "beta"))
    # N·W = Σ_μ ξ_μ ξ_μᵀ with zero diagonal: integer-valued, so the sign dynamics compute
    # local fields exactly and an exact tie (field 0: keep the neuron) is never decided by
    # round-off of 1/N. None: use ``weights`` (e.g. for hand-made non-Hebbian weights).
    counts: Float[Array, "dim dim"] | None = None

    def __check_init__(self):
        n = self.patterns.shape[1]
        if self.counts is not None and self.counts.shape != (n, n):
            raise ValueError(f"classical: counts must have shape ({n}, {n}), got {tuple(self.counts.shape)}.")
        if self.weights.shape != (n, n):
            raise ValueError(f"classical: weights must have shape ({n}, {n}), got {tuple(self.weights.shape)}.")
        if self.bias is not None and self.bias.shape != (n,):
            raise ValueError(f"classical: bias must have shape ({n},), got {tuple(self.bias.shape)}.")

    def _field_matrix(self):
        # the local fields are kept scaled by N when the exact integer counts are known
        if self.counts is None:
            return self.weights, 1.0
        return self.counts, float(self.dim)

    def _aux(self, s):
        m, scale = self._field_matrix()
        u = m @ s
        return u if self.bias is None else u + scale * self.bias

    def _score(self, aux, s, i):
        return aux[i]

    def _flip(self, aux, i, ds):
        # zero diagonal: flipping s_i changes the other local fields only; W symmetric.
        m, _ = self._field_matrix()
        return aux + m[i] * ds

    def _energy_one(self, s):
        e = -0.5 * jnp.vdot(s, self.weights @ s)
        return e if self.bias is None else e - jnp.vdot(self.bias, s)

    def make_network(self, beta: float | Array | None = None, tau: float = 1.0) -> HAM:
        """The continuous classical network (tanh neurons of gain ``beta``)."""
        beta = self.beta if beta is None else check_positive("classical.make_network", "beta", beta)
        tau = check_positive("classical.make_network", "tau", tau, allow_inf=True)
        dt = self.patterns.dtype  # array leaves: new values of beta/tau do not recompile a jitted relax
        layer = Layer(eqx.Partial(lagrangians.tanh, beta=jnp.asarray(beta, dt)), shape=(self.dim,),
                      tau=jnp.asarray(tau, dt), check_convexity=False)
        synapses, connections = {"w": Dense(self.weights)}, {"w": ("v",)}
        if self.bias is not None:
            synapses["b"], connections["b"] = Bias(self.bias), ("v",)
        return HAM(layers={"v": layer}, synapses=synapses, connections=connections)

    @property
    def network(self) -> HAM:
        """The [`ham.HAM`][] of ``make_network()`` with its default arguments."""
        return self.make_network()

    def relax(self, queries, beta=None, **relax_kwargs) -> Solution:
        """Continuous dynamics from internal state ``x = queries`` via [`ham.relax`][]
        (``window="auto"``, relax's default, unless ``window`` is given: a batch of 256
        or more queries is streamed, a smaller one kept in flight whole with the window
        shrinking at the tail; ``window=None`` vmaps)."""
        q, single = as_queries("classical", queries, self.dim, self.patterns.dtype)
        net = self.make_network(beta)
        return memory_relax(net, {"v": q[0] if single else q}, with_default_solver(net, relax_kwargs), _relax_jit)

    def retrieve_continuous(self, queries, beta=None, **relax_kwargs) -> Float[Array, "*batch dim"]:
        r"""The activations $\tanh(\beta x^*)$ at the fixed point of the continuous dynamics."""
        net = self.make_network(beta)
        sol = self.relax(queries, beta, **{"trace": False, **relax_kwargs})  # the states only: no trace buffers
        return net.activations(sol.states)["v"]


@eqx.filter_jit
def _relax_jit(net, xs0, kwargs):
    return relax(net, xs0, **kwargs)


def classical(
    patterns: Float[Array, "num_patterns dim"], *, beta: float = 1.0, bias=None, binarize: bool = False
) -> ClassicalHopfield:
    r"""Classical Hopfield network storing ±1 ``patterns`` (Hopfield 1982) with Hebbian
    weights $W = \frac1N\sum_\mu\xi_\mu\xi_\mu^\top$, $W_{ii}=0$.

    Patterns that are not ±1 are refused with a ValueError unless ``binarize=True``
    (then $\xi \leftarrow \mathrm{sign}(\xi)$, 0 -> +1). ``beta`` is the tanh gain of the
    continuous version (``network``, ``retrieve_continuous``).
    """
    p = as_patterns("classical", patterns)
    p = _binary_patterns("classical", p, binarize)
    n = p.shape[1]
    counts = (p.T @ p) * (1.0 - jnp.eye(n, dtype=p.dtype))  # exact integers for ±1 patterns
    w = counts / n
    b = None
    if bias is not None:
        b = checks.real_array("classical", "bias", bias, p.dtype).astype(p.dtype)
        if b.shape != (n,):
            raise ValueError(f"classical: bias must have shape ({n},), got {tuple(b.shape)}.")
        b = checks.finite("classical", "bias", b)
    return ClassicalHopfield(patterns=p, weights=w, bias=b, beta=beta, counts=counts)


def _binary_patterns(model, p, do_binarize):
    if do_binarize:
        return binarize(p)
    check_pm1(model, p)
    return p


# ============================================================================ dense
def overlap_scale(dim: int) -> float:
    r"""The power of two at or above ``dim`` by which the dense update divides the
    overlaps: $|\xi\cdot\sigma| \le N$ stays $\le 1$ (no overflow of $F$ for large $n$),
    and dividing by a power of two is exact, so for ±1 patterns every term, and every
    partial sum below $2^{24}$ (float32), is computed exactly: an exact tie (score 0,
    keep the neuron) is never decided by round-off, on one device or many."""
    return float(2 ** math.ceil(math.log2(max(dim, 1))))


def _power(z, n: int, rectified: bool):
    return (jnp.maximum(z, 0.0) if rectified else z) ** n


def _dam_lagrangian(h, n: int, rectified: bool):
    """$L_h = \\sum_\\mu F(h_\\mu)$ with $F(z) = z^n$ (even n) or $\\max(z,0)^n$."""
    return jnp.sum(_power(h, n, rectified))


class DenseAssociativeMemory(_BinaryMemory):
    r"""Dense Associative Memory (Krotov & Hopfield 2016, "Dense associative memory for
    pattern recognition"): $E(\sigma) = -\sum_\mu F(\xi_\mu\cdot\sigma)$ with
    $F(z) = z^n$, or $\max(z,0)^n$ when ``rectified``.

    Update (eq. 3 of the paper): $\sigma_i \leftarrow \mathrm{sign}\big(\sum_\mu
    F(\xi_\mu\cdot\sigma^{(i+)}) - F(\xi_\mu\cdot\sigma^{(i-)})\big)$, where
    $\sigma^{(i\pm)}$ is $\sigma$ with $\sigma_i = \pm1$. The overlaps are divided by
    the power of two at or above $N$ inside the update (F is homogeneous, so the sign is
    unchanged) to avoid overflow for large $n$, exactly: the terms and their sums stay exact
    for ±1 patterns, so ties are decided the same way on any number of devices.

    ``network`` is Krotov & Hopfield 2021's model A (see
    [`ham.memories.krotov_hopfield_2021`][]) when $F$ is convex (rectified, or even
    $n$), else ``None``.
    """

    patterns: Float[Array, "num_patterns dim"]
    n: int = eqx.field(static=True, default=3)
    rectified: bool = eqx.field(static=True, default=False)
    active: Bool[Array, " num_patterns"] | None = None

    def __check_init__(self):
        if not isinstance(self.n, int) or self.n < 2:
            raise ValueError(f"dense: the interaction power n must be an integer >= 2, got {self.n!r}.")
        check_active("dense", self.active, self.patterns.shape[0])

    def interaction(self, z):
        """$F(z)$."""
        return _power(z, self.n, self.rectified)

    def _aux(self, s):
        return self.patterns @ s

    def _score(self, aux, s, i):
        col = self.patterns[:, i]
        scale = overlap_scale(self.dim)
        m0 = (aux - col * s[i]) / scale
        c = col / scale
        return jnp.sum(_masked(self.active, self.interaction(m0 + c) - self.interaction(m0 - c), 0.0))

    def _flip(self, aux, i, ds):
        return aux + self.patterns[:, i] * ds

    def _energy_one(self, s):
        return -jnp.sum(_masked(self.active, self.interaction(self.patterns @ s), 0.0))

    @property
    def network(self) -> HAM | None:
        """Model A of [`ham.memories.krotov_hopfield_2021`][] with this $F$ when $F$ is convex
        (rectified, or even $n$), else ``None``."""
        if not (self.rectified or self.n % 2 == 0):
            return None
        from ._krotov_hopfield import krotov_hopfield_2021

        p = active_rows("dense.network", self.patterns, self.active)
        return krotov_hopfield_2021(p, model="A", n=self.n, rectified=self.rectified).network


class ExponentialAssociativeMemory(_BinaryMemory):
    r"""Exponential Dense Associative Memory (Demircigil et al. 2017, "On a model of
    associative memory with huge storage capacity"): $E(\sigma) = -\sum_\mu
    \exp(\beta\,\xi_\mu\cdot\sigma)$, with the same update rule as
    [`DenseAssociativeMemory`][] and $F = \exp(\beta\,\cdot)$.

    The update compares $\log\sum_\mu e^{\beta\xi_\mu\cdot\sigma^{(i+)}}$ with
    $\log\sum_\mu e^{\beta\xi_\mu\cdot\sigma^{(i-)}}$ (log-sum-exp shifts by the largest
    overlap), so it never overflows. ``energy`` is the exact $-\sum_\mu e^{\beta
    \xi_\mu\cdot\sigma}$ (it raises a ValueError once $\beta\max_\mu\xi_\mu\cdot\sigma$
    passes the dtype's exponent range, where it would be $-\infty$); ``log_energy`` $= -\beta^{-1}\log(-E)$ is an
    increasing function of it that is always finite.
    """

    patterns: Float[Array, "num_patterns dim"]
    beta: float | Array = eqx.field(default=1.0, converter=checks.positive_converter("exponential", "beta"))
    active: Bool[Array, " num_patterns"] | None = None

    def __check_init__(self):
        check_active("exponential", self.active, self.patterns.shape[0])

    def _aux(self, s):
        return self.patterns @ s

    def _score(self, aux, s, i):
        col = self.patterns[:, i]
        m0 = aux - col * s[i]
        up = _masked(self.active, self.beta * (m0 + col), -jnp.inf)
        down = _masked(self.active, self.beta * (m0 - col), -jnp.inf)
        return jax.nn.logsumexp(up) - jax.nn.logsumexp(down)

    def _flip(self, aux, i, ds):
        return aux + self.patterns[:, i] * ds

    def _energy_one(self, s):
        return -jnp.exp(jax.nn.logsumexp(_masked(self.active, self.beta * (self.patterns @ s), -jnp.inf)))

    def energy(self, state: Float[Array, "*batch dim"]) -> Float[Array, "*batch"]:
        r"""$-\sum_\mu e^{\beta\xi_\mu\cdot\sigma}$ (per batch element); raises when it
        overflows the dtype (use ``log_energy``, which never does)."""
        return per_state(
            "exponential", self._energy_one, state, self.dim,
            hint="-sum exp(beta * patterns @ state) overflows the dtype; use log_energy (always finite) "
            "or a smaller beta",
        )

    def log_energy(self, state) -> Float[Array, "*batch"]:
        r"""$-\beta^{-1}\log\sum_\mu e^{\beta\xi_\mu\cdot\sigma}$, increasing in ``energy``."""
        return per_state("exponential.log_energy", self._log_energy_one, state, self.dim)

    def _log_energy_one(self, s):
        return -jax.nn.logsumexp(_masked(self.active, self.beta * (self.patterns @ s), -jnp.inf)) / self.beta

    @property
    def network(self) -> HAM:
        """Model A of [`ham.memories.krotov_hopfield_2021`][] with the exponential interaction."""
        from ._krotov_hopfield import krotov_hopfield_2021

        p = active_rows("exponential.network", self.patterns, self.active)
        return krotov_hopfield_2021(p, model="A", interaction="exponential", beta=self.beta).network


def _masked(active, values, fill):
    """``values`` where the pattern is active, ``fill`` for the inactive (padding) ones."""
    return values if active is None else jnp.where(active, values, fill)


def dense(
    patterns: Float[Array, "num_patterns dim"], n: int = 3, rectified: bool = False, *, binarize: bool = False,
    active: Bool[Array, " num_patterns"] | None = None,
) -> DenseAssociativeMemory:
    r"""Dense Associative Memory (Krotov & Hopfield 2016) with $F(z) = z^n$ (or
    $\max(z,0)^n$ when ``rectified``) storing ±1 ``patterns``; ``n >= 2`` (n = 2 is the
    classical network up to a constant). Non-±1 patterns raise unless ``binarize=True``.
    ``active``: an optional boolean mask of the patterns that take part (padding rows
    ``False``)."""
    p = _binary_patterns("dense", as_patterns("dense", patterns), binarize)
    if isinstance(n, bool) or not isinstance(n, int):
        if isinstance(n, (float, np.floating, np.integer)) and float(n).is_integer():
            n = int(n)
        else:
            raise ValueError(f"dense: the interaction power n must be an integer >= 2, got {n!r}.")
    return DenseAssociativeMemory(patterns=p, n=n, rectified=bool(rectified), active=as_active("dense", active))


def exponential(
    patterns: Float[Array, "num_patterns dim"], beta: float = 1.0, *, binarize: bool = False,
    active: Bool[Array, " num_patterns"] | None = None,
) -> ExponentialAssociativeMemory:
    r"""Exponential DAM (Demircigil et al. 2017), $F(z) = e^{\beta z}$, storing ±1
    ``patterns``. Non-±1 patterns raise unless ``binarize=True``; ``active`` as in
    [`dense`][]."""
    p = _binary_patterns("exponential", as_patterns("exponential", patterns), binarize)
    return ExponentialAssociativeMemory(patterns=p, beta=beta, active=as_active("exponential", active))
