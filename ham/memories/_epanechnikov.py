r"""The Epanechnikov (log-sum-ReLU) Dense Associative Memory (Hoover et al. 2025, "Dense
Associative Memory with Epanechnikov Energy", NeurIPS 2025)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Scalar

from .. import _checks as checks
from ._common import as_active, as_patterns, per_state
from ._one_layer import PatternOneLayerMemory, squared_distances

__all__ = ["EpanechnikovMemory", "epanechnikov"]


class EpanechnikovMemory(PatternOneLayerMemory):
    r"""Log-sum-ReLU energy (Hoover et al. 2025, eq. 4)

    $$E(x) = -\beta^{-1}\log\Big(\varepsilon + \sum_\mu \mathrm{ReLU}\big(1 - \tfrac\beta2
    \|x - \xi_\mu\|^2\big)\Big),$$

    the log of an Epanechnikov kernel density: every stored pattern $\xi_\mu$ has a
    compact support, the ball $\|x - \xi_\mu\|^2 < 2/\beta$. A one-layer HAM (identity
    Lagrangian without its Legendre term, synapse $E(g)$): the dynamics are
    $\tau\dot x = -\nabla E(x) = -\sum_{\mu\in A(x)} (x - \xi_\mu) / (\varepsilon + S(x))$,
    $A(x)$ the patterns whose support contains $x$ and $S(x)$ the ReLU sum.

    **Fixed points.** $\nabla E = 0$ where $x$ is the centroid of $A(x)$. A stored pattern
    is an exact fixed point (a strict local minimum) iff no other support contains it:
    $\|\xi_\mu - \xi_\nu\|^2 \ge 2/\beta$ for every $\nu \ne \mu$; closer patterns merge.
    Where several supports overlap, their centroid is an *emergent* local minimum when it
    lies inside exactly those supports ($S$ is a concave quadratic there). E.g. two
    patterns at distance $d$ with $2/\beta \le d^2 < 8/\beta$: both are stored minima and
    the midpoint is an emergent one, with $E = -\beta^{-1}\log(\varepsilon + 2 - \beta d^2/4)$.

    **Non-smooth points, handled deliberately.**

    - At a support's edge ($\tfrac\beta2\|x-\xi_\mu\|^2 = 1$) the ReLU has a kink; JAX's
      ReLU derivative at 0 is 0, so the gradient there is the one-sided subgradient that
      leaves $\mu$ out (the same convention that makes $\xi_\nu$ on $\xi_\mu$'s edge a
      fixed point). The energy is continuous; barriers between minima sit on such kinks
      (no zero-gradient saddle), so a path maximum, not a refined saddle, measures them.
    - Outside every support $S = 0$: the energy is the plateau $-\beta^{-1}\log\varepsilon$,
      the gradient vanishes and every point is a fixed point. Relaxation leaves such a
      query where it is (``retrieve`` returns it unchanged); [`in_support`][ham.memories.EpanechnikovMemory.in_support]
      tells them apart.
    - $\varepsilon > 0$ keeps the log finite on the plateau. It does not move any fixed
      point (the gradient's zero is the centroid whatever $\varepsilon$), but it bounds the
      gradient $\|x - \xi_\mu\|/(\varepsilon + S)$ near the edges, where $S\to 0$: a larger
      $\varepsilon$ gives gentler dynamics and shallower wells.

    **Relaxation.** Inside an active set the curvature of $E$ is about
    $|A|/(\varepsilon + S)$, often above 2, where large gradient steps oscillate around the
    centroid at nearly constant energy; ``relax`` caps the step at ``dtmax = 0.5`` (see
    [`OneLayerMemory`][ham.memories.OneLayerMemory]).

    ``active`` masks padding rows out (used when sharding pads the patterns).
    """

    patterns: Float[Array, "num_patterns dim"]
    beta: float | Array = eqx.field(default=1.0, converter=checks.positive_converter("epanechnikov", "beta"))
    eps: float | Array = eqx.field(default=1e-6, converter=checks.positive_converter("epanechnikov", "eps"))
    active: Bool[Array, " num_patterns"] | None = None

    @property
    def _name(self) -> str:
        return "epanechnikov"

    @property
    def radius(self) -> float | Array:
        r"""The support radius $\sqrt{2/\beta}$."""
        return jnp.sqrt(2.0 / jnp.asarray(self.beta))

    def _weights(self, x):
        """$\\mathrm{ReLU}(1 - \\frac\\beta2\\|x-\\xi_\\mu\\|^2)$ per pattern (0 for inactive rows)."""
        d2 = squared_distances(self.patterns, x)
        w = jax.nn.relu(1.0 - 0.5 * jnp.asarray(self.beta, d2.dtype) * d2)
        return w if self.active is None else jnp.where(self.active, w, 0.0)

    def energy_of(self, x) -> Scalar:
        """$E(x)$ of one unbatched state (the formula of the class docstring; no checks)."""
        s = jnp.sum(self._weights(x))
        return (-jnp.log(jnp.asarray(self.eps, s.dtype) + s) / self.beta).astype(x.dtype)

    def density(self, state: Float[Array, "*batch dim"]) -> Float[Array, "*batch"]:
        r"""The ReLU sum $S(x) = \sum_\mu \mathrm{ReLU}(1 - \frac\beta2\|x-\xi_\mu\|^2)$."""
        return per_state("epanechnikov", self._density_one, state, self.dim)

    def _density_one(self, x):
        return jnp.sum(self._weights(x))

    def _support_count_one(self, x):
        return jnp.sum(self._weights(x) > 0)

    def in_support(self, state: Float[Array, "*batch dim"]) -> Bool[Array, "*batch"]:
        """Whether a state lies inside at least one support ($S > 0$; outside, the energy is
        the flat plateau and every point is a fixed point)."""
        return self.density(state) > 0

    def support_counts(self, state: Float[Array, "*batch dim"]) -> Array:
        """How many supports contain each state (1 at an isolated stored pattern; the
        size of the overlapping set at an emergent minimum)."""
        return per_state("epanechnikov", self._support_count_one, state, self.dim, hint="unreachable")


def epanechnikov(
    patterns: Float[Array, "num_patterns dim"], beta: float = 1.0, *, eps: float = 1e-6,
    active: Bool[Array, " num_patterns"] | None = None,
) -> EpanechnikovMemory:
    r"""The Epanechnikov (log-sum-ReLU) memory storing the rows of ``patterns`` with
    $E(x) = -\beta^{-1}\log(\varepsilon + \sum_\mu\mathrm{ReLU}(1 - \frac\beta2\|x-\xi_\mu\|^2))$
    (Hoover et al. 2025); ``beta`` > 0 sets the support radius $\sqrt{2/\beta}$, ``eps`` > 0
    the plateau outside every support (see [`EpanechnikovMemory`][ham.memories.EpanechnikovMemory]).
    ``active``: an optional boolean mask of the patterns that take part."""
    p = as_patterns("epanechnikov", patterns)
    return EpanechnikovMemory(patterns=p, beta=beta, eps=eps, active=as_active("epanechnikov", active))
