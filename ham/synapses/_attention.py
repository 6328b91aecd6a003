"""The Energy Transformer's multi-head attention energy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Scalar

from .. import _checks as checks
from ._base import Synapse, shape_error


class Attention(Synapse):
    r"""Multi-head attention energy over a layer of tokens (Hoover et al. 2023,
    "Energy Transformer", eq. 3):

    $E = -\sum_h \beta_h^{-1} \sum_C \log \sum_{B \ne C} \exp\big(\beta_h\, K_{hB}\cdot Q_{hC}\big)$,
    with keys $K_{hB} = W^K_h g_B$ and queries $Q_{hC} = W^Q_h g_C$,

    where $g$ of shape ``(tokens, dim)`` is the activation of the one layer the
    synapse joins, and ``W_K``, ``W_Q`` have shape ``(heads, head_dim, dim)``.

    **Arguments:**

    - ``W_K``, ``W_Q``: key and query weights, ``(heads, head_dim, dim)``.
    - ``beta``: inverse temperature, a scalar or one per head ``(heads,)``; the paper
      uses $1/\sqrt{\text{head\_dim}}$ (the default). A Python float stays fixed under
      ``eqx.filter(..., eqx.is_inexact_array)``; pass an array to learn it.
    - ``mask``: optional boolean ``(tokens, tokens)``; ``mask[C, B]`` says whether query
      token ``C`` may attend to key token ``B``. The default allows every pair with
      $B \ne C$, as in the paper. A query with no allowed key contributes nothing.
    """

    W_K: Float[Array, "heads head_dim dim"]
    W_Q: Float[Array, "heads head_dim dim"]
    beta: float | Float[Array, "*heads"]
    mask: Bool[Array, "tokens tokens"] | None

    def __init__(
        self,
        W_K: Float[ArrayLike, "heads head_dim dim"],
        W_Q: Float[ArrayLike, "heads head_dim dim"],
        beta: float | Float[ArrayLike, "*heads"] | None = None,
        mask: Bool[ArrayLike, "tokens tokens"] | None = None,
    ):
        self.W_K = checks.finite("Attention", "W_K", checks.real_array("Attention", "W_K", W_K))
        self.W_Q = checks.finite("Attention", "W_Q", checks.real_array("Attention", "W_Q", W_Q))
        if beta is None:
            beta = 1.0 / float(np.sqrt(self.W_K.shape[1])) if self.W_K.ndim == 3 and self.W_K.shape[1] > 0 else 1.0
        heads = self.W_K.shape[0] if self.W_K.ndim == 3 else None
        shapes = ((),) if heads is None else ((), (heads,))
        beta = checks.param("Attention", "beta", beta, shapes=shapes,
                            shape_text=f"a scalar or have shape (heads,) = ({heads},)")
        self.beta = beta if isinstance(beta, (int, float)) else jnp.asarray(beta)
        if mask is not None:
            mask = jnp.asarray(mask)
            if mask.dtype != jnp.bool_ and not (
                jnp.issubdtype(mask.dtype, jnp.integer) or jnp.issubdtype(mask.dtype, jnp.floating)
            ):
                raise TypeError(f"Attention: mask must be a boolean array, got dtype {mask.dtype}.")
            if mask.dtype != jnp.bool_:
                if not checks.is_traced(mask) and not bool(np.all((np.asarray(mask) == 0) | (np.asarray(mask) == 1))):
                    raise ValueError("Attention: mask must be boolean (or 0/1), got other values.")
                mask = mask != 0
        self.mask = mask

    def __check_init__(self):
        if self.W_K.ndim != 3 or self.W_K.shape != self.W_Q.shape:
            raise ValueError(
                f"Attention: W_K and W_Q must both have shape (heads, head_dim, dim); got W_K "
                f"{tuple(self.W_K.shape)} and W_Q {tuple(self.W_Q.shape)}."
            )
        if min(self.W_K.shape) < 1:
            raise ValueError(f"Attention: W_K and W_Q must be non-empty, got shape {tuple(self.W_K.shape)}.")
        if self.mask is not None and (self.mask.ndim != 2 or self.mask.shape[0] != self.mask.shape[1]):
            raise ValueError(f"Attention: mask must be square (tokens, tokens), got shape {tuple(self.mask.shape)}.")

    def _allowed(self, tokens: int) -> Bool[Array, "tokens tokens"]:
        if self.mask is None:
            return ~jnp.eye(tokens, dtype=bool)
        return self.mask

    def _logits(self, g: Float[Array, "*batch tokens dim"]) -> Float[Array, "*batch heads tokens tokens"]:
        """β_h K_hB·Q_hC for every pair, unmasked (``[..., head, query C, key B]``)."""
        heads = self.W_K.shape[0]
        keys = jnp.einsum("hed,...bd->...hbe", self.W_K, g)
        queries = jnp.einsum("hed,...cd->...hce", self.W_Q, g)
        beta = jnp.broadcast_to(jnp.asarray(self.beta, dtype=g.dtype), (heads,))
        return beta[:, None, None] * jnp.einsum("...hce,...hbe->...hcb", queries, keys)

    def scores(self, g: Float[ArrayLike, "*batch tokens dim"]) -> Float[Array, "*batch heads tokens tokens"]:
        r"""The softmax logits of the attention energy at activations ``g``:
        ``scores[..., h, C, B]`` $= \beta_h\, K_{hB}\cdot Q_{hC}$ where query token $C$ may
        attend to key token $B$ (the mask; by default every $B \ne C$), and $-\infty$
        elsewhere (Hoover et al. 2023, "Energy Transformer", eq. 3). Their softmax over
        $B$ is the attention matrix $A_h[B, C]$ of the ET's update, and
        $E = -\sum_h \beta_h^{-1}\sum_C \operatorname{logsumexp}_B \texttt{scores}[h, C, B]$;
        [`ham.landscape.attention_spread`][] of them counts the keys that hold a given mass of
        each query's attention (Ramsauer et al. 2020: about all allowed keys = global
        averaging, a few = a metastable subset, 1 = a single-key fixed point). A query row
        with no allowed key is all $-\infty$ (its spread is 0).

        **Arguments:**

        - ``g``: the joined layer's activations, ``(*batch, tokens, dim)`` (for the Energy
          Transformer, ``et.activations(x)``).

        **Returns:** ``(*batch, heads, tokens, tokens)``, indexed ``[..., head, query, key]``.
        """
        owner = "Attention.scores"
        g = checks.real_array(owner, "g", g)
        dim = self.W_K.shape[-1]
        if g.ndim < 2 or g.shape[-1] != dim:
            raise ValueError(
                f"{owner}: g must have shape (*batch, tokens, dim) with dim = {dim} (W_K has shape "
                f"{tuple(self.W_K.shape)}), got {tuple(g.shape)}."
            )
        tokens = g.shape[-2]
        if self.mask is not None and self.mask.shape != (tokens, tokens):
            raise ValueError(
                f"{owner}: g has {tokens} tokens but the mask has shape {tuple(self.mask.shape)}; "
                f"it must be (tokens, tokens) = ({tokens}, {tokens})."
            )
        if self.mask is None and tokens < 2:
            raise ValueError(f"{owner}: g must have at least 2 tokens (each token attends to the others), got {tokens}.")
        g = checks.finite(owner, "g", g, runtime=True)
        return jnp.where(self._allowed(tokens), self._logits(g), -jnp.inf)

    def energy(self, g: Float[Array, "tokens dim"]) -> Scalar:
        """The attention energy of the class docstring, for one layer of tokens."""
        heads = self.W_K.shape[0]
        beta = jnp.broadcast_to(jnp.asarray(self.beta, dtype=g.dtype), (heads,))
        scores = self._logits(g)  # [head, query C, key B]
        allowed = self._allowed(g.shape[0])
        has_key = jnp.any(allowed, axis=-1)  # (C,)
        # Rows without any allowed key keep their finite scores (so the gradient stays
        # finite) and are dropped after the log-sum-exp.
        keep = allowed | ~has_key[:, None]
        lse = jax.nn.logsumexp(jnp.where(keep, scores, -jnp.inf), axis=-1)  # (heads, C)
        lse = jnp.where(has_key, lse, 0.0)
        return -jnp.sum(jnp.sum(lse, axis=-1) / beta)

    def check_shapes(self, name, shapes):
        """Raise unless the one joined layer is ``(tokens, dim)`` with the weights' ``dim``,
        at least 2 tokens (or a mask), and a mask of shape ``(tokens, tokens)``."""
        shapes = tuple(tuple(s) for s in shapes)
        dim = self.W_K.shape[-1]
        if len(shapes) != 1 or len(shapes[0]) != 2:
            raise shape_error(name, "Attention", "joins one layer of shape (tokens, dim)", shapes)
        tokens, d = shapes[0]
        if d != dim:
            raise shape_error(
                name, "Attention",
                f"W_K/W_Q of shape {tuple(self.W_K.shape)} need tokens of dimension {dim}, not {d}", shapes,
            )
        if self.mask is not None and self.mask.shape != (tokens, tokens):
            raise shape_error(
                name, "Attention", f"mask of shape {tuple(self.mask.shape)} must be (tokens, tokens) = ({tokens}, {tokens})",
                shapes,
            )
        if self.mask is None and tokens < 2:
            raise shape_error(name, "Attention", "needs at least 2 tokens (each token attends to the others)", shapes)

