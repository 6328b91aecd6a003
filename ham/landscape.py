r"""Energy-landscape analysis: which fixed points a model has, which are minima and which
saddles, what they are made of, and how spread a softmax memory's attention is.

- [`census`][ham.landscape.census]: relax many starts and deduplicate the fixed points reached.
- [`classify`][ham.landscape.classify]: the Morse index of fixed points (0 = minimum).
- [`label`][ham.landscape.label]: stored pattern, reversed pattern, symmetric mixture
  (Amit, Gutfreund & Sompolinsky 1985), other mixture or spin-glass state, by overlaps.
- [`basins`][ham.landscape.basins]: return fractions around each memory with 95 % intervals.
- [`minimum_energy_path`][ham.landscape.minimum_energy_path]: the path, saddle and barrier
  between two minima of a HAM.
- [`attention_spread`][ham.landscape.attention_spread]: how many stored patterns hold a
  given softmax mass (the metastable-state measure of Ramsauer et al. 2020).
- [`lanczos`][ham.landscape.lanczos]: a small jit-able Lanczos with full
  reorthogonalisation, used by ``classify`` on large states.

Two kinds of model are covered: a [`ham.HAM`][] (continuous dynamics
$\tau_A\dot x_A = -\partial E/\partial g_A$, relaxed by [`ham.relax`][]) and the binary
memories [`ham.memories.classical`][], [`ham.memories.dense`][] and
[`ham.memories.exponential`][] (asynchronous sign dynamics, whose fixed points are the
1-flip-stable states: no single flip lowers the energy).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from . import _checks as checks
from .integrator import _is_clamped
from ._stream import default_window
from .memories._binary import ExponentialAssociativeMemory, _BinaryMemory
from .memories._modern import ModernHopfield
from .network import HAM
from .solve import default_tolerances, relax
from ._landscape_paths import Basins, Path, basins, minimum_energy_path, wilson_interval

__all__ = [
    "Census", "Classification", "Labels", "census", "classify", "label", "attention_spread", "lanczos",
    "basins", "minimum_energy_path", "Basins", "Path", "wilson_interval",
]

#: ``classify`` uses a dense eigendecomposition up to this many free neurons, Lanczos above.
DENSE_MAX = 1024
#: A layer up to this size gets its exact $(\nabla^2 L_A)^{1/2}$ (dense ``eigh`` of its
#: Hessian); a larger layer must have an elementwise Lagrangian (diagonal Hessian).
LAYER_DENSE_MAX = 2048
#: The label names, in the order of ``Labels.code``.
LABELS = ("stored", "reversed", "symmetric mixture", "other mixture", "spin-glass")


def _is_binary(model) -> bool:
    return isinstance(model, _BinaryMemory)


def _check_model(owner: str, model):
    if isinstance(model, HAM) or _is_binary(model):
        return
    hint = ""
    if getattr(model, "network", None) is not None:
        hint = " (pass memory.network for the HAM it is an instance of)"
    raise TypeError(
        f"{owner}: model must be a ham.HAM or a binary memory (ham.memories.classical, dense or "
        f"exponential), got {type(model).__name__}{hint}."
    )


# ============================================================================ census
class Census(eqx.Module):
    """The distinct fixed points reached from a set of starts ([`census`][ham.landscape.census]).

    - ``points``: the ``M`` distinct fixed points, sorted by energy (lowest first): for a
      HAM the dict of layer states [`ham.relax`][] returns, stacked along a leading axis;
      for a binary memory an ``(M, N)`` ±1 array.
    - ``counts`` ``(M,)``: how many starts reached each (they sum to the converged starts).
    - ``energies`` ``(M,)``: the model's energy of each (for the exponential memory its
      ``log_energy``, an increasing function of the energy that never overflows).
    - ``assignment`` ``(S,)``: the index of the point each start reached, −1 if it did not
      converge; ``converged`` ``(S,)``.
    """

    points: dict[str, Array] | Array
    counts: Int[Array, " M"]
    energies: Float[Array, " M"]
    assignment: Int[Array, " S"]
    converged: Bool[Array, " S"]

    @property
    def num_points(self) -> int:
        """``M``, the number of distinct fixed points found."""
        return int(self.counts.shape[0])


def _binary_starts(owner, model, starts, key):
    n = model.dim
    if isinstance(starts, (int, np.integer)) and not isinstance(starts, bool):
        s = checks.integer(owner, "starts", starts)
        if key is None:
            raise ValueError(f"{owner}: starts={s} (a number of random starts) needs a PRNG key.")
        checks.prng_key(owner, "key", key)
        return jnp.where(jax.random.bernoulli(jax.random.fold_in(key, 1), 0.5, (s, n)), 1.0, -1.0).astype(
            model.patterns.dtype)
    arr = starts if isinstance(starts, jax.Array) else np.asarray(starts)
    if not (jnp.issubdtype(arr.dtype, jnp.floating) or jnp.issubdtype(arr.dtype, jnp.integer)) or arr.dtype == bool:
        raise TypeError(f"{owner}: starts must be a real array of ±1 states, got dtype {arr.dtype}.")
    if arr.ndim != 2 or arr.shape[1] != n or arr.shape[0] < 1:
        raise ValueError(f"{owner}: starts must have shape (num_starts, {n}) for this memory, got {tuple(arr.shape)}.")
    host = np.asarray(arr)
    bad = (host != 1) & (host != -1)
    if bad.any():
        i = tuple(int(v) for v in np.argwhere(bad)[0])
        raise ValueError(f"{owner}: starts must be ±1 states, got starts{list(i)} = {host[i]!r}.")
    return jnp.asarray(host, model.patterns.dtype)


def _ham_starts(owner, net: HAM, starts, key, scale):
    if isinstance(starts, (int, np.integer)) and not isinstance(starts, bool):
        s = checks.integer(owner, "starts", starts)
        if key is None:
            raise ValueError(f"{owner}: starts={s} (a number of random starts) needs a PRNG key.")
        checks.prng_key(owner, "key", key)
        return net.init_states((s,), key=key, scale=scale)
    if not isinstance(starts, Mapping):
        raise TypeError(f"{owner}: starts must be a dict of layer states (or a number of random starts), "
                        f"got {type(starts).__name__}.")
    if set(starts) != set(net.layers):
        raise ValueError(f"{owner}: starts have layers {sorted(starts)}, the network has {sorted(net.layers)}.")
    out, num = {}, None
    for k, layer in net.layers.items():
        x = starts[k] if isinstance(starts[k], jax.Array) else jnp.asarray(np.asarray(starts[k]))
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"{owner}: starts[{k!r}] must be a floating array, got dtype {x.dtype}.")
        if x.ndim != 1 + len(layer.shape) or tuple(x.shape[1:]) != layer.shape:
            raise ValueError(f"{owner}: starts[{k!r}] must have shape (num_starts, *{layer.shape}), "
                             f"got {tuple(x.shape)}.")
        if num is not None and x.shape[0] != num:
            raise ValueError(f"{owner}: starts[{k!r}] has {x.shape[0]} starts, other layers have {num}.")
        num = x.shape[0]
        out[k] = checks.finite(owner, f"starts[{k!r}]", x)
    if num < 1:
        raise ValueError(f"{owner}: starts must hold at least one start.")
    return out


def _bucket(m: int) -> int:
    """The number of rows a batch of ``m`` points is padded to, so that the compiled
    programs of ``classify`` depend on the size class of ``m``, not on ``m`` itself (the
    number of points a census finds varies with the data): the power of two >= ``m`` up to
    64, then multiples of a quarter of the power of two below ``m`` (at most 25 % extra rows)."""
    if m <= 64:
        return 1 << (m - 1).bit_length()
    g = 1 << (m.bit_length() - 3)
    return -(-m // g) * g


def _pad_rows(x, size):
    """``x`` with its leading axis padded to ``size`` by copies of its first row, on the host
    (an eager device concatenate would compile for every new number of rows)."""
    if size <= x.shape[0] or not getattr(x, "is_fully_addressable", True):
        return x
    h = np.asarray(x)
    return jnp.asarray(np.concatenate([h, np.broadcast_to(h[:1], (size - h.shape[0],) + h.shape[1:])]))


def _rows(x, m):
    """The first ``m`` rows of a result (sliced on the host: no compile per ``m``)."""
    return jnp.asarray(np.asarray(x)[:m])


def _pad(x, size):
    """Pad the leading axis of ``x`` to ``size`` with copies of its first row."""
    extra = size - x.shape[0]
    if extra <= 0:
        return x
    return jnp.concatenate([x, jnp.broadcast_to(x[:1], (extra,) + x.shape[1:])])


def census(
    model: HAM | _BinaryMemory,
    starts: int | Array | Mapping[str, Array],
    *,
    key: PRNGKeyArray | None = None,
    tol: float | None = None,
    chunk: int = 1024,
    scale: float = 1.0,
    max_sweeps: int = 100,
    **relax_kwargs,
) -> Census:
    r"""Relax every start to a fixed point and count the distinct fixed points reached.

    **Arguments:**
    - ``model``: a [`ham.HAM`][] (relaxed by [`ham.relax`][] with ``relax_kwargs``) or a
      binary memory (asynchronous sign dynamics, ``max_sweeps`` sweeps at most; with a
      ``key``, a random neuron order per sweep and start).
    - ``starts``: the initial states (HAM: a dict of layer states with a leading start
      axis; binary: an ``(S, N)`` ±1 array), or a number ``S`` of random starts drawn
      with ``key`` (HAM: ``scale`` × standard normal; binary: uniform ±1).
    - ``tol``: the deduplication radius. Binary states are compared exactly. HAM fixed
      points $x, y$ are one point when for every layer
      $\|x_A-y_A\| \le$ ``tol``$\,\max(\|x_A\|,\|y_A\|) + 100\,$``event_atol``.
      [`ham.relax`][] stops when the estimated distance to the fixed point is within
      ``event_atol + event_rtol``$\,\|x_A\|$, so two starts reaching the same fixed point end
      within twice that; the default ``tol = 100 * max(event_rtol, event_atol)`` (1e-2 in
      float32, 1e-4 in float64 with the default tolerances) leaves a wide margin for the
      estimate's error along slow modes while staying far below the distance between
      distinct minima of a well-conditioned net. Points are merged with the first
      (lowest-index) representative within the radius.
    - ``chunk``: starts are relaxed ``chunk`` at a time (one compilation; memory bounded by
      one chunk plus the distinct points). A chunk of 256 or more starts is streamed
      (``window="auto"`` of [`ham.relax`][]: slow starts no longer hold up the chunk), a
      smaller one kept in flight whole with the window shrinking at the tail (relax's
      default), unless ``relax_kwargs`` give a ``window`` (``window=None``: vmapped).

    **Returns:** a [`Census`][ham.landscape.Census].

    A random start reaches a saddle with probability zero: the census finds minima
    (and, for the binary memories, all 1-flip-stable states it reaches).
    """
    owner = "ham.landscape.census"
    _check_model(owner, model)
    chunk = checks.integer(owner, "chunk", chunk)
    if key is not None:
        checks.prng_key(owner, "key", key)
    if _is_binary(model):
        if relax_kwargs:
            raise TypeError(f"{owner}: relax options {sorted(relax_kwargs)} apply to a HAM, not to {type(model).__name__}.")
        if tol is not None:
            raise ValueError(f"{owner}: tol does not apply to a binary memory (±1 states are compared exactly).")
        return _binary_census(owner, model, _binary_starts(owner, model, starts, key), key, chunk,
                              checks.integer(owner, "max_sweeps", max_sweeps))
    xs = _ham_starts(owner, model, starts, key, scale)
    return _ham_census(owner, model, xs, tol, chunk, relax_kwargs)


def _binary_energy(model, points):
    if isinstance(model, ExponentialAssociativeMemory):
        return model.log_energy(points)
    return model.energy(points)


def _finish(points_list, assignment, converged, energies_fn, stack):
    """Sort the distinct points by energy and remap the assignment."""
    m = len(points_list)
    counts = np.bincount(assignment[assignment >= 0], minlength=m)
    if m == 0:
        return None, counts, np.zeros((0,)), assignment
    points = stack(points_list)
    energies = np.asarray(energies_fn(points), dtype=np.float64)
    order = np.lexsort((-counts, energies))
    inverse = np.empty(m, np.int64)
    inverse[order] = np.arange(m)
    new_assign = np.where(assignment >= 0, inverse[np.maximum(assignment, 0)], -1)
    return order, counts[order], energies[order], new_assign


def _binary_census(owner, model, starts, key, chunk, max_sweeps):
    s_total = starts.shape[0]
    size = min(chunk, s_total)
    reps: dict[bytes, int] = {}
    rows: list[np.ndarray] = []
    assignment = np.full(s_total, -1, np.int64)
    converged = np.zeros(s_total, bool)
    for c, lo in enumerate(range(0, s_total, size)):
        block = starts[lo:lo + size]
        n_real = block.shape[0]
        k = None if key is None else jax.random.fold_in(key, c)
        s, _, conv = model.run(_pad(block, size), mode="async", max_sweeps=max_sweeps, key=k)
        s, conv = np.asarray(s)[:n_real], np.asarray(conv)[:n_real]
        converged[lo:lo + n_real] = conv
        uniq, inv = np.unique(s.astype(np.int8), axis=0, return_inverse=True)
        ids = np.empty(len(uniq), np.int64)
        for j, row in enumerate(uniq):  # one entry per distinct state of the chunk
            b = row.tobytes()
            if b not in reps:
                reps[b] = len(rows)
                rows.append(row)
            ids[j] = reps[b]
        a = ids[inv.reshape(-1)]
        assignment[lo:lo + n_real] = np.where(conv, a, -1)
    # keep only points some converged start reached
    used = np.unique(assignment[assignment >= 0])
    remap = np.full(len(rows), -1, np.int64)
    remap[used] = np.arange(len(used))
    assignment = np.where(assignment >= 0, remap[np.maximum(assignment, 0)], -1)
    kept = [rows[i] for i in used]
    dt = model.patterns.dtype
    stack = lambda lst: jnp.asarray(np.stack(lst), dt)  # noqa: E731
    order, counts, energies, assignment = _finish(kept, assignment, converged, lambda p: _binary_energy(model, p), stack)
    points = jnp.zeros((0, model.dim), dt) if order is None else stack(kept)[order]
    return Census(points=points, counts=jnp.asarray(counts), energies=jnp.asarray(energies),
                  assignment=jnp.asarray(assignment), converged=jnp.asarray(converged))


@eqx.filter_jit
def _first_match(new, reps, reps_valid, rtol, atol):
    """For each new point the first representative within the radius (-1 if none), per
    layer ``‖x - y‖ <= rtol max(‖x‖, ‖y‖) + atol``."""
    ok = None
    for k in new:
        a = new[k].reshape(new[k].shape[0], -1)
        b = reps[k].reshape(reps[k].shape[0], -1)
        d = jnp.sqrt(jnp.maximum(jnp.sum(a * a, 1)[:, None] + jnp.sum(b * b, 1)[None] - 2 * a @ b.T, 0.0))
        # the Gram-form distance loses precision for nearby points: recompute those exactly
        na, nb = jnp.linalg.norm(a, axis=1), jnp.linalg.norm(b, axis=1)
        lim = rtol * jnp.maximum(na[:, None], nb[None]) + atol
        ok_k = d <= lim + 10 * jnp.finfo(a.dtype).eps * (na[:, None] + nb[None])
        ok = ok_k if ok is None else ok & ok_k
    ok = ok & reps_valid[None]
    return jnp.where(jnp.any(ok, axis=1), jnp.argmax(ok, axis=1), -1)


def _ham_census(owner, net: HAM, xs, tol, chunk, relax_kwargs):
    dtype = jnp.result_type(*xs.values())
    dflt = default_tolerances(dtype, relax_kwargs.get("solver"))
    ertol = relax_kwargs.get("event_rtol", dflt["event_rtol"])
    eatol = relax_kwargs.get("event_atol", dflt["event_atol"])
    tol = 100.0 * max(ertol, eatol) if tol is None else float(checks.param(owner, "tol", tol))
    atol = 100.0 * eatol
    s_total = next(iter(xs.values())).shape[0]
    size = min(chunk, s_total)
    reps = None  # dict of (R, ...) arrays
    assignment = np.full(s_total, -1, np.int64)
    converged = np.zeros(s_total, bool)
    for lo in range(0, s_total, size):
        block = {k: _pad(v[lo:lo + size], size) for k, v in xs.items()}
        n_real = min(size, s_total - lo)
        # a large chunk is streamed; only the end states are read (no trace buffers)
        sol = relax(net, block, **default_window({"trace": False, **relax_kwargs}, size))
        conv = np.asarray(sol.converged)[:n_real]
        fin = {k: v[:n_real] for k, v in sol.states.items()}
        converged[lo:lo + n_real] = conv
        conv_j = jnp.asarray(conv)
        # dedup within the chunk: each point joins its first converged match
        self_match = np.asarray(_first_match(fin, fin, conv_j, tol, atol))
        leaders = np.flatnonzero(conv & (self_match == np.arange(n_real)))
        lead_of = np.where(conv, self_match, -1)
        # merge the chunk's leaders into the global representatives
        lead_states = {k: v[leaders] for k, v in fin.items()}
        if reps is None or next(iter(reps.values())).shape[0] == 0:
            glob = np.full(len(leaders), -1, np.int64)
        else:
            r = next(iter(reps.values())).shape[0]
            glob = np.asarray(_first_match(lead_states, reps, jnp.ones((r,), bool), tol, atol)).astype(np.int64)
        r0 = 0 if reps is None else next(iter(reps.values())).shape[0]
        fresh = glob < 0
        glob[fresh] = r0 + np.arange(int(fresh.sum()))
        new_rows = {k: v[np.flatnonzero(fresh)] for k, v in lead_states.items()}
        reps = new_rows if reps is None else {k: jnp.concatenate([reps[k], new_rows[k]]) for k in reps}
        leader_to_global = np.full(n_real, -1, np.int64)
        leader_to_global[leaders] = glob
        a = np.where(lead_of >= 0, leader_to_global[np.maximum(lead_of, 0)], -1)
        assignment[lo:lo + n_real] = a
    m = 0 if reps is None else next(iter(reps.values())).shape[0]
    order, counts, energies, assignment = _finish(
        list(range(m)), assignment, converged, lambda idx: net.energy({k: v for k, v in reps.items()}), lambda lst: lst)
    if order is None:
        points = {k: jnp.zeros((0,) + layer.shape, dtype) for k, layer in net.layers.items()}
    else:
        points = {k: v[jnp.asarray(order)] for k, v in reps.items()}
    return Census(points=points, counts=jnp.asarray(counts), energies=jnp.asarray(energies),
                  assignment=jnp.asarray(assignment), converged=jnp.asarray(converged))


# ============================================================================ lanczos
def lanczos(
    matvec: Callable[[Array], Array], v0: Float[Array, " n"], steps: int,
) -> tuple[Float[Array, " steps"], Float[Array, " steps"]]:
    r"""``steps`` Lanczos iterations on a symmetric operator with full reorthogonalisation
    (classical Gram–Schmidt, twice, against every previous vector: no ghost eigenvalues).
    Jit- and vmap-able (``matvec`` is traced once).

    On breakdown (an invariant subspace found, $\beta_j \approx 0$) the iteration continues
    from a fresh vector orthogonal to the basis, so after ``steps = n`` iterations the Ritz
    values are the whole spectrum.

    **Returns:** the Ritz values (eigenvalues of the tridiagonal $T$, ascending) and their
    residual bounds $|\beta_m s_{m,i}|$ ($\|A y_i - \theta_i y_i\|$ for the Ritz vector
    $y_i$): every Ritz value is within its bound of an eigenvalue of the operator, and by
    Cauchy interlacing the $j$-th smallest Ritz value is $\ge$ the $j$-th smallest eigenvalue.
    """
    n = v0.shape[0]
    dtype = v0.dtype
    eps = jnp.finfo(dtype).eps
    q0 = v0 / jnp.linalg.norm(v0)
    basis = jnp.zeros((steps + 1, n), dtype).at[0].set(q0)
    fresh_key = jax.random.PRNGKey(12345)

    def orth(w, basis):
        for _ in range(2):
            w = w - basis.T @ (basis @ w)
        return w

    def body(j, carry):
        basis, alphas, betas, scale = carry
        q = basis[j]
        w = matvec(q)
        alpha = jnp.vdot(q, w)
        w = orth(w, basis)
        beta = jnp.linalg.norm(w)
        scale = jnp.maximum(scale, jnp.abs(alpha) + beta)
        broke = beta <= 1e3 * eps * scale
        r = orth(jax.random.normal(jax.random.fold_in(fresh_key, j), (n,), dtype), basis)
        r = orth(r, basis)
        nxt = jnp.where(broke, r / jnp.linalg.norm(r), w / jnp.where(broke, 1.0, beta))
        beta = jnp.where(broke, 0.0, beta)
        basis = basis.at[j + 1].set(jnp.where(j + 1 < n, nxt, 0.0))
        return basis, alphas.at[j].set(alpha), betas.at[j].set(beta), scale

    init = (basis, jnp.zeros((steps,), dtype), jnp.zeros((steps,), dtype), jnp.asarray(0.0, dtype))
    basis, alphas, betas, _ = jax.lax.fori_loop(0, steps, body, init)
    t = jnp.diag(alphas) + jnp.diag(betas[:-1], 1) + jnp.diag(betas[:-1], -1)
    theta, s = jnp.linalg.eigh(t)
    return theta, jnp.abs(betas[-1] * s[-1])


# ============================================================================ classify
class Classification(eqx.Module):
    r"""The stability of fixed points ([`classify`][ham.landscape.classify]).

    - ``index`` ``(M,)``: HAM: the number of eigenvalues of the dynamics' Jacobian with
      positive real part (0 = stable fixed point, a local minimum of the energy; 1 = a
      saddle of index 1, …); binary: the number of single flips that lower the energy.
    - ``complete`` ``(M,)``: False when ``index`` is only a lower bound ("index ≥ k": all k
      eigenvalues Lanczos computed were unstable).
    - ``eigenvalues`` ``(M, k)``: HAM: the k leading eigenvalues of the Jacobian (largest
      first; a positive one is a growth rate, a negative one a decay rate); binary: the k
      lowest single-flip energy changes $E(\sigma^{(i)}) - E(\sigma)$ (negative = a flip
      that lowers the energy; the change of ``log_energy`` for the exponential memory).
    - ``kind``: a readable word per point.
    """

    index: Int[Array, " M"]
    complete: Bool[Array, " M"]
    eigenvalues: Float[Array, "M k"]
    kind: tuple[str, ...] = eqx.field(static=True)


def _kinds(index, complete, binary):
    out = []
    for i, c in zip(np.asarray(index).tolist(), np.asarray(complete).tolist()):
        if binary:
            out.append("1-flip-stable" if i == 0 else f"unstable ({i} lowering flip{'s' if i > 1 else ''})")
        elif not c:
            out.append(f"saddle (index >= {i})")
        else:
            out.append("minimum" if i == 0 else f"saddle (index {i})")
    return tuple(out)


def classify(
    model: HAM | _BinaryMemory,
    points: Mapping[str, Array] | Array,
    *,
    k: int = 8,
    eig_tol: float | None = None,
    residual_factor: float = 10.0,
    dense_max: int = DENSE_MAX,
    lanczos_steps: int | None = None,
    event_rtol: float | None = None,
    event_atol: float | None = None,
) -> Classification:
    r"""The Morse index of fixed points: how many directions lead downhill.

    **HAM.** Write the dynamics as $T\dot x = -(\Lambda x + \nabla_g E_{syn}(g(x)))$ with
    $T = \mathrm{diag}(\tau_A)$, $\Lambda_A = 1$ on layers with a Legendre term (0 with
    ``legendre=False``), $g_A = \nabla L_A(x_A)$. Its Jacobian at a fixed point is
    $J = -T^{-1}(\Lambda + WH)$ with $H = \mathrm{blockdiag}(\nabla^2 L_A) \succeq 0$ and
    $W = \nabla_g^2 E_{syn}$ (symmetric). When $T$ commutes with $H$ (one τ per layer, or
    per-neuron τ on a layer whose Hessian is diagonal, i.e. an elementwise Lagrangian),
    $S = H^{1/2}T^{1/2}$ gives, for invertible $H$, the symmetric operator

    $$
    A := S(-J)S^{-1} = T^{-1/2}(\Lambda + H^{1/2}WH^{1/2})T^{-1/2};
    $$

    by continuity of eigenvalues ($H+\epsilon I$, $\epsilon\to0$) the
    spectra of $-J$ and $A$ agree for singular $H$ too. So the Jacobian's eigenvalues are
    real, $-\mathrm{eig}(A)$, and ``index`` = the number of negative eigenvalues of $A$.
    This is not the Hessian of $E(x)$: along null directions of $H$ (softmax's shift,
    inactive ReLU units, layer norm) the Hessian is exactly 0 while $A$ has $\Lambda_A/\tau_A$
    (the dynamics still decays there), and negative curvature is rescaled by $H$.

    Clamped layers (τ = ∞) are not directions; $W$ is restricted to the free layers.
    A point is a fixed point when every free layer has
    $\|\dot x_A\| \le$ ``residual_factor`` × (``event_atol + event_rtol``$\,\|x_A\|$)
    (the steady-state tolerances of [`ham.relax`][], by dtype); anything else is a
    ValueError, not an index. An eigenvalue counts as unstable when it is below
    $-$``eig_tol``$\,\times\max|\mathrm{eig}(A)|$ (default ``eig_tol`` = max(√ε, 10 ×
    ``event_rtol``): the eigenvalues of a fixed point known to the steady-state
    tolerance are known to about that accuracy; exact zeros such as the flat directions
    of a layer without Legendre term are not counted).

    Up to ``dense_max`` free neurons, $A$ is formed (one Jacobian-vector product per
    column) and diagonalised with ``eigh``: ``index`` is exact. Above, $A$ is applied
    matrix-free (autodiff JVPs of $\nabla L_A$ and $\nabla_g E_{syn}$; $H_A^{1/2}$ from a dense
    ``eigh`` of layers up to 2048 neurons; above, the closed-form factor
    $C = \sqrt\beta(\mathrm{diag}\sqrt p - p\sqrt p^\top)$, $CC^\top = H$, of a 1-D softmax layer
    (any block-diagonal factor $C$ of $H$ gives $T^{-1/2}(\Lambda + C^\top WC)T^{-1/2}$, similar to $-J$
    by the same argument with $C^\top$ for $H^{1/2}$), else the square root of the diagonal of an elementwise
    Lagrangian's Hessian, which is checked) and [`lanczos`][ham.landscape.lanczos] gives the
    ``k`` smallest eigenvalues (``lanczos_steps``, default ``min(n, 4k + 40)`` iterations);
    ``index`` counts the negative Ritz values (a lower bound by interlacing), and when all
    ``k`` are negative it is reported as "index ≥ k" (``complete`` False). Refused: a layer
    with per-neuron τ whose Lagrangian is not elementwise (then $T$ and $H$ do not commute and
    the derivation does not hold), a layer with some but not all neurons clamped, and a
    layer above 2048 neurons whose Hessian is not diagonal in the Lanczos regime.

    **Binary memory.** ``points`` are ±1 states ``(M, N)``; ``index`` = the number of
    neurons $i$ whose flip lowers the energy, decided by the model's own update rule
    (0 ⇔ a fixed point of the asynchronous dynamics).
    """
    owner = "ham.landscape.classify"
    _check_model(owner, model)
    k = checks.integer(owner, "k", k)
    if _is_binary(model):
        return _classify_binary(owner, model, points, k)
    return _classify_ham(owner, model, points, k, eig_tol, residual_factor,
                         checks.integer(owner, "dense_max", dense_max),
                         None if lanczos_steps is None else checks.integer(owner, "lanczos_steps", lanczos_steps),
                         event_rtol, event_atol)


# --------------------------------------------------------------------------- binary
def _flip_changes(model, s):
    """E(s with neuron i flipped) − E(s) for every i, one state (log energy for exponential)."""
    from .memories._binary import ClassicalHopfield

    if isinstance(model, ClassicalHopfield):
        h = model.weights @ s
        if model.bias is not None:
            h = h + model.bias
        return 2.0 * s * h
    m = model.patterns @ s
    mflip = m[None, :] - 2.0 * (s[:, None] * model.patterns.T)  # (N, K)
    active = getattr(model, "active", None)
    if isinstance(model, ExponentialAssociativeMemory):
        fill = -jnp.inf
        a = model.beta * m if active is None else jnp.where(active, model.beta * m, fill)
        af = model.beta * mflip if active is None else jnp.where(active, model.beta * mflip, fill)
        return -(jax.nn.logsumexp(af, axis=1) - jax.nn.logsumexp(a)) / model.beta
    f = model.interaction
    base = f(m) if active is None else jnp.where(active, f(m), 0.0)
    new = f(mflip) if active is None else jnp.where(active, f(mflip), 0.0)
    return -jnp.sum(new - base, axis=1)


@eqx.filter_jit
def _binary_stats(model, states, k):
    n = states.shape[1]

    def one(s):
        aux = model._aux(s)
        scores = jax.vmap(lambda i: model._score(aux, s, i))(jnp.arange(n))
        lowering = scores * s < 0  # the update would flip it: the flip lowers the energy
        d = _flip_changes(model, s)
        return jnp.sum(lowering), jnp.sort(d)[:k]

    return jax.vmap(one)(states)


def _classify_binary(owner, model, points, k):
    arr = points if isinstance(points, jax.Array) else np.asarray(points)
    if not (jnp.issubdtype(arr.dtype, jnp.floating) or jnp.issubdtype(arr.dtype, jnp.integer)) or arr.dtype == bool:
        raise TypeError(f"{owner}: points must be a real array of ±1 states, got dtype {arr.dtype}.")
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != model.dim:
        raise ValueError(f"{owner}: points must have shape (M, {model.dim}) for this memory, got {tuple(arr.shape)}.")
    host = np.asarray(arr)
    if ((host != 1) & (host != -1)).any():
        raise ValueError(f"{owner}: points must be ±1 states (a binary memory's states), got values other than ±1.")
    states = jnp.asarray(host, model.patterns.dtype)
    if states.shape[0] == 0:
        z = jnp.zeros((0,), jnp.int32)
        return Classification(index=z, complete=z.astype(bool), eigenvalues=jnp.zeros((0, k)), kind=())
    kk = min(k, model.dim)
    m = states.shape[0]
    idx, eig = (_rows(a, m) for a in _binary_stats(model, _pad_rows(states, _bucket(m)), kk))
    complete = jnp.ones(idx.shape, bool)
    return Classification(index=idx.astype(jnp.int32), complete=complete, eigenvalues=eig,
                          kind=_kinds(idx, complete, True))


# --------------------------------------------------------------------------- HAM
def _tau_vector(owner, name, layer):
    tau = np.asarray(layer.tau, dtype=np.float64)
    full = np.broadcast_to(tau, layer.shape).reshape(-1)
    if np.isinf(full).any() and not np.isinf(full).all():
        raise ValueError(f"{owner}: layer {name!r} has some but not all neurons clamped (tau = inf); "
                         f"the Jacobian over partly clamped layers is not covered.")
    return full, bool(np.ptp(full) > 0)


def _ham_structure(owner, net: HAM):
    free, taus, per_neuron = [], [], {}
    for name, layer in net.layers.items():
        if _is_clamped(layer):
            continue
        try:
            t, varies = _tau_vector(owner, name, layer)
        except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError) as e:
            raise ValueError(f"{owner}: the network's time constants must be concrete (call outside jit).") from e
        free.append(name)
        taus.append(t)
        per_neuron[name] = varies
    if not free:
        raise ValueError(f"{owner}: every layer is clamped (tau = inf): no free direction to classify.")
    return tuple(free), np.concatenate(taus), per_neuron


def _ham_points(owner, net: HAM, points):
    if not isinstance(points, Mapping):
        raise TypeError(f"{owner}: points must be a dict of layer states (M stacked points), got {type(points).__name__}.")
    if set(points) != set(net.layers):
        raise ValueError(f"{owner}: points have layers {sorted(points)}, the network has {sorted(net.layers)}.")
    out, num = {}, None
    for name, layer in net.layers.items():
        x = checks.real_array(owner, f"points[{name!r}]", points[name])
        if tuple(x.shape) == layer.shape:
            x = x[None]
        if x.ndim != 1 + len(layer.shape) or tuple(x.shape[1:]) != layer.shape:
            raise ValueError(f"{owner}: points[{name!r}] must have shape (M, *{layer.shape}), got {tuple(x.shape)}.")
        if num is not None and x.shape[0] != num:
            raise ValueError(f"{owner}: points[{name!r}] has {x.shape[0]} points, other layers have {num}.")
        num = x.shape[0]
        out[name] = checks.finite(owner, f"points[{name!r}]", x)
    return out


def _operator(net: HAM, free, tau_vec, xs, probe, per_neuron):
    """The symmetric operator A of one unbatched fixed point, as a matvec on the flat free
    state, plus per-layer flags: 'H not diagonal' for layers that need it to be."""
    sizes = [int(np.prod(net.layers[k].shape)) for k in free]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    dtype = jnp.result_type(*xs.values())
    gs = net._activations(xs)
    sq_tau = (1.0 / jnp.sqrt(tau_vec)).astype(dtype)
    lam = jnp.concatenate([jnp.full((s,), 1.0 if net.layers[k].legendre else 0.0, dtype) for k, s in zip(free, sizes)])

    roots, uncovered = {}, {}
    for k, s in zip(free, sizes):
        layer = net.layers[k]
        grad_l = lambda x, layer=layer: jax.grad(layer.lagrangian)(x)  # noqa: E731
        hv = lambda v, x=xs[k], grad_l=grad_l: jax.jvp(grad_l, (x,), (v.reshape(x.shape),))[1].reshape(-1)  # noqa: E731
        softmax_beta = _softmax_gain(layer)
        if s <= LAYER_DENSE_MAX:
            h = jax.vmap(hv)(jnp.eye(s, dtype=dtype))
            h = 0.5 * (h + h.T)
            w, v = jnp.linalg.eigh(h)
            root = (v * jnp.sqrt(jnp.maximum(w, 0.0))) @ v.T
            off = h - jnp.diag(jnp.diag(h))
            roots[k] = ("dense", root)
            not_diag = jnp.max(jnp.abs(off)) > 1e3 * jnp.finfo(dtype).eps * jnp.maximum(jnp.max(jnp.abs(h)), 1e-30)
            uncovered[k] = not_diag & per_neuron[k]
        elif softmax_beta is not None:
            # H = beta (diag p - p p^T) = C C^T with C = sqrt(beta) (diag sqrt p - p sqrt(p)^T)
            p = gs[k].reshape(-1)
            roots[k] = ("softmax", (jnp.sqrt(softmax_beta).astype(dtype), p, jnp.sqrt(p)))
            uncovered[k] = jnp.asarray(per_neuron[k])
        else:
            d = hv(jnp.ones((s,), dtype))
            r = probe[:s]
            err = jnp.linalg.norm(hv(r) - d * r)
            roots[k] = ("diag", jnp.sqrt(jnp.maximum(d, 0.0)))
            uncovered[k] = err > 1e3 * jnp.finfo(dtype).eps * jnp.maximum(jnp.linalg.norm(d * r), 1e-30) * math.sqrt(s)

    def apply_root(u, transpose=False):
        parts = []
        for k, lo, hi in zip(free, offsets[:-1], offsets[1:]):
            kind, r = roots[k]
            v = u[lo:hi]
            if kind == "dense":
                parts.append(r @ v)
            elif kind == "diag":
                parts.append(r * v)
            else:
                sb, p, sp = r
                parts.append(sb * (sp * v - (sp * jnp.vdot(p, v) if transpose else p * jnp.vdot(sp, v))))
        return jnp.concatenate(parts)

    def syn_grad(gf):
        g_all = dict(gs)
        for k, lo, hi in zip(free, offsets[:-1], offsets[1:]):
            g_all[k] = gf[lo:hi].reshape(net.layers[k].shape)
        if not net.synapses:
            return jnp.zeros_like(gf)
        dg = jax.grad(net._synapse_energy)(g_all)
        return jnp.concatenate([dg[k].reshape(-1) for k in free])

    g_flat = jnp.concatenate([gs[k].reshape(-1) for k in free])

    def matvec(u):
        z = sq_tau * u
        y = apply_root(z)
        wy = jax.jvp(syn_grad, (g_flat,), (y,))[1]
        return sq_tau * (lam * z + apply_root(wy, transpose=True))

    return matvec, uncovered


def _softmax_gain(layer):
    """β when the layer's Lagrangian is ``ham.lagrangians.softmax`` on a 1-D layer, else None."""
    from . import lagrangians

    lag = layer.lagrangian
    if len(layer.shape) != 1:
        return None
    if lag is lagrangians.softmax:
        return jnp.asarray(1.0)
    func = getattr(lag, "func", None)
    if func is lagrangians.softmax and not getattr(lag, "args", ()):
        kw = getattr(lag, "keywords", {}) or {}
        if set(kw) <= {"beta"}:
            return jnp.asarray(kw.get("beta", 1.0))
    return None


def _residuals(net: HAM, xs, free):
    d = net._dEdg(xs)
    return {k: (jnp.linalg.norm((d[k] / net.layers[k].tau).reshape(-1)), jnp.linalg.norm(xs[k].reshape(-1)))
            for k in free}


@eqx.filter_jit
def _batched_residuals(net, xs, free):
    return jax.vmap(lambda x: _residuals(net, x, free))(xs)


@eqx.filter_jit
def _classify_points(net, xs, free, tau_vec, probe, v0, kk, dense, steps, eig_tol, per_neuron):
    n = tau_vec.shape[0]
    dtype = tau_vec.dtype
    per_neuron = dict(per_neuron)

    def one(x):
        matvec, not_diag = _operator(net, free, tau_vec, x, probe, per_neuron)
        if dense:
            a = jax.vmap(matvec)(jnp.eye(n, dtype=dtype))
            a = 0.5 * (a + a.T)
            ev = jnp.linalg.eigh(a)[0]
            scale = jnp.max(jnp.abs(ev))
            unstable = jnp.sum(ev < -eig_tol * scale)
            return ev[:kk], unstable, jnp.asarray(True), not_diag
        theta, _ = lanczos(matvec, v0, steps)
        scale = jnp.max(jnp.abs(theta))
        unstable = jnp.sum(theta[:kk] < -eig_tol * scale)
        return theta[:kk], unstable, unstable < kk, not_diag

    return jax.vmap(one)(xs)


def _classify_ham(owner, net, points, k, eig_tol, residual_factor, dense_max, lanczos_steps, event_rtol, event_atol):
    free, tau_vec, per_neuron = _ham_structure(owner, net)
    xs = _ham_points(owner, net, points)
    m = next(iter(xs.values())).shape[0]
    dtype = jnp.result_type(*xs.values())
    dflt = default_tolerances(dtype)
    ertol = dflt["event_rtol"] if event_rtol is None else float(checks.param(owner, "event_rtol", event_rtol, inclusive=True))
    eatol = dflt["event_atol"] if event_atol is None else float(checks.param(owner, "event_atol", event_atol, inclusive=True))
    residual_factor = float(checks.param(owner, "residual_factor", residual_factor))
    eps = float(jnp.finfo(dtype).eps)
    eig_tol = max(math.sqrt(eps), 10.0 * ertol) if eig_tol is None else float(checks.param(owner, "eig_tol", eig_tol))
    if m == 0:
        z = jnp.zeros((0,), jnp.int32)
        return Classification(index=z, complete=z.astype(bool), eigenvalues=jnp.zeros((0, k), dtype), kind=())
    xs = {name: _pad_rows(v, _bucket(m)) for name, v in xs.items()}  # copies of the first point; dropped below
    # 1. fixed points only
    res = _batched_residuals(net, xs, free)
    for name in free:
        r, xn = (np.asarray(a)[:m] for a in res[name])
        lim = residual_factor * (eatol + ertol * xn)
        bad = np.flatnonzero(~(r <= lim))
        if bad.size:
            i = int(bad[0])
            raise ValueError(
                f"{owner}: point {i} is not a fixed point: layer {name!r} has |dx/dt| = {r[i]:.3g} > "
                f"{lim[i]:.3g} (residual_factor x (event_atol + event_rtol |x|)); relax it first "
                f"(ham.relax or ham.landscape.census).")
    n = int(tau_vec.size)
    kk = min(k, n)
    dense = n <= dense_max
    steps = n if dense else (min(n, 4 * kk + 40) if lanczos_steps is None else min(lanczos_steps, n))
    if not dense and steps < kk:
        raise ValueError(f"{owner}: lanczos_steps={steps} must be >= k={kk}.")
    probe = jnp.asarray(np.random.default_rng(0).choice([-1.0, 1.0], size=n), dtype)
    v0 = jnp.asarray(np.random.default_rng(1).standard_normal(n), dtype)
    ev, index, complete, not_diag = jax.tree.map(lambda a: _rows(a, m), _classify_points(
        net, xs, free, jnp.asarray(tau_vec, dtype), probe, v0, kk, dense, steps, eig_tol,
        tuple(sorted(per_neuron.items()))))
    for name in free:
        if np.asarray(not_diag[name]).any():
            size = int(np.prod(net.layers[name].shape))
            why = ("it has per-neuron time constants, so T and its Hessian must commute"
                   if per_neuron[name] else
                   f"it has {size} > {LAYER_DENSE_MAX} neurons, whose Hessian square root is only formed for a "
                   f"diagonal Hessian or a 1-D softmax layer")
            raise ValueError(
                f"{owner}: layer {name!r} has a Lagrangian whose Hessian is not diagonal (not elementwise) and {why}; "
                f"this case is not covered by the symmetric form of the Jacobian.")
    eigenvalues = -ev  # Jacobian eigenvalues, largest (most unstable) first
    index = index.astype(jnp.int32)
    return Classification(index=index, complete=complete, eigenvalues=eigenvalues, kind=_kinds(index, complete, False))


# ============================================================================ label
class Labels(eqx.Module):
    r"""What fixed points are made of ([`label`][ham.landscape.label]).

    - ``overlaps`` ``(M, K)``: $m_\mu = \xi_\mu\cdot s/(\|\xi_\mu\|\|s\|)$ ($= \xi_\mu\cdot s/N$ for ±1).
    - ``code`` ``(M,)``: index into ``LABELS``; ``names``: the words.
    - ``components`` ``(M,)``: how many overlaps reach the spin-glass threshold.
    - ``threshold``, ``retrieval``: the thresholds used.
    """

    overlaps: Float[Array, "M K"]
    code: Int[Array, " M"]
    components: Int[Array, " M"]
    names: tuple[str, ...] = eqx.field(static=True)
    threshold: float = eqx.field(static=True)
    retrieval: float = eqx.field(static=True)


def _mixture_overlap(p: int) -> float:
    """AGS's overlap of the symmetric p-mixture with each component: C(p-1,(p-1)/2)/2^(p-1)."""
    return math.comb(p - 1, (p - 1) // 2) / 2 ** (p - 1)


def label(
    points: Float[Array, "M N"],
    patterns: Float[Array, "K N"],
    *,
    threshold: float | None = None,
    retrieval: float = 0.9,
) -> Labels:
    r"""Label fixed points by their overlap profile with the stored patterns.

    With $m_\mu$ the normalised overlaps and $\theta$ the spin-glass threshold:

    - **stored**: some $m_\mu \ge$ ``retrieval`` (default 0.9; AGS's retrieval state has
      $m \ge 0.967$ up to the classical capacity α ≈ 0.138);
    - **reversed**: some $m_\mu \le -$``retrieval`` ($-\xi_\mu$, a minimum for even energies);
    - **symmetric mixture**: for some odd $p \ge 3$, the $p$ largest $|m_\mu|$ are all within
      $3\sqrt{(1-m_p^2)/N}$ (three standard deviations of a finite-N mixture's overlap) of
      AGS's $m_p = \binom{p-1}{(p-1)/2}/2^{p-1}$ ($m_3 = 1/2$, $m_5 = 3/8$) and above the
      noise floor $\max(3/\sqrt N, \sqrt{2\ln(20K)/N})$ (the overlap a random state reaches
      with one of the $K$ patterns with probability 10 %), and every other $|m_\mu| < \theta$: the states
      $\mathrm{sign}(\pm\xi_a\pm\xi_b\pm\xi_c\ldots)$ of Amit, Gutfreund & Sompolinsky (1985),
      recognised by their overlap profile, not by equality with the sign formula;
    - **other mixture**: some $|m_\mu| \ge \theta$, but none of the above;
    - **spin-glass**: every $|m_\mu| < \theta$.

    The default $\theta = \sqrt{2\ln(200K)/N}$ is the overlap a random state exceeds with
    one of the $K$ patterns with probability below 1 % ($P(|m| > \theta) \le 2e^{-N\theta^2/2}$
    per pattern, union bound). It is large at small N (0.40 at N = 100, K = 14), where 5- and
    higher mixtures cannot be told from spin-glass states.
    """
    owner = "ham.landscape.label"
    x = checks.real_array(owner, "points", points)
    p = checks.real_array(owner, "patterns", patterns)
    if p.ndim != 2 or p.shape[0] < 1:
        raise ValueError(f"{owner}: patterns must have shape (K, N), got {tuple(p.shape)}.")
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[1] != p.shape[1]:
        raise ValueError(f"{owner}: points must have shape (M, {p.shape[1]}) to match patterns of shape "
                         f"{tuple(p.shape)}, got {tuple(x.shape)}.")
    x = checks.finite(owner, "points", x)
    p = checks.finite(owner, "patterns", p)
    kn, n = p.shape
    pn = np.linalg.norm(np.asarray(p, np.float64), axis=1)
    if (pn == 0).any():
        raise ValueError(f"{owner}: patterns[{int(np.argmax(pn == 0))}] is zero; overlaps need non-zero patterns.")
    xn = np.linalg.norm(np.asarray(x, np.float64), axis=1)
    if (xn == 0).any():
        raise ValueError(f"{owner}: points[{int(np.argmax(xn == 0))}] is zero; overlaps need non-zero points.")
    retrieval = float(checks.param(owner, "retrieval", retrieval))
    if retrieval > 1:
        raise ValueError(f"{owner}: retrieval must be in (0, 1], got {retrieval}.")
    theta = math.sqrt(2.0 * math.log(200.0 * kn) / n) if threshold is None else float(checks.param(owner, "threshold", threshold))
    m = np.asarray(x, np.float64) @ np.asarray(p, np.float64).T / (xn[:, None] * pn[None])
    a = np.abs(m)
    big = a >= theta
    comp = big.sum(1)
    code = np.full(m.shape[0], 4, np.int64)
    code[comp > 0] = 3
    order = -np.sort(-a, axis=1)  # |m| descending
    # components must stand out of the noise: above 3/sqrt(N) and above the overlap a random
    # state reaches with one of the K patterns with probability 10 %
    floor = max(3.0 / math.sqrt(n), math.sqrt(2.0 * math.log(20.0 * kn) / n))
    undecided = np.ones(m.shape[0], bool)
    for pmix in range(3, kn + 1, 2):
        mp = _mixture_overlap(pmix)
        if mp < floor:
            break
        spread = 3.0 * math.sqrt((1.0 - mp * mp) / n)
        top = order[:, :pmix]
        rest_small = order[:, pmix] < theta if pmix < kn else np.ones(m.shape[0], bool)
        sym = undecided & np.all(np.abs(top - mp) <= spread, axis=1) & np.all(top >= floor, axis=1) & rest_small
        code[sym] = 2
        undecided &= ~sym
    code[m.min(1) <= -retrieval] = 1
    code[m.max(1) >= retrieval] = 0
    return Labels(overlaps=jnp.asarray(m, x.dtype), code=jnp.asarray(code), components=jnp.asarray(comp),
                  names=tuple(LABELS[c] for c in code.tolist()), threshold=theta, retrieval=retrieval)


# ============================================================================ attention spread
def attention_spread(
    memory_or_scores: ModernHopfield | Float[Array, "*batch K"],
    queries: Float[Array, "*batch D"] | None = None,
    mass: float = 0.9,
) -> Int[Array, "*batch"]:
    r"""How many stored patterns hold ``mass`` of the softmax weight, per query: the
    smallest $k$ such that the $k$ largest weights of $\mathrm{softmax}(\beta\,\Xi q)$ sum to
    at least ``mass`` (Ramsauer et al. 2020, §"Hopfield layers": 1 = a single-pattern fixed
    point, about $K$ = the global average, in between a metastable state averaging a
    subset).

    **Arguments:**
    - ``memory_or_scores``: a [`ham.memories.modern`][] memory (its β, patterns and
      active mask), with ``queries`` ``(*batch, D)``; or the softmax logits themselves
      ``(*batch, K)`` (for example $\beta QK^\top$ of an attention energy, or $\beta\,\Xi v$
      of the Energy Transformer's Hopfield energy with a softmax), with ``queries=None``.
    - ``mass``: in (0, 1].

    **Returns:** integer counts of shape ``*batch``.
    """
    owner = "ham.landscape.attention_spread"
    if isinstance(mass, (bool, np.bool_)) or not isinstance(mass, (int, float, np.integer, np.floating)):
        raise TypeError(f"{owner}: mass must be a number in (0, 1], got {mass!r}.")
    if not (0.0 < float(mass) <= 1.0):
        raise ValueError(f"{owner}: mass must be in (0, 1], got {mass!r}.")
    if isinstance(memory_or_scores, ModernHopfield):
        mem = memory_or_scores
        if queries is None:
            raise ValueError(f"{owner}: queries are needed with a memory (or pass the scores themselves).")
        q = checks.real_array(owner, "queries", queries)
        if q.ndim < 1 or q.shape[-1] != mem.dim:
            raise ValueError(f"{owner}: queries must have shape (*batch, {mem.dim}), got {tuple(q.shape)}.")
        q = checks.finite(owner, "queries", q.astype(mem.patterns.dtype))
        scores = mem.beta * (q @ mem.patterns.T)
        if mem.active is not None:
            scores = jnp.where(mem.active, scores, -jnp.inf)
    else:
        if queries is not None:
            raise ValueError(f"{owner}: with scores (softmax logits) given, queries must be None.")
        if not hasattr(memory_or_scores, "shape") and not isinstance(memory_or_scores, (list, tuple)):
            raise TypeError(f"{owner}: memory_or_scores must be a ham.memories.modern memory or an array of "
                            f"softmax logits, got {type(memory_or_scores).__name__}.")
        scores = checks.real_array(owner, "scores", memory_or_scores)
        if scores.ndim < 1 or scores.shape[-1] < 1:
            raise ValueError(f"{owner}: scores must have shape (*batch, K) with K >= 1, got {tuple(scores.shape)}.")
        bad = ~np.isfinite(np.asarray(scores)) & ~(np.asarray(scores) == -np.inf)
        if bad.any():
            raise ValueError(f"{owner}: scores must be finite (or -inf for masked patterns), got a NaN/+inf.")
    return _spread(scores, float(mass))


@jax.jit
def _spread(scores, mass):
    w = jax.nn.softmax(scores, axis=-1)
    w = -jnp.sort(-w, axis=-1)
    before = jnp.cumsum(w, axis=-1) - w  # the mass of the larger weights
    slack = scores.shape[-1] * jnp.finfo(w.dtype).eps
    return jnp.sum((before < mass - slack) & (w > 0), axis=-1).astype(jnp.int32)
