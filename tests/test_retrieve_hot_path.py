"""The one-step retrieval's per-call path (issue 20, part 5): a device array of the right
shape and dtype goes straight to the compiled kernel, with no host synchronisation; its
data checks run inside the kernel."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ham


def _memory():
    p = jax.random.normal(jax.random.PRNGKey(0), (50, 8)) / jnp.sqrt(8.0)
    return ham.memories.modern(p, beta=4.0), p


def test_retrieve_on_a_device_array_never_copies_to_the_host():
    mem, p = _memory()
    q = p[:5] + 0.01
    want = np.asarray(mem.retrieve(np.asarray(q)))  # the host path (checked eagerly)
    with jax.transfer_guard_device_to_host("disallow"):
        out = mem.retrieve(q)
        out = mem.retrieve(out)  # twice, the second on the first's (not yet awaited) result
    np.testing.assert_allclose(np.asarray(out), np.asarray(mem.retrieve(jnp.asarray(want))), rtol=1e-6, atol=1e-7)


def test_retrieve_compiles_once_for_repeated_calls():
    mem, p = _memory()
    from ham.memories import _modern

    q = p[:4] + 0.01
    mem.retrieve(q)
    before = _modern._retrieve._cache_size()
    for _ in range(3):
        mem.retrieve(q + 1e-3)
        mem.retrieve(np.asarray(q))  # host data: converted to the same dtype, same program
    assert _modern._retrieve._cache_size() == before


def test_a_non_finite_device_query_fails_in_the_kernel_and_a_host_one_eagerly():
    mem, p = _memory()
    bad = p[:3].at[1, 2].set(jnp.nan)
    with pytest.raises((RuntimeError, ValueError), match="modern: queries must be finite"):
        jax.block_until_ready(mem.retrieve(bad))
    with pytest.raises(ValueError, match=r"modern: queries must be finite.*entry \(1, 2\) = nan"):
        mem.retrieve(np.asarray(bad))
    # the overflow check (finite queries, beta·overlaps beyond float32) still names beta
    with pytest.raises((RuntimeError, ValueError), match="modern.retrieve: the result is not finite"):
        jax.block_until_ready(ham.memories.modern(p * 1e19, beta=1e30).retrieve(p))


def test_hot_path_matches_the_general_path_for_single_and_batched_queries():
    mem, p = _memory()
    q = p[:6] + 0.05
    batched = mem.retrieve(q)
    np.testing.assert_allclose(mem.retrieve(q[2]), batched[2], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(mem.retrieve(np.asarray(q, np.float64)), batched, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(jax.jit(mem.retrieve)(q), batched, rtol=1e-6, atol=1e-7)
