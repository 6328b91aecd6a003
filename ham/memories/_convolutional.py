r"""A convolutional image associative memory: pixels → convolutional features
(→ pooled features) → softmax memory units, as one HAM (Krotov 2021, "Hierarchical
associative memory"; convolution and pooling as inductive biases: Krotov 2023, "A new
frontier for Hopfield networks")."""

from __future__ import annotations

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from .. import lagrangians
from ..layer import Layer
from ..network import HAM
from .. import _checks as checks
from .._stream import default_window, num_queries
from ..solve import Solution, relax, with_default_solver
from ..synapses import Bias, Conv, Dense, Pool

__all__ = ["ConvolutionalMemory", "convolutional"]

_PIXEL_LAGRANGIANS = ("identity", "sigmoid")


def _inverse_activation(pixel: str, g: Array, eps: float = 1e-3) -> Array:
    """The pixel state $x$ whose activation is ``g`` (identity: $x = g$; sigmoid: logit)."""
    if pixel == "identity":
        return g
    g = jnp.clip(g, eps, 1.0 - eps)
    return jnp.log(g) - jnp.log1p(-g)


def _code(half: Conv, xv: Array) -> tuple[Array, Array]:
    r"""The minimum-norm feature code $u = a\,(a^\top a)^{-1} x$ of a pixel state $x$
    (so $a^\top u = x$; $a^\top$ the transposed convolution; conjugate gradients), and
    the relative error $\|a^\top u - x\|/\|x\|$ of the solve."""
    transpose = jax.linear_transpose(half.convolve, jax.ShapeDtypeStruct(xv.shape, xv.dtype))
    gram = lambda z: transpose(half.convolve(z))[0]  # aᵀa
    z, _ = jax.scipy.sparse.linalg.cg(gram, xv, tol=1e-10, maxiter=20 * xv.size)
    u = half.convolve(z)
    err = jnp.linalg.norm(transpose(u)[0] - xv) / jnp.maximum(jnp.linalg.norm(xv), jnp.finfo(xv.dtype).tiny)
    return u, err


def _half(conv: Conv) -> Conv:
    """The convolution with the first half $a$ of a paired kernel $k = [a, -a]$."""
    f = conv.kernel.shape[-1] // 2
    return Conv(conv.kernel[..., :f], stride=conv.stride, padding=conv.padding)


class ConvolutionalMemory(eqx.Module):
    r"""An image associative memory whose energy is that of ``network``, a [`ham.HAM`][]
    with layers

    - ``"pixels"`` $(H, W, C)$: identity ($g = x$) or sigmoid ($g = \sigma(x)$) Lagrangian;
    - ``"features"`` $(H', W', 2F)$: ReLU Lagrangian, joined to the pixels by
      ``Conv`` ($E = -g_f\cdot(g_v \star k)$) with the kernel $k = [a, -a]$: each of
      the $F$ filters $a$ with both signs (a rectified pair, so $k^\top \mathrm{relu}(k
      \star v) = a^\top (a\star v)$ keeps the information a ReLU would cut);
    - optionally ``"pooled"`` $(H'', W'', 2F)$: ReLU Lagrangian, joined to the features by
      ``Pool`` ($E = -g_p\cdot\mathrm{pool}(g_f)$);
    - ``"memory"`` $(K,)$: softmax Lagrangian with gain β, joined to the last feature
      layer by ``Dense`` ($E = -g_f^\top M g_m$, $M$ of shape ``(*feature_shape, K)``),
      one unit per stored image.

    Dynamics and energy are those of the HAM (autodiff; the convolution's force on the
    pixels is a transposed convolution). See [`convolutional`][] for how the images
    are stored.

    - ``patterns``: the stored images ``(K, H, W, C)``;
    - ``reconstruction_error``: per stored image, the relative error
      $\|k^\top f_\mu - x_\mu\|/\|x_\mu\|$ of the feature code the storage rule found
      (≈ 0 when the stored image is an exact fixed point; see [`convolutional`][]).
    """

    network: HAM
    patterns: Float[Array, "num_patterns height width channels"]
    reconstruction_error: Float[Array, " num_patterns"]
    pixel: str = eqx.field(static=True, default="identity")

    @property
    def image_shape(self) -> tuple[int, ...]:
        """The shape ``(H, W, C)`` of a stored image (the pixel layer's)."""
        return self.network.layers["pixels"].shape

    def _check_images(self, images, what: str = "images") -> Array:
        x = checks.real_array("convolutional", what, images, self.patterns.dtype)
        shape = self.image_shape
        if x.ndim < 3 or tuple(x.shape[-3:]) != shape:
            raise ValueError(
                f"convolutional: {what} must have shape (*batch, {', '.join(map(str, shape))}) "
                f"(the stored images' shape), got shape {tuple(x.shape)}."
            )
        if not jnp.issubdtype(x.dtype, jnp.floating):
            x = x.astype(self.patterns.dtype)
        return checks.finite("convolutional", what, x, runtime=True)

    def initial_state(
        self,
        images: Float[Array, "*batch height width channels"],
        mask: Bool[Array, "*batch height width channels"] | None = None,
    ) -> dict[str, Array]:
        r"""The state relaxation starts from: pixel states whose activation is the image
        (missing pixels, ``mask == False``, start at $x = 0$), and every hidden layer's
        state from the image: the features at the code $[u, -u]$ of the pixel state (see
        [`convolutional`][]), the pooled layer at their pooling and the memory at its input
        from the layer below (plus bias)."""
        images = self._check_images(images)
        if mask is not None:
            try:
                mask = jnp.asarray(mask)
            except Exception:  # noqa: BLE001
                raise TypeError(f"convolutional: mask must be a boolean array, got {type(mask).__name__}.") from None
            if mask.dtype != jnp.bool_:
                raise TypeError(f"convolutional: mask must be a boolean array (True = observed pixel), got dtype {mask.dtype}.")
            try:
                mask = jnp.broadcast_to(mask, images.shape)
            except ValueError:
                raise ValueError(
                    f"convolutional: mask of shape {tuple(mask.shape)} does not broadcast to the images' "
                    f"shape {tuple(images.shape)}."
                ) from None
        net = self.network

        def one(image, m):
            xv = _inverse_activation(self.pixel, image)
            if m is not None:
                xv = jnp.where(m, xv, 0.0)
            u, _ = _code(_half(net.synapses["conv"]), xv)
            xf = jnp.concatenate([u, -u], axis=-1)
            xs = {"pixels": xv, "features": xf}
            top = "features"
            if "pooled" in net.layers:
                gf = net.layers["features"].activation(xf)
                xs["pooled"] = net.synapses["pool"].pool(gf)
                top = "pooled"
            gt = net.layers[top].activation(xs[top])
            w = net.synapses["memory"].weight
            xs["memory"] = jnp.tensordot(gt, w, axes=gt.ndim) + net.synapses["memory_bias"].bias
            return xs

        fn = one
        for _ in images.shape[:-3]:
            fn = jax.vmap(fn)
        return fn(images, mask)

    def energy(self, state: dict[str, Array]) -> Float[Array, "*batch"]:
        """The network's energy of a state (a dict of layer states, any batch shape)."""
        return self.network.energy(state)

    def relax(
        self,
        images: Float[Array, "*batch height width channels"],
        mask: Bool[Array, "*batch height width channels"] | None = None,
        **relax_options,
    ) -> Solution:
        """[`ham.relax`][] from [`initial_state`][] (options passed on to ``ham.relax``; a
        batch of 256 or more images is streamed, ``window="auto"``, unless ``window`` is given)."""
        net = self.network
        xs0 = self.initial_state(images, mask)
        return relax(net, xs0, **default_window(with_default_solver(net, relax_options), num_queries(xs0, net)))

    def retrieve(
        self,
        images: Float[Array, "*batch height width channels"],
        mask: Bool[Array, "*batch height width channels"] | None = None,
        **relax_options,
    ) -> Float[Array, "*batch height width channels"]:
        """Relax from (corrupted) ``images`` to a fixed point and return the pixel layer's
        activation there; batched over leading axes, jit-compatible (``eqx.filter_jit``).
        ``mask`` (``True`` = observed pixel) marks missing pixels, which start at $x = 0$."""
        sol = self.relax(images, mask, **{"trace": False, **relax_options})  # the states only: no trace buffers
        out = self.network._vmap(self.network._activations, sol.states)["pixels"]
        return checks.finite_result(
            "convolutional.retrieve", out, "the dynamics overflowed; lower beta or kernel_norm (<= 1 keeps the "
            "energy bounded below) or rescale the images",
        )


def _operator_norm(apply: Callable[[Array], Array], shape, dtype, iters: int = 100) -> Array:
    r"""$\|A\|_2$ of a linear map by power iteration on $A^\top A$."""
    transpose = jax.linear_transpose(apply, jax.ShapeDtypeStruct(shape, dtype))

    def step(v, _):
        w = transpose(apply(v))[0]
        return w / jnp.linalg.norm(w), None

    v0 = jnp.ones(shape, dtype) / math.sqrt(math.prod(shape))
    v, _ = jax.lax.scan(step, v0, None, length=iters)
    return jnp.linalg.norm(apply(v))


def convolutional(
    patterns: Float[Array, "num_patterns height width channels"],
    kernel: Float[Array, "kh kw channels features"] | None = None,
    *,
    key: PRNGKeyArray | None = None,
    num_features: int = 8,
    kernel_size: tuple[int, int] = (3, 3),
    stride: tuple[int, int] | int = (1, 1),
    padding="SAME",
    pool: tuple[int, int] | int | None = None,
    pool_kind: str = "avg",
    beta: float = 1.0,
    pixel: str = "identity",
    kernel_norm: float = 0.5,
    tau_memory: float = 1.0,
) -> ConvolutionalMemory:
    r"""Build a convolutional image memory ([`ConvolutionalMemory`][]) storing ``patterns``.

    **Arguments:**

    - ``patterns``: images ``(K, H, W, C)`` (or ``(K, H, W)`` for one channel); with
      ``pixel="sigmoid"`` their values must lie in $[0, 1]$.
    - ``kernel``: the filters $a$, shape ``(kh, kw, C, F)``; the network uses $k = [a, -a]$
      ($2F$ feature channels). Default: ``num_features`` random normal filters of size
      ``kernel_size`` (needs ``key``), rescaled so that $\|k\|_2$ = ``kernel_norm``.
    - ``stride``, ``padding``: of the convolution (see [`ham.synapses.Conv`][]).
    - ``pool``, ``pool_kind``: a pooling window (and ``"avg"`` / ``"sum"``) for an
      optional pooled feature layer; ``None`` for none.
    - ``beta``: gain of the softmax memory layer; ``tau_memory`` its time constant.
    - ``pixel``: ``"identity"`` or ``"sigmoid"`` pixel Lagrangian.
    - ``kernel_norm``: target $\|k\|_2$ for the random kernel. With identity pixels
      and ReLU features the quadratic part $\tfrac12\|v\|^2 + \tfrac12\|f\|^2 - f\cdot(k
      \star v)$ of the energy is bounded below only when $\|k\|_2 \le 1$.

    **Storage rule** (exact, no training). For each stored image $\xi_\mu$ with pixel
    state $x_\mu$ (= $\xi_\mu$, or its logit for sigmoid pixels) take the minimum-norm
    feature code $u_\mu = a\,(a^\top a)^{-1} x_\mu$ (so $a^\top u_\mu = x_\mu$; $a^\top$
    is the transposed convolution, the solve is conjugate gradients) and
    $d_\mu = u_\mu - a\star\xi_\mu$. The memory weights and a memory bias are

    $M_{\cdot\mu} = [d_\mu, -d_\mu]$,  $b_\mu = -\tfrac12\, d_\mu\cdot u_\mu$.

    With memory unit μ fully on ($g_m = e_\mu$, the β → ∞ limit) the state $g_v =
    \xi_\mu$, $g_f = f_\mu = [\mathrm{relu}(u_\mu), \mathrm{relu}(-u_\mu)]$ is a fixed
    point: the features' input is $k\star\xi_\mu + M_{\cdot\mu} = [u_\mu, -u_\mu]$ and
    the pixels' input $k^\top f_\mu = a^\top u_\mu = x_\mu$. When the features hold the
    code $u$ of a pixel state $x$, memory unit ν receives
    $-\tfrac12\|u - u_\nu\|^2 + \tfrac12\|x - x_\nu\|^2$ + const (identity pixels), a
    distance in the metric $(a^\top a)^{-1} - I \succeq 7I$ (as $\|a\|_2^2 \le 1/8$), so
    each stored image wins at its own fixed point. [`ConvolutionalMemory.initial_state`][]
    starts the features at the code of the query, so the softmax first picks the nearest
    stored image in that metric. Exactness needs $a^\top a$ invertible (e.g. stride 1 and
    enough filters; ``reconstruction_error`` reports it).

    With a pooled layer the memory sees pooled features and the rule is a Hebbian one,
    $M_{\cdot\mu} = \mathrm{pool}(f_\mu)$, $b_\mu = -\tfrac12\|\mathrm{pool}(f_\mu)\|^2$:
    the stored images are then only approximate fixed points (their retrieval is not
    exact; use the pooled variant for its energy and dynamics, or train it).

    **Returns:** a [`ConvolutionalMemory`][].
    """
    p = checks.real_array("convolutional", "patterns", patterns)
    if p.ndim == 3:
        p = p[..., None]
    if p.ndim != 4 or min(p.shape) < 1:
        raise ValueError(
            f"convolutional: patterns must have shape (num_patterns, height, width, channels) or "
            f"(num_patterns, height, width), got shape {tuple(jnp.shape(patterns))}."
        )
    p = checks.finite("convolutional", "patterns", p)
    if not isinstance(pixel, str) or pixel not in _PIXEL_LAGRANGIANS:
        raise ValueError(f"convolutional: pixel must be one of {_PIXEL_LAGRANGIANS}, got {pixel!r}.")
    if pixel == "sigmoid" and not isinstance(p, jax.core.Tracer):
        lo, hi = float(jnp.min(p)), float(jnp.max(p))
        if lo < 0 or hi > 1:
            raise ValueError(
                f"convolutional: with pixel='sigmoid' the patterns must lie in [0, 1], got values in [{lo:.3g}, {hi:.3g}]."
            )
    beta = checks.param("convolutional", "beta", beta)
    kernel_norm = checks.param("convolutional", "kernel_norm", kernel_norm)
    tau_memory = checks.param("convolutional", "tau_memory", tau_memory, allow_inf=True)
    num_features = checks.integer("convolutional", "num_features", num_features)
    num, h, w, c = p.shape
    dtype = p.dtype

    if kernel is None:
        if key is None:
            raise ValueError("convolutional: pass a kernel of shape (kh, kw, C, F) or a PRNG key to draw one.")
        checks.prng_key("convolutional", "key", key)
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        kh, kw = checks.integer("convolutional", "kernel_size", kh), checks.integer("convolutional", "kernel_size", kw)
        a = jax.random.normal(key, (kh, kw, c, num_features), dtype)
        scale_to = kernel_norm / math.sqrt(2.0)  # ‖[a, -a]‖ = √2 ‖a‖
    else:
        a = checks.finite("convolutional", "kernel", checks.real_array("convolutional", "kernel", kernel).astype(dtype))
        if a.ndim != 4 or a.shape[2] != c:
            raise ValueError(
                f"convolutional: kernel must have shape (kh, kw, {c}, F) for images of shape {(h, w, c)}, "
                f"got shape {tuple(a.shape)}."
            )
        scale_to = None
    half = Conv(a, stride=stride, padding=padding)
    if scale_to is not None:
        norm = _operator_norm(half.convolve, (h, w, c), dtype)
        a = a * (scale_to / norm)
        half = Conv(a, stride=stride, padding=padding)
    conv = Conv(jnp.concatenate([a, -a], axis=-1), stride=stride, padding=padding)
    feat_shape = conv.output_shape((h, w, c))
    if min(feat_shape[:2]) < 1:
        raise ValueError(
            f"convolutional: the kernel of shape {tuple(a.shape)} does not fit images of shape {(h, w, c)}."
        )

    # ---- storage: minimum-norm rectified feature codes, then the memory weights
    def code(xi):
        return _code(half, _inverse_activation(pixel, xi))

    codes, err = jax.vmap(code)(p)
    feats = jnp.concatenate([jax.nn.relu(codes), jax.nn.relu(-codes)], axis=-1)

    layers = {
        # library Lagrangians, convex by construction: skip the (eager, slow) probe
        "pixels": Layer(
            lagrangians.identity if pixel == "identity" else lagrangians.sigmoid, (h, w, c), check_convexity=False
        ),
        "features": Layer(lagrangians.relu, feat_shape, check_convexity=False),
    }
    synapses = {"conv": conv}
    connections = {"conv": ("pixels", "features")}
    if pool is None:
        d = codes - jax.vmap(half.convolve)(p)
        weights = jnp.concatenate([d, -d], axis=-1)
        top = "features"
        stored = feats
    else:
        pool_syn = Pool(pool, kind=pool_kind)
        top_shape = pool_syn.output_shape(feat_shape)
        if min(top_shape[:2]) < 1:
            raise ValueError(f"convolutional: pool window {pool} does not fit features of shape {feat_shape}.")
        layers["pooled"] = Layer(lagrangians.relu, top_shape, check_convexity=False)
        synapses["pool"] = pool_syn
        connections["pool"] = ("features", "pooled")
        stored = jax.vmap(pool_syn.pool)(feats)
        weights = stored
        top = "pooled"
    # memory bias −½ M_μ·g_μ (g_μ: the stored top-layer activations): the memory input
    # M_μ·g − ½ M_μ·g_μ then compares the state with each stored image (see above).
    bias = -0.5 * jnp.sum((weights * stored).reshape(num, -1), axis=-1)
    layers["memory"] = Layer(
        eqx.Partial(lagrangians.softmax, beta=jnp.asarray(beta, dtype)), (num,), tau=tau_memory,
        check_convexity=False,
    )
    synapses["memory"] = Dense(jnp.moveaxis(weights, 0, -1))
    connections["memory"] = (top, "memory")
    synapses["memory_bias"] = Bias(bias)
    connections["memory_bias"] = ("memory",)
    net = HAM(layers=layers, synapses=synapses, connections=connections)
    return ConvolutionalMemory(net, p, err, pixel)
