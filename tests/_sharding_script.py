"""Run by tests/test_sharding.py in a subprocess with 8 virtual CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8`` must be set before JAX starts,
and must not leak into the rest of the suite). Prints one JSON object of measurements."""

import json
import os
import re
import sys

assert "--xla_force_host_platform_device_count=8" in os.environ.get("XLA_FLAGS", ""), "run with 8 host devices"

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import ham
import ham.memories as M
from ham.memories._sharded import _program
from ham.solve import with_default_solver

K, D, B = 256, 24, 6  # distinct sizes: shapes in the HLO text are unambiguous
SEPARATIONS = ("softmax", "max", "topk", "identity", "polynomial", "threshold")
# memories also checked with a data axis and with a single query
FULL = ("modern", "modern-3-steps", "universal-dot-softmax", "universal-dot-topk", "universal-euclidean-max",
        "universal-manhattan-identity", "universal-cosine-polynomial", "universal-hamming-threshold",
        "universal-dot-topk-hetero", "dense3-async", "dense3-sync", "exponential-async-random", "exponential-sync")


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def hlo_report(text, k_full, d, b, k_local):
    """What a compiled program holds: all-gathers (with their result shapes), full
    pattern / score / hidden-state arrays, the local block, the number of all-reduces."""
    lines = text.splitlines()
    gathers = [line.strip()[:160] for line in lines if "all-gather" in line or "all-to-all" in line]
    gather_shapes = [m.group(1) for line in lines for m in [re.search(r"= \S+\[([\d,]*)\]\S* all-gather\(", line)] if m]
    return {
        "gathers": gathers,
        "gather_shapes": gather_shapes,
        "full_patterns": bool(re.search(rf"\[{k_full},{d}\]|\[{d},{k_full}\]", text)),
        "full_scores": bool(re.search(rf"\[{b},{k_full}\]|\[{k_full},{b}\]", text)),
        "local_patterns": bool(re.search(rf"\[{k_local},{d}\]|\[{d},{k_local}\]", text)),
        "all_reduces": sum("all-reduce(" in line for line in lines),
    }


def retrieval_memories(patterns, queries, values):
    """(memory, queries, retrieve kwargs) for every sharded model."""
    out = {"modern": (M.modern(patterns, beta=0.7), queries, {}),
           "modern-3-steps": (M.modern(patterns, beta=2.0), queries, {"steps": 3})}
    signs_p, signs_q = jnp.sign(patterns), jnp.sign(queries)
    for sim in sorted(M.SIMILARITIES):
        for sep in SEPARATIONS:
            beta = {"dot": 0.5, "cosine": 8.0, "euclidean": 0.1}.get(sim, 0.2)
            p, q = (signs_p, signs_q) if sim == "hamming" else (patterns, queries)
            out[f"universal-{sim}-{sep}"] = (M.universal(p, sim, sep, beta=beta, n=3, k=5, threshold=0.1), q, {})
    out["universal-dot-softmax-hetero"] = (M.universal(patterns, "dot", "softmax", beta=0.5, projection=values), queries, {})
    out["universal-dot-topk-hetero"] = (M.universal(patterns, "dot", "topk", beta=0.5, k=7, projection=values), queries, {})
    out["universal-dot-identity-normalized"] = (M.universal(jnp.abs(patterns), "dot", "identity", normalize=True),
                                                jnp.abs(queries), {})
    out["universal-dot-softmax-normalized"] = (M.universal(jnp.abs(patterns), "dot", "softmax", beta=3.0,
                                                           normalize=True), jnp.abs(queries), {})
    flips = jnp.where(jax.random.uniform(jax.random.key(9), (B, D)) < 0.15, -1.0, 1.0)
    noisy = signs_p[:B] * flips
    for name, mem in (("dense3", M.dense(signs_p, 3)), ("dense4-rectified", M.dense(signs_p, 4, rectified=True)),
                      ("exponential", M.exponential(signs_p, 0.3))):
        out[f"{name}-async"] = (mem, noisy, {})
        out[f"{name}-async-random"] = (mem, noisy, {"key": jax.random.key(5)})
        out[f"{name}-sync"] = (mem, noisy, {"mode": "sync"})
    return out


def main():
    out = {"devices": jax.device_count()}
    devices = np.array(jax.devices())
    mesh = Mesh(devices, ("patterns",))
    mesh2 = Mesh(devices.reshape(4, 2), ("patterns", "data"))
    kp, kq, kv = jax.random.split(jax.random.key(0), 3)
    patterns = jax.random.normal(kp, (K, D), jnp.float32)
    queries = patterns[:B] + 0.8 * jax.random.normal(kq, (B, D), jnp.float32)
    values = jax.random.normal(kv, (K, 5), jnp.float32)

    # ---- retrieval and energy: sharded == one device
    errors, energy_errors = {}, {}
    for name, (mem, q, kw) in retrieval_memories(patterns, queries, values).items():
        single = mem.retrieve(q, **kw)
        errors[name] = rel_err(M.sharded_retrieve(M.shard_memory(mem, mesh), q, **kw), single)
        errors[name + "/mesh-arg"] = rel_err(M.sharded_retrieve(mem, q, mesh, "patterns", **kw), single)
        if name in FULL:  # (each variant compiles a program: the rest of the grid runs the first two)
            errors[name + "/data-axis"] = rel_err(M.sharded_retrieve(mem, q, mesh2, data_axis="data", **kw), single)
            errors[name + "/one-query"] = rel_err(M.sharded_retrieve(mem, q[0], mesh, **kw), single[0])
        if getattr(mem, "has_energy", True):
            energy_errors[name] = rel_err(M.sharded_energy(mem, q, mesh), mem.energy(q))
            if name in FULL:
                energy_errors[name + "/data-axis"] = rel_err(M.sharded_energy(mem, q, mesh2, data_axis="data"),
                                                             mem.energy(q))
    out["errors"], out["energy_errors"] = errors, energy_errors

    # ---- ties: the first index wins, as in jnp.argmax / lax.top_k
    dup = jnp.concatenate([patterns[: K // 2], patterns[: K // 2]])
    index = jnp.arange(K, dtype=jnp.float32)[:, None]
    tie = M.universal(dup, "dot", "max", projection=index)
    out["tie_indices"] = [np.asarray(M.sharded_retrieve(tie, queries, mesh))[:, 0].tolist(),
                          np.asarray(tie.retrieve(queries))[:, 0].tolist()]
    tie_k = M.universal(dup, "dot", "topk", k=4, beta=1e-3, projection=index)  # ~ the mean index of the top 4
    out["tie_topk"] = [np.asarray(M.sharded_retrieve(tie_k, queries, mesh))[:, 0].tolist(),
                       np.asarray(tie_k.retrieve(queries))[:, 0].tolist()]

    # ---- uneven shards: 250 patterns padded to 256 with inactive rows
    uneven = {}
    k_odd = 250
    for name, mem, q in (("modern", M.modern(patterns[:k_odd], beta=0.7), queries),
                         ("universal-euclidean-topk", M.universal(patterns[:k_odd], "euclidean", "topk", beta=0.1, k=5),
                          queries),
                         ("universal-dot-identity", M.universal(patterns[:k_odd], "dot", "identity"), queries),
                         ("exponential-sync", M.exponential(jnp.sign(patterns[:k_odd]), 0.3), jnp.sign(queries))):
        padded = M.shard_memory(mem, mesh, pad=True)
        kw = {"mode": "sync"} if name.endswith("sync") else {}
        uneven[name] = {
            "rows": int(padded.patterns.shape[0]),
            "inactive": int(np.sum(~np.asarray(padded.active))),
            "retrieve": rel_err(M.sharded_retrieve(padded, q, **kw), mem.retrieve(q, **kw)),
            "energy": rel_err(M.sharded_energy(padded, q), mem.energy(q)) if getattr(mem, "has_energy", True) else 0.0,
        }
    try:
        M.shard_memory(M.modern(patterns[:k_odd]), mesh)
        uneven["error"] = None
    except ValueError as e:
        uneven["error"] = str(e)
    out["uneven"] = uneven

    # ---- memory: each device holds 1/8 of the patterns
    sharded = M.shard_memory(M.modern(patterns, beta=0.7), mesh)
    shards = sharded.patterns.addressable_shards
    out["shard_bytes"] = [int(s.data.nbytes) for s in shards]
    out["shard_devices"] = len({s.device for s in shards})
    out["total_bytes"] = int(sharded.patterns.nbytes)

    # ---- the compiled retrieval programs: no gathered pattern matrix, no (batch, K) score matrix
    hlo = {}
    mems = retrieval_memories(patterns, queries, values)
    for name in ("modern", "universal-euclidean-softmax", "universal-cosine-max", "universal-dot-identity",
                 "universal-dot-topk", "universal-manhattan-softmax", "dense3-sync", "dense3-async",
                 "exponential-sync"):
        mem, q, kw = mems[name]
        from ham.memories._sharded import _prepare

        cfg, _, _, args, _ = _prepare("hlo", mem, q, mesh, None, None)
        if "sync" in name or "async" in name:
            cfg = cfg._replace(mode="sync" if name.endswith("-sync") else "async")
        fn = _program("retrieve", cfg, mesh, "patterns", None, args["projection"] is not None, args["active"] is not None)
        text = fn.lower(args["patterns"], args["projection"], args["active"], args["queries"], args["beta"],
                        args["threshold"], jnp.zeros((B, 2), jnp.uint32)).compile().as_text()
        hlo[name] = hlo_report(text, K, D, B, K // 8)
    out["hlo"] = hlo

    # ---- top-k: exact vs approximate (lax.approx_max_k), recall of the k nearest
    kk, big = 10, 4096
    pb = jax.random.normal(jax.random.key(11), (big, 32), jnp.float32)
    qb = pb[:64] + 0.5 * jax.random.normal(jax.random.key(12), (64, 32), jnp.float32)
    exact = M.universal(pb, "dot", "topk", k=kk, projection=jnp.arange(big, dtype=jnp.float32)[:, None])
    approx = M.universal(pb, "dot", "topk", k=kk, approximate=True, recall_target=0.9,
                         projection=jnp.arange(big, dtype=jnp.float32)[:, None])
    scores = qb @ pb.T
    ex_idx = np.asarray(jax.lax.top_k(scores, kk)[1])
    ap_idx = np.asarray(jax.lax.approx_max_k(scores, kk, recall_target=0.9)[1])
    recall = float(np.mean([len(set(a) & set(e)) / kk for a, e in zip(ap_idx, ex_idx)]))
    out["topk"] = {
        "k": kk, "K": big, "recall_approx_vs_exact": recall, "backend": jax.default_backend(),
        "sharded_exact_vs_single": rel_err(M.sharded_retrieve(exact, qb, mesh), exact.retrieve(qb)),
        "sharded_approx_vs_single_approx": rel_err(M.sharded_retrieve(approx, qb, mesh), approx.retrieve(qb)),
    }

    # ---- the softmax in blocks of 100 rows (overlapping last block) on 512 rows per device
    from ham.memories import _sharded

    _sharded._BLOCK_ROWS, saved = 100, _sharded._BLOCK_ROWS
    _sharded._program.cache_clear()
    active = jnp.arange(big) % 7 != 3
    out["blocked"] = {
        "modern": rel_err(M.sharded_retrieve(M.modern(pb, beta=3.0), qb, mesh), M.modern(pb, beta=3.0).retrieve(qb)),
        "masked": rel_err(M.sharded_retrieve(M.modern(pb, beta=3.0, active=active), qb, mesh),
                          M.modern(pb, beta=3.0, active=active).retrieve(qb)),
        "bf16": rel_err(M.sharded_retrieve(M.modern(pb.astype(jnp.bfloat16), beta=3.0), qb, mesh),
                        M.modern(pb.astype(jnp.bfloat16).astype(jnp.float32), beta=3.0).retrieve(
                            qb.astype(jnp.bfloat16).astype(jnp.float32))),
    }
    _sharded._BLOCK_ROWS = saved
    _sharded._program.cache_clear()

    # ---- bfloat16 patterns, float32 accumulation
    mem16 = M.modern(patterns.astype(jnp.bfloat16), beta=0.7)
    r16 = M.sharded_retrieve(mem16, queries, mesh)
    rounded = M.modern(patterns.astype(jnp.bfloat16).astype(jnp.float32), beta=0.7)
    q16 = queries.astype(jnp.bfloat16).astype(jnp.float32)
    out["bf16"] = {
        "dtype": str(r16.dtype),
        "shard_dtype": str(M.shard_memory(mem16, mesh).patterns.addressable_shards[0].data.dtype),
        "rel_err_vs_f32": rel_err(r16, M.modern(patterns, beta=0.7).retrieve(queries)),
        "rel_err_vs_f32_same_inputs": rel_err(r16, rounded.retrieve(q16)),
        "f16_vs_f32_same_inputs": rel_err(
            M.sharded_retrieve(M.modern(patterns.astype(jnp.float16), beta=0.7), queries, mesh),
            M.modern(patterns.astype(jnp.float16).astype(jnp.float32), beta=0.7).retrieve(
                queries.astype(jnp.float16).astype(jnp.float32))),
        "dense_bf16_vs_f32": rel_err(
            M.sharded_retrieve(M.dense(jnp.sign(patterns).astype(jnp.bfloat16), 3), jnp.sign(queries), mesh, mode="sync"),
            M.dense(jnp.sign(patterns), 3).retrieve(jnp.sign(queries), mode="sync")),
    }

    # ---- bad input
    errs = {}
    other = Mesh(devices[::-1], ("patterns",))
    pairs = Mesh(devices[:2], ("data",))
    for what, fn in (
        ("axis", lambda: M.sharded_retrieve(M.modern(patterns), queries, mesh, pattern_axis="rows")),
        ("other-mesh", lambda: M.sharded_retrieve(
            M.modern(patterns), jax.device_put(queries, NamedSharding(pairs, P("data", None))), mesh)),
        ("dtypes", lambda: M.sharded_retrieve(M.modern(patterns.astype(jnp.bfloat16)), queries.astype(jnp.float16), mesh)),
        ("patterns-other-mesh", lambda: M.sharded_retrieve(M.shard_memory(M.modern(patterns), other), queries, mesh)),
    ):
        try:
            fn()
            errs[what] = None
        except (ValueError, TypeError) as e:
            errs[what] = f"{type(e).__name__}: {e}"
    out["bad_input"] = errs
    # shard_memory moves a memory from one mesh to another
    moved = M.shard_memory(M.shard_memory(M.modern(patterns, beta=0.7), other), mesh)
    out["moved"] = {"same_mesh": moved.patterns.sharding.mesh == mesh,
                    "err": rel_err(M.sharded_retrieve(moved, queries), M.modern(patterns, beta=0.7).retrieve(queries))}

    # ---- general HAMs: relax with the hidden layer and the Dense weights sharded along the hidden axis
    relax = {}
    pm = patterns / np.sqrt(D) * 2.0
    qm = pm[:B] + 0.3 * jax.random.normal(kq, (B, D), jnp.float32) / np.sqrt(D)
    signs = jnp.sign(patterns)
    cases = {
        "modern": (M.modern(pm, beta=4.0), qm),
        "kh2021-A": (M.krotov_hopfield_2021(signs, model="A", n=3), jnp.sign(queries) * 0.5),
        "general-ham": (M.dense(signs, 4), jnp.sign(queries) * 0.5),
    }
    hidden = NamedSharding(mesh, P(None, "patterns"))
    for name, (mem, q) in cases.items():
        if name == "general-ham":
            # a HAM built by hand: its Dense weight (D, K) and hidden state (B, K) placed along the hidden axis
            ref_net = mem.network
            (wname, syn), = ref_net.synapses.items()
            net = eqx.tree_at(lambda n: n.synapses[wname].weight, ref_net, jax.device_put(syn.weight, hidden))
            xs_ref = {"v": q, "h": jnp.zeros((B, K), jnp.float32)}
            xs0 = {"v": q, "h": jax.device_put(xs_ref["h"], hidden)}
            kw = with_default_solver(ref_net, {}, ("v", "h"))
            ref = eqx.filter_jit(lambda n, x: ham.relax(n, x, **kw))(ref_net, xs_ref)
        else:
            ref = mem.relax(q)
            if isinstance(mem, M.LargeAssociativeMemory):  # the patterns placed by hand
                shard = eqx.tree_at(lambda m: m.patterns, mem,
                                    jax.device_put(mem.patterns, NamedSharding(mesh, P("patterns", None))))
            else:
                shard = M.shard_memory(mem, mesh)
            net, xs0 = shard.network, shard.init_states(q)
            kw = with_default_solver(net, {}, ("v", "h"))
        w = next(iter(net.synapses.values())).weight
        params, static = eqx.partition(net, eqx.is_array)
        fn = jax.jit(lambda p, x: ham.relax(eqx.combine(p, static), x, **kw))
        sol = fn(params, xs0)
        text = fn.lower(params, xs0).compile().as_text()
        relax[name] = {
            "weight_spec": str(w.sharding.spec),
            "hidden_spec": str(sol.states["h"].sharding.spec),
            "hidden_shard_shape": list(sol.states["h"].addressable_shards[0].data.shape),
            "v_err": rel_err(sol.states["v"], ref.states["v"]),
            "h_err": rel_err(sol.states["h"], ref.states["h"]),
            "same_steps": bool(np.all(np.asarray(sol.num_steps) == np.asarray(ref.num_steps))),
            "converged": bool(np.all(np.asarray(sol.converged))),
            "hlo": hlo_report(text, K, D, B, K // 8),
        }
    out["relax"] = relax
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
