r"""Retrieval and energies with the stored patterns sharded over devices.

A memory too large for one device keeps its patterns (rows, the ``num_patterns`` axis)
split over a mesh axis of a [`jax.sharding.Mesh`](https://docs.jax.dev/en/latest/jax.sharding.html).
Each device scores the queries against its own block of patterns and reduces its block
to a few numbers per query; the blocks' partial results are merged with collectives
(`lax.pmax`, `lax.psum`, `lax.pmin`, and for top-k an all-gather of the ``k``
candidates of each block). Neither the pattern matrix nor the ``(batch, num_patterns)``
score matrix is ever gathered on one device.

For the softmax separation the merge is the numerically stable log-sum-exp merge (as
in blockwise attention; Milakov & Gimelshein 2018, "Online normalizer calculation for
softmax"): device $d$ holds $a_\mu = \beta s_\mu$ for its patterns $\mu\in B_d$ and computes
$m_d = \max_{\mu\in B_d} a_\mu$, $Z_d = \sum_{\mu\in B_d} e^{a_\mu - m_d}$ and
$n_d = \sum_{\mu\in B_d} e^{a_\mu - m_d} p_\mu$; then with $m = \max_d m_d$,
$c_d = e^{m_d - m}$, the retrieval is $z = \sum_d c_d n_d / \sum_d c_d Z_d$.

The sign dynamics of the dense and exponential memories (Krotov & Hopfield 2016;
Demircigil et al. 2017) need, for every neuron $i$, a sum over patterns
$\sum_\mu F(\xi_\mu\cdot\sigma^{(i+)}) - F(\xi_\mu\cdot\sigma^{(i-)})$ (a log-sum-exp for
$F=\exp$): each device sums over its block and the partial sums are merged the same
way, one merge per synchronous sweep, or one per neuron in an asynchronous sweep.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, Float

from .. import _checks as checks
from ._binary import DenseAssociativeMemory, ExponentialAssociativeMemory, _power, _sign_keep, overlap_scale
from ._common import as_queries, binarize
from ._modern import ModernHopfield
from ._universal import SIMILARITIES, UniversalHopfield, _chunked, top_k

__all__ = ["shard_memory", "sharded_retrieve", "sharded_energy"]

try:  # JAX >= 0.6
    _shard_map = jax.shard_map
except AttributeError:  # pragma: no cover - older JAX
    from jax.experimental.shard_map import shard_map as _shard_map

_MEMORIES = (ModernHopfield, UniversalHopfield, DenseAssociativeMemory, ExponentialAssociativeMemory)
_MERGED_SEPARATIONS = ("identity", "polynomial", "threshold", "softmax", "max", "topk")
_MODES = ("async", "sync")


# ============================================================================ what is sharded
class _Config(NamedTuple):
    """Everything static about a sharded computation (hashable: one compiled program each)."""

    kind: str  # "universal" (modern is universal dot/softmax), "dense", "exponential"
    similarity: object = "dot"
    separation: str = "softmax"
    n: float = 2
    rectified: bool = False
    normalize: bool = False
    k: int = 1
    approximate: bool = False
    recall_target: float = 0.95
    modern_energy: bool = False  # Ramsauer et al.'s constants (log K, max norm) in the energy
    steps: int = 1
    mode: str = "async"
    max_sweeps: int = 100
    random_order: bool = False
    key_impl: object = None


def _config(memory, caller: str) -> tuple[_Config, dict]:
    """(static configuration, array arguments) of a supported memory, or a clear error."""
    if isinstance(memory, ModernHopfield):
        cfg = _Config("universal", modern_energy=True)
        arrays = dict(patterns=memory.patterns, projection=None, active=memory.active,
                      beta=memory.beta, threshold=0.0)
        return cfg, arrays
    if isinstance(memory, UniversalHopfield):
        sep = memory.separation
        if callable(sep) or sep not in _MERGED_SEPARATIONS:
            raise ValueError(
                f"{caller}: universal memories are supported with separation in {list(_MERGED_SEPARATIONS)} "
                f"(reductions over the stored patterns that merge across devices); got {sep!r}. A callable "
                "separation may couple all the scores, so it cannot be split over devices."
            )
        cfg = _Config(
            "universal", similarity=memory.similarity, separation=sep, n=memory.n, normalize=memory.normalize,
            k=memory.k, approximate=memory.approximate, recall_target=memory.recall_target,
        )
        arrays = dict(patterns=memory.patterns, projection=None if memory.auto else memory.projection,
                      active=memory.active, beta=memory.beta, threshold=memory.threshold)
        return cfg, arrays
    if isinstance(memory, DenseAssociativeMemory):
        cfg = _Config("dense", n=memory.n, rectified=memory.rectified)
        return cfg, dict(patterns=memory.patterns, projection=None, active=memory.active, beta=1.0, threshold=0.0)
    if isinstance(memory, ExponentialAssociativeMemory):
        cfg = _Config("exponential")
        return cfg, dict(patterns=memory.patterns, projection=None, active=memory.active,
                         beta=memory.beta, threshold=0.0)
    raise TypeError(
        f"{caller}: memory must be a ham.memories.modern, universal, dense or exponential memory, "
        f"got {type(memory).__name__}."
    )


def _describe_mesh(mesh) -> str:
    return f"axes {dict(mesh.shape)}, devices {[d.id for d in mesh.devices.flat]}"


def _mesh_of(caller: str, patterns, mesh, pattern_axis, move: bool = False) -> tuple[Mesh, str]:
    """The mesh and pattern axis: given, or read from the sharding the patterns carry
    (patterns on another mesh than the one given are an error unless ``move``)."""
    sharding = getattr(patterns, "sharding", None)
    carried = sharding.mesh if isinstance(sharding, NamedSharding) else None
    if mesh is not None:
        if not isinstance(mesh, Mesh):
            raise TypeError(f"{caller}: mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}.")
        if not move and carried is not None and carried != mesh and len(carried.devices.flat) > 1:
            raise ValueError(
                f"{caller}: the patterns are sharded over another mesh ({_describe_mesh(carried)}) than mesh= "
                f"({_describe_mesh(mesh)}); place them with ham.memories.shard_memory(memory, mesh) or pass that mesh."
            )
        axis = "patterns" if pattern_axis is None else pattern_axis
    else:
        spec = getattr(sharding, "spec", ())
        if carried is None or len(spec) < 1 or spec[0] is None:
            raise ValueError(
                f"{caller}: give mesh= (and pattern_axis=), or patterns already sharded along their "
                f"first axis with a NamedSharding (see ham.memories.shard_memory); the patterns carry "
                f"{sharding!r}."
            )
        mesh, axis = carried, (spec[0] if pattern_axis is None else pattern_axis)
    if not isinstance(axis, str) or axis not in mesh.axis_names:
        raise ValueError(f"{caller}: pattern_axis {axis!r} is not an axis of the mesh {mesh.axis_names}.")
    return mesh, axis


def shard_memory(memory, mesh: Mesh, pattern_axis: str = "patterns", *, pad: bool = False):
    r"""Place a memory's patterns (projection, mask) on ``mesh``, split along the pattern axis.

    **Arguments:**

    - `memory`: a [`ModernHopfield`][ham.memories.ModernHopfield],
      [`UniversalHopfield`][ham.memories.UniversalHopfield],
      [`DenseAssociativeMemory`][ham.memories.DenseAssociativeMemory] or
      [`ExponentialAssociativeMemory`][ham.memories.ExponentialAssociativeMemory].
    - `mesh`: the device mesh.
    - `pattern_axis`: the name of the mesh axis the patterns are split over.
    - `pad`: when the number of patterns is not a multiple of the axis size, append
      zero rows marked inactive in the memory's ``active`` mask (they never win or
      contribute) instead of raising.

    **Returns:**

    The same memory whose ``patterns`` (and ``projection``, ``active``) are `jax.Array`s
    with ``NamedSharding(mesh, PartitionSpec(pattern_axis, ...))``: each device holds
    ``num_patterns / mesh.shape[pattern_axis]`` rows.
    [`sharded_retrieve`][ham.memories.sharded_retrieve] and
    [`sharded_energy`][ham.memories.sharded_energy] then need no ``mesh=``, and the
    memory's ``network`` (where it has one) carries the same sharding along its hidden
    axis, so [`ham.relax`][] runs sharded too.
    """
    from ._one_layer import OneLayerMemory  # noqa: PLC0415
    if isinstance(memory, OneLayerMemory):  # epanechnikov / log_sum_exp / random_features
        from ._sharded_one_layer import shard_one_layer  # noqa: PLC0415
        return shard_one_layer(memory, mesh, pattern_axis, pad=pad)
    _config(memory, "shard_memory")
    mesh, axis = _mesh_of("shard_memory", memory.patterns, mesh, pattern_axis, move=True)
    k, n = memory.patterns.shape[0], mesh.shape[axis]
    if k % n:
        if not pad:
            raise ValueError(
                f"shard_memory: {k} patterns cannot be split evenly over the {n} devices of mesh axis {axis!r}; "
                f"pass pad=True to append {n - k % n} inactive zero rows (an active-pattern mask)."
            )
        extra = n - k % n
        active = jnp.ones((k,), bool) if memory.active is None else memory.active
        memory = eqx.tree_at(lambda m: m.active, memory, jnp.concatenate([active, jnp.zeros((extra,), bool)]),
                             is_leaf=lambda x: x is None)
        memory = eqx.tree_at(lambda m: m.patterns, memory, jnp.pad(memory.patterns, ((0, extra), (0, 0))))
        if isinstance(memory, UniversalHopfield):
            memory = eqx.tree_at(lambda m: m.projection, memory, jnp.pad(memory.projection, ((0, extra), (0, 0))))
    rows = NamedSharding(mesh, PartitionSpec(axis, None))
    memory = eqx.tree_at(lambda m: m.patterns, memory, jax.device_put(memory.patterns, rows))
    if isinstance(memory, UniversalHopfield):
        memory = eqx.tree_at(lambda m: m.projection, memory, jax.device_put(memory.projection, rows))
    if memory.active is not None:
        memory = eqx.tree_at(lambda m: m.active, memory,
                             jax.device_put(memory.active, NamedSharding(mesh, PartitionSpec(axis))))
    return memory


# ============================================================================ per-device kernels
def _acc(dtype):
    """The accumulation dtype: at least float32 (bfloat16/float16 patterns sum in float32)."""
    return jnp.promote_types(dtype, jnp.float32)


def _local_scores(similarity, patterns, queries):
    """Similarity of every local pattern to every query, ``(batch, K_local)``, accumulated
    in at least float32."""
    acc = _acc(patterns.dtype)
    q = queries.astype(acc)
    if similarity in ("dot", "cosine", "euclidean"):
        dots = jnp.matmul(q.astype(patterns.dtype), patterns.T, preferred_element_type=acc) if (
            patterns.dtype != acc) else q @ patterns.T
        if similarity == "dot":
            return dots
        pn = jnp.sum(jnp.square(patterns.astype(acc)), axis=-1)
        qn = jnp.sum(q * q, axis=-1, keepdims=True)
        if similarity == "cosine":
            return dots / jnp.maximum(jnp.sqrt(pn)[None, :] * jnp.sqrt(qn), 1e-12)
        return -jnp.maximum(qn - 2.0 * dots + pn[None, :], 0.0)  # euclidean
    fn = SIMILARITIES[similarity] if isinstance(similarity, str) else similarity
    # the other similarities are row-wise: evaluated block by block, cast per block
    blockwise = _chunked(lambda m, x: fn(m.astype(acc), x))
    return jax.vmap(lambda x: blockwise(patterns, x))(q)


def _lse_parts(a):
    """Local max ``m`` (``-inf`` if every entry is), finite shift, and ``exp(a - shift)``."""
    m = jnp.max(a, axis=-1, keepdims=True)
    shift = jnp.where(jnp.isfinite(m), m, 0.0)
    return m, shift, jnp.exp(a - shift)


def _rescale(m, axis):
    """The global maximum of the devices' local maxima ``m`` and each device's factor
    $c_d = e^{m_d - m}$ (0 for a device whose entries are all ``-inf``)."""
    top = jax.lax.pmax(m, axis)
    return top, jnp.where(jnp.isfinite(m), jnp.exp(jnp.where(jnp.isfinite(m), m, 0.0) - top), 0.0)


def _merged_softmax(m, z, n, axis):
    r"""$\sum_d c_d n_d / \sum_d c_d Z_d$ from each device's softmax partials."""
    c = _rescale(m, axis)[1]
    return jax.lax.psum(c * n, axis) / jax.lax.psum(c * z, axis)


def _merged_lse(a, axis):
    """log-sum-exp over the last axis of ``a`` across the devices of ``axis``."""
    m, _, e = _lse_parts(a)
    top, c = _rescale(m, axis)
    return (top + jnp.log(jax.lax.psum(c * jnp.sum(e, axis=-1, keepdims=True), axis)))[..., 0]


def _global_top_k(cfg, s, axis):
    """The k best scores over all devices (ties: the lower global index first), their
    global indices, and each local candidate's (local index, global index)."""
    k_local = s.shape[-1]
    kl = min(cfg.k, k_local)
    vals, idx = jax.vmap(lambda x: top_k(x, kl, cfg.approximate, cfg.recall_target))(s)
    gidx = idx + jax.lax.axis_index(axis) * k_local
    all_vals = jax.lax.all_gather(vals, axis, axis=1, tiled=True)  # (batch, devices * kl): candidates only
    all_idx = jax.lax.all_gather(gidx, axis, axis=1, tiled=True)
    best, pos = jax.lax.top_k(all_vals, cfg.k)
    return best, jnp.take_along_axis(all_idx, pos, axis=-1), idx, gidx


#: Elements of the blocked softmax's ``(batch, rows)`` score block: large enough that
#: XLA:CPU splits the block's exp/max/sum fusions over the cores (its parallel-task assigner
#: leaves a loop fusion of less than about 256 KB a thread on one core: with 2¹⁶ elements
#: a block, the exp phase of one device ran on one core while its matrix products used
#: all), small enough that the block and its exponentials stay in cache.
_SCORE_BLOCK = 1 << 18
#: At most this many bytes of stored patterns (and projection) in one block.
_PATTERN_BLOCK_BYTES = 1 << 22
#: Tests only: force the number of rows of a block (``None``: chosen by ``_block_rows``).
_BLOCK_ROWS: int | None = None


def _block_rows(k_local: int, batch: int, row_bytes: int) -> int:
    """Rows of patterns the blocked softmax scores at a time: about ``_SCORE_BLOCK / batch``
    (8192 for a batch of 32), at most ``_PATTERN_BLOCK_BYTES`` of patterns, at least 256
    rows (a small block's loop overhead dominates) and at most the local patterns; then
    evened out over the blocks needed (the last block overlaps the one before)."""
    if _BLOCK_ROWS is not None:
        return int(min(k_local, _BLOCK_ROWS))
    rows = min(k_local, max(256, min(_SCORE_BLOCK // max(batch, 1), _PATTERN_BLOCK_BYTES // max(row_bytes, 1))))
    blocks = -(-k_local // rows)
    return int(-(-k_local // blocks))  # the same number of blocks, evened out: the last one overlaps little


def _slice_rows(x, start, rows):
    """``x[start:start + rows]``, sliced where the loop runs. The array and the offset pass
    through an optimisation barrier together, so XLA cannot hoist a conversion of the whole
    array out of the loop: its CPU backend otherwise rewrites ``convert(slice(x))`` of
    half-precision rows as ``slice(convert(x))`` and computes ``convert(x)`` once, before
    the loop (a float32 copy of every pattern: 3× the bfloat16 bytes at the peak)."""
    x, start = jax.lax.optimization_barrier((x, start))
    return jax.lax.dynamic_slice_in_dim(x, start, rows, 0)


def _blocked_softmax(cfg, patterns, projection, active, queries, beta):
    """This device's softmax partials $(m_d, Z_d, n_d)$, accumulated over blocks of its
    patterns with the online (running-maximum) update, so neither a ``(batch, K_local)``
    score matrix nor a float32 copy of half-precision patterns is formed."""
    k_local, d = patterns.shape
    proj = patterns if projection is None else projection
    itemsize = jnp.dtype(patterns.dtype).itemsize
    c = _block_rows(k_local, queries.shape[0], (d + (0 if projection is None else proj.shape[1])) * itemsize)
    blocks = -(-k_local // c)
    b = queries.shape[0]
    acc = _acc(proj.dtype)

    def body(carry, i):
        m, z, n = carry
        start = jnp.minimum(i * c, k_local - c)  # the last block overlaps the one before: its old rows masked
        block = _slice_rows(patterns, start, c)
        pblock = block if projection is None else _slice_rows(projection, start, c)
        keep = start + jnp.arange(c) >= i * c
        if active is not None:
            keep = keep & jax.lax.dynamic_slice_in_dim(active, start, c, 0)
        a = jnp.where(keep, beta * _local_scores(cfg.similarity, block, queries), -jnp.inf)
        m_new = jnp.maximum(m, jnp.max(a, axis=-1, keepdims=True))
        shift = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
        old = jnp.exp(m - shift)  # 0 while nothing was seen (m = -inf)
        e = jnp.exp(a - shift)
        pb = pblock.astype(acc) if pblock.dtype != acc else pblock  # one block at a time
        return (m_new, old * z + jnp.sum(e, axis=-1, keepdims=True), old * n + e @ pb), None

    init = (jnp.full((b, 1), -jnp.inf, acc), jnp.zeros((b, 1), acc), jnp.zeros((b, proj.shape[1]), acc))
    (m, z, n), _ = jax.lax.scan(body, init, jnp.arange(blocks))
    return m, z, n


def _universal_retrieve(cfg, axis, patterns, projection, active, queries, beta, threshold):
    """One retrieval $P^\\top\\mathrm{sep}(\\mathrm{sim}(M, q))$ with per-device partials merged."""
    if cfg.separation == "softmax" and not cfg.normalize:
        m, z, n = _blocked_softmax(cfg, patterns, projection, active, queries, beta.astype(_acc(patterns.dtype)))
        return _merged_softmax(m, z, n, axis)
    proj = patterns if projection is None else projection
    acc = _acc(proj.dtype)
    proj = proj.astype(acc) if proj.dtype != acc else proj
    s = _local_scores(cfg.similarity, patterns, queries)
    beta = beta.astype(s.dtype)
    if active is not None:
        s = jnp.where(active, s, 0.0)
    if cfg.normalize:
        s = s / jax.lax.psum(jnp.sum(s, axis=-1, keepdims=True), axis)
    ninf = -jnp.inf
    if cfg.separation == "softmax":
        a = beta * (s if active is None else jnp.where(active, s, ninf))
        m, _, e = _lse_parts(a)
        return _merged_softmax(m, jnp.sum(e, axis=-1, keepdims=True), e @ proj, axis)
    if cfg.separation == "max":
        s = s if active is None else jnp.where(active, s, ninf)
        k_local = s.shape[-1]
        best = jnp.max(s, axis=-1)
        local_index = jnp.argmax(s, axis=-1)
        index = local_index + jax.lax.axis_index(axis) * k_local
        top = jax.lax.pmax(best, axis)
        # the first index among ties, as jnp.argmax does on the whole score vector
        candidate = jnp.where(best == top, index, jnp.iinfo(index.dtype).max)
        winner = jax.lax.pmin(candidate, axis)
        mine = (index == winner)[:, None]
        return jax.lax.psum(jnp.where(mine, proj[local_index], 0.0), axis)
    if cfg.separation == "topk":
        s = s if active is None else jnp.where(active, s, ninf)
        best, winners, idx, gidx = _global_top_k(cfg, s, axis)
        w = jax.nn.softmax(beta * best, axis=-1)  # (batch, k)
        match = gidx[:, :, None] == winners[:, None, :]  # (batch, kl, k)
        w_local = jnp.sum(jnp.where(match, w[:, None, :], 0.0), axis=-1)  # weight of each local candidate
        return jax.lax.psum(jnp.einsum("bc,bco->bo", w_local, proj[idx]), axis)
    # element-wise separations: the weighted sums add up
    if cfg.separation == "identity":
        w = s
    elif cfg.separation == "polynomial":
        w = s**cfg.n
    else:  # threshold
        w = (s >= threshold.astype(s.dtype)).astype(s.dtype)
    if active is not None:
        w = jnp.where(active, w, 0.0)
    out = jax.lax.psum(w @ proj, axis)
    if cfg.normalize:
        out = out / jax.lax.psum(jnp.sum(w, axis=-1, keepdims=True), axis)
    return out


def _universal_energy(cfg, axis, patterns, projection, active, states, beta, threshold):
    """$\\tfrac12\\|q\\|^2 - \\Phi(Mq)$ with $\\nabla\\Phi = \\mathrm{sep}$ (and Ramsauer et
    al.'s constants for the modern memory), per-device potentials merged."""
    q = states.astype(_acc(states.dtype))
    s = _local_scores("dot", patterns, states)
    beta = beta.astype(s.dtype)
    ninf = -jnp.inf
    sep = cfg.separation
    if sep in ("identity", "polynomial"):
        s = s if active is None else jnp.where(active, s, 0.0)
        local = 0.5 * jnp.sum(s * s, -1) if sep == "identity" else jnp.sum(s ** (cfg.n + 1), -1) / (cfg.n + 1)
        phi = jax.lax.psum(local, axis)
    elif sep == "softmax":
        phi = _merged_lse(beta * (s if active is None else jnp.where(active, s, ninf)), axis) / beta
    elif sep == "max":
        phi = jax.lax.pmax(jnp.max(s if active is None else jnp.where(active, s, ninf), axis=-1), axis)
    else:  # topk
        best = _global_top_k(cfg, s if active is None else jnp.where(active, s, ninf), axis)[0]
        phi = jax.nn.logsumexp(beta * best, axis=-1) / beta
    energy = 0.5 * jnp.sum(q * q, axis=-1) - phi
    if cfg.modern_energy:  # + log(K)/β + M²/2, over the active patterns
        norms = jnp.sum(jnp.square(patterns.astype(s.dtype)), axis=-1)
        count = jnp.asarray(patterns.shape[0], s.dtype) if active is None else jnp.sum(active).astype(s.dtype)
        if active is not None:
            norms = jnp.where(active, norms, 0.0)
        energy = energy + jnp.log(jax.lax.psum(count, axis)) / beta + 0.5 * jax.lax.pmax(jnp.max(norms), axis)
    return energy


def _modern_retrieve(cfg, axis, patterns, projection, active, queries, beta, threshold):
    step = functools.partial(_universal_retrieve, cfg, axis, patterns, None, active, beta=beta, threshold=threshold)
    if cfg.steps == 1:
        return step(queries)
    return jax.lax.fori_loop(0, cfg.steps, lambda _, x: step(x).astype(x.dtype), queries)


# --- the dense / exponential sign dynamics ------------------------------------------------
def _binary_partial(cfg, patterns, active, beta, s, aux, i):
    """This device's part of neuron ``i``'s score for one query: the sum over its patterns
    of $F(\\xi\\cdot\\sigma^{(i+)}) - F(\\xi\\cdot\\sigma^{(i-)})$ (dense), or the two local
    log-sum-exps (exponential)."""
    col = patterns[:, i].astype(aux.dtype)
    m0 = aux - col * s[i]
    if cfg.kind == "dense":
        n = overlap_scale(patterns.shape[1])  # exact: the partial sums add up to the one-device score
        diff = _power((m0 + col) / n, cfg.n, cfg.rectified) - _power((m0 - col) / n, cfg.n, cfg.rectified)
        return jnp.sum(diff if active is None else jnp.where(active, diff, 0.0)), jnp.zeros((), aux.dtype)
    up, down = beta * (m0 + col), beta * (m0 - col)
    if active is not None:
        up, down = jnp.where(active, up, -jnp.inf), jnp.where(active, down, -jnp.inf)
    return jax.nn.logsumexp(up), jax.nn.logsumexp(down)


def _merge_binary(cfg, axis, first, second):
    """Global scores from the per-device partials (sums, or log-sum-exps merged stably)."""
    if cfg.kind == "dense":
        return jax.lax.psum(first, axis)
    return _merged_lse(first[..., None], axis) - _merged_lse(second[..., None], axis)


def _binary_retrieve(cfg, axis, data_axis, patterns, active, queries, beta, keys):
    """Sign dynamics from ``sign(queries)`` to a fixed point (or ``max_sweeps``), every
    neuron's score merged across devices; the same states as the one-device ``retrieve``."""
    acc = _acc(patterns.dtype)
    s0 = binarize(queries.astype(acc))
    b, n = s0.shape
    beta = beta.astype(acc)
    axes = (axis,) if data_axis is None else (axis, data_axis)
    aux_of = lambda s: jnp.matmul(s.astype(patterns.dtype), patterns.T, preferred_element_type=acc)  # noqa: E731
    partial = jax.vmap(functools.partial(_binary_partial, cfg, patterns, active, beta))  # over queries

    def sync_sweep(s, aux, k):
        def block(i):  # neuron i for every query: (batch,) partials
            return partial(s, aux, jnp.broadcast_to(i, (b,)))

        first, second = jax.lax.map(block, jnp.arange(n), batch_size=min(n, 64))  # (n, batch): O(K_local) a query
        scores = _merge_binary(cfg, axis, first.T, second.T)
        new = _sign_keep(scores, s)
        return new, aux_of(new), jnp.any(new != s, axis=-1)

    def async_sweep(s, aux, k):
        if cfg.random_order:
            kd = keys if cfg.key_impl is None else jax.random.wrap_key_data(keys, impl=cfg.key_impl)
            order = jax.vmap(lambda key: jax.random.permutation(jax.random.fold_in(key, k), n))(kd)
        else:
            order = jnp.broadcast_to(jnp.arange(n), (b, n))

        def body(j, c):
            s, aux, changed = c
            i = order[:, j]
            first, second = partial(s, aux, i)
            score = _merge_binary(cfg, axis, first, second)
            old = jnp.take_along_axis(s, i[:, None], axis=1)[:, 0]
            new = _sign_keep(score, old)
            ds = new - old
            aux = aux + jnp.take(patterns, i, axis=1).T.astype(acc) * ds[:, None]
            s = s.at[jnp.arange(b), i].set(new)
            return s, aux, changed | (ds != 0)

        return jax.lax.fori_loop(0, n, body, (s, aux, jnp.zeros((b,), bool)))

    sweep = async_sweep if cfg.mode == "async" else sync_sweep

    def cond(c):
        _, _, k, changed = c
        # every device of the mesh decides together (its collectives must match)
        return (jax.lax.pmax(jnp.any(changed).astype(jnp.int32), axes) > 0) & (k < cfg.max_sweeps)

    def step(c):
        s, aux, k, _ = c
        s, aux, changed = sweep(s, aux, k)
        return s, aux, k + 1, changed

    s, _, _, _ = jax.lax.while_loop(cond, step, (s0, aux_of(s0), jnp.asarray(0), jnp.ones((b,), bool)))
    return s


def _binary_energy(cfg, axis, patterns, active, states, beta):
    acc = _acc(patterns.dtype)
    o = jnp.matmul(states.astype(patterns.dtype), patterns.T, preferred_element_type=acc)
    if cfg.kind == "dense":
        f = _power(o, cfg.n, cfg.rectified)
        return -jax.lax.psum(jnp.sum(f if active is None else jnp.where(active, f, 0.0), axis=-1), axis)
    a = beta.astype(acc) * o
    return -jnp.exp(_merged_lse(a if active is None else jnp.where(active, a, -jnp.inf), axis))


# ============================================================================ programs
@functools.lru_cache(maxsize=64)
def _program(what, cfg, mesh, axis, data_axis, has_projection, has_active):
    """The jitted shard_map program for one static configuration."""
    rows, rows1 = PartitionSpec(axis, None), PartitionSpec(axis)
    data, scalar = PartitionSpec(data_axis, None), PartitionSpec()
    out_spec = data if what == "retrieve" else PartitionSpec(data_axis)

    def local(patterns, projection, active, queries, beta, threshold, keys):
        if what == "energy":
            if cfg.kind == "universal":
                return _universal_energy(cfg, axis, patterns, projection, active, queries, beta, threshold)
            return _binary_energy(cfg, axis, patterns, active, queries, beta)
        if cfg.kind == "universal":
            fn = _modern_retrieve if cfg.modern_energy else _universal_retrieve
            return fn(cfg, axis, patterns, projection, active, queries, beta, threshold)
        return _binary_retrieve(cfg, axis, data_axis, patterns, active, queries, beta, keys)

    in_specs = (rows, rows if has_projection else None, rows1 if has_active else None, data, scalar, scalar, data)
    fn = _shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=out_spec, check_vma=False)
    return jax.jit(fn)


def _prepare(caller, memory, queries, mesh, pattern_axis, data_axis, name="queries"):
    cfg, arrays = _config(memory, caller)
    patterns = arrays["patterns"]
    mesh, axis = _mesh_of(caller, patterns, mesh, pattern_axis)
    k, n = patterns.shape[0], mesh.shape[axis]
    if k % n:
        raise ValueError(
            f"{caller}: {k} patterns cannot be split evenly over the {n} devices of mesh axis {axis!r}; "
            "pad them with ham.memories.shard_memory(memory, mesh, pad=True) (inactive rows)."
        )
    if data_axis is not None and (data_axis not in mesh.axis_names or data_axis == axis):
        raise ValueError(
            f"{caller}: data_axis {data_axis!r} must be a mesh axis {mesh.axis_names} other than the "
            f"pattern axis {axis!r}."
        )
    proj = arrays["projection"]
    if proj is not None and proj.dtype != patterns.dtype:
        raise TypeError(
            f"{caller}: the projection ({proj.dtype}) and the patterns ({patterns.dtype}) must share one dtype."
        )
    qd = queries.dtype if isinstance(queries, jax.Array) else None  # host data: cast to the patterns' dtype
    acc = _acc(patterns.dtype)
    if qd is not None and jnp.issubdtype(qd, jnp.floating) and qd not in (patterns.dtype, acc):
        raise TypeError(
            f"{caller}: {name} are {qd} but the patterns are {patterns.dtype}: pass {name} as {patterns.dtype}"
            + (f" or {acc}" if acc != patterns.dtype else "") + " (mixing dtypes would silently round)."
        )
    qs = getattr(queries, "sharding", None)
    if isinstance(qs, NamedSharding) and qs.mesh != mesh and len(qs.mesh.devices.flat) > 1:
        raise ValueError(
            f"{caller}: {name} are sharded over another mesh ({_describe_mesh(qs.mesh)}) than the patterns "
            f"({_describe_mesh(mesh)}); put them on the patterns' mesh."
        )
    q, single = as_queries(caller, queries, patterns.shape[1], qd if qd in (patterns.dtype, acc) else patterns.dtype,
                           name)
    if data_axis is not None and q.shape[0] % mesh.shape[data_axis]:
        raise ValueError(
            f"{caller}: a batch of {q.shape[0]} {name} cannot be split evenly over the "
            f"{mesh.shape[data_axis]} devices of mesh axis {data_axis!r}."
        )
    # Place the arguments as shard_map expects them (no copy where they already are).
    put = lambda x, spec: None if x is None else jax.device_put(x, NamedSharding(mesh, spec))  # noqa: E731
    args = dict(
        patterns=put(patterns, PartitionSpec(axis, None)),
        projection=put(proj, PartitionSpec(axis, None)),
        active=put(arrays["active"], PartitionSpec(axis)),
        queries=put(q, PartitionSpec(data_axis, None)),
        beta=put(jnp.asarray(arrays["beta"], acc), PartitionSpec()),
        threshold=put(jnp.asarray(arrays["threshold"], acc), PartitionSpec()),
    )
    return cfg, mesh, axis, args, single


def _run(what, cfg, mesh, axis, data_axis, args, keys):
    """The compiled program for ``what`` ("retrieve" or "energy") on the placed arguments."""
    keys = jax.device_put(keys, NamedSharding(mesh, PartitionSpec(data_axis, None)))
    program = _program(what, cfg, mesh, axis, data_axis, args["projection"] is not None, args["active"] is not None)
    return program(args["patterns"], args["projection"], args["active"], args["queries"], args["beta"],
                   args["threshold"], keys)


def _checked(caller, out, hint):
    # The overflow check runs on the returned array, outside the compiled program, on the
    # parts this process holds (never gathering the rest); under an outer ``jit`` (a
    # traced result) it is skipped.
    if checks.is_traced(out):
        return out
    for shard in out.addressable_shards:
        checks.finite_result(caller, shard.data, hint)
    return out


def sharded_retrieve(
    memory,
    queries: Float[Array, "*batch dim"],
    mesh: Mesh | None = None,
    pattern_axis: str | None = None,
    data_axis: str | None = None,
    *,
    steps: int = 1,
    mode: str = "async",
    max_sweeps: int = 100,
    key=None,
) -> Float[Array, "*batch out"]:
    r"""Retrieval of ``queries`` with the memory's patterns sharded over devices.

    Equal (up to rounding) to ``memory.retrieve(queries, ...)``, computed with
    `jax.shard_map`: each device scores the queries against its block of patterns and
    only per-query partial results cross devices (softmax: local maximum, sum of
    exponentials and weighted sum of patterns, merged by log-sum-exp; max: best score
    and index; top-k: the ``k`` best candidates of each block; element-wise separations
    and the dense/exponential neuron scores: sums or log-sum-exps). The pattern matrix
    and the ``(batch, num_patterns)`` score matrix are never gathered.

    **Arguments:**

    - `memory`: a [`ModernHopfield`][ham.memories.ModernHopfield] (``steps`` updates), a
      [`UniversalHopfield`][ham.memories.UniversalHopfield] with separation
      ``"softmax"``, ``"max"``, ``"topk"``, ``"identity"``, ``"polynomial"`` or
      ``"threshold"`` (any similarity; a callable one must be row-wise), or a
      [`DenseAssociativeMemory`][ham.memories.DenseAssociativeMemory] /
      [`ExponentialAssociativeMemory`][ham.memories.ExponentialAssociativeMemory] (their
      sign dynamics, ``mode`` / ``max_sweeps`` / ``key`` as in their ``retrieve``). An
      ``active`` mask (see [`shard_memory`][ham.memories.shard_memory]'s ``pad``) is
      honoured.
    - `queries`: ``(dim,)`` or ``(batch, dim)``, of the patterns' dtype (or float32 for
      half-precision patterns).
    - `mesh`: the device mesh; ``None`` uses the mesh of the patterns' own
      ``NamedSharding`` (see [`shard_memory`][ham.memories.shard_memory]).
    - `pattern_axis`: the mesh axis the patterns are split over (default ``"patterns"``
      with ``mesh=``, else the axis the patterns are sharded along). The number of
      patterns must be a multiple of its size.
    - `data_axis`: an optional mesh axis to split the batch of queries over (the batch
      must be a multiple of its size); the patterns are replicated along it.

    **Returns:**

    The retrieved states, ``(out,)`` or ``(batch, out)``, sharded along `data_axis`
    (replicated over `pattern_axis`). Bfloat16/float16 patterns are scored and summed in
    float32 and the result is float32.
    """
    caller = "sharded_retrieve"
    from ._one_layer import OneLayerMemory  # noqa: PLC0415
    if isinstance(memory, OneLayerMemory):  # relaxation with rows on the mesh (see _sharded_one_layer)
        from ._sharded_one_layer import sharded_one_layer  # noqa: PLC0415
        return sharded_one_layer("retrieve", memory, queries, mesh, pattern_axis, data_axis, caller)
    cfg, mesh, axis, args, single = _prepare(caller, memory, queries, mesh, pattern_axis, data_axis)
    b = args["queries"].shape[0]
    keys = jnp.zeros((b, 2), jnp.uint32)
    if isinstance(memory, ModernHopfield):
        cfg = cfg._replace(steps=checks.integer(caller, "steps", steps))
    elif cfg.kind in ("dense", "exponential"):
        if not isinstance(mode, str) or mode not in _MODES:
            raise ValueError(f"{caller}: mode must be one of {_MODES}, got {mode!r}.")
        cfg = cfg._replace(mode=mode, max_sweeps=checks.integer(caller, "max_sweeps", max_sweeps))
        if key is not None:
            checks.prng_key(caller, "key", key)
            split = jax.random.split(key, b)
            if jax.dtypes.issubdtype(split.dtype, jax.dtypes.prng_key):
                cfg = cfg._replace(key_impl=jax.random.key_impl(split))
                split = jax.random.key_data(split)
            keys = split
            cfg = cfg._replace(random_order=True)
    out = _run("retrieve", cfg, mesh, axis, data_axis, args, keys)
    out = _checked(caller, out, "the scores overflow the dtype; lower beta or rescale the patterns or queries")
    return out[0] if single else out


def sharded_energy(
    memory,
    states: Float[Array, "*batch dim"],
    mesh: Mesh | None = None,
    pattern_axis: str | None = None,
    data_axis: str | None = None,
) -> Float[Array, "*batch"]:
    r"""``memory.energy(states)`` with the patterns sharded over devices: each device
    reduces its block (log-sum-exp, sum, max or top-k) and the partials are merged, as in
    [`sharded_retrieve`][ham.memories.sharded_retrieve] (same arguments). For universal
    memories only where an energy exists (``memory.has_energy``)."""
    caller = "sharded_energy"
    from ._one_layer import OneLayerMemory  # noqa: PLC0415
    if isinstance(memory, OneLayerMemory):
        from ._sharded_one_layer import sharded_one_layer  # noqa: PLC0415
        return sharded_one_layer("energy", memory, states, mesh, pattern_axis, data_axis, caller)
    if isinstance(memory, UniversalHopfield) and not memory.has_energy:
        memory.energy(jnp.zeros((memory.dim,), memory.patterns.dtype))  # raises its own clear error
    cfg, mesh, axis, args, single = _prepare(caller, memory, states, mesh, pattern_axis, data_axis, "states")
    out = _run("energy", cfg, mesh, axis, data_axis, args, jnp.zeros((args["queries"].shape[0], 2), jnp.uint32))
    out = _checked(caller, out, "the energy overflows the dtype for these states")
    return out[0] if single else out
