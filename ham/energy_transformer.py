r"""The Energy Transformer (Hoover et al. 2023, "Energy Transformer", NeurIPS) as a
[`ham.HAM`][]: one layer of tokens with the layer-norm Lagrangian, a multi-head
[`ham.synapses.Attention`][] energy and a token-wise [`ham.synapses.Hopfield`][]
energy, all joined to that layer. With $g = \partial L/\partial x$ and
$L(x) = \sum_B D\gamma\sqrt{\mathrm{var}(x_B) + \epsilon} + \delta\cdot x_B$:

- ``legendre=False`` (default, the paper's energy): $E = E^{\text{ATT}}(g) + E^{\text{HN}}(g)$
  and inference $x \leftarrow x - \alpha\,\partial E/\partial g$ (no leak);
- ``legendre=True`` (the generic HAM form): $E = \sum_B (x_B\cdot g_B - L) + E^{\text{ATT}} +
  E^{\text{HN}}$, so each step is $x \leftarrow (1-\alpha)x - \alpha\,\partial E^{\text{syn}}/\partial g$.

Both are Lyapunov: $dE/dt = -\tau\dot x^\top\nabla^2 L\,\dot x \le 0$ with $\nabla^2 L \succeq 0$, and
$E$ is bounded below because $|g_B|$ is bounded by layer norm. Inference is the discrete
descent for $T$ steps ([`ham.descend`][]) or the continuous ODE to a fixed point ([`ham.relax`][]).
"""

from __future__ import annotations

import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, Scalar

from . import _checks as checks
from . import lagrangians
from .layer import Layer
from .network import HAM
from .solve import Solution, descend, relax
from .synapses import Attention, Hopfield

__all__ = ["LayerNormLagrangian", "EnergyTransformer", "patchify", "unpatchify"]

TOKENS = "tokens"


class LayerNormLagrangian(eqx.Module):
    r"""The layer-norm Lagrangian with learnable $\gamma$ (scalar) and $\delta$
    (per feature): ``ham.lagrangians.layernorm(x, gamma, delta, eps)``, whose
    activation is $g = \gamma (x - \bar x)/\sqrt{\mathrm{var}(x) + \epsilon} + \delta$
    per token (last axis). Convex, hence a valid Lagrangian, for $\gamma \ge 0$."""

    gamma: float | Float[Array, ""] = eqx.field(
        converter=checks.positive_converter("LayerNormLagrangian", "gamma", inclusive=True)
    )
    delta: float | Float[Array, "dim"] = eqx.field(
        converter=checks.positive_converter("LayerNormLagrangian", "delta", low=-math.inf, shapes=None)
    )
    eps: float = eqx.field(static=True, default=1e-5)

    def __check_init__(self):
        checks.param("LayerNormLagrangian", "eps", self.eps)
        if jnp.ndim(self.delta) > 1:
            raise ValueError(
                f"LayerNormLagrangian: delta must be a scalar or one value per feature, got shape "
                f"{tuple(jnp.shape(self.delta))}."
            )

    def __call__(self, x: Float[Array, "... dim"]) -> Scalar:
        return lagrangians.layernorm(x, self.gamma, self.delta, self.eps)


class EnergyTransformer(eqx.Module):
    r"""An Energy Transformer block on ``tokens`` tokens of dimension ``dim``.

    **Arguments:**

    - ``tokens``, ``dim``: the token layer's shape ``(tokens, dim)``.
    - ``heads``, ``head_dim``: attention heads and their key/query size (default
      ``dim // heads``).
    - ``memories``: number of Hopfield memories $\xi_\mu$ (default ``4 * dim``).
    - ``kind``: Hopfield hidden units, ``"relu"`` (the paper's) or ``"softmax"``.
    - ``beta``: attention inverse temperature (default $1/\sqrt{\text{head\_dim}}$);
      ``hopfield_beta``: the softmax Hopfield's.
    - ``mask``: optional attention mask ``(tokens, tokens)`` (see [`ham.synapses.Attention`][]).
    - ``init_std``: standard deviation of the random initial weights (default
      $1/\sqrt{\text{dim}}$); ``key``: the PRNG key for them.
    - ``legendre``: ``False`` (default) gives the paper's energy
      $E = E^{\text{ATT}} + E^{\text{HN}}$ and dynamics $\tau\dot x = -\partial E/\partial g$ (Hoover et
      al. 2023); ``True`` adds the token layer's Legendre term $x\cdot g - L$, whose
      gradient is a leak $-x$ (the generic HAM form; see [`ham.Layer`][]).

    The network is ``self.network`` (a [`ham.HAM`][] with layer ``"tokens"`` and
    synapses ``"attention"``, ``"hopfield"``); $\gamma$ (init 1) and $\delta$ (init 0)
    of the layer norm and all weights are arrays, so they train.
    """

    network: HAM

    def __init__(
        self,
        tokens: int,
        dim: int,
        *,
        heads: int = 4,
        head_dim: int | None = None,
        memories: int | None = None,
        kind: str = "relu",
        beta: float | None = None,
        hopfield_beta: float = 1.0,
        eps: float = 1e-5,
        mask: ArrayLike | None = None,
        init_std: float | None = None,
        tau: float = 1.0,
        legendre: bool = False,
        key: PRNGKeyArray,
    ):
        owner = "EnergyTransformer"
        tokens = checks.integer(owner, "tokens", tokens)
        dim = checks.integer(owner, "dim", dim)
        heads = checks.integer(owner, "heads", heads)
        head_dim = max(1, dim // heads) if head_dim is None else checks.integer(owner, "head_dim", head_dim)
        memories = 4 * dim if memories is None else checks.integer(owner, "memories", memories)
        if tokens < 2 and mask is None:
            raise ValueError(
                f"{owner}: tokens must be >= 2 (each token attends to the others), got {tokens}; "
                "or pass an attention mask."
            )
        if not isinstance(kind, str) or kind not in ("relu", "softmax"):
            raise ValueError(f"{owner}: kind must be 'relu' or 'softmax', got {kind!r}.")
        if beta is not None:
            beta = checks.param(owner, "beta", beta, shapes=((), (heads,)),
                                shape_text=f"a scalar or have shape (heads,) = ({heads},)")
        hopfield_beta = checks.param(owner, "hopfield_beta", hopfield_beta)
        eps = checks.param(owner, "eps", eps)
        std = 1.0 / math.sqrt(dim) if init_std is None else checks.param(owner, "init_std", init_std)
        tau = checks.param(owner, "tau", tau, allow_inf=True)
        if mask is not None:
            mask = jnp.asarray(mask)
            if mask.shape != (tokens, tokens):
                raise ValueError(f"{owner}: mask must have shape (tokens, tokens) = ({tokens}, {tokens}), got {mask.shape}.")
        key = checks.prng_key(owner, "key", key)
        kk, kq, kx = jax.random.split(key, 3)
        attention = Attention(
            std * jax.random.normal(kk, (heads, head_dim, dim)),
            std * jax.random.normal(kq, (heads, head_dim, dim)),
            beta=beta, mask=mask,
        )
        hopfield = Hopfield(std * jax.random.normal(kx, (memories, dim)), kind=kind, beta=hopfield_beta)
        lagrangian = LayerNormLagrangian(jnp.ones(()), jnp.zeros((dim,)), eps)
        self.network = HAM(
            # Convex by construction (gamma >= 0 is checked above), so the numerical probe is skipped.
            layers={TOKENS: Layer(
                lagrangian, (tokens, dim), tau=tau, check_convexity=False, legendre=bool(legendre)
            )},
            synapses={"attention": attention, "hopfield": hopfield},
            connections={"attention": (TOKENS,), "hopfield": (TOKENS,)},
        )

    @property
    def legendre(self) -> bool:
        """Whether the token layer's Legendre term is part of the energy."""
        return self.network.layers[TOKENS].legendre

    @property
    def shape(self) -> tuple[int, int]:
        """The token layer's shape ``(tokens, dim)``."""
        return self.network.layers[TOKENS].shape

    def _tokens(self, method: str, name: str, x) -> Array:
        """``x`` as a finite ``(*batch, tokens, dim)`` floating array, or a clear error."""
        owner = f"EnergyTransformer.{method}"
        x = checks.real_array(owner, name, x)
        if x.ndim < 2 or tuple(x.shape[-2:]) != self.shape:
            raise ValueError(
                f"{owner}: {name} must have shape (*batch, tokens, dim) = (..., {self.shape[0]}, {self.shape[1]}), "
                f"got {tuple(x.shape)}."
            )
        return checks.finite(owner, name, x, runtime=True)

    def activations(self, x: Float[Array, "*batch tokens dim"]) -> Float[Array, "*batch tokens dim"]:
        """The layer-normed tokens $g = \\partial L/\\partial x$."""
        return self.network.activations({TOKENS: self._tokens("activations", "x", x)})[TOKENS]

    def energy(self, x: Float[Array, "*batch tokens dim"]) -> Float[Array, "*batch"]:
        """Total energy, one value per batch element."""
        return self.network.energy({TOKENS: self._tokens("energy", "x", x)})

    def descend(self, x0: Float[Array, "*batch tokens dim"], *, step_size: float = 0.1, steps: int = 12) -> Solution:
        r"""The paper's inference: $T$ = ``steps`` steps of $x \leftarrow x - \alpha\,
        \partial E/\partial g$ ([`ham.descend`][]); differentiable by unrolling."""
        return descend(self.network, {TOKENS: self._tokens("descend", "x0", x0)}, step_size=step_size, steps=steps)

    def relax(self, x0: Float[Array, "*batch tokens dim"], **kwargs) -> Solution:
        """The continuous dynamics to a fixed point ([`ham.relax`][]; keywords passed on)."""
        return relax(self.network, {TOKENS: self._tokens("relax", "x0", x0)}, **kwargs)


def patchify(images: Float[ArrayLike, "n height width *channels"], patch: int) -> Float[Array, "n tokens patch_dim"]:
    """Split images ``(n, H, W)`` or ``(n, H, W, C)`` into non-overlapping ``patch × patch``
    patches, row-major: ``(n, (H/patch)·(W/patch), patch·patch·C)``."""
    patch = checks.integer("patchify", "patch", patch)
    images = jnp.asarray(images)
    if images.ndim not in (3, 4):
        raise ValueError(f"patchify: images must have shape (n, H, W) or (n, H, W, C), got {tuple(images.shape)}.")
    h, w = images.shape[1:3]
    if patch < 1 or h % patch or w % patch:
        raise ValueError(
            f"patchify: image size {h}x{w} is not divisible by the patch size {patch}; choose a patch size that "
            f"divides both (e.g. one of {[p for p in range(1, min(h, w) + 1) if h % p == 0 and w % p == 0]})."
        )
    return _patchify(images, patch)


# The reshapes and the transpose as one compiled program per shape (op by op, each compiled
# on its own for every new shape).
@functools.partial(jax.jit, static_argnums=1)
def _patchify(images, patch):
    if images.ndim == 3:
        images = images[..., None]
    n, h, w, c = images.shape
    x = images.reshape(n, h // patch, patch, w // patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(patches: Float[ArrayLike, "n tokens patch_dim"], image_shape: tuple[int, ...], patch: int) -> Array:
    """Inverse of [`patchify`][]: patches back to images of ``image_shape`` ``(H, W)`` or ``(H, W, C)``."""
    patch = checks.integer("unpatchify", "patch", patch)
    patches = jnp.asarray(patches)
    h, w = image_shape[:2]
    c = image_shape[2] if len(image_shape) == 3 else 1
    want = ((h // patch) * (w // patch), patch * patch * c)
    if h % patch or w % patch or tuple(patches.shape[1:]) != want:
        raise ValueError(
            f"unpatchify: patches of shape {tuple(patches.shape)} do not tile images of shape {tuple(image_shape)} "
            f"with patch size {patch} (expected (n, {want[0]}, {want[1]}))."
        )
    return _unpatchify(patches, tuple(image_shape), patch)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _unpatchify(patches, image_shape, patch):
    h, w = image_shape[:2]
    c = image_shape[2] if len(image_shape) == 3 else 1
    x = patches.reshape(patches.shape[0], h // patch, w // patch, patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape((patches.shape[0], *image_shape))


