"""Scale-out: memory-lean similarities and retrieval with patterns sharded over devices.

The sharded tests run ``tests/_sharding_script.py`` once, in a subprocess with 8 virtual
CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=8`` must be set before JAX
starts and must not leak into the rest of the suite), and check its measurements."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ham.memories as M
from ham.memories import _universal

SCRIPT = Path(__file__).with_name("_sharding_script.py")


# ============================================================================= similarities
def _old_similarity(name, m, q):
    """The former formulas, through a (K, D) difference array per query."""
    d = m - q
    if name == "euclidean":
        return -jnp.sum(d * d, axis=-1)
    if name == "manhattan":
        return -jnp.sum(jnp.abs(d), axis=-1)
    if name == "euclidean_reciprocal":
        return 1.0 / jnp.maximum(jnp.sum(d * d, axis=-1), 1e-12)
    if name == "manhattan_reciprocal":
        return 1.0 / jnp.maximum(jnp.sum(jnp.abs(d), axis=-1), 1e-12)
    return jnp.sum(m == q[None, :], axis=-1).astype(q.dtype)


@pytest.mark.parametrize("name", ["euclidean", "manhattan", "euclidean_reciprocal", "manhattan_reciprocal", "hamming"])
@pytest.mark.parametrize("chunk_elements", [7, 1 << 16])  # many chunks (with padding) / one chunk
def test_memory_lean_similarities_equal_the_difference_formulas(name, chunk_elements, x64, monkeypatch):
    monkeypatch.setattr(_universal, "_CHUNK_ELEMENTS", chunk_elements)
    rng = np.random.default_rng(0)
    m = jnp.asarray(rng.normal(size=(37, 5)) * 3)
    queries = jnp.asarray(rng.normal(size=(4, 5)) * 3)
    if name == "hamming":
        m, queries = jnp.sign(m), jnp.sign(queries)
    queries = queries.at[0].set(m[3])  # a query equal to a stored pattern: distance 0
    sim = _universal.SIMILARITIES[name]
    new = jax.vmap(lambda q: sim(m, q))(queries)
    old = jax.vmap(lambda q: _old_similarity(name, m, q))(queries)
    assert new.dtype == jnp.float64
    if name != "euclidean":
        np.testing.assert_allclose(new, old, rtol=1e-12, atol=0)
    else:  # the expanded form rounds differently: error ~ eps (|q|² + |m|²), clamped >= 0
        np.testing.assert_allclose(new, old, rtol=1e-12, atol=1e-12)
        assert float(jnp.max(new)) <= 0.0


def _shapes_in(jaxpr):
    """Every intermediate shape of a jaxpr, its sub-jaxprs (scan, cond, pjit, …) included."""
    for eqn in jaxpr.eqns:
        for v in eqn.outvars:
            yield tuple(getattr(v.aval, "shape", ()))
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    yield from _shapes_in(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    yield from _shapes_in(sub)


@pytest.mark.parametrize("name", ["euclidean", "manhattan", "manhattan_reciprocal", "euclidean_reciprocal"])
def test_distance_similarities_build_no_batch_by_patterns_by_dim_array(name):
    b, k, d = 3, 700, 256  # 700 patterns > one chunk of 65536 / 256 = 256 rows
    rng = np.random.default_rng(1)
    mem = M.universal(jnp.asarray(rng.normal(size=(k, d)), jnp.float32), name, "softmax")
    queries = jnp.asarray(rng.normal(size=(b, d)), jnp.float32)
    shapes = set(_shapes_in(jax.make_jaxpr(lambda q: _universal._retrieve_batch(mem, q))(queries).jaxpr))
    big = {s for s in shapes if len(s) >= 2 and np.prod(s) >= b * k * d // 2}
    assert not big, f"{name}: intermediates of {b}x{k}x{d} size: {big}"
    if name == "euclidean":  # the compiled program too
        text = jax.jit(lambda q: _universal._retrieve_batch(mem, q)).lower(queries).compile().as_text()
        assert f"f32[{b},{k},{d}]" not in text and f"f32[{k},{b},{d}]" not in text
    np.testing.assert_allclose(
        mem.retrieve(queries),
        jax.vmap(lambda q: mem.projection.T @ jax.nn.softmax(_old_similarity(name, mem.patterns, q)))(queries),
        rtol=2e-4, atol=2e-5,
    )


# ============================================================================= sharded retrieval
@pytest.fixture(scope="module")
def sharded():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, str(SCRIPT)], check=False, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


def test_the_flag_stays_in_the_subprocess(sharded):
    assert sharded["devices"] == 8
    assert "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", "")


def test_sharded_retrieval_equals_single_device_retrieval(sharded):
    errors = sharded["errors"]
    assert len(errors) == 4 * 11  # modern + 9 universal + hetero; pre-sharded / mesh= / data axis / one query
    bad = {k: v for k, v in errors.items() if not v <= 1e-5}
    assert not bad, bad


def test_sharded_max_breaks_ties_like_argmax(sharded):
    sharded_idx, single_idx = sharded["tie_indices"]
    assert sharded_idx == single_idx == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


def test_each_device_holds_an_eighth_of_the_patterns(sharded):
    assert sharded["shard_devices"] == 8
    assert sharded["shard_bytes"] == [sharded["total_bytes"] // 8] * 8


def test_compiled_program_gathers_neither_patterns_nor_scores(sharded):
    for name, h in sharded["hlo"].items():
        assert h["gathers"] == [], (name, h["gathers"])
        assert not h["full_patterns"], f"{name}: a full (K, D) pattern matrix appears in the compiled program"
        assert not h["full_scores"], f"{name}: a full (batch, K) score matrix appears in the compiled program"
        assert h["local_patterns"], f"{name}: the per-device (K/8, D) block is not in the program"
        assert 1 <= h["all_reduces"] <= 3, name  # pmax / psum (/ pmin) of per-query partials


def test_bfloat16_patterns_accumulate_in_float32(sharded):
    bf16 = sharded["bf16"]
    assert bf16["dtype"] == "float32" and bf16["shard_dtype"] == "bfloat16"
    # same bf16-rounded inputs: only the float32 accumulation order differs
    assert bf16["rel_err_vs_f32_same_inputs"] <= 1e-5
    # original float32 data: bfloat16 keeps 8 significant bits (relative rounding 2^-9)
    assert bf16["rel_err_vs_f32"] <= 1e-2


# ============================================================================= errors (one device)
def test_sharded_retrieve_names_what_is_unsupported():
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("patterns",))
    p = jnp.ones((4, 3))
    with pytest.raises(ValueError, match="similarity in"):
        M.sharded_retrieve(M.universal(p, "manhattan", "softmax"), p, mesh)
    with pytest.raises(ValueError, match="normalize=False"):
        M.sharded_retrieve(M.universal(p, "dot", "identity", normalize=True), p, mesh)
    with pytest.raises(TypeError, match="modern or ham.memories.universal"):
        M.sharded_retrieve(M.dense(jnp.sign(p)), p, mesh)
    with pytest.raises(ValueError, match="not an axis of the mesh"):
        M.sharded_retrieve(M.modern(p), p, mesh, pattern_axis="rows")
    with pytest.raises(ValueError, match="give mesh="):
        M.sharded_retrieve(M.modern(p), p)
    with pytest.raises(ValueError, match="dim=3"):
        M.sharded_retrieve(M.modern(p), jnp.ones((2, 2)), mesh)


def test_sharded_retrieve_on_one_device_equals_retrieve():
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("patterns",))
    rng = np.random.default_rng(2)
    p = jnp.asarray(rng.normal(size=(10, 4)), jnp.float32)
    q = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
    mem = M.shard_memory(M.modern(p, beta=1.5), mesh)
    np.testing.assert_allclose(M.sharded_retrieve(mem, q), M.modern(p, beta=1.5).retrieve(q), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="not finite"):
        M.sharded_retrieve(M.modern(p * 1e30, beta=1.0), q * 1e10, mesh)
