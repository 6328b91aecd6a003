"""The max separation of a distance similarity is the memory at the least distance, so −d
and 1/d (``euclidean`` / ``euclidean_reciprocal``, ``manhattan`` / ``manhattan_reciprocal``)
retrieve the same memory, round-off ties included (Millidge et al. 2022's "max")."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ham import memories as M

TWINS = [("euclidean", "euclidean_reciprocal"), ("manhattan", "manhattan_reciprocal")]


def _near_ties(seed: int, n_queries: int = 64, k: int = 40, d: int = 50):
    """Queries with pairs of memories at the same distance in exact arithmetic (the second is
    the first's differences permuted), so only round-off separates them."""
    rng = np.random.default_rng(seed)
    q = rng.random((n_queries, d)).astype(np.float32)
    patterns = rng.random((k, d)).astype(np.float32)
    for i in range(n_queries):
        e = (rng.normal(size=d) * 0.05).astype(np.float32)
        a, b = rng.choice(k, 2, replace=False)
        patterns[a] = q[i] + e
        patterns[b] = q[i] + rng.permutation(e)
    return jnp.asarray(patterns), jnp.asarray(q)


@pytest.mark.parametrize("negative, reciprocal", TWINS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_negative_and_reciprocal_distance_retrieve_the_same_memory_under_max(negative, reciprocal, seed):
    patterns, queries = _near_ties(seed)
    active = jnp.arange(patterns.shape[0]) % 7 != 3
    for kw in ({}, {"active": active}):
        a = M.universal(patterns, negative, "max", **kw).retrieve(queries)
        for normalize in (False, True):
            b = M.universal(patterns, reciprocal, "max", normalize=normalize, **kw).retrieve(queries)
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("negative, reciprocal", TWINS)
def test_max_of_a_distance_similarity_is_a_nearest_active_memory(negative, reciprocal):
    patterns, queries = _near_ties(3)
    active = jnp.arange(patterns.shape[0]) % 5 != 0
    values = jnp.arange(patterns.shape[0], dtype=jnp.float32)[:, None] * jnp.ones((1, 3))  # row index as value
    p64, q64 = np.asarray(patterns, np.float64), np.asarray(queries, np.float64)
    diff = q64[:, None, :] - p64[None, :, :]
    dist = np.sum(diff**2, -1) if negative == "euclidean" else np.sum(np.abs(diff), -1)
    dist = np.where(np.asarray(active)[None, :], dist, np.inf)
    for name in (negative, reciprocal):
        got = np.asarray(M.universal(patterns, name, "max", projection=values, active=active).retrieve(queries))[:, 0]
        picked = dist[np.arange(len(got)), got.astype(int)]
        assert np.asarray(active)[got.astype(int)].all()  # an inactive memory never wins
        np.testing.assert_allclose(picked, dist.min(axis=1), rtol=1e-5)  # nearest up to float32 round-off


def test_max_by_distance_is_jitted_and_vmapped_like_the_rest():
    patterns, queries = _near_ties(4, n_queries=5)
    mem = M.universal(patterns, "euclidean_reciprocal", "max", normalize=True)
    np.testing.assert_array_equal(np.asarray(jax.jit(lambda q: mem.retrieve(q))(queries)),
                                  np.asarray(jax.vmap(mem.retrieve)(queries)))


def test_normalised_negative_distance_keeps_the_argmax_of_its_scores():
    # −d divided by its (negative) sum reverses the order: max picks the farthest memory, as
    # the normalised scores say; the least-distance shortcut must not apply there
    patterns = jnp.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    q = jnp.array([0.1, 0.0])
    mem = M.universal(patterns, "euclidean", "max", normalize=True)
    np.testing.assert_array_equal(np.asarray(mem.retrieve(q)), np.asarray(patterns[2]))
    np.testing.assert_array_equal(np.asarray(mem.scores(q)), np.array([0.0, 0.0, 1.0]))
