r"""Dense Associative Memory through random features (Hoover et al. 2024, "Dense
Associative Memory Through the Lens of Random Features", NeurIPS 2024): every pattern is
written into one fixed-size tensor, so storage and retrieval cost do not grow with the
number of patterns."""

from __future__ import annotations

import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, Scalar

from .. import _checks as checks
from ._common import as_patterns, per_state
from ._one_layer import OneLayerMemory

__all__ = ["RandomFeatureMemory", "random_features", "FEATURE_KINDS"]

FEATURE_KINDS = ("trigonometric", "positive")
"""The feature maps of [`random_features`][ham.memories.random_features]."""

#: About this many numbers in one block of (patterns x features) while writing.
_BLOCK_ELEMENTS = 1 << 20


def _projections(omega, beta, x):
    r"""$\sqrt\beta\,\Omega x$ for a batch ``x`` (``(n, D)`` -> ``(n, rows)``)."""
    acc = jnp.promote_types(omega.dtype, jnp.float32)
    return jnp.sqrt(jnp.asarray(beta, acc)) * jnp.matmul(x.astype(omega.dtype), omega.T, preferred_element_type=acc)


def _block_terms(kind, omega, beta, block):
    """Per-feature contribution of a block of patterns: ``(c, rows, 2)`` cos/sin (trig) or
    ``(c, rows, 1)`` log-features (positive)."""
    z = _projections(omega, beta, block)
    if kind == "trigonometric":
        return jnp.stack([jnp.cos(z), jnp.sin(z)], axis=-1)
    sq = jnp.sum(jnp.square(block.astype(z.dtype)), axis=-1, keepdims=True)
    return (z - jnp.asarray(beta, z.dtype) * sq)[..., None]


@functools.partial(jax.jit, static_argnames=("kind",))
def _written(kind, omega, beta, tensor, patterns):
    """``tensor`` plus the features of ``patterns`` (sum for trig, log-sum-exp for
    positive), accumulated over blocks of patterns (no ``(K, features)`` array)."""
    k, rows = patterns.shape[0], omega.shape[0]
    c = int(min(k, max(1, _BLOCK_ELEMENTS // max(rows, 1))))
    blocks = -(-k // c)

    def body(acc, i):
        start = jnp.minimum(i * c, k - c)  # the last block overlaps the one before: its old rows masked
        block = jax.lax.dynamic_slice_in_dim(patterns, start, c, 0)
        keep = (start + jnp.arange(c) >= i * c)[:, None, None]
        terms = _block_terms(kind, omega, beta, block)
        if kind == "trigonometric":
            return acc + jnp.sum(jnp.where(keep, terms, 0.0), axis=0), None
        return jnp.logaddexp(acc, jax.nn.logsumexp(jnp.where(keep, terms, -jnp.inf), axis=0)), None

    out, _ = jax.lax.scan(body, tensor.astype(jnp.promote_types(tensor.dtype, jnp.float32)), jnp.arange(blocks))
    return out.astype(tensor.dtype)


class RandomFeatureMemory(OneLayerMemory):
    r"""DenseAM through random features (Hoover et al. 2024; "DrDAM").

    It approximates the L2 log-sum-exp energy ([`log_sum_exp`][ham.memories.log_sum_exp])
    $E(x) = -\beta^{-1}\log\sum_\mu k(x, \xi_\mu)$, $k(x,\xi) = e^{-\frac\beta2\|x-\xi\|^2}$,
    by random features $\varphi$ with $\mathbb E[\varphi(x)\cdot\varphi(\xi)] = k(x,\xi)$
    (Rahimi & Recht 2007): every pattern is *written* into one tensor
    $T = \sum_\mu \varphi(\xi_\mu)$ and

    $$\hat E(x) = -\beta^{-1}\log \max\big(\varphi(x)\cdot T,\ \text{floor}\big).$$

    Memory (``omega`` $Y\times D$ and ``tensor``) and the cost of a query do not depend
    on the number of stored patterns $K$; [`write`][ham.memories.RandomFeatureMemory.write]
    adds patterns (online storage). Relaxation is the one-layer HAM's
    $\tau\dot x = -\nabla\hat E(x)$ (gradient by autodiff).

    Feature maps, from $Y$ = ``num_features`` Gaussian vectors $\omega_i \sim N(0, I_D)$:

    - ``"trigonometric"`` (Rahimi & Recht): $\varphi(x) = Y^{-1/2}[\cos(\sqrt\beta\,\omega_i
      \cdot x), \sin(\sqrt\beta\,\omega_i\cdot x)]_i$ ($2Y$ numbers), so $\varphi(x)\cdot T =
      Y^{-1}\sum_{i,\mu}\cos(\sqrt\beta\,\omega_i\cdot(x-\xi_\mu))$, unbiased with error
      $O(\sqrt{K/Y})$. The estimate can be $\le 0$ (far from every memory, or when $K/Y$
      is large): it is then **clipped** to ``floor`` before the log, as the authors do, and
      the query sits on a plateau $\hat E = -\beta^{-1}\log(\text{floor})$ with zero
      gradient (relaxation leaves it where it is). [`clipped`][ham.memories.RandomFeatureMemory.clipped]
      reports which queries are.
    - ``"positive"`` (positive exponential features, as in Performer's FAVOR+):
      $\varphi(x) = Y^{-1/2}[\exp(\sqrt\beta\,\omega_i\cdot x - \beta\|x\|^2)]_i$ ($Y$
      numbers), never negative, so never clipped; the tensor holds $\log T$ (written with
      log-sum-exp, no overflow). Its variance grows like $e^{4\beta x\cdot\xi}$: it fails
      at large $\beta\|\xi\|^2$ where the trigonometric map still works.

    ``tensor`` has shape ``(rows, 2)`` (cos, sin sums) or ``(rows, 1)`` ($\log T$); rows
    beyond ``num_features`` (padding added by sharding) are zero rows of ``omega`` with a
    zero (or $-\infty$) tensor entry and contribute nothing.
    """

    omega: Float[Array, "rows dim"]
    tensor: Float[Array, "rows width"]
    beta: float | Array = eqx.field(default=1.0, converter=checks.positive_converter("random_features", "beta"))
    num_features: int = eqx.field(static=True, default=1)
    kind: str = eqx.field(static=True, default="trigonometric")
    floor: float = eqx.field(static=True, default=1e-30)
    count: Int[Array, ""] | int = 0

    def __check_init__(self):
        if not isinstance(self.kind, str) or self.kind not in FEATURE_KINDS:
            raise ValueError(f"random_features: kind must be one of {FEATURE_KINDS}, got {self.kind!r}.")
        if self.omega.ndim != 2:
            raise ValueError(f"random_features: omega must have shape (num_features, dim), got {tuple(self.omega.shape)}.")
        width = 2 if self.kind == "trigonometric" else 1
        if tuple(self.tensor.shape) != (self.omega.shape[0], width):
            raise ValueError(
                f"random_features: tensor must have shape ({self.omega.shape[0]}, {width}) for kind {self.kind!r} "
                f"and omega of shape {tuple(self.omega.shape)}, got {tuple(self.tensor.shape)}."
            )
        if not 1 <= self.num_features <= self.omega.shape[0]:
            raise ValueError(
                f"random_features: num_features={self.num_features} must be in [1, {self.omega.shape[0]}] "
                "(the rows of omega)."
            )
        if not (isinstance(self.floor, float) and self.floor > 0 and math.isfinite(self.floor)):
            raise ValueError(f"random_features: floor must be a float > 0 and finite, got {self.floor!r}.")

    @property
    def dim(self) -> int:
        """The dimension of a pattern (and of a query)."""
        return self.omega.shape[1]

    @property
    def dtype(self):
        """The floating dtype of states (the stored arrays\')."""
        return self.omega.dtype

    @property
    def _name(self) -> str:
        return "random_features"

    @property
    def nbytes(self) -> int:
        """Bytes of the memory's arrays (``omega`` and ``tensor``): independent of how many
        patterns are stored."""
        return int(self.omega.nbytes + self.tensor.nbytes)

    def write(self, patterns: Float[Array, "num_patterns dim"]) -> "RandomFeatureMemory":
        r"""The memory with ``patterns`` (rows) added: $T \leftarrow T + \sum_\mu\varphi(\xi_\mu)$.
        Writing two halves one after the other equals writing all at once (up to rounding)."""
        p = as_patterns("random_features.write", patterns)
        if p.shape[1] != self.dim:
            raise ValueError(
                f"random_features.write: patterns must have dim={self.dim} columns (the memory's), got shape "
                f"{tuple(p.shape)}."
            )
        tensor = _written(self.kind, self.omega, self.beta, self.tensor, p.astype(self.dtype))
        new = eqx.tree_at(lambda m: m.tensor, self, tensor)
        return eqx.tree_at(lambda m: m.count, new, self.count + p.shape[0])

    def _log_estimate(self, x):
        """(log of the clipped estimate, the raw estimate; for positive: log, exp(log))."""
        z = _projections(self.omega, self.beta, x[None])[0]
        t = self.tensor.astype(z.dtype)
        if self.kind == "trigonometric":
            s = (jnp.vdot(jnp.cos(z), t[:, 0]) + jnp.vdot(jnp.sin(z), t[:, 1])) / self.num_features
            return jnp.log(jnp.maximum(s, jnp.asarray(self.floor, s.dtype))), s
        xa = x.astype(z.dtype)
        a = z - jnp.asarray(self.beta, z.dtype) * jnp.vdot(xa, xa) + t[:, 0]
        log_s = jax.nn.logsumexp(a) - jnp.log(jnp.asarray(self.num_features, z.dtype))
        return log_s, jnp.exp(log_s)

    def energy_of(self, x) -> Scalar:
        """$E(x)$ of one unbatched state (the formula of the class docstring; no checks)."""
        return (-self._log_estimate(x)[0] / self.beta).astype(x.dtype)

    def estimate(self, state: Float[Array, "*batch dim"]) -> Float[Array, "*batch"]:
        r"""The kernel-sum estimate $\varphi(x)\cdot T \approx \sum_\mu e^{-\frac\beta2\|x-\xi_\mu\|^2}$
        before clipping (may be negative for ``"trigonometric"``)."""
        return per_state("random_features", lambda x: self._log_estimate(x)[1], state, self.dim)

    def clipped(self, state: Float[Array, "*batch dim"]) -> Bool[Array, "*batch"]:
        """Whether the estimate is at or below ``floor`` (clipped: the state sits on the
        zero-gradient plateau). Never for ``"positive"`` features."""
        if self.kind == "positive":  # evaluated in the log domain: never clipped (tiny values do not underflow)
            return per_state("random_features", lambda x: jnp.zeros((), bool), state, self.dim, hint="unreachable")
        return per_state("random_features", lambda x: self._log_estimate(x)[1] <= self.floor, state, self.dim,
                         hint="unreachable")


def random_features(
    patterns: Float[Array, "num_patterns dim"],
    beta: float,
    num_features: int,
    *,
    kind: str = "trigonometric",
    key,
    floor: float = 1e-30,
) -> RandomFeatureMemory:
    r"""A random-feature DenseAM (Hoover et al. 2024) with ``num_features`` random
    vectors, storing the rows of ``patterns`` (more can be added with ``.write``).

    **Arguments:**

    - `patterns`: ``(num_patterns, dim)``, finite.
    - `beta`: inverse temperature > 0 of the kernel $e^{-\frac\beta2\|x-\xi\|^2}$.
    - `num_features`: $Y \ge 1$, the number of random vectors $\omega_i$ (rows of the
      ``(Y, dim)`` matrix ``omega``, drawn from ``key``).
    - `kind`: ``"trigonometric"`` (sin/cos, Rahimi–Recht) or ``"positive"``
      (positive exponential features); see [`RandomFeatureMemory`][ham.memories.RandomFeatureMemory].
    - `key`: a PRNG key (``jax.random.key(seed)``).
    - `floor`: the trigonometric estimate is clipped to this before the log.

    **Returns:** a [`RandomFeatureMemory`][ham.memories.RandomFeatureMemory] of
    $Y(D + 2)$ (trigonometric) or $Y(D + 1)$ (positive) numbers, whatever the number of
    patterns.
    """
    p = as_patterns("random_features", patterns)
    y = checks.integer("random_features", "num_features", num_features)
    if not isinstance(kind, str) or kind not in FEATURE_KINDS:
        raise ValueError(f"random_features: kind must be one of {FEATURE_KINDS}, got {kind!r}.")
    beta = checks.param("random_features", "beta", beta)
    floor = float(checks.param("random_features", "floor", floor))
    key = checks.prng_key("random_features", "key", key)
    dtype = p.dtype if jnp.issubdtype(p.dtype, jnp.floating) else jnp.zeros(()).dtype
    omega = jax.random.normal(key, (y, p.shape[1]), dtype)
    width = 2 if kind == "trigonometric" else 1
    tensor = jnp.zeros((y, width), dtype) if kind == "trigonometric" else jnp.full((y, 1), -jnp.inf, dtype)
    empty = RandomFeatureMemory(omega=omega, tensor=tensor, beta=beta, num_features=y, kind=kind, floor=floor,
                                count=jnp.asarray(0, jnp.int32))
    return empty.write(p.astype(dtype))
