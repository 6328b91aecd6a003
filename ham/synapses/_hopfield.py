"""A Hopfield memory applied to every token of a layer (the Energy Transformer's)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Scalar

from .. import _checks as checks
from ._base import Synapse, shape_error

KINDS = ("relu", "softmax")


class Hopfield(Synapse):
    r"""Token-wise Hopfield network energy with stored patterns $\xi_\mu$ (Hoover et
    al. 2023, "Energy Transformer", eq. 4), the hidden units integrated out:

    - ``kind="relu"``: $E = -\tfrac12 \sum_B \sum_\mu \mathrm{relu}(\xi_\mu\cdot g_B)^2$;
    - ``kind="softmax"``: $E = -\beta^{-1} \sum_B \log\sum_\mu \exp(\beta\, \xi_\mu\cdot g_B)$
      (the modern continuous Hopfield energy, Ramsauer et al. 2020).

    ``xi`` has shape ``(num_memories, dim)``; the joined layer has shape ``(..., dim)``
    and every leading index $B$ (a token) meets the same memories. ``beta`` is only used
    by ``"softmax"``.
    """

    xi: Float[Array, "memories dim"]
    kind: str = eqx.field(static=True)
    beta: float | Float[Array, ""]

    def __init__(self, xi: Float[ArrayLike, "memories dim"], kind: str = "relu", beta: float | Float[ArrayLike, ""] = 1.0):
        self.xi = checks.finite("Hopfield", "xi", checks.real_array("Hopfield", "xi", xi))
        self.kind = kind
        beta = checks.param("Hopfield", "beta", beta)
        self.beta = beta if isinstance(beta, (int, float)) else jnp.asarray(beta)

    def __check_init__(self):
        if not isinstance(self.kind, str) or self.kind not in KINDS:
            raise ValueError(f"Hopfield: kind must be one of {KINDS}, got {self.kind!r}.")
        if self.xi.ndim != 2:
            raise ValueError(f"Hopfield: xi must have shape (num_memories, dim), got {tuple(self.xi.shape)}.")
        if min(self.xi.shape) < 1:
            raise ValueError(f"Hopfield: xi must be non-empty, got shape {tuple(self.xi.shape)}.")

    def energy(self, g: Float[Array, "*tokens dim"]) -> Scalar:
        """The token-wise Hopfield energy of the class docstring (``relu`` or ``softmax``)."""
        overlaps = g @ self.xi.T  # (*tokens, memories)
        if self.kind == "relu":
            r = jax.nn.relu(overlaps)
            return -0.5 * jnp.sum(r * r)
        beta = jnp.asarray(self.beta, dtype=g.dtype)
        return -jnp.sum(jax.nn.logsumexp(beta * overlaps, axis=-1)) / beta

    def scores(self, g: Float[ArrayLike, "*tokens dim"]) -> Float[Array, "*tokens memories"]:
        r"""The softmax logits of the ``"softmax"`` Hopfield energy at activations ``g``:
        ``scores[..., B, μ]`` $= \beta\, \xi_\mu\cdot g_B$, so that
        $E = -\beta^{-1}\sum_B \operatorname{logsumexp}_\mu \texttt{scores}[B, \mu]$ and the
        softmax over $\mu$ is how each token's update $\sum_\mu \xi_\mu\,
        \mathrm{softmax}_\mu$ weighs the memories (Ramsauer et al. 2020; Hoover et al. 2023,
        eq. 4 with a softmax). [`ham.landscape.attention_spread`][] of them counts the
        memories a token's state averages (1 = a single-memory fixed point, about all =
        the global average, in between = a metastable subset; Ramsauer et al. 2020).

        **Arguments:**

        - ``g``: the joined layer's activations, ``(*tokens, dim)``.

        **Returns:** ``(*tokens, memories)``.

        Raises ``ValueError`` for ``kind="relu"``: its energy
        $-\tfrac12\sum \mathrm{relu}(\xi_\mu\cdot g_B)^2$ has no softmax over the memories.
        """
        owner = "Hopfield.scores"
        if self.kind != "softmax":
            raise ValueError(
                f"{owner}: only kind='softmax' has softmax logits over the memories; this synapse has "
                f"kind={self.kind!r} (its energy is -1/2 sum relu(xi . g)^2, no softmax)."
            )
        g = checks.real_array(owner, "g", g)
        dim = self.xi.shape[1]
        if g.ndim < 1 or g.shape[-1] != dim:
            raise ValueError(
                f"{owner}: g must have shape (*tokens, dim) with dim = {dim} (xi has shape "
                f"{tuple(self.xi.shape)}), got {tuple(g.shape)}."
            )
        g = checks.finite(owner, "g", g, runtime=True)
        return jnp.asarray(self.beta, dtype=g.dtype) * (g @ self.xi.T)

    def check_shapes(self, name, shapes):
        """Raise unless the one joined layer's last dimension is the memories' ``dim``."""
        shapes = tuple(tuple(s) for s in shapes)
        if len(shapes) != 1 or len(shapes[0]) < 1:
            raise shape_error(name, "Hopfield", "joins one layer of shape (..., dim)", shapes)
        if shapes[0][-1] != self.xi.shape[1]:
            raise shape_error(
                name, "Hopfield",
                f"xi of shape {tuple(self.xi.shape)} needs a last layer dimension of {self.xi.shape[1]}", shapes,
            )
