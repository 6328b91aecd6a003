r"""Sharding of the one-layer memories ([`epanechnikov`][ham.memories.epanechnikov],
[`log_sum_exp`][ham.memories.log_sum_exp], [`random_features`][ham.memories.random_features]).

Their energies are sums over rows followed by a scalar function (a log, a log-sum-exp):
over stored patterns for the Epanechnikov and log-sum-exp memories, over random
features for the random-feature memory. The rows are split over a mesh axis
(``NamedSharding(mesh, PartitionSpec(axis, None))``) and the memory's own jit-compiled
``relax`` / ``energy`` run on them: XLA's SPMD partitioner gives each device its block,
reduces it locally and merges the per-query partial sums with an all-reduce (the
log-sum-exp with its running maximum); the rows are never gathered (the tests read the
compiled program). [`shard_memory`][ham.memories.shard_memory],
[`sharded_retrieve`][ham.memories.sharded_retrieve] and
[`sharded_energy`][ham.memories.sharded_energy] dispatch here for these memories.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from ._epanechnikov import EpanechnikovMemory
from ._one_layer import LogSumExpMemory, OneLayerMemory
from ._random_features import RandomFeatureMemory

__all__ = ["shard_one_layer", "sharded_one_layer"]


def _rows(memory) -> tuple[str, object]:
    """(name of the array split over the mesh, name of the row count)."""
    if isinstance(memory, RandomFeatureMemory):
        return "omega", "features"
    return "patterns", "patterns"


def shard_one_layer(memory: OneLayerMemory, mesh, pattern_axis, *, pad: bool = False, caller: str = "shard_memory",
                    move: bool = True):
    """``memory`` with its rows (patterns, or random features) split over ``pattern_axis``."""
    from ._sharded import _mesh_of  # noqa: PLC0415 (_sharded imports this module)

    name, what = _rows(memory)
    mesh, axis = _mesh_of(caller, getattr(memory, name), mesh, pattern_axis, move=move)
    rows, n = getattr(memory, name).shape[0], mesh.shape[axis]
    if rows % n:
        if not pad:
            raise ValueError(
                f"{caller}: {rows} {what} cannot be split evenly over the {n} devices of mesh axis {axis!r}; "
                f"pass pad=True to append {n - rows % n} rows that contribute nothing."
            )
        extra = n - rows % n
        if isinstance(memory, RandomFeatureMemory):  # zero vectors with a zero (log: -inf) tensor entry
            fill = 0.0 if memory.kind == "trigonometric" else -jnp.inf
            memory = eqx.tree_at(lambda m: m.omega, memory, jnp.pad(memory.omega, ((0, extra), (0, 0))))
            memory = eqx.tree_at(lambda m: m.tensor, memory,
                                 jnp.pad(memory.tensor, ((0, extra), (0, 0)), constant_values=fill))
        else:  # zero rows marked inactive
            active = jnp.ones((rows,), bool) if memory.active is None else memory.active
            memory = eqx.tree_at(lambda m: m.active, memory, jnp.concatenate([active, jnp.zeros((extra,), bool)]),
                                 is_leaf=lambda x: x is None)
            memory = eqx.tree_at(lambda m: m.patterns, memory, jnp.pad(memory.patterns, ((0, extra), (0, 0))))
    put2 = lambda x: jax.device_put(x, NamedSharding(mesh, PartitionSpec(axis, None)))  # noqa: E731
    if isinstance(memory, RandomFeatureMemory):
        memory = eqx.tree_at(lambda m: m.omega, memory, put2(memory.omega))
        return eqx.tree_at(lambda m: m.tensor, memory, put2(memory.tensor))
    memory = eqx.tree_at(lambda m: m.patterns, memory, put2(memory.patterns))
    if memory.active is not None:
        memory = eqx.tree_at(lambda m: m.active, memory,
                             jax.device_put(memory.active, NamedSharding(mesh, PartitionSpec(axis))))
    return memory


def sharded_one_layer(what: str, memory: OneLayerMemory, queries, mesh, pattern_axis, data_axis, caller: str,
                      **kwargs):
    """``memory.retrieve`` (``what="retrieve"``, by relaxation; ``kwargs`` go to
    [`ham.relax`][]) or ``memory.energy`` with the rows on the mesh and the queries
    replicated, or split along ``data_axis``."""
    if not isinstance(memory, (EpanechnikovMemory, LogSumExpMemory, RandomFeatureMemory)):
        raise TypeError(f"{caller}: unsupported one-layer memory {type(memory).__name__}.")
    memory = shard_one_layer(memory, mesh, pattern_axis, caller=caller, move=False)
    name, _ = _rows(memory)
    mesh, axis = getattr(memory, name).sharding.mesh, getattr(memory, name).sharding.spec[0]
    if data_axis is not None and (data_axis not in mesh.axis_names or data_axis == axis):
        raise ValueError(
            f"{caller}: data_axis {data_axis!r} must be a mesh axis {mesh.axis_names} other than the "
            f"pattern axis {axis!r}."
        )
    q = memory.init_states(queries)["x"]
    if q.ndim == 2:
        if data_axis is not None and q.shape[0] % mesh.shape[data_axis]:
            raise ValueError(
                f"{caller}: a batch of {q.shape[0]} queries cannot be split evenly over the "
                f"{mesh.shape[data_axis]} devices of mesh axis {data_axis!r}."
            )
        q = jax.device_put(q, NamedSharding(mesh, PartitionSpec(data_axis, None)))
    else:
        q = jax.device_put(q, NamedSharding(mesh, PartitionSpec()))
    if what == "energy":
        return memory.energy(q)
    return memory.retrieve(q, **kwargs)
