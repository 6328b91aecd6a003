r"""Sparse Distributed Memory (Kanerva 1988) in Universal Hopfield Network form
(Millidge et al. 2022, §3)."""

from __future__ import annotations

import numbers

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .. import _checks as checks
from ._common import as_patterns, as_queries, binarize, check_pm1
from ._universal import UniversalHopfield, universal

__all__ = ["SparseDistributedMemory", "sdm"]


class SparseDistributedMemory(eqx.Module):
    r"""Kanerva's Sparse Distributed Memory with ±1 hard-location ``addresses`` $A$
    ($M\times N$) and activation radius $r$.

    A location $m$ is active for an address $x$ when the Hamming distance
    $d(a_m, x) \le r$, i.e. the ``"hamming"`` similarity (agreements) is $\ge N - r$ —
    the UHN with similarity ``"hamming"`` and separation ``"threshold"``:
    $\mathrm{act}(x) = [\,\mathrm{sim}(A, x) \ge N - r\,]$.

    - write: counters $C = \sum_\mu \mathrm{act}(x_\mu)\,w_\mu^\top$ (data $w_\mu$ =
      the patterns themselves for auto-association);
    - read: $z = \mathrm{sign}(C^\top\mathrm{act}(q))$ (sum $\ge 0 \to +1$), i.e.
      ``reader`` $=$ UHN$(M = A, P = C)$ followed by the sign.

    SDM has no energy function; ``energy`` raises and ``network`` is ``None``.
    """

    addresses: Float[Array, "num_locations dim"]
    counters: Float[Array, "num_locations out"]
    radius: int = eqx.field(static=True)
    reader: UniversalHopfield

    @property
    def dim(self) -> int:
        """The dimension of an address (and of a query)."""
        return self.addresses.shape[1]

    def activation(self, x: Float[Array, "*batch dim"]) -> Float[Array, "*batch num_locations"]:
        """1 for the hard locations within Hamming distance ``radius`` of ``x``, else 0."""
        q, single = as_queries("sdm", x, self.dim, self.addresses.dtype)
        act = jax.vmap(self.reader.scores)(binarize(q))
        return act[0] if single else act

    def retrieve(self, queries: Float[Array, "*batch dim"], steps: int = 1) -> Float[Array, "*batch out"]:
        """``steps`` reads $q \\leftarrow \\mathrm{sign}(C^\\top\\mathrm{act}(q))$ (more than one
        only for auto-association), from ``sign(queries)``."""
        steps = checks.integer("sdm.retrieve", "steps", steps)
        if steps > 1 and self.counters.shape[1] != self.dim:
            raise ValueError("sdm.retrieve: iterated reads (steps > 1) need an auto-associative memory.")
        q, single = as_queries("sdm", queries, self.dim, self.addresses.dtype)
        z = binarize(q)  # q is finite (as_queries refuses NaN, which sign() would turn into -1)
        for _ in range(steps):
            z = binarize(self.reader.retrieve(z))
        return z[0] if single else z

    def energy(self, state):
        """Raises ``ValueError``: Sparse Distributed Memory is not a gradient system."""
        raise ValueError("sdm: Sparse Distributed Memory has no energy function (it is not a gradient system).")

    @property
    def network(self):
        """``None``: the model is single shot, not an instance of [`ham.HAM`][]."""
        return None


def sdm(
    addresses: Float[Array, "num_locations dim"],
    patterns: Float[Array, "num_patterns dim"],
    radius: int,
    *,
    values: Float[Array, "num_patterns out"] | None = None,
    binarize_inputs: bool = False,
) -> SparseDistributedMemory:
    r"""Write ``patterns`` (±1, at their own addresses) into a Sparse Distributed Memory
    with hard locations ``addresses`` (±1) and Hamming ``radius``; ``values`` (one row per
    pattern) stores other data at those addresses (hetero-association). Non-±1 inputs
    raise unless ``binarize_inputs=True``."""
    a = as_patterns("sdm", addresses, "addresses")
    p = as_patterns("sdm", patterns)
    if p.shape[1] != a.shape[1]:
        raise ValueError(
            f"sdm: patterns have dim {p.shape[1]} but addresses have dim {a.shape[1]} "
            f"(shapes {tuple(p.shape)} and {tuple(a.shape)})."
        )
    w = p if values is None else as_patterns("sdm", values, "values")
    if w.shape[0] != p.shape[0]:
        raise ValueError(f"sdm: values must have one row per pattern: {tuple(w.shape)} vs patterns {tuple(p.shape)}.")
    if binarize_inputs:
        a, p, w = binarize(a), binarize(p), binarize(w)
    else:
        check_pm1("sdm", a, "addresses")
        check_pm1("sdm", p, "patterns")
        if values is not None:
            check_pm1("sdm", w, "values")
    if isinstance(radius, (bool, np.bool_)) or not isinstance(radius, numbers.Real):
        raise TypeError(f"sdm: radius must be a non-negative integer (Hamming distance), got {radius!r}.")
    if not float(radius).is_integer() or radius < 0:
        raise ValueError(f"sdm: radius must be a non-negative integer (Hamming distance), got {radius!r}.")
    radius = int(radius)
    n = a.shape[1]
    locate = universal(a, "hamming", "threshold", threshold=float(n - radius), projection=jnp.zeros((a.shape[0], 1), a.dtype))
    act = jax.vmap(locate.scores)(p)  # (num_patterns, num_locations)
    counters = act.T @ w
    reader = universal(a, "hamming", "threshold", threshold=float(n - radius), projection=counters)
    return SparseDistributedMemory(addresses=a, counters=counters, radius=radius, reader=reader)
