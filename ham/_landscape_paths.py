r"""Basins of attraction and minimum-energy paths (issue 19, parts 4 and 5).

Public through [`ham.landscape`][]: [`basins`][ham.landscape.basins] measures how far
from a memory the dynamics still bring a start back to it;
[`minimum_energy_path`][ham.landscape.minimum_energy_path] finds the lowest mountain
pass between two fixed points of a [`ham.HAM`][] and the saddle on it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from . import _checks as checks
from .memories._binary import _BinaryMemory
from .memories._common import check_pm1
from .memories._modern import ModernHopfield
from .network import HAM
from .solve import default_tolerances, relax, with_default_solver

__all__ = ["Basins", "Path", "basins", "minimum_energy_path", "wilson_interval"]

# A start has returned when its overlap with the pattern reaches this (issue 19) ...
RETURN_OVERLAP = 0.99
# ... or when it reaches the pattern's own fixed point: for continuous states, within this
# relative distance (100x relax's float32 steady-state tolerance: two relaxations to the
# same fixed point stop well inside it, distinct fixed points are O(1) apart).
SAME_FIXED_POINT = 1e-2
_Z95 = 1.959963984540054  # the 97.5 % standard normal quantile


# ============================================================================ intervals
def wilson_interval(successes, trials, z: float = _Z95):
    r"""Wilson's score interval for a binomial proportion (Wilson 1927):

    $\dfrac{\hat p + z^2/2n \pm z\sqrt{\hat p(1-\hat p)/n + z^2/4n^2}}{1 + z^2/n}$,
    $\hat p = k/n$, with $z = 1.96$ for 95 % coverage. Unlike the normal (Wald)
    interval it stays inside $[0, 1]$ and does not collapse to a point at $k = 0$ or
    $k = n$ (where the basin fraction usually sits); its coverage oscillates around the
    nominal level with $n$ and $p$ (Brown, Cai & DasGupta 2001).

    Returns ``(lower, upper)`` arrays of the broadcast shape of the inputs.
    """
    k = jnp.asarray(successes, jnp.result_type(float))
    n = jnp.asarray(trials, k.dtype)
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2.0 * n)) / denom
    half = z * jnp.sqrt(jnp.maximum(p * (1.0 - p) / n + z2 / (4.0 * n * n), 0.0)) / denom
    return jnp.clip(centre - half, 0.0, 1.0), jnp.clip(centre + half, 0.0, 1.0)


def _crossing(radii: Array, fraction: Array, level: float) -> Array:
    """The radius at which ``fraction`` (…, R) first falls below ``level``: linear
    interpolation between the last radius at or above the level and the first below it;
    ``radii[0]`` when it is below already there, ``+inf`` when it never falls below."""
    below = fraction < level
    j = jnp.argmax(below, axis=-1)
    jm = jnp.maximum(j - 1, 0)
    f0 = jnp.take_along_axis(fraction, jm[..., None], -1)[..., 0]
    f1 = jnp.take_along_axis(fraction, j[..., None], -1)[..., 0]
    r0, r1 = radii[jm], radii[j]
    t = jnp.where(f0 > f1, (f0 - level) / jnp.where(f0 > f1, f0 - f1, 1.0), 0.0)
    r = r0 + t * (r1 - r0)
    return jnp.where(~jnp.any(below, axis=-1), jnp.inf, jnp.where(j == 0, radii[0], r))


# ============================================================================ basins
class Basins(eqx.Module):
    r"""The result of [`basins`][ham.landscape.basins]: return fractions with 95 %
    intervals, per pattern and pooled.

    - ``radii`` (R,): the distances probed (Hamming flips, or relative L2 noise);
    - ``returned`` (P, R): starts that came back, out of ``trials`` each;
      ``fraction`` = returned / trials, with the Wilson 95 % interval ``lower``, ``upper``;
    - ``unconverged`` (P, R): starts whose dynamics did not reach a fixed point (counted
      as not returned);
    - ``radius_90``, ``radius_50`` (P,): where the fraction first falls below 0.9 and
      0.5, linearly interpolated between the last radius at or above the level and the
      first below it (``inf``: never below over the radii probed; ``radii[0]``: below
      already there);
    - ``pooled_fraction``, ``pooled_lower``, ``pooled_upper`` (R,) and
      ``pooled_radius_90``, ``pooled_radius_50``: the same over all P·trials starts;
    - ``dim``: the number of neurons (binary) or of state entries (continuous), so that
      ``radius_50 / dim`` is the basin radius per neuron of the binary models.
    """

    radii: Float[Array, " R"]
    returned: Int[Array, "P R"]
    unconverged: Int[Array, "P R"]
    trials: int = eqx.field(static=True)
    dim: int = eqx.field(static=True)
    fraction: Float[Array, "P R"]
    lower: Float[Array, "P R"]
    upper: Float[Array, "P R"]
    radius_90: Float[Array, " P"]
    radius_50: Float[Array, " P"]
    pooled_fraction: Float[Array, " R"]
    pooled_lower: Float[Array, " R"]
    pooled_upper: Float[Array, " R"]
    pooled_radius_90: Float[Array, ""]
    pooled_radius_50: Float[Array, ""]


def _summarise(radii, returned, unconverged, trials, dim) -> Basins:
    returned = jnp.asarray(returned, jnp.int32)
    fraction = returned / trials
    lower, upper = wilson_interval(returned, trials)
    pooled_k = jnp.sum(returned, axis=0)
    pooled_n = trials * returned.shape[0]
    pooled = pooled_k / pooled_n
    pl, pu = wilson_interval(pooled_k, pooled_n)
    radii = radii.astype(fraction.dtype)
    return Basins(
        radii=radii, returned=returned, unconverged=jnp.asarray(unconverged, jnp.int32), trials=trials, dim=dim,
        fraction=fraction, lower=lower, upper=upper,
        radius_90=_crossing(radii, fraction, 0.9), radius_50=_crossing(radii, fraction, 0.5),
        pooled_fraction=pooled, pooled_lower=pl, pooled_upper=pu,
        pooled_radius_90=_crossing(radii, pooled, 0.9), pooled_radius_50=_crossing(radii, pooled, 0.5),
    )


def _check_radii(radii, *, binary_dim: int | None):
    owner = "ham.landscape.basins"
    if checks.is_traced(radii):
        raise TypeError(f"{owner}: radii must be concrete (they set the shape of the result), got a traced array.")
    r = np.asarray(radii, dtype=np.float64) if not isinstance(radii, np.ndarray) else radii.astype(np.float64)
    if r.ndim == 0:
        r = r[None]
    if r.ndim != 1 or r.size == 0:
        raise ValueError(f"{owner}: radii must be a non-empty 1-D sequence, got shape {tuple(np.shape(radii))}.")
    if not np.all(np.isfinite(r)):
        raise ValueError(f"{owner}: radii must be finite, got {r.tolist()}.")
    if np.any(r < 0):
        raise ValueError(f"{owner}: radii must be >= 0, got {r.tolist()}.")
    if r.size > 1 and np.any(np.diff(r) <= 0):
        raise ValueError(f"{owner}: radii must be strictly increasing, got {r.tolist()}.")
    if binary_dim is not None:
        if not np.all(r == np.round(r)):
            raise ValueError(f"{owner}: radii of a binary memory are numbers of flipped neurons (integers), got {r.tolist()}.")
        if r[-1] > binary_dim:
            raise ValueError(
                f"{owner}: radii must be <= dim = {binary_dim} (flips of distinct neurons), got {int(r[-1])}."
            )
    return r


def basins(
    model: _BinaryMemory | ModernHopfield | HAM,
    patterns,
    radii,
    *,
    trials: int = 100,
    key: PRNGKeyArray,
    mode: str = "async",
    max_sweeps: int = 100,
    layers: tuple[str, ...] | None = None,
    batch_size: int = 1024,
    **relax_kwargs,
) -> Basins:
    r"""The fraction of starts at distance $r$ from each pattern that the dynamics bring
    back to it, with binomial 95 % intervals, and the radii where it falls below 0.9
    and 0.5.

    The basin of attraction of a memory $\xi$ is the set of states from which the
    dynamics end at $\xi$. Its size is the quantity behind the capacity claims of the
    field: for the classical network it stays a finite fraction of $N$ up to
    $\alpha_c\approx0.138$ (Amit, Gutfreund & Sompolinsky 1985, 1987, from the
    retrieval overlap $m$ of the replica solution; basins measured by simulation since
    Forrest 1988), and Dense Associative Memories keep basins of size $O(N)$ at loads
    $K\propto N^{n-1}/\ln N$ (polynomial) and $K = e^{\alpha N}$ (exponential;
    Demircigil et al. 2017, Theorems 1–3).

    **Starts.** Binary memories (``classical``, ``dense``, ``exponential``): $\xi$ with
    exactly $r$ distinct neurons flipped, chosen uniformly (Hamming distance $r$), then
    the model's sign dynamics (``mode``, ``max_sweeps``; asynchronous updates in an
    independent random neuron order per start). Continuous models (a
    [`ham.memories.modern`][] memory or a [`ham.HAM`][]): the state plus noise of
    relative L2 size $r$ in a uniformly random direction, $x_0 = \xi + r\|\xi\|u$,
    $\|u\| = 1$ (per noisy layer), then [`ham.relax`][] (``relax_kwargs`` are passed
    on). For a modern memory the noise goes to the visible layer and the hidden layer
    starts at its equilibrium $h = \Xi v_0$; for a HAM ``patterns`` is a dict of
    stacked layer states ``(P, *shape)`` (or an array for a one-layer net), the noise
    goes to ``layers`` (default: every layer with finite τ) and the others start at the
    pattern's state.

    **Returned** (issue 19): the final state's overlap with the pattern is
    $\ge 0.99$ (binary: $\xi\cdot s/N$; continuous: the cosine over the noisy layers),
    or it is the pattern's own fixed point (the end of the same dynamics started *at*
    the pattern, for sign dynamics with the same random neuron orders as the start;
    continuous: within a relative distance ``1e-2``). So $r = 0$ always returns, and a
    pattern that is not itself a fixed point is credited with the fixed point next to
    it. Starts that do not converge count as not returned (and are counted in
    ``unconverged``).

    **Intervals and radii.** Per pattern and radius, ``trials`` independent starts give
    a binomial count; the interval is Wilson's score interval (Wilson 1927), which stays
    inside $[0, 1]$ and keeps a width at fractions of exactly 0 or 1, where basin curves sit.
    ``radius_90``/``radius_50`` interpolate linearly where the fraction first falls
    below the level (see [`Basins`][ham.landscape.Basins]).

    Everything runs in one jit-compiled program: the P·R·trials starts are generated on
    the device from ``key`` and relaxed ``batch_size`` at a time (``jax.lax.map``), so
    memory is bounded by the batch, not by the number of starts.

    **Arguments:**
    - ``model``: a binary memory, a modern memory or a HAM.
    - ``patterns``: ``(P, dim)`` states whose basins are measured (usually the stored
      patterns; ±1 for a binary memory), or for a HAM a dict of ``(P, *shape)`` states.
    - ``radii``: strictly increasing distances ≥ 0: integers ≤ dim for a binary
      memory, relative noise sizes for a continuous model.
    - ``trials``: starts per pattern and radius; ``key``: a PRNG key.

    **Returns:** a [`Basins`][ham.landscape.Basins].
    """
    owner = "ham.landscape.basins"
    trials = checks.integer(owner, "trials", trials)
    batch_size = checks.integer(owner, "batch_size", batch_size)
    checks.prng_key(owner, "key", key)
    k_fixed, k_starts = jax.random.split(key)

    if isinstance(model, _BinaryMemory):
        if relax_kwargs:
            raise TypeError(f"{owner}: a binary memory runs sign dynamics; unexpected arguments {sorted(relax_kwargs)}.")
        if layers is not None:
            raise ValueError(f"{owner}: layers applies to a HAM only, got layers={layers!r} for a binary memory.")
        max_sweeps = model._check_mode(mode, max_sweeps)
        p = _binary_patterns(owner, model, patterns)
        r = _check_radii(radii, binary_dim=model.dim)
        returned, unconverged = _binary_counts(
            model, p, jnp.asarray(r, jnp.int32), k_fixed, k_starts, trials, mode, max_sweeps, batch_size
        )
        return _summarise(jnp.asarray(r), returned, unconverged, trials, model.dim)

    if isinstance(model, ModernHopfield):
        if layers is not None:
            raise ValueError(f"{owner}: layers applies to a HAM only; a modern memory's noise goes to its visible layer.")
        mem = model._active_only("basins") if model.active is not None else model
        net = mem.network
        q = checks.real_array(owner, "patterns", patterns, mem.patterns.dtype)
        if q.ndim != 2 or q.shape[1] != mem.dim or q.shape[0] < 1:
            raise ValueError(
                f"{owner}: patterns must have shape (num_patterns, {mem.dim}) for this modern memory "
                f"(dim {mem.dim}), got shape {tuple(q.shape)}."
            )
        q = checks.finite(owner, "patterns", q).astype(mem.patterns.dtype)
        base = {"v": q, "h": q @ mem.patterns.T}
        noisy, equilibrate = ("v",), ("h",)
    elif isinstance(model, HAM):
        net = model
        base = _ham_patterns(owner, net, patterns)
        free = tuple(k for k, layer in net.layers.items() if not _clamped(layer))
        if layers is None:
            noisy = free
        else:
            noisy = (layers,) if isinstance(layers, str) else tuple(layers)
            unknown = [k for k in noisy if k not in net.layers]
            if unknown or not noisy:
                raise ValueError(f"{owner}: layers {noisy!r} must name layers of the network {sorted(net.layers)}.")
        if not noisy:
            raise ValueError(f"{owner}: the network has no free layer (every tau is inf); nothing can move.")
        equilibrate = ()
    else:
        raise TypeError(
            f"{owner}: model must be a binary memory (ham.memories.classical/dense/exponential), a "
            f"ham.memories.modern memory or a ham.HAM, got {type(model).__name__}."
        )
    r = _check_radii(radii, binary_dim=None)
    dtype = jnp.result_type(*base.values())
    kw = with_default_solver(net, relax_kwargs)
    returned, unconverged, size = _continuous_counts(
        net, base, jnp.asarray(r, dtype), k_fixed, k_starts, trials, noisy, equilibrate, batch_size, kw
    )
    return _summarise(jnp.asarray(r, dtype), returned, unconverged, trials, size)


def _binary_patterns(owner, model, patterns):
    p = checks.real_array(owner, "patterns", patterns, model.patterns.dtype)
    if p.ndim != 2 or p.shape[1] != model.dim or p.shape[0] < 1:
        raise ValueError(
            f"{owner}: patterns must have shape (num_patterns, {model.dim}) for this {type(model).__name__} "
            f"of {model.dim} neurons, got shape {tuple(p.shape)}."
        )
    check_pm1(owner, p)
    return p.astype(model.patterns.dtype)


def _clamped(layer) -> bool:
    try:
        return bool(np.all(np.isinf(np.asarray(layer.tau))))
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError, TypeError):
        return False


def _ham_patterns(owner, net: HAM, patterns):
    if not isinstance(patterns, Mapping):
        if len(net.layers) != 1:
            raise TypeError(
                f"{owner}: for a HAM of several layers {sorted(net.layers)}, patterns must be a dict of stacked "
                f"layer states (num_patterns, *layer.shape), got {type(patterns).__name__}."
            )
        patterns = {next(iter(net.layers)): patterns}
    if set(patterns) != set(net.layers):
        raise ValueError(f"{owner}: patterns have layers {sorted(patterns)}, the network has {sorted(net.layers)}.")
    out, count = {}, None
    for k, layer in net.layers.items():
        x = checks.real_array(owner, f"patterns[{k!r}]", patterns[k])
        if x.ndim != len(layer.shape) + 1 or tuple(x.shape[1:]) != layer.shape or x.shape[0] < 1:
            raise ValueError(
                f"{owner}: patterns[{k!r}] must have shape (num_patterns, *{layer.shape}), got {tuple(x.shape)}."
            )
        if count is not None and x.shape[0] != count:
            raise ValueError(f"{owner}: patterns of the layers hold different numbers of states ({count} and {x.shape[0]}).")
        count = x.shape[0]
        out[k] = checks.finite(owner, f"patterns[{k!r}]", x)
    dtype = jnp.result_type(*out.values())
    return {k: v.astype(dtype) for k, v in out.items()}


def _flip_start(key, xi, r):
    """``xi`` with exactly ``r`` distinct neurons, chosen uniformly, flipped."""
    n = xi.shape[0]
    perm = jax.random.permutation(key, n)
    flip = jnp.zeros(n, bool).at[perm].set(jnp.arange(n) < r)
    return jnp.where(flip, -xi, xi)


@eqx.filter_jit
def _binary_counts(model, patterns, radii, k_fixed, k_starts, trials, mode, max_sweeps, batch_size):
    del k_fixed
    num, n = patterns.shape
    num_r = radii.shape[0]

    def one(i):
        p, r = i // (num_r * trials), (i // trials) % num_r
        k_flip, k_order = jax.random.split(jax.random.fold_in(k_starts, i))
        xi = patterns[p]
        s, _, converged = model._run_one(_flip_start(k_flip, xi, radii[r]), k_order, mode, max_sweeps, True)
        # the pattern's own fixed point under the same neuron orders (one sweep if it is stable)
        own, _, _ = model._run_one(xi, k_order, mode, max_sweeps, True)
        back = (jnp.vdot(s, xi) / n >= RETURN_OVERLAP) | jnp.all(s == own)
        return back & converged, ~converged

    back, unconverged = jax.lax.map(one, jnp.arange(num * num_r * trials), batch_size=batch_size)
    shape = (num, num_r, trials)
    return jnp.sum(back.reshape(shape), -1), jnp.sum(unconverged.reshape(shape), -1)


def _flat(xs: dict, names) -> Array:
    return jnp.concatenate([jnp.ravel(xs[k]) for k in names])


@eqx.filter_jit
def _continuous_counts(net, base, radii, k_fixed, k_starts, trials, noisy, equilibrate, batch_size, relax_kwargs):
    del k_fixed  # the continuous dynamics are deterministic
    num = next(iter(base.values())).shape[0]
    num_r = radii.shape[0]
    free = tuple(k for k, layer in net.layers.items() if not _clamped(layer))
    own = relax(net, base, **relax_kwargs)
    fixed = own.states

    def one(i):
        p, r = i // (num_r * trials), (i // trials) % num_r
        keys = jax.random.split(jax.random.fold_in(k_starts, i), len(noisy))
        x0 = {k: v[p] for k, v in base.items()}
        for name, k in zip(noisy, keys):
            u = jax.random.normal(k, x0[name].shape, x0[name].dtype)
            u = u / jnp.linalg.norm(jnp.ravel(u))
            x0[name] = x0[name] + radii[r] * jnp.linalg.norm(jnp.ravel(x0[name])) * u
        for name in equilibrate:  # a layer not coupled to itself: x_A = -dE_syn/dg_A of the others
            x0[name] = x0[name] - net._dEdg_layer(x0, name)
        sol = relax(net, x0, **relax_kwargs)
        xf = sol.states
        a, b = _flat(xf, noisy), _flat({k: v[p] for k, v in base.items()}, noisy)
        cosine = jnp.vdot(a, b) / jnp.maximum(jnp.linalg.norm(a) * jnp.linalg.norm(b), jnp.finfo(a.dtype).tiny)
        star = _flat({k: v[p] for k, v in fixed.items()}, free)
        dist = jnp.linalg.norm(_flat(xf, free) - star)
        scale = jnp.maximum(jnp.linalg.norm(star), jnp.linalg.norm(_flat({k: v[p] for k, v in base.items()}, free)))
        same = (dist <= SAME_FIXED_POINT * scale) & own.converged[p]
        back = (cosine >= RETURN_OVERLAP) | same
        return back & sol.converged, ~sol.converged

    back, unconverged = jax.lax.map(one, jnp.arange(num * num_r * trials), batch_size=batch_size)
    shape = (num, num_r, trials)
    size = sum(math.prod(net.layers[k].shape) for k in noisy)
    return jnp.sum(back.reshape(shape), -1), jnp.sum(unconverged.reshape(shape), -1), size


# ============================================================================ paths
class Path(eqx.Module):
    r"""The result of [`minimum_energy_path`][ham.landscape.minimum_energy_path].

    - ``states``: the images, a dict of layer states with a leading ``(images,)`` axis
      (``states[k][0]`` is ``a``, ``states[k][-1]`` is ``b``);
    - ``energies`` (images,): $E$ of each image;
    - ``saddle``: the highest point of the path as a state dict; when ``refined`` it is
      the fixed point found by Newton's method from the climbing image (``residual`` =
      $\|\dot x\|$ there), else the climbing image itself; ``saddle_energy`` its energy;
    - ``saddle_index``: the number of unstable directions of the dynamics at ``saddle``
      (1 for a transition state; -1 when not ``refined``, where the index of a
      non-fixed point is undefined);
    - ``barrier`` $= \max_{\text{path}} E - E(a)$ and ``barrier_back``
      $= \max_{\text{path}} E - E(b)$ (the saddle included in the max);
    - ``converged``: the band stopped moving (see ``tol``) and the climbing image's
      force $\|\partial E/\partial g\|$ is within it; ``iterations``: band updates made
      (rejected steps included);
    - ``climbing_image``: the index of the image that climbed.
    """

    states: dict[str, Array]
    energies: Float[Array, " images"]
    saddle: dict[str, Array]
    saddle_energy: Float[Array, ""]
    saddle_index: int
    residual: Float[Array, ""]
    refined: bool
    barrier: Float[Array, ""]
    barrier_back: Float[Array, ""]
    converged: Bool[Array, ""]
    iterations: Int[Array, ""]
    climbing_image: Int[Array, ""]


def _check_state(owner, name, net: HAM, x):
    if not isinstance(x, Mapping):
        raise TypeError(f"{owner}: {name} must be a dict of layer states keyed by layer name, got {type(x).__name__}.")
    x = {k: checks.real_array(owner, f"{name}[{k!r}]", v) for k, v in dict(x).items()}
    if set(x) != set(net.layers):
        raise ValueError(f"{owner}: {name} has layers {sorted(x)}, the network has {sorted(net.layers)}.")
    for k, layer in net.layers.items():
        if tuple(x[k].shape) != layer.shape:
            raise ValueError(
                f"{owner}: {name}[{k!r}] must be one unbatched state of shape {layer.shape}, got {tuple(x[k].shape)}."
            )
    return checks.finite_tree(owner, name, x)


def _residual_check(owner, name, net, x, tol_factor):
    dtype = jnp.result_type(*x.values())
    tol = default_tolerances(dtype)
    f = _field_at(net, x)
    for k, layer in net.layers.items():
        if _clamped(layer):
            continue
        speed = float(jnp.linalg.norm(jnp.ravel(f[k])))
        bound = tol_factor * (tol["event_atol"] + tol["event_rtol"] * float(jnp.linalg.norm(jnp.ravel(x[k]))))
        if not speed <= bound:
            raise ValueError(
                f"{owner}: {name} is not a fixed point: layer {k!r} has |dx/dt| = {speed:.3g} > {bound:.3g} "
                f"({tol_factor:g} x the steady-state tolerance); relax it first (ham.relax)."
            )


def minimum_energy_path(
    model: HAM,
    a: Mapping[str, Array],
    b: Mapping[str, Array],
    *,
    images: int = 17,
    step_size: float | None = None,
    max_iterations: int = 20_000,
    tol: float | None = None,
    climb: bool = True,
    refine: bool | None = None,
) -> Path:
    r"""The minimum-energy path between two fixed points ``a`` and ``b`` of a HAM, the
    saddle on it and the barrier: a climbing-image string method driven by each
    layer's own force $-\partial E/\partial g_A$.

    **Method.** A band of ``images`` states, fixed at ``a`` and ``b``, starts on the
    straight line between them. Each iteration moves every interior image by
    $\eta\,F_\perp$, where $F_A = -\partial E/\partial g_A = \tau_A\dot x_A$ is the force
    of layer $A$ in the dynamics and $F_\perp$ its part across the band (below), and
    then redistributes the images at equal arc length along the band: the string
    method (E, Ren & Vanden-Eijnden 2002, "String method for the study of rare
    events"; the reparametrisation of its simplified form, 2007). Once the band has
    settled (it moves less than 10 × ``tol``; at the latest after a tenth of
    ``max_iterations``, at most 500) the highest image climbs: its component along the
    band is reversed, $F - 2\,\langle F,\hat t\rangle_H\,\hat t/\langle\hat t,\hat
    t\rangle_H$, so it goes uphill along the band and downhill across it, to the saddle
    — the climbing image of Henkelman, Uberuaga & Jónsson 2000 ("A climbing image
    nudged elastic band method for finding saddle points and minimum energy paths"),
    as in the climbing string of Ren & Vanden-Eijnden 2013 — and the two halves of the
    band are redistributed separately. The step $\eta$ adapts: for every image but the
    climbing one the move is a descent step of $E$, taken only if each of their
    energies falls by at least half its linear prediction (Armijo's rule); else $\eta$
    is halved, and after an accepted step it grows by 1.25, up to ``step_size``.

    **Why this force and metric, not $-\nabla_x E$.** By the chain rule
    $\nabla_{x_A}E = H_A\,\partial E/\partial g_A$ with $H_A = \nabla^2 L_A$, so
    $F = -H^{-1}\nabla_x E$: the layers' forces are the gradient of $E$ in the metric
    $\langle u, w\rangle_H = \sum_A u_A^\top H_A w_A$ (the dynamics themselves are the
    same flow slowed per layer by $\tau_A$). Where a Lagrangian is flat ($H$ singular:
    softmax's shift $x\to x + c\mathbf 1$, inactive ReLU units, the layer norm's
    scale) $E$ does not change, so a Euclidean band on $E(x)$ has no force to hold its
    images there: the path is not defined along those directions and they drift. $F$
    keeps the Legendre leak $-x_A$, which pulls every such direction back to the
    equilibrium of its layer, so the band is held in every direction. Projections
    across the band are taken in the same metric ($\langle F, t\rangle_H = -\nabla_x
    E\cdot t$, $\langle t, t\rangle_H$ by a Jacobian-vector product of the activation),
    which keeps every move downhill. The converged band has $F\parallel\hat t$ at every
    image: it is made of trajectories of the network's dynamics with every $\tau_A$
    set equal (the saddle's unstable manifold; the minimum-energy path in the metric
    $H$), along which $E$ falls monotonically away from the saddle. Fixed points, their
    energies and (by Sylvester's law of inertia) their indices do not depend on the
    τ's or the metric, so the saddle and the barrier are those of the network.

    **Saddle.** With ``refine`` (default: when the state has at most 4096 entries) the
    climbing image is polished by Newton's method on $\dot x = 0$
    (``optimistix.Newton``; it needs the energy to be twice differentiable there) and
    accepted if it lands within one image spacing of the climbing image with every
    layer's $\|\dot x_A\|$ inside [`ham.relax`][]'s steady-state tolerance; its index
    (the number of eigenvalues of $\partial\dot x/\partial x$ with positive real part)
    is computed with [`ham.landscape.classify`][] where available, else from the dense
    Jacobian. A transition state has index 1.

    **Arguments:**
    - ``model``: a [`ham.HAM`][] (for a memory, pass its ``network``).
    - ``a``, ``b``: fixed points (unbatched state dicts; ``|dx/dt|`` within 10 × the
      steady-state tolerance of [`ham.relax`][], which stops well inside it).
      Clamped layers (τ = ∞) must be equal in both and stay fixed.
    - ``images``: the number of states on the band, ≥ 3, ends included.
    - ``step_size``: the largest step $\eta$ (default 0.2); ``max_iterations``: the
      cap on band updates.
    - ``tol``: the band has converged when no image moves more than ``tol`` × the step
      per iteration and the climbing image's $\|F\|$ is below ``tol``, both relative
      to the band's scale $\max(\|a\|, \|b\|, 1)$. Default ``1e-5`` (float32: ``1e-3``).
    - ``climb``: use a climbing image (else the plain string; its top image is then
      within half a spacing of the saddle).
    - ``refine``: polish the saddle with Newton's method (see above).

    **Returns:** a [`Path`][ham.landscape.Path].
    """
    owner = "ham.landscape.minimum_energy_path"
    if not isinstance(model, HAM):
        hint = " (pass model.network)" if isinstance(getattr(model, "network", None), HAM) else ""
        raise TypeError(f"{owner}: model must be a ham.HAM{hint}, got {type(model).__name__}.")
    net = model
    if isinstance(images, (bool, np.bool_)) or not isinstance(images, (int, np.integer)):
        raise TypeError(f"{owner}: images must be an integer >= 3, got {images!r}.")
    if images < 3:
        raise ValueError(f"{owner}: images must be >= 3 (two ends and at least one image between), got {images}.")
    images = int(images)
    max_iterations = checks.integer(owner, "max_iterations", max_iterations)
    a = _check_state(owner, "a", net, a)
    b = _check_state(owner, "b", net, b)
    dtype = jnp.result_type(*a.values(), *b.values())
    a = {k: v.astype(dtype) for k, v in a.items()}
    b = {k: v.astype(dtype) for k, v in b.items()}
    free = tuple(k for k, layer in net.layers.items() if not _clamped(layer))
    if not free:
        raise ValueError(f"{owner}: the network has no free layer (every tau is inf).")
    for k in net.layers:
        if k not in free and not bool(jnp.all(a[k] == b[k])):
            raise ValueError(f"{owner}: the clamped layer {k!r} (tau = inf) differs between a and b; it cannot move.")
    _residual_check(owner, "a", net, a, 10.0)
    _residual_check(owner, "b", net, b, 10.0)
    xa, xb = _flat(a, free), _flat(b, free)
    scale = max(float(jnp.linalg.norm(xa)), float(jnp.linalg.norm(xb)), 1.0)
    f64 = dtype == jnp.float64
    tol = (1e-5 if f64 else 1e-3) if tol is None else float(checks.param(owner, "tol", tol))
    if float(jnp.linalg.norm(xa - xb)) <= 10 * tol * scale:
        raise ValueError(f"{owner}: a and b are the same fixed point (distance {float(jnp.linalg.norm(xa - xb)):.3g}).")
    if step_size is None:
        step_size = 0.2
    step_size = float(checks.param(owner, "step_size", step_size))
    warmup = min(max_iterations // 10, 500) if climb else max_iterations + 1
    clamped = {k: a[k] for k in net.layers if k not in free}
    shapes = tuple((k, net.layers[k].shape) for k in free)  # ordered (a jit argument's dict is key-sorted)
    band, iterations, converged, ci = _string(
        net, xa, xb, clamped, shapes, images, max_iterations, warmup, tol * scale, step_size
    )
    band = checks.finite_result(owner, band, "the band diverged: lower step_size")
    states = jax.vmap(lambda x: _unflat(x, shapes, clamped))(band)
    energies = _energies(net, states)
    ci = int(ci)
    top = {k: v[ci] for k, v in states.items()}
    n = int(xa.size)
    refine = (n <= 4096) if refine is None else bool(refine)
    saddle, refined, index = top, False, -1
    if refine:
        spacing = float(jnp.max(jnp.linalg.norm(jnp.diff(band, axis=0), axis=-1)))
        x_s, ok = _newton(net, band[ci], clamped, shapes, tol)
        candidate = _unflat(x_s, shapes, clamped)
        near = float(jnp.linalg.norm(x_s - band[ci])) <= spacing
        if bool(ok) and near and bool(jnp.all(jnp.isfinite(x_s))) and _is_fixed(net, candidate, free):
            saddle, refined = candidate, True
            index = _index(net, saddle)
    saddle_energy = _energy_at(net, saddle)
    residual = jnp.linalg.norm(_flat(net.vector_field(0.0, saddle), free))  # op by op: notebook 06 prints it
    top_e = jnp.maximum(jnp.max(energies), saddle_energy)
    return Path(
        states=states, energies=energies, saddle=saddle, saddle_energy=saddle_energy, saddle_index=int(index),
        residual=residual, refined=refined, barrier=top_e - energies[0], barrier_back=top_e - energies[-1],
        converged=converged, iterations=iterations, climbing_image=jnp.asarray(ci),
    )


def _is_fixed(net, state, free) -> bool:
    """Every free layer within ``ham.relax``'s steady-state tolerance (the criterion
    ``classify`` accepts with a 10x margin)."""
    tol = default_tolerances(jnp.result_type(*state.values()))
    f = _field_at(net, state)
    return all(
        float(jnp.linalg.norm(jnp.ravel(f[k]))) <= tol["event_atol"] + tol["event_rtol"] * float(jnp.linalg.norm(jnp.ravel(state[k])))
        for k in free
    )


# The host-side checks and summaries of one path evaluate the network outside the band's
# compiled loop: as compiled programs (run op by op, every operation was compiled on its own
# for each network and shape).
@eqx.filter_jit
def _field_at(net, x):
    return net.vector_field(0.0, x)


@eqx.filter_jit
def _energy_at(net, x):
    return net._energy(x)


@eqx.filter_jit
def _energies(net, states):
    return jax.vmap(net._energy)(states)


def _unflat(x, shapes, clamped):
    """The state dict of a flat vector of the free layers; ``shapes`` = ((name, shape), ...)."""
    out, i = dict(clamped), 0
    for k, shape in shapes:
        size = math.prod(shape)
        out[k] = x[i : i + size].reshape(shape)
        i += size
    return out


def _field(net, x, shapes, clamped):
    f = net.vector_field(0.0, _unflat(x, shapes, clamped))
    return _flat(f, tuple(k for k, _ in shapes))


def _reparametrise(band, lo, hi, fixed_index):
    """Images ``lo..hi`` (inclusive; ends fixed) redistributed at equal arc length along
    the piecewise-linear band."""
    m = band.shape[0]
    seg = jnp.linalg.norm(jnp.diff(band, axis=0), axis=-1)
    s = jnp.concatenate([jnp.zeros((1,), band.dtype), jnp.cumsum(seg)])
    i = jnp.arange(m)
    s_lo, s_hi = s[lo], s[hi]
    frac = (i - lo) / jnp.maximum(hi - lo, 1)
    target = s_lo + frac * (s_hi - s_lo)
    j = jnp.clip(jnp.searchsorted(s, target, side="right") - 1, 0, m - 2)
    w = jnp.clip((target - s[j]) / jnp.maximum(s[j + 1] - s[j], jnp.finfo(band.dtype).tiny), 0.0, 1.0)
    new = band[j] + w[:, None] * (band[j + 1] - band[j])
    inside = (i > lo) & (i < hi) & (i != fixed_index)
    return jnp.where(inside[:, None], new, band)


def _force(net, x, shapes, clamped):
    """$-\\partial E/\\partial g_A$ of every free layer, flat: the dynamics with every τ = 1."""
    d = net._dEdg(_unflat(x, shapes, clamped))
    return -_flat(d, tuple(k for k, _ in shapes))


@eqx.filter_jit
def _string(net, xa, xb, clamped, shapes, images, max_iterations, warmup, tol, eta_max):
    t = jnp.linspace(0.0, 1.0, images, dtype=xa.dtype)[:, None]
    band0 = xa[None] + t * (xb - xa)[None]
    energy_one = lambda x: net._energy(_unflat(x, shapes, clamped))  # noqa: E731
    energy = jax.vmap(energy_one)
    slope = jax.vmap(lambda x, d: jax.jvp(energy_one, (x,), (d,))[1])
    force_of = jax.vmap(lambda x: _force(net, x, shapes, clamped))
    interior = (jnp.arange(images) > 0) & (jnp.arange(images) < images - 1)
    idx = jnp.arange(images)
    tiny = jnp.finfo(xa.dtype).tiny

    def along(x, t):
        # alpha with F + alpha t the force's part H-orthogonal to t (metric H = blockdiag
        # of the Lagrangians' Hessians): <F, t>_H = -dE/dx . t, <t, t>_H = sum_A t_A . H_A t_A
        xs, ts = _unflat(x, shapes, {}), _unflat(t, shapes, {})
        metric = sum(jnp.vdot(ts[k], jax.jvp(net.layers[k].activation, (xs[k],), (ts[k],))[1]) for k, _ in shapes)
        return jax.jvp(energy_one, (x,), (t,))[1] / jnp.maximum(metric, tiny)

    def step(carry):
        band, it, _, ci_prev, _, shift_prev, eta = carry
        f = force_of(band)
        e = energy(band)
        # climb once the plain string has settled (or after the warm-up); then for good,
        # keeping the climbing image's index (the two halves of the band are then fixed)
        climbing = (it >= warmup) | (ci_prev >= 0) | ((shift_prev <= 10.0 * tol) & (warmup <= max_iterations))
        ci = jnp.where(ci_prev >= 0, ci_prev, jnp.where(climbing, jnp.argmax(jnp.where(interior, e, -jnp.inf)), -1))
        c = jnp.maximum(ci, 1)
        tangents = band[jnp.minimum(idx + 1, images - 1)] - band[jnp.maximum(idx - 1, 0)]
        tangents = tangents / jnp.maximum(jnp.linalg.norm(tangents, axis=-1, keepdims=True), tiny)
        parallel = jax.vmap(along)(band, tangents)[:, None] * tangents
        is_ci = idx == ci
        # every image moves with the force across the band; the climbing image with the
        # component along the band reversed (uphill along it, downhill across it)
        moved = jnp.where(interior[:, None], band + eta * (f + jnp.where(is_ci[:, None], 2.0, 1.0) * parallel), band)
        # for every image but the climbing one this is a descent step of E: take it only
        # if each of their energies falls by at least half the linear prediction (Armijo),
        # else halve the step
        e_moved = energy(moved)
        slack = 16 * jnp.finfo(band.dtype).eps * (jnp.abs(e) + 1.0)
        armijo = e_moved <= e + 0.5 * slope(band, moved - band) + slack
        ok = jnp.all(jnp.where(interior & ~is_ci, armijo, True)) & jnp.all(jnp.isfinite(moved))
        new = jnp.where(
            ci >= 0,
            _reparametrise(_reparametrise(moved, 0, c, ci), c, images - 1, ci),
            _reparametrise(moved, 0, images - 1, -1),
        )
        new = jnp.where(ok, new, band)
        shift = jnp.where(ok, jnp.max(jnp.linalg.norm(new - band, axis=-1)) / eta, jnp.inf)
        ci_speed = jnp.where(ci >= 0, jnp.linalg.norm(f[c]), jnp.inf)
        done = (ci >= 0) & (shift <= tol) & (ci_speed <= tol) if warmup <= max_iterations else (shift <= tol)
        eta_next = jnp.where(ok, jnp.minimum(1.25 * eta, eta_max), 0.5 * eta)
        stuck = eta_next < 1e-12 * eta_max
        shift_prev = jnp.where(ok, shift, shift_prev)
        return new, it + 1, done, ci, stuck, shift_prev, eta_next

    def cond(carry):
        _, it, done, _, bad, _, _ = carry
        return (it < max_iterations) & ~done & ~bad

    init = (band0, jnp.asarray(0), jnp.asarray(False), jnp.asarray(-1), jnp.asarray(False),
            jnp.asarray(jnp.inf, xa.dtype), jnp.asarray(eta_max, xa.dtype))
    band, it, done, ci, _, _, _ = jax.lax.while_loop(cond, step, init)
    top = jnp.argmax(jnp.where(interior, energy(band), -jnp.inf))
    return band, it, done, jnp.where(ci >= 0, ci, top)


@eqx.filter_jit
def _newton(net, x0, clamped, shapes, tol):
    fn = lambda x, _: _field(net, x, shapes, clamped)  # noqa: E731
    scale = jnp.maximum(jnp.linalg.norm(x0), 1.0)
    atol = 1e-2 * tol if x0.dtype == jnp.float64 else 1e-1 * tol
    solver = optx.Newton(rtol=atol, atol=atol * scale)
    sol = optx.root_find(fn, solver, x0, max_steps=64, throw=False)
    res = jnp.linalg.norm(fn(sol.value, None))
    ok = (sol.result == optx.RESULTS.successful) & (res <= tol * scale)
    return sol.value, ok


def _index(net: HAM, state) -> int:
    """The number of unstable directions of the dynamics at a fixed point: by
    ``ham.landscape.classify`` where it exists, else from the dense Jacobian."""
    try:
        from .landscape import classify  # the census/classify part of the toolkit
    except ImportError:
        classify = None
    if classify is not None:
        c = classify(net, {k: v[None] for k, v in state.items()})
        return int(np.asarray(c.index)[0])
    free = tuple(k for k, layer in net.layers.items() if not _clamped(layer))
    shapes = tuple((k, net.layers[k].shape) for k in free)
    clamped = {k: v for k, v in state.items() if k not in free}
    jac = jax.jacfwd(lambda x: _field(net, x, shapes, clamped))(_flat(state, free))
    eig = np.linalg.eigvals(np.asarray(jac, dtype=np.float64))
    scale = max(float(np.max(np.abs(eig))), 1e-30)
    return int(np.sum(eig.real > 1e-6 * scale))
