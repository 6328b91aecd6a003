"""Run by tests/test_sharding.py in a subprocess with 8 virtual CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8`` must be set before JAX starts,
and must not leak into the rest of the suite). Prints one JSON object of measurements."""

import json
import os
import sys

assert "--xla_force_host_platform_device_count=8" in os.environ.get("XLA_FLAGS", ""), "run with 8 host devices"

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

import ham.memories as M
from ham.memories._sharded import _sharded

K, D, B = 256, 24, 6  # distinct sizes: shapes in the HLO text are unambiguous


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def main():
    out = {"devices": jax.device_count()}
    devices = np.array(jax.devices())
    mesh = Mesh(devices, ("patterns",))
    mesh2 = Mesh(devices.reshape(4, 2), ("patterns", "data"))
    kp, kq, kv = jax.random.split(jax.random.key(0), 3)
    patterns = jax.random.normal(kp, (K, D), jnp.float32)
    queries = patterns[:B] + 0.8 * jax.random.normal(kq, (B, D), jnp.float32)
    values = jax.random.normal(kv, (K, 5), jnp.float32)

    memories = {"modern": M.modern(patterns, beta=0.7)}
    for sim in ("dot", "cosine", "euclidean"):
        for sep in ("softmax", "max", "identity"):
            beta = {"dot": 0.5, "cosine": 8.0, "euclidean": 0.1}[sim]
            memories[f"universal-{sim}-{sep}"] = M.universal(patterns, sim, sep, beta=beta)
    memories["universal-dot-softmax-hetero"] = M.universal(patterns, "dot", "softmax", beta=0.5, projection=values)
    errors = {}
    for name, mem in memories.items():
        single = mem.retrieve(queries)
        errors[name] = rel_err(M.sharded_retrieve(M.shard_memory(mem, mesh), queries), single)
        errors[name + "/mesh-arg"] = rel_err(M.sharded_retrieve(mem, queries, mesh, "patterns"), single)
        errors[name + "/data-axis"] = rel_err(M.sharded_retrieve(mem, queries, mesh2, data_axis="data"), single)
        errors[name + "/one-query"] = rel_err(M.sharded_retrieve(mem, queries[0], mesh), single[0])
    out["errors"] = errors

    # ties in the max separation: the first index wins, as in jnp.argmax
    dup = jnp.concatenate([patterns[: K // 2], patterns[: K // 2]])
    tie = M.universal(dup, "dot", "max", projection=jnp.arange(K, dtype=jnp.float32)[:, None])
    out["tie_indices"] = [np.asarray(M.sharded_retrieve(tie, queries, mesh))[:, 0].tolist(),
                          np.asarray(tie.retrieve(queries))[:, 0].tolist()]

    # memory: each device holds 1/8 of the patterns
    sharded = M.shard_memory(memories["modern"], mesh)
    shards = sharded.patterns.addressable_shards
    out["shard_bytes"] = [int(s.data.nbytes) for s in shards]
    out["shard_devices"] = len({s.device for s in shards})
    out["total_bytes"] = int(sharded.patterns.nbytes)

    # the compiled program: no gathered pattern matrix, no (batch, K) score matrix
    hlo = {}
    for name in ("modern", "universal-euclidean-softmax", "universal-cosine-max", "universal-dot-identity"):
        mem = memories[name]
        sim, sep = ("dot", "softmax") if name == "modern" else (mem.similarity, mem.separation)
        p = M.shard_memory(mem, mesh).patterns
        text = _sharded.lower(p, p, queries, jnp.float32(0.5), similarity=sim, separation=sep, mesh=mesh,
                              pattern_axis="patterns", data_axis=None).compile().as_text()
        gathers = [line for line in text.splitlines() if "all-gather" in line or "all-to-all" in line]
        hlo[name] = {
            "gathers": gathers,
            "full_patterns": f"f32[{K},{D}]" in text,
            "full_scores": f"f32[{B},{K}]" in text,
            "local_patterns": f"f32[{K // 8},{D}]" in text,
            "all_reduces": sum("all-reduce(" in line for line in text.splitlines()),
        }
    out["hlo"] = hlo

    # bfloat16 patterns, float32 accumulation
    mem16 = M.modern(patterns.astype(jnp.bfloat16), beta=0.7)
    r16 = M.sharded_retrieve(mem16, queries, mesh)
    rounded = M.modern(patterns.astype(jnp.bfloat16).astype(jnp.float32), beta=0.7)
    q16 = queries.astype(jnp.bfloat16).astype(jnp.float32)
    out["bf16"] = {
        "dtype": str(r16.dtype),
        "shard_dtype": str(M.shard_memory(mem16, mesh).patterns.addressable_shards[0].data.dtype),
        # against float32 on the original data: the rounding of the inputs to bfloat16
        "rel_err_vs_f32": rel_err(r16, memories["modern"].retrieve(queries)),
        # against float32 on the same bfloat16-rounded data: only the accumulation differs
        "rel_err_vs_f32_same_inputs": rel_err(r16, rounded.retrieve(q16)),
    }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
