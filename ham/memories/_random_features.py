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

#: About this many numbers in one block of (patterns x features) while writing (the block's
#: projections and features stay in cache: 128 patterns at Y = 4096 wrote fastest).
_BLOCK_ELEMENTS = 1 << 19

# pi/2 split into three float32 parts whose products with the quadrant n are exact for
# |n| < 2^16 (Cody & Waite's reduction; the split of Cephes' sinf, doubled)
_PIO2 = (1.5703125, 4.837512969970703125e-4, 7.54978995489188216e-8)
# minimax polynomials of sin and cos on [-pi/4, pi/4] (Cephes sinf / cosf)
_SIN = (-1.6666654611e-1, 8.3321608736e-3, -1.9515295891e-4)
_COS = (4.166664568298827e-2, -1.388731625493765e-3, 2.443315711809948e-5)


@jax.custom_jvp
def sincos(z: Float[Array, "*shape"]) -> tuple[Float[Array, "*shape"], Float[Array, "*shape"]]:
    r"""$(\cos z, \sin z)$ elementwise. In float64 ``jnp.cos``/``jnp.sin``; in float32 (and
    narrower, computed in float32) by range reduction $z = n\pi/2 + r$, $|r| \le \pi/4$
    (three-part $\pi/2$), and minimax polynomials in $r$ (Cephes' ``sinf``/``cosf``): plain
    multiplies and adds that XLA vectorises and fuses, where XLA's CPU ``cos``/``sin`` call
    the scalar library (about 30x slower: 20 ns per element). Absolute error <= 1e-7 for
    $|z| \le 10^4$ (measured; ``jnp.cos``: 3e-8); beyond it the reduction loses bits like the
    argument's own float32 rounding does. Derivative $(-\sin z, \cos z)$ (a ``custom_jvp``:
    exact, not the polynomial's)."""
    if jnp.dtype(z.dtype) == jnp.float64:
        return jnp.cos(z), jnp.sin(z)
    dtype = z.dtype
    z = z.astype(jnp.float32)
    f = functools.partial(jnp.asarray, dtype=jnp.float32)
    n = jnp.round(z * f(2 / math.pi))
    r = ((z - n * f(_PIO2[0])) - n * f(_PIO2[1])) - n * f(_PIO2[2])
    r2 = r * r
    s = r + r * r2 * (f(_SIN[0]) + r2 * (f(_SIN[1]) + r2 * f(_SIN[2])))
    c = 1 - 0.5 * r2 + r2 * r2 * (f(_COS[0]) + r2 * (f(_COS[1]) + r2 * f(_COS[2])))
    q = n.astype(jnp.int32) & 3  # the quadrant: (cos, sin) = (c, s), (-s, c), (-c, -s), (s, -c)
    odd = (q & 1) == 1
    cos = jnp.where(odd, s, c)
    sin = jnp.where(odd, c, s)
    cos = jnp.where((q == 1) | (q == 2), -cos, cos)
    sin = jnp.where(q >= 2, -sin, sin)
    return cos.astype(dtype), sin.astype(dtype)


@sincos.defjvp
def _sincos_jvp(primals, tangents):
    (z,), (dz,) = primals, tangents
    cos, sin = sincos(z)
    return (cos, sin), (-sin * dz, cos * dz)


def _projections(omega, beta, x):
    r"""$\sqrt\beta\,\Omega x$ for a batch ``x`` (``(n, D)`` -> ``(n, rows)``)."""
    acc = jnp.promote_types(omega.dtype, jnp.float32)
    return jnp.sqrt(jnp.asarray(beta, acc)) * jnp.matmul(x.astype(omega.dtype), omega.T, preferred_element_type=acc)


def _block_sums(kind, omega, beta, block, keep):
    """Per-feature contribution of the rows of ``block`` where ``keep``: ``(rows, 2)`` sums of
    cos/sin (trig) or ``(rows, 1)`` log-sum-exp of log-features (positive)."""
    z = _projections(omega, beta, block)
    keep = keep[:, None]
    if kind == "trigonometric":
        cos, sin = sincos(z)
        return jnp.stack([jnp.sum(jnp.where(keep, cos, 0.0), axis=0), jnp.sum(jnp.where(keep, sin, 0.0), axis=0)], -1)
    sq = jnp.sum(jnp.square(block.astype(z.dtype)), axis=-1, keepdims=True)
    return jax.nn.logsumexp(jnp.where(keep, z - jnp.asarray(beta, z.dtype) * sq, -jnp.inf), axis=0)[:, None]


@functools.partial(jax.jit, static_argnames=("kind", "block_size"))
def _written(kind, omega, beta, tensor, patterns, block_size=None):
    """``tensor`` plus the features of ``patterns`` (sum for trig, log-sum-exp for
    positive): a ``lax.scan`` over blocks of ``block_size`` patterns (no ``(K, features)``
    array, no copy of ``patterns``). The last block, when ``block_size`` does not divide K,
    is the last ``block_size`` rows with those already written masked out."""
    k, rows = patterns.shape[0], omega.shape[0]
    c = block_size if block_size is not None else max(1, _BLOCK_ELEMENTS // max(rows, 1))
    c = int(min(k, c))
    blocks = -(-k // c)

    def body(acc, i):
        start = jnp.minimum(i * c, k - c)
        block = jax.lax.dynamic_slice_in_dim(patterns, start, c, 0)
        terms = _block_sums(kind, omega, beta, block, start + jnp.arange(c) >= i * c)
        return (acc + terms if kind == "trigonometric" else jnp.logaddexp(acc, terms)), None

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

    def write(self, patterns: Float[Array, "num_patterns dim"], *, block_size: int | None = None
              ) -> "RandomFeatureMemory":
        r"""The memory with ``patterns`` (rows) added: $T \leftarrow T + \sum_\mu\varphi(\xi_\mu)$.
        Writing two halves one after the other equals writing all at once (up to rounding).

        One jit-compiled ``lax.scan`` over blocks of ``block_size`` patterns (default about
        $2^{19}/Y$: 128 at $Y = 4096$), about $K\,Y(2D + c)$ operations with the
        vectorised ``sincos`` (this module): 4.4k -> 42k patterns/s at
        $Y = 4096$, $D = 64$ on a shared 2-core CPU."""
        p = as_patterns("random_features.write", patterns)
        if p.shape[1] != self.dim:
            raise ValueError(
                f"random_features.write: patterns must have dim={self.dim} columns (the memory's), got shape "
                f"{tuple(p.shape)}."
            )
        if block_size is not None:
            block_size = checks.integer("random_features.write", "block_size", block_size)
        tensor = _written(self.kind, self.omega, self.beta, self.tensor, p.astype(self.dtype), block_size)
        new = eqx.tree_at(lambda m: m.tensor, self, tensor)
        return eqx.tree_at(lambda m: m.count, new, self.count + p.shape[0])

    def _log_estimate(self, x):
        """(log of the clipped estimate, the raw estimate; for positive: log, exp(log))."""
        z = _projections(self.omega, self.beta, x[None])[0]
        t = self.tensor.astype(z.dtype)
        if self.kind == "trigonometric":
            cos, sin = sincos(z)
            s = (jnp.vdot(cos, t[:, 0]) + jnp.vdot(sin, t[:, 1])) / self.num_features
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
        return per_state("random_features", self._estimate_one, state, self.dim)

    def _estimate_one(self, x):
        return self._log_estimate(x)[1]

    def _clipped_one(self, x):
        return self._log_estimate(x)[1] <= self.floor

    def _never_clipped_one(self, x):
        return jnp.zeros((), bool)

    def clipped(self, state: Float[Array, "*batch dim"]) -> Bool[Array, "*batch"]:
        """Whether the estimate is at or below ``floor`` (clipped: the state sits on the
        zero-gradient plateau). Never for ``"positive"`` features."""
        if self.kind == "positive":  # evaluated in the log domain: never clipped (tiny values do not underflow)
            return per_state("random_features", self._never_clipped_one, state, self.dim, hint="unreachable")
        return per_state("random_features", self._clipped_one, state, self.dim, hint="unreachable")


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
