r"""One-step retrieval with the stored patterns sharded over devices.

A memory too large for one device keeps its patterns (rows, the ``num_patterns`` axis)
split over a mesh axis of a [`jax.sharding.Mesh`](https://docs.jax.dev/en/latest/jax.sharding.html).
Each device scores the queries against its own block of patterns and reduces its block
to a few numbers per query; the blocks' partial results are merged with collectives
(`lax.pmax`, `lax.psum`, `lax.pmin`). Neither the pattern matrix nor the
``(batch, num_patterns)`` score matrix is ever gathered on one device.

For the softmax separation the merge is the numerically stable log-sum-exp merge (as
in blockwise attention; Milakov & Gimelshein 2018, "Online normalizer calculation for
softmax"): device $d$ holds $a_\mu = \beta s_\mu$ for its patterns $\mu\in B_d$ and computes
$m_d = \max_{\mu\in B_d} a_\mu$, $Z_d = \sum_{\mu\in B_d} e^{a_\mu - m_d}$ and
$n_d = \sum_{\mu\in B_d} e^{a_\mu - m_d} p_\mu$; then with $m = \max_d m_d$,
$c_d = e^{m_d - m}$, the retrieval is $z = \sum_d c_d n_d / \sum_d c_d Z_d$.
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, Float

from .. import _checks as checks
from ._common import as_queries
from ._modern import ModernHopfield
from ._universal import UniversalHopfield

__all__ = ["shard_memory", "sharded_retrieve"]

_SIMILARITIES = ("dot", "cosine", "euclidean")
_SEPARATIONS = ("softmax", "max", "identity")

try:  # JAX >= 0.6
    _shard_map = jax.shard_map
except AttributeError:  # pragma: no cover - older JAX
    from jax.experimental.shard_map import shard_map as _shard_map


def _describe(memory) -> tuple[str, str, Array, Array]:
    """(similarity, separation, patterns, projection) of a supported memory, or an error."""
    if isinstance(memory, ModernHopfield):
        return "dot", "softmax", memory.patterns, memory.patterns
    if isinstance(memory, UniversalHopfield):
        if memory.similarity not in _SIMILARITIES or memory.separation not in _SEPARATIONS or memory.normalize:
            raise ValueError(
                f"sharded_retrieve: universal memories are supported with similarity in {list(_SIMILARITIES)}, "
                f"separation in {list(_SEPARATIONS)} and normalize=False; got similarity={memory.similarity!r}, "
                f"separation={memory.separation!r}, normalize={memory.normalize}."
            )
        return memory.similarity, memory.separation, memory.patterns, memory.projection
    raise TypeError(
        "sharded_retrieve: memory must be a ham.memories.modern or ham.memories.universal memory, "
        f"got {type(memory).__name__}."
    )


def _mesh_of(memory, mesh, pattern_axis) -> tuple[Mesh, str]:
    """The mesh and pattern axis: given, or read from the sharding the patterns carry."""
    if mesh is not None:
        if not isinstance(mesh, Mesh):
            raise TypeError(f"sharded_retrieve: mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}.")
        axis = "patterns" if pattern_axis is None else pattern_axis
    else:
        sharding = getattr(_describe(memory)[2], "sharding", None)
        spec = getattr(sharding, "spec", ())
        if not isinstance(sharding, NamedSharding) or len(spec) < 1 or spec[0] is None:
            raise ValueError(
                "sharded_retrieve: give mesh= (and pattern_axis=), or patterns already sharded along their "
                "first axis with a NamedSharding (see ham.memories.shard_memory); the patterns carry "
                f"{sharding!r}."
            )
        mesh, axis = sharding.mesh, (spec[0] if pattern_axis is None else pattern_axis)
    if not isinstance(axis, str) or axis not in mesh.axis_names:
        raise ValueError(f"sharded_retrieve: pattern_axis {axis!r} is not an axis of the mesh {mesh.axis_names}.")
    return mesh, axis


def shard_memory(memory, mesh: Mesh, pattern_axis: str = "patterns"):
    r"""Place a memory's patterns (and projection) on ``mesh``, split along the pattern axis.

    **Arguments:**

    - `memory`: a [`ModernHopfield`][ham.memories.ModernHopfield] or
      [`UniversalHopfield`][ham.memories.UniversalHopfield].
    - `mesh`: the device mesh.
    - `pattern_axis`: the name of the mesh axis the patterns are split over; the number
      of patterns must be a multiple of its size.

    **Returns:**

    The same memory whose ``patterns`` (and ``projection``) are `jax.Array`s with
    ``NamedSharding(mesh, PartitionSpec(pattern_axis, None))``: each device holds
    ``num_patterns / mesh.shape[pattern_axis]`` rows. [`sharded_retrieve`][ham.memories.sharded_retrieve]
    then needs no ``mesh=``.
    """
    _describe(memory)
    mesh, axis = _mesh_of(memory, mesh, pattern_axis)
    k, n = memory.patterns.shape[0], mesh.shape[axis]
    if k % n:
        raise ValueError(
            f"shard_memory: {k} patterns cannot be split evenly over the {n} devices of mesh axis {axis!r}."
        )
    sharding = NamedSharding(mesh, PartitionSpec(axis, None))
    memory = eqx.tree_at(lambda m: m.patterns, memory, jax.device_put(memory.patterns, sharding))
    if isinstance(memory, UniversalHopfield):
        memory = eqx.tree_at(lambda m: m.projection, memory, jax.device_put(memory.projection, sharding))
    return memory


def _local_scores(similarity, patterns, queries):
    """Similarity of every local pattern to every query, ``(batch, K_local)``, accumulated
    in at least float32 (bfloat16/float16 patterns give float32 scores)."""
    acc = jnp.promote_types(patterns.dtype, jnp.float32)
    dots = jnp.matmul(queries, patterns.T, preferred_element_type=acc)
    if similarity == "dot":
        return dots
    p = patterns.astype(acc)
    q = queries.astype(acc)
    pn = jnp.sum(p * p, axis=-1)
    qn = jnp.sum(q * q, axis=-1, keepdims=True)
    if similarity == "cosine":
        return dots / jnp.maximum(jnp.sqrt(pn)[None, :] * jnp.sqrt(qn), 1e-12)
    return -jnp.maximum(qn - 2.0 * dots + pn[None, :], 0.0)  # euclidean


def _local_retrieve(similarity, separation, axis, patterns, projection, queries, beta):
    """Runs on each device: local scores, local partial reductions, collective merge."""
    acc = jnp.promote_types(projection.dtype, jnp.float32)
    s = _local_scores(similarity, patterns, queries)
    proj = projection.astype(acc) if projection.dtype != acc else projection
    if separation == "identity":
        return jax.lax.psum(s @ proj, axis)
    if separation == "max":
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
    a = beta.astype(s.dtype) * s  # softmax: the log-sum-exp merge
    m_local = jnp.max(a, axis=-1, keepdims=True)
    e = jnp.exp(a - m_local)
    z_local = jnp.sum(e, axis=-1, keepdims=True)
    n_local = e @ proj
    m = jax.lax.pmax(m_local, axis)
    c = jnp.exp(m_local - m)
    return jax.lax.psum(c * n_local, axis) / jax.lax.psum(c * z_local, axis)


@functools.partial(jax.jit, static_argnames=("similarity", "separation", "mesh", "pattern_axis", "data_axis"))
def _sharded(patterns, projection, queries, beta, *, similarity, separation, mesh, pattern_axis, data_axis):
    fn = _shard_map(
        functools.partial(_local_retrieve, similarity, separation, pattern_axis),
        mesh=mesh,
        in_specs=(
            PartitionSpec(pattern_axis, None),
            PartitionSpec(pattern_axis, None),
            PartitionSpec(data_axis, None),
            PartitionSpec(),
        ),
        out_specs=PartitionSpec(data_axis, None),
    )
    return fn(patterns, projection, queries, beta)


def sharded_retrieve(
    memory,
    queries: Float[Array, "*batch dim"],
    mesh: Mesh | None = None,
    pattern_axis: str | None = None,
    data_axis: str | None = None,
) -> Float[Array, "*batch out"]:
    r"""One-step retrieval of ``queries`` with the memory's patterns sharded over devices.

    Equal (up to rounding) to ``memory.retrieve(queries)``, but computed with
    `jax.shard_map`: each device scores the queries against its block of patterns and
    only per-query partial results cross devices (for softmax its local maximum, sum of
    exponentials and weighted sum of patterns, merged by log-sum-exp; for max its best
    score and index; for identity its weighted sum). The pattern matrix and the
    ``(batch, num_patterns)`` score matrix are never gathered.

    **Arguments:**

    - `memory`: a [`ModernHopfield`][ham.memories.ModernHopfield] (one update), or a
      [`UniversalHopfield`][ham.memories.UniversalHopfield] with similarity ``"dot"``,
      ``"cosine"`` or ``"euclidean"``, separation ``"softmax"``, ``"max"`` or
      ``"identity"`` and ``normalize=False`` (auto- or hetero-associative).
    - `queries`: ``(dim,)`` or ``(batch, dim)``.
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
    similarity, separation, patterns, projection = _describe(memory)
    mesh, axis = _mesh_of(memory, mesh, pattern_axis)
    k, n = patterns.shape[0], mesh.shape[axis]
    if k % n:
        raise ValueError(
            f"sharded_retrieve: {k} patterns cannot be split evenly over the {n} devices of mesh axis {axis!r}."
        )
    if data_axis is not None and (data_axis not in mesh.axis_names or data_axis == axis):
        raise ValueError(
            f"sharded_retrieve: data_axis {data_axis!r} must be a mesh axis {mesh.axis_names} other than the "
            f"pattern axis {axis!r}."
        )
    q, single = as_queries("sharded_retrieve", queries, patterns.shape[1], patterns.dtype)
    if data_axis is not None and q.shape[0] % mesh.shape[data_axis]:
        raise ValueError(
            f"sharded_retrieve: a batch of {q.shape[0]} queries cannot be split evenly over the "
            f"{mesh.shape[data_axis]} devices of mesh axis {data_axis!r}."
        )
    beta = jnp.asarray(getattr(memory, "beta", 1.0), dtype=jnp.promote_types(patterns.dtype, jnp.float32))
    # Place the arguments as shard_map expects them (no copy where they already are).
    rows = NamedSharding(mesh, PartitionSpec(axis, None))
    patterns, projection = jax.device_put(patterns, rows), jax.device_put(projection, rows)
    q = jax.device_put(q, NamedSharding(mesh, PartitionSpec(data_axis, None)))
    beta = jax.device_put(beta, NamedSharding(mesh, PartitionSpec()))
    out = _sharded(
        patterns, projection, q, beta, similarity=similarity, separation=separation, mesh=mesh,
        pattern_axis=axis, data_axis=data_axis,
    )
    # The overflow check runs on the returned array, outside the compiled program: an
    # ``eqx.error_if`` inside it would pull the result onto one device, and its raising
    # callback would leave the other devices waiting in their collectives. Under an outer
    # ``jit`` (a traced result) it is skipped.
    if not checks.is_traced(out):
        out = checks.finite_result(
            "sharded_retrieve", out, "the scores overflow the dtype; lower beta or rescale the patterns or queries"
        )
    return out[0] if single else out
