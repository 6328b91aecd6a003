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

# one worker runs this module, so its module-scoped fixtures run once under `pytest -n 2`
pytestmark = pytest.mark.xdist_group("sharding")

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
    # modern (1 and 3 steps), 7 similarities x 6 separations, 4 more universal, dense/exponential x 3 modes;
    # each pre-sharded and with mesh=, 13 of them also with a data axis and with one query
    assert len(errors) == 2 * (2 + 7 * 6 + 4 + 3 * 3) + 2 * 13
    assert {"dense3-sync/data-axis", "exponential-async-random/one-query", "universal-dot-topk/data-axis"} <= set(errors)
    bad = {k: v for k, v in errors.items() if not v <= 1e-5}
    assert not bad, bad


def test_sharded_energy_equals_single_device_energy(sharded):
    errors = sharded["energy_errors"]
    names = {k.split("/")[0] for k in errors}
    assert {"modern", "universal-dot-softmax", "universal-dot-topk", "universal-dot-max", "dense3-sync",
            "exponential-async"} <= names
    bad = {k: v for k, v in errors.items() if not v <= 1e-5}
    assert not bad, bad


def test_sharded_max_and_topk_break_ties_like_one_device(sharded):
    sharded_idx, single_idx = sharded["tie_indices"]
    assert sharded_idx == single_idx == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    sharded_k, single_k = sharded["tie_topk"]
    np.testing.assert_allclose(sharded_k, single_k, rtol=1e-5)


def test_padded_uneven_shards_equal_the_unpadded_memory(sharded):
    uneven = dict(sharded["uneven"])
    error = uneven.pop("error")
    assert error is not None and "pad=True" in error and "250 patterns" in error
    for name, r in uneven.items():
        assert r["rows"] == 256 and r["inactive"] == 6, name
        assert r["retrieve"] <= 1e-5 and r["energy"] <= 1e-5, (name, r)


def test_each_device_holds_an_eighth_of_the_patterns(sharded):
    assert sharded["shard_devices"] == 8
    assert sharded["shard_bytes"] == [sharded["total_bytes"] // 8] * 8


def test_compiled_programs_gather_neither_patterns_nor_scores(sharded):
    for name, h in sharded["hlo"].items():
        assert not h["full_patterns"], f"{name}: a full (K, D) pattern matrix appears in the compiled program"
        assert not h["full_scores"], f"{name}: a full (batch, K) score matrix appears in the compiled program"
        assert h["local_patterns"], f"{name}: the per-device (K/8, D) block is not in the program"
        if "topk" in name:  # only the k = 5 candidates of each of the 8 devices are gathered: (batch, 40)
            assert h["gather_shapes"] and set(h["gather_shapes"]) == {"6,40"}, (name, h["gathers"])
        else:
            assert h["gathers"] == [], (name, h["gathers"])
        assert 1 <= h["all_reduces"] <= 3, name  # pmax / psum (/ pmin) of per-query partials


def test_topk_exact_and_approximate_agree_sharded_and_report_recall(sharded):
    t = sharded["topk"]
    assert t["sharded_exact_vs_single"] <= 1e-5 and t["sharded_approx_vs_single_approx"] <= 1e-5
    # approx_max_k aims at recall_target = 0.9 (on CPU it is exact)
    assert t["recall_approx_vs_exact"] >= 0.9
    if t["backend"] == "cpu":
        assert t["recall_approx_vs_exact"] == 1.0


def test_blocked_softmax_with_an_overlapping_last_block_equals_one_device(sharded):
    # 512 rows per device in blocks of 100: 6 blocks, the last one overlapping (rows masked)
    assert all(v <= 1e-5 for v in sharded["blocked"].values()), sharded["blocked"]


def test_bfloat16_patterns_accumulate_in_float32(sharded):
    bf16 = sharded["bf16"]
    assert bf16["dtype"] == "float32" and bf16["shard_dtype"] == "bfloat16"
    # same bf16-rounded inputs: only the float32 accumulation order differs
    assert bf16["rel_err_vs_f32_same_inputs"] <= 1e-5
    # original float32 data: bfloat16 keeps 8 significant bits (relative rounding 2^-9)
    assert bf16["rel_err_vs_f32"] <= 1e-2
    assert bf16["dense_bf16_vs_f32"] == 0.0  # ±1 patterns are exact in bfloat16
    assert bf16["f16_vs_f32_same_inputs"] <= 1e-5  # float16 patterns: the same float32 accumulation


def test_bad_sharded_input_is_refused_naming_the_argument(sharded):
    errs = sharded["bad_input"]
    assert "pattern_axis 'rows' is not an axis" in errs["axis"]
    assert errs["other-mesh"].startswith("ValueError") and "queries are sharded over another mesh" in errs["other-mesh"]
    assert errs["dtypes"].startswith("TypeError") and "queries are float16" in errs["dtypes"]
    assert "patterns are sharded over another mesh" in errs["patterns-other-mesh"]
    assert sharded["moved"]["same_mesh"] and sharded["moved"]["err"] <= 1e-5  # shard_memory moves it


def test_relax_of_hams_sharded_along_the_hidden_axis_equals_one_device(sharded):
    assert set(sharded["relax"]) == {"modern", "kh2021-A", "general-ham"}
    for name, r in sharded["relax"].items():
        assert r["weight_spec"] == r["hidden_spec"] == "P(None, 'patterns')", name  # the state follows the weights
        assert r["hidden_shard_shape"] == [6, 256 // 8], name
        assert r["v_err"] <= 1e-5 and r["h_err"] <= 1e-5, (name, r)
        assert r["same_steps"] and r["converged"], name
        h = r["hlo"]
        assert h["gathers"] == [], (name, h["gathers"])
        assert not h["full_patterns"] and not h["full_scores"], (name, h)


# ============================================================================= errors (one device)
def test_sharded_retrieve_names_what_is_unsupported():
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("patterns",))
    p = jnp.ones((4, 3))
    with pytest.raises(ValueError, match="separation in"):
        M.sharded_retrieve(M.universal(p, "dot", lambda s: s * 2), p, mesh)
    with pytest.raises(TypeError, match="modern, universal, dense or exponential"):
        M.sharded_retrieve(M.classical(jnp.sign(p)), p, mesh)
    with pytest.raises(ValueError, match="not an axis of the mesh"):
        M.sharded_retrieve(M.modern(p), p, mesh, pattern_axis="rows")
    with pytest.raises(ValueError, match="give mesh="):
        M.sharded_retrieve(M.modern(p), p)
    with pytest.raises(ValueError, match="dim=3"):
        M.sharded_retrieve(M.modern(p), jnp.ones((2, 2)), mesh)
    with pytest.raises(ValueError, match="mode must be"):
        M.sharded_retrieve(M.dense(jnp.sign(p)), p, mesh, mode="parallel")
    with pytest.raises(ValueError, match="no energy is known"):
        M.sharded_energy(M.universal(p, "euclidean", "softmax"), p, mesh)
    with pytest.raises(TypeError, match="share one dtype"):
        M.sharded_retrieve(M.universal(p, projection=jnp.ones((4, 2), jnp.bfloat16)), p, mesh)


def test_sharded_retrieve_on_one_device_equals_retrieve():
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("patterns",))
    rng = np.random.default_rng(2)
    p = jnp.asarray(rng.normal(size=(10, 4)), jnp.float32)
    q = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
    mem = M.shard_memory(M.modern(p, beta=1.5), mesh)
    np.testing.assert_allclose(M.sharded_retrieve(mem, q), M.modern(p, beta=1.5).retrieve(q), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="not finite"):
        M.sharded_retrieve(M.modern(p * 1e30, beta=1.0), q * 1e10, mesh)
