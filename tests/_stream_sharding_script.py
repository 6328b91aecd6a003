"""Run by tests/test_stream.py in a subprocess with 8 virtual CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8`` must be set before JAX starts):
queries sharded over a data axis are streamed per device. Prints one JSON object."""

import json
import os

assert "--xla_force_host_platform_device_count=8" in os.environ.get("XLA_FLAGS", ""), "run with 8 host devices"

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import ham
from ham import _stream

N, W = 48, 2  # 6 queries per device, 2 slots each
k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
p = jnp.where(jax.random.bernoulli(k1, 0.5, (6, 64)), 1.0, -1.0)
flip = jnp.where(jax.random.bernoulli(k2, jnp.where(jnp.arange(N) % 4 == 0, 0.3, 0.03)[:, None], (N, 64)), -1.0, 1.0)
net = ham.memories.classical(p).make_network(beta=4.0)
q = 0.5 * p[jnp.arange(N) % 6] * flip
mesh = Mesh(np.array(jax.devices()).reshape(8, 1), ("data", "model"))
qs = jax.device_put(q, NamedSharding(mesh, P("data", None)))

ref = ham.relax(net, {"v": q}, window=None)  # the vmapped solve
w = _stream.Window(W)
got = ham.relax(net, {"v": qs}, window=w)
dist = np.linalg.norm(np.asarray(got.states["v"]) - np.asarray(ref.states["v"]), axis=1)
tol = 1e-8 + 1e-6 * np.linalg.norm(np.asarray(ref.states["v"]), axis=1)

# window="auto" on 8 x 256 sharded queries: the rule sees one device's 256
big = 0.5 * p[jnp.arange(2048) % 6] * jnp.where(
    jax.random.bernoulli(k3, jnp.where(jnp.arange(2048) % 6 == 0, 0.3, 0.02)[:, None], (2048, 64)), -1.0, 1.0)
wa = _stream.Window("auto")
auto = ham.relax(net, {"v": jax.device_put(big, NamedSharding(mesh, P("data", None)))}, window=wa)
big_ref = ham.relax(net, {"v": big}, window=None)
print(json.dumps({
    "devices": len(jax.devices()),
    "state_spec": str(got.states["v"].sharding.spec), "steps_spec": str(got.num_steps.sharding.spec),
    "state_shard_shape": list(got.states["v"].addressable_shards[0].data.shape),
    "stats": w.stats,
    "same_steps": bool(np.array_equal(np.asarray(got.num_steps), np.asarray(ref.num_steps))),
    "same_reason": bool(np.array_equal(np.asarray(got.reason_code), np.asarray(ref.reason_code))),
    "within_tol": bool(np.all(dist <= tol)),
    "energies_err": float(np.max(np.abs(np.asarray(got.energies) - np.asarray(ref.energies)))),
    "steps_spread": [float(np.mean(np.asarray(ref.num_steps))), int(np.max(np.asarray(ref.num_steps)))],
    "auto_stats": {k: v for k, v in wa.stats.items() if k != "iterations_per_device"},
    "auto_same_steps": bool(np.array_equal(np.asarray(auto.num_steps), np.asarray(big_ref.num_steps))),
    "auto_spec": str(auto.states["v"].sharding.spec),
}))
