r"""Universal Hopfield Networks (Millidge et al. 2022, "Universal Hopfield networks: a
general framework for single-shot associative memory models").

Single-shot retrieval $z = P^\top\,\mathrm{sep}(\mathrm{sim}(M, q))$: similarity of
the query to every stored memory (rows of $M$), a separation function sharpening the
scores, and a projection $P$ (= $M$ for auto-association).
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Scalar

from ..network import HAM
from .. import _checks as checks
from ._common import as_active, as_patterns, as_queries, check_active, per_state

__all__ = ["UniversalHopfield", "universal", "SIMILARITIES", "SEPARATIONS"]

_EPS = 1e-12


def _dot(m, q):
    return m @ q


def _cosine(m, q):
    mn = jnp.sqrt(jnp.sum(m * m, axis=-1))
    qn = jnp.sqrt(jnp.sum(q * q))
    return (m @ q) / jnp.maximum(mn * qn, _EPS)


def _squared_distance(m, q):
    r"""$\|q - m_\mu\|^2 = \|q\|^2 - 2\,q\cdot m_\mu + \|m_\mu\|^2$ for every memory, clamped at 0
    (rounding can make it slightly negative). The expansion needs one matrix product and no
    ``(K, D)`` difference array per query (a ``(batch, K, D)`` one under ``vmap``)."""
    d2 = jnp.sum(m * m, axis=-1) - 2.0 * (m @ q) + jnp.vdot(q, q)
    return jnp.maximum(d2, 0.0)


#: Elements of one ``(chunk, D)`` block of patterns in the chunked similarities.
_CHUNK_ELEMENTS = 1 << 16


def _chunked(fn):
    r"""A similarity ``fn(M, q)`` evaluated over blocks of patterns with ``lax.map``, so a
    query needs memory for one ``(chunk, D)`` block, not for all ``(K, D)`` (the chunk holds
    about ``_CHUNK_ELEMENTS`` numbers; a memory that fits in one chunk is done directly)."""

    @functools.wraps(fn)
    def chunked(m, q):
        k, d = m.shape
        chunk = max(1, _CHUNK_ELEMENTS // max(d, 1))
        if k <= chunk:
            return fn(m, q)
        n = -(-k // chunk)
        pad = n * chunk - k
        blocks = jnp.pad(m, ((0, pad), (0, 0))).reshape(n, chunk, d)
        return jax.lax.map(lambda b: fn(b, q), blocks).reshape(n * chunk)[:k]

    return chunked


@_chunked
def _manhattan_distance(m, q):
    r"""$\sum_i |q_i - m_{\mu i}|$ for every memory, from the exact differences, block by block."""
    return jnp.sum(jnp.abs(m - q), axis=-1)


def _euclidean(m, q):
    return -_squared_distance(m, q)


def _manhattan(m, q):
    return -_manhattan_distance(m, q)


def _euclidean_reciprocal(m, q):
    # the same distance as "euclidean" (one computation: their max separations agree exactly)
    return 1.0 / jnp.maximum(_squared_distance(m, q), _EPS)


def _manhattan_reciprocal(m, q):
    return 1.0 / jnp.maximum(_manhattan_distance(m, q), _EPS)


#: The distance behind each distance similarity; the similarity is a strictly decreasing
#: function of it (−d or 1/d), so its ``"max"`` separation is the memory at the least distance.
_DISTANCES: dict[str, Callable] = {
    "euclidean": _squared_distance,
    "euclidean_reciprocal": _squared_distance,
    "manhattan": _manhattan_distance,
    "manhattan_reciprocal": _manhattan_distance,
}


@_chunked
def _hamming(m, q):
    """Number of components where memory and query agree (N − Hamming distance)."""
    return jnp.sum(m == q[None, :], axis=-1).astype(q.dtype)


SIMILARITIES: dict[str, Callable] = {
    "dot": _dot,
    "cosine": _cosine,
    "euclidean": _euclidean,
    "manhattan": _manhattan,
    "euclidean_reciprocal": _euclidean_reciprocal,
    "manhattan_reciprocal": _manhattan_reciprocal,
    "hamming": _hamming,
}
"""The similarity functions ``sim(M, q)`` by name (``similarity=`` of [`universal`][])."""
SEPARATIONS = ("identity", "polynomial", "softmax", "max", "threshold", "topk")
"""The separation functions' names (``separation=`` of [`universal`][])."""


class UniversalHopfield(eqx.Module):
    r"""Universal Hopfield Network (Millidge et al. 2022): $z = P^\top\mathrm{sep}(
    \mathrm{sim}(M, q))$.

    - similarity ``sim(M, q)`` $\in\mathbb R^K$: ``"dot"`` $M q$; ``"cosine"``;
      ``"euclidean"`` $-\|q-m_\mu\|^2$; ``"manhattan"`` $-\sum_i|q_i-m_{\mu i}|$;
      ``"euclidean_reciprocal"`` $1/\|q-m_\mu\|^2$ and ``"manhattan_reciprocal"``
      $1/\sum_i|q_i-m_{\mu i}|$ (the paper's code); ``"hamming"`` the number of equal
      components; or a callable ``(M (K,D), q (D,)) -> (K,)``.
    - separation: ``"identity"``; ``"polynomial"`` $s^n$; ``"softmax"``
      $\mathrm{softmax}(\beta s)$; ``"max"`` one-hot argmax; ``"threshold"``
      $[s \ge \theta]$; ``"topk"`` the softmax $\mathrm{softmax}(\beta s)$ restricted to the
      ``k`` largest scores (the ``k`` nearest memories; ``k=1`` is ``"max"``, a small β
      the plain average of the ``k`` nearest), found with `jax.lax.top_k`, or with
      `jax.lax.approx_max_k` (``approximate=True``, aiming at ``recall_target``; exact
      on CPU); or a callable ``(K,) -> (K,)``.
    - ``normalize=True`` divides the scores by their sum before and after separation.
    - ``active``: an optional boolean mask over the stored patterns; inactive rows (e.g.
      padding to a fixed number of patterns, or to a multiple of the devices) never win
      and never contribute: their score is $-\infty$ before a softmax / max / top-k
      and their separated score is 0 otherwise.

    No similarity builds a ``(batch, K, D)`` array: the squared distance of ``"euclidean"``
    and ``"euclidean_reciprocal"`` is computed once, as $\|q\|^2 - 2\,q\cdot m_\mu +
    \|m_\mu\|^2$ clamped at $\ge 0$, and the Manhattan distance of ``"manhattan"`` and
    ``"manhattan_reciprocal"`` runs over blocks of patterns with ``lax.map`` (memory per query
    $O(K_\text{chunk} D)$). With ``"max"`` a distance similarity retrieves the memory at the
    least distance (the lower index on ties), so $-d$ and $1/d$ retrieve the same memory.
    For patterns sharded over devices see [`sharded_retrieve`][ham.memories.sharded_retrieve].

    An energy exists for auto-association with the dot similarity and no
    normalisation: $E(q) = \tfrac12\|q\|^2 - \Phi(Mq)$ with $\nabla\Phi = \mathrm{sep}$
    ($\Phi = \tfrac12\|s\|^2$, $\sum s^{n+1}/(n+1)$, $\beta^{-1}\log\sum e^{\beta s}$,
    $\max s$), so the retrieval $z = M^\top\mathrm{sep}(Mq)$ is the point where
    $\nabla E = 0$ would hold at $q = z$. Dot/softmax is [`ham.memories.modern`][].
    """

    patterns: Float[Array, "num_patterns dim"]
    projection: Float[Array, "num_patterns out"]
    similarity: str | Callable = eqx.field(static=True, default="dot")
    separation: str | Callable = eqx.field(static=True, default="softmax")
    beta: float | Array = eqx.field(default=1.0, converter=checks.positive_converter("universal", "beta"))
    n: float = eqx.field(static=True, default=2)
    threshold: float | Array = eqx.field(
        default=0.0, converter=checks.positive_converter("universal", "threshold", low=-np.inf)
    )
    normalize: bool = eqx.field(static=True, default=False)
    auto: bool = eqx.field(static=True, default=True)
    k: int = eqx.field(static=True, default=1)
    approximate: bool = eqx.field(static=True, default=False)
    recall_target: float = eqx.field(static=True, default=0.95)
    active: Bool[Array, " num_patterns"] | None = None

    def __check_init__(self):
        if isinstance(self.similarity, str) and self.similarity not in SIMILARITIES:
            raise ValueError(
                f"universal: unknown similarity {self.similarity!r}; valid names are "
                f"{sorted(SIMILARITIES)} or a callable (memories (K, D), query (D,)) -> (K,)."
            )
        if not isinstance(self.similarity, str) and not callable(self.similarity):
            raise ValueError(f"universal: similarity must be a name or a callable, got {self.similarity!r}.")
        if isinstance(self.separation, str) and self.separation not in SEPARATIONS:
            raise ValueError(
                f"universal: unknown separation {self.separation!r}; valid names are "
                f"{list(SEPARATIONS)} or a callable (K,) -> (K,)."
            )
        if not isinstance(self.separation, str) and not callable(self.separation):
            raise ValueError(f"universal: separation must be a name or a callable, got {self.separation!r}.")
        if isinstance(self.n, (bool, np.bool_)) or not isinstance(self.n, numbers.Real):
            raise TypeError(f"universal: n must be a number, got {self.n!r}.")
        if self.separation == "polynomial" and not (self.n > 0 and math.isfinite(self.n)):
            raise ValueError(f"universal: polynomial separation needs n > 0 and finite, got {self.n!r}.")
        if self.patterns.ndim != 2 or self.projection.ndim != 2:
            raise ValueError(
                f"universal: patterns and projection must be 2-D, got shapes {tuple(self.patterns.shape)} "
                f"and {tuple(self.projection.shape)}."
            )
        if self.projection.shape[0] != self.patterns.shape[0]:
            raise ValueError(
                f"universal: projection must have one row per stored pattern: patterns have shape "
                f"{tuple(self.patterns.shape)}, projection {tuple(self.projection.shape)}."
            )
        if isinstance(self.k, (bool, np.bool_)) or not isinstance(self.k, (int, np.integer)) or self.k < 1:
            raise ValueError(f"universal: k (the number of nearest memories of 'topk') must be an integer >= 1, got {self.k!r}.")
        if self.separation == "topk" and self.k > self.patterns.shape[0]:
            raise ValueError(
                f"universal: k={self.k} nearest memories asked of {self.patterns.shape[0]} stored patterns."
            )
        if not (0.0 < self.recall_target <= 1.0):
            raise ValueError(f"universal: recall_target must be in (0, 1], got {self.recall_target!r}.")
        check_active("universal", self.active, self.patterns.shape[0])

    @property
    def dim(self) -> int:
        """The dimension of a pattern (and of a query)."""
        return self.patterns.shape[1]

    # ------------------------------------------------------------------ maths of one query
    def scores(self, q: Float[Array, " dim"]) -> Float[Array, " num_patterns"]:
        """$\\mathrm{sep}(\\mathrm{sim}(M, q))$ for one query (normalised if asked)."""
        k = self.patterns.shape[0]
        if self._max_by_distance:
            # max of a strictly decreasing function of d (−d, 1/d; a positive normalisation
            # keeps the order) is the least d: −d and 1/d pick the same memory, round-off included
            d = _DISTANCES[self.similarity](self.patterns, q)
            d = d if self.active is None else jnp.where(self.active, d, jnp.inf)
            return jax.nn.one_hot(jnp.argmin(d), k, dtype=q.dtype)
        sim = SIMILARITIES[self.similarity] if isinstance(self.similarity, str) else self.similarity
        s = _check_scores("similarity", sim(self.patterns, q), k)
        if self.active is not None:
            s = jnp.where(self.active, s, 0.0)
        if self.normalize:
            s = s / jnp.sum(s)
        s = _check_scores("separation", self._separate(s), k)
        if self.normalize:
            s = s / jnp.sum(s)
        return s

    @property
    def _max_by_distance(self) -> bool:
        """Whether the ``"max"`` separation is taken as the least distance: a named distance
        similarity whose scores keep their order (any reciprocal one; −d without normalisation,
        as a negative sum would reverse the order)."""
        return (
            self.separation == "max" and isinstance(self.similarity, str) and self.similarity in _DISTANCES
            and (self.similarity.endswith("_reciprocal") or not self.normalize)
        )

    def _separate(self, s):
        sep = self.separation
        if sep in ("softmax", "max", "topk"):
            # the competitive separations: an inactive pattern's score is -inf
            s = s if self.active is None else jnp.where(self.active, s, -jnp.inf)
            if sep == "softmax":
                return jax.nn.softmax(self.beta * s)
            if sep == "max":
                return jax.nn.one_hot(jnp.argmax(s), s.shape[0], dtype=s.dtype)
            values, index = top_k(s, self.k, self.approximate, self.recall_target)
            return jnp.zeros_like(s).at[index].set(jax.nn.softmax(self.beta * values))
        if callable(sep):
            out = sep(s)
        elif sep == "identity":
            out = s
        elif sep == "polynomial":
            out = s**self.n
        else:  # threshold
            out = (s >= self.threshold).astype(s.dtype)
        return out if self.active is None else jnp.where(self.active, out, 0.0)

    def _retrieve_one(self, q):
        return self.projection.T @ self.scores(q)

    def retrieve(self, queries: Float[Array, "*batch dim"]) -> Float[Array, "*batch out"]:
        """Single-shot $z = P^\\top\\mathrm{sep}(\\mathrm{sim}(M, q))$ of ``queries``
        (``(dim,)`` or ``(batch, dim)``), jit-compiled and vmapped."""
        q, single = as_queries("universal", queries, self.dim, self.patterns.dtype)
        out = _retrieve_batch(self, q)
        return out[0] if single else out

    def _overflow_hint(self) -> str:
        return (
            f"similarity {self.similarity!r} -> separation {self.separation!r}"
            + (" -> normalisation (a zero sum of scores divides by 0)" if self.normalize else "")
            + " produced NaN/inf; for softmax lower beta, for polynomial use an integer n with "
            "signed scores, or rescale the patterns/queries"
        )

    # ------------------------------------------------------------------ energy
    @property
    def has_energy(self) -> bool:
        """Whether the model has an energy: auto-association, ``dot`` similarity without
        normalisation, and a separation with a potential."""
        return (
            self.auto and self.similarity == "dot" and not self.normalize
            and self.separation in ("identity", "polynomial", "softmax", "max", "topk")
        )

    def _potential(self, s):
        sep = self.separation
        if sep in ("identity", "polynomial"):
            s = s if self.active is None else jnp.where(self.active, s, 0.0)
            if sep == "identity":
                return 0.5 * jnp.sum(s * s)
            return jnp.sum(s ** (self.n + 1)) / (self.n + 1)
        s = s if self.active is None else jnp.where(self.active, s, -jnp.inf)
        if sep == "softmax":
            return jax.nn.logsumexp(self.beta * s) / self.beta
        if sep == "topk":  # its gradient is the top-k softmax (almost everywhere)
            return jax.nn.logsumexp(self.beta * top_k(s, self.k, self.approximate, self.recall_target)[0]) / self.beta
        return jnp.max(s)

    def _energy_one(self, q) -> Scalar:
        return 0.5 * jnp.vdot(q, q) - self._potential(self.patterns @ q)

    def energy(self, state: Float[Array, "*batch dim"]) -> Float[Array, "*batch"]:
        r"""$E(q) = \tfrac12\|q\|^2 - \Phi(Mq)$, $\nabla\Phi = \mathrm{sep}$; only for
        auto-association with the dot similarity (ValueError otherwise)."""
        if not self.has_energy:
            raise ValueError(
                f"universal: no energy is known for similarity={self.similarity!r}, separation="
                f"{self.separation!r}, normalize={self.normalize}, auto-associative={self.auto}; one exists "
                "for auto-association with similarity='dot' and separation identity/polynomial/softmax/max."
            )
        return per_state("universal", self._energy_one, state, self.dim)

    @property
    def network(self) -> HAM | None:
        """For dot/softmax auto-association the modern Hopfield HAM; else ``None``."""
        if self.has_energy and self.separation == "softmax":
            from ._modern import modern

            return modern(self.patterns, self.beta, active=self.active).network
        return None


def top_k(s: Float[Array, " K"], k: int, approximate: bool = False, recall_target: float = 0.95):
    """The ``k`` largest entries of ``s`` and their indices (ties: the lower index first):
    `jax.lax.top_k`, or `jax.lax.approx_max_k` when ``approximate`` (exact on CPU, a
    partial reduction with expected recall ``recall_target`` on TPU)."""
    if approximate:
        return jax.lax.approx_max_k(s, k, recall_target=recall_target)
    return jax.lax.top_k(s, k)


def _check_scores(what: str, s, k: int):
    if not hasattr(s, "shape") or tuple(s.shape) != (k,):
        raise ValueError(
            f"universal: the {what} must return one score per stored pattern, shape ({k},); "
            f"got {getattr(s, 'shape', type(s).__name__)}."
        )
    return s


@eqx.filter_jit
def _retrieve_batch(model: UniversalHopfield, q):
    return checks.finite_result("universal.retrieve", jax.vmap(model._retrieve_one)(q), model._overflow_hint())


def universal(
    patterns: Float[Array, "num_patterns dim"],
    similarity: str | Callable = "dot",
    separation: str | Callable = "softmax",
    *,
    beta: float = 1.0,
    n: float = 2,
    threshold: float = 0.0,
    projection: Float[Array, "num_patterns out"] | None = None,
    normalize: bool = False,
    k: int = 1,
    approximate: bool = False,
    recall_target: float = 0.95,
    active: Bool[Array, " num_patterns"] | None = None,
) -> UniversalHopfield:
    r"""A Universal Hopfield Network (Millidge et al. 2022) with memories ``patterns``
    (rows); ``projection`` (one row per memory) makes it hetero-associative. See
    [`UniversalHopfield`][] for the similarity and separation names, ``k`` /
    ``approximate`` / ``recall_target`` of ``"topk"`` and the ``active`` mask."""
    p = as_patterns("universal", patterns)
    for what, fn in (("similarity", similarity), ("separation", separation)):
        if not isinstance(fn, str) and not callable(fn):
            raise TypeError(f"universal: {what} must be a name or a callable, got {type(fn).__name__}.")
    auto = projection is None
    proj = p if auto else as_patterns("universal", projection, "projection")
    if isinstance(similarity, str) and similarity not in SIMILARITIES:
        raise ValueError(
            f"universal: unknown similarity {similarity!r}; valid names are {sorted(SIMILARITIES)} "
            "or a callable (memories (K, D), query (D,)) -> (K,)."
        )
    if isinstance(separation, str) and separation not in SEPARATIONS:
        raise ValueError(
            f"universal: unknown separation {separation!r}; valid names are {list(SEPARATIONS)} "
            "or a callable (K,) -> (K,)."
        )
    return UniversalHopfield(
        patterns=p, projection=proj, similarity=similarity, separation=separation, beta=beta, n=n,
        threshold=threshold, normalize=bool(normalize), auto=auto,
        k=checks.integer("universal", "k", k), approximate=bool(approximate),
        recall_target=float(recall_target), active=as_active("universal", active),
    )
