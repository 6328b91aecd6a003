"""One process of the multi-process retrieval test (tests/test_multiprocess.py).

Usage: ``python tests/_multiprocess_script.py PROCESS_ID NUM_PROCESSES PORT``, one per
process, all on this machine. Each process joins ``jax.distributed`` (coordinator on
``127.0.0.1:PORT``, Gloo CPU collectives), generates **only its own rows** of the stored
patterns (row ``i`` comes from its own seed, see :func:`pattern_rows`), assembles the global
pattern array with ``jax.make_array_from_process_local_data`` over a mesh of every
process's devices, runs ``ham.memories.sharded_retrieve`` and prints one JSON object of
results on stdout. Gloo writes its connection log to file descriptor 1, so that is sent to
stderr and only the JSON goes to the real stdout.

The data helpers (:func:`pattern_rows`, :func:`queries`, ...) use NumPy only, so the test
imports them to build the single-process reference from the same rows.
"""

import itertools
import json
import os
import sys
import time

import numpy as np

K, D, OUT, B = 64, 16, 3, 8  # patterns, pattern dim, hetero output dim, queries
BETA_MODERN = 0.7
BETA_EUCLIDEAN = 0.1


def _rows(seed: int, indices, width: int) -> np.ndarray:
    """Row ``i`` from the generator seeded ``[seed, i]``, for each ``i`` (float32)."""
    return np.stack([np.random.default_rng([seed, i]).normal(size=width) for i in indices]).astype(np.float32)


def pattern_rows(lo: int, hi: int) -> np.ndarray:
    """Rows ``lo..hi-1`` of the stored patterns, each from its own seed."""
    return _rows(1, range(lo, hi), D)


def value_rows(lo: int, hi: int) -> np.ndarray:
    """Rows ``lo..hi-1`` of the hetero-associative values (one per pattern)."""
    return _rows(2, range(lo, hi), OUT)


def tie_rows(lo: int, hi: int) -> np.ndarray:
    """Patterns whose second half repeats the first: pattern ``i`` and ``i + K/2`` tie."""
    return _rows(1, (i % (K // 2) for i in range(lo, hi)), D)


def index_rows(lo: int, hi: int) -> np.ndarray:
    """Values = the pattern's own index, so the max separation reports its winner."""
    return np.arange(lo, hi, dtype=np.float32)[:, None]


def queries() -> np.ndarray:
    """The queries: independent of the patterns (every process builds all of them)."""
    return (1.5 * np.random.default_rng(3).normal(size=(B, D))).astype(np.float32)


# name -> (constructor name, keyword arguments, patterns, projection or None)
CASES = {
    "modern-softmax": ("modern", {"beta": BETA_MODERN}, pattern_rows, None),
    "universal-dot-max": ("universal", {"similarity": "dot", "separation": "max"}, pattern_rows, None),
    "universal-euclidean-softmax-hetero": (
        "universal", {"similarity": "euclidean", "separation": "softmax", "beta": BETA_EUCLIDEAN},
        pattern_rows, value_rows,
    ),
    "universal-dot-max-ties": ("universal", {"similarity": "dot", "separation": "max"}, tie_rows, index_rows),
}


def build(memories, kind, kwargs, patterns, projection):
    """A memory from (local or full) patterns with the ham constructors."""
    if kind == "modern":
        return memories.modern(patterns, **kwargs)
    sim, sep = kwargs["similarity"], kwargs["separation"]
    rest = {k: v for k, v in kwargs.items() if k not in ("similarity", "separation")}
    return memories.universal(patterns, sim, sep, projection=projection, **rest)


def main():
    process_id, num_processes, port = (int(a) for a in sys.argv[1:4])
    real_stdout = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # Gloo's "[Gloo] Rank ... is connected" lines go to stderr

    t0 = time.perf_counter()
    import equinox as eqx
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    import ham.memories as M

    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # the default; explicit
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}", num_processes=num_processes, process_id=process_id,
        initialization_timeout=60,
    )
    t_init = time.perf_counter()

    devices = np.array(jax.devices())  # every process's devices, process 0's first
    by_process = devices.reshape(num_processes, -1)
    assert all(len({d.process_index for d in row}) == 1 for row in by_process), jax.devices()
    meshes = {  # name suffix -> (mesh, data axis, cases run on it)
        "": (Mesh(devices, ("patterns",)), None, list(CASES)),
        # patterns split over the processes, the batch of queries over each process's devices
        "/data-axis": (Mesh(by_process, ("patterns", "data")), "data", ["modern-softmax", "universal-dot-max"]),
    }

    def local_block(sharding):
        """The rows [lo, hi) that this process's devices hold under ``sharding``."""
        spans = sorted({(ix[0].start, ix[0].stop) for ix in sharding.addressable_devices_indices_map((K, D)).values()})
        assert all(a[1] == b[0] for a, b in itertools.pairwise(spans)), f"not one block of rows: {spans}"
        return spans[0][0], spans[-1][1]

    q = queries()
    results, held, blocks = {}, {}, set()
    for suffix, (mesh, data_axis, names) in meshes.items():
        sharding = NamedSharding(mesh, PartitionSpec("patterns", None))
        lo, hi = local_block(sharding)
        blocks.add((lo, hi))
        for name in names:
            kind, kwargs, make_p, make_v = CASES[name]
            local_p = make_p(lo, hi)  # only this process's rows are ever generated here
            local_v = None if make_v is None else make_v(lo, hi)
            # The (K, width) global arrays: rows lo..hi-1 on this process's devices, the
            # other rows only in the other processes.
            patterns = jax.make_array_from_process_local_data(sharding, local_p, (K, D))
            # The constructors validate (shape, finiteness) on the host, which needs the
            # whole array: give them this process's rows (every process validates its
            # own), then put the global arrays in.
            memory = build(M, kind, kwargs, local_p, local_v)
            memory = eqx.tree_at(lambda m: m.patterns, memory, patterns)
            if kind == "universal":
                projection = patterns if make_v is None else jax.make_array_from_process_local_data(
                    sharding, local_v, (K, local_v.shape[1]))
                memory = eqx.tree_at(lambda m: m.projection, memory, projection)
            # mesh and pattern axis are read from the patterns' sharding
            out = M.sharded_retrieve(memory, q, data_axis=data_axis)
            results[name + suffix] = np.asarray(out).tolist()  # every process holds all of it
            held[name + suffix] = {
                "fully_addressable": bool(patterns.is_fully_addressable),
                "distinct_local_rows": len({r for s in patterns.addressable_shards
                                            for r in range(K)[s.index[0]]}),
                "result_spec": list(out.sharding.spec),  # [] replicated, ["data"] split
            }

    # Probes, recorded with their exact error rather than required (both raise, in every
    # process alike, where ham's host-side finiteness checks copy a global array to the
    # host): (1) a constructor on the global (not fully addressable) patterns;
    probes = {}
    try:
        M.modern(patterns, beta=BETA_MODERN)
        probes["constructor_on_global_patterns"] = {"status": "ok"}
    except Exception as e:  # noqa: BLE001
        probes["constructor_on_global_patterns"] = {"status": f"{type(e).__name__}: {e}"}
    # (2) the queries split over the processes (a data axis across them; every process
    # holds all patterns, split over its own devices): each process gets only its rows
    # of the result.
    sharding = NamedSharding(Mesh(by_process, ("data", "patterns")), PartitionSpec("patterns", None))
    lo, hi = local_block(sharding)
    local_p = pattern_rows(lo, hi)
    memory = eqx.tree_at(lambda m: m.patterns, M.modern(local_p, beta=BETA_MODERN),
                         jax.make_array_from_process_local_data(sharding, local_p, (K, D)))
    try:
        out = M.sharded_retrieve(memory, q, data_axis="data")
        spans = sorted({(s.index[0].start, s.index[0].stop) for s in out.addressable_shards})
        assert len(spans) == 1, spans
        shard = next(s for s in out.addressable_shards if (s.index[0].start, s.index[0].stop) == spans[0])
        probes["data_axis_across_processes"] = {
            "status": "ok", "query_rows": list(spans[0]), "values": np.asarray(shard.data).tolist(),
        }
    except Exception as e:  # noqa: BLE001
        probes["data_axis_across_processes"] = {"status": f"{type(e).__name__}: {e}"}
    t_done = time.perf_counter()

    report = {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "devices": len(jax.devices()),
        "local_devices": len(jax.local_devices()),
        "cpu_collectives": jax.config.jax_cpu_collectives_implementation,
        "rows": sorted(blocks),
        "probes": probes,
        "held": held,
        "results": results,
        "seconds": {"start_and_initialize": t_init - t0, "retrievals": t_done - t_init},
    }
    jax.distributed.shutdown()
    real_stdout.write(json.dumps(report) + "\n")
    real_stdout.flush()


if __name__ == "__main__":
    main()
