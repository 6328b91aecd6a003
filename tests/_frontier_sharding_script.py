"""Run by tests/test_frontier_memories.py in a subprocess with 8 virtual CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8`` must be set before JAX starts).
Prints one JSON object: for each one-layer memory, the sharded retrieval/energy error
against the one-device memory and what the compiled sharded programs hold."""

import json
import os
import re

assert "--xla_force_host_platform_device_count=8" in os.environ.get("XLA_FLAGS", ""), "run with 8 host devices"

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

import ham.memories as M
from ham.memories._one_layer import _relax_jit
from ham.solve import with_default_solver

K, D, B = 256, 24, 6
rng = np.random.default_rng(0)
patterns = rng.normal(size=(K, D)).astype(np.float32)
queries = (patterns[:B] + 0.3 * rng.normal(size=(B, D))).astype(np.float32)
mesh = Mesh(np.array(jax.devices()), ("patterns",))


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def report(text, rows, cols):
    lines = text.splitlines()
    return dict(
        all_reduces=sum("all-reduce(" in line or "all-reduce-start(" in line for line in lines),
        gathers=[line.strip()[:160] for line in lines if "all-gather" in line or "all-to-all" in line],
        full_rows_in_program=bool(re.search(rf"\[{rows},{cols}\]", text)),
    )


cases = {
    "epanechnikov": (M.epanechnikov(patterns, 0.1), "patterns"),
    "random_features-trigonometric": (M.random_features(patterns, 0.1, 100, key=jax.random.key(0)), "omega"),
}
out = {}
for name, (mem, rows_name) in cases.items():
    sharded = M.shard_memory(mem, mesh, pad=True)
    rows = getattr(sharded, rows_name).shape[0]
    want_r, want_e = mem.retrieve(queries), mem.energy(queries)
    got_r = M.sharded_retrieve(sharded, queries)
    got_e = M.sharded_energy(sharded, queries)
    got_mesh = M.sharded_retrieve(mem, queries, mesh=mesh) if rows == getattr(mem, rows_name).shape[0] else got_r
    arr = getattr(sharded, rows_name)
    r = dict(
        devices=len(arr.sharding.device_set),
        rows=rows,
        rows_per_device=arr.addressable_shards[0].data.shape[0],
        retrieve_err=max(rel_err(got_r, want_r), rel_err(got_mesh, want_r)),
        energy_err=rel_err(got_e, want_e),
    )
    # the compiled relaxation (energy and gradient inside its loop)
    q = jax.device_put(jnp.asarray(queries), jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    net = sharded.make_network()
    relax_text = _relax_jit.lower(net, {"x": q}, with_default_solver(net, {}, ("x",))).lowered.compile().as_text()
    r.update(report(relax_text, rows, D))
    out[name] = r
print(json.dumps({"cases": out}))
