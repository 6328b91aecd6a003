"""The active-pattern mask (padding rows never win or contribute) and the top-k
separation of the Universal Hopfield Network, on one device."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ham.memories as M

K, D, B = 12, 7, 4


def _data(seed, signs=False):
    rng = np.random.default_rng(seed)
    p, q = rng.normal(size=(K, D)), rng.normal(size=(B, D))
    if signs:
        p, q = np.sign(p), np.sign(q)
    return jnp.asarray(p, jnp.float32), jnp.asarray(q, jnp.float32)


def _mask(seed):
    rng = np.random.default_rng(seed + 100)
    m = rng.random(K) < 0.6
    m[rng.integers(K)] = True  # at least one active pattern
    return m


MODELS = {
    "modern": lambda p, a: M.modern(p, beta=1.5, active=a),
    "dense3": lambda p, a: M.dense(p, 3, active=a),
    "dense4-rectified": lambda p, a: M.dense(p, 4, rectified=True, active=a),
    "exponential": lambda p, a: M.exponential(p, 0.4, active=a),
}
MODELS.update({
    f"universal-{sim}-{sep}": (lambda sim, sep: lambda p, a: M.universal(p, sim, sep, beta=2.0, k=3, n=3, active=a))(sim, sep)
    for sim in ("dot", "euclidean", "manhattan") for sep in M.SEPARATIONS
})


@pytest.mark.parametrize("name", sorted(MODELS))
@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_a_masked_memory_equals_the_memory_of_its_active_patterns(name, seed):
    binary = name.startswith(("dense", "exponential"))
    p, q = _data(seed, signs=binary)
    active = _mask(seed)
    masked, kept = MODELS[name](p, jnp.asarray(active)), MODELS[name](p[active], None)
    kw = {"mode": "sync"} if binary else {}
    np.testing.assert_allclose(masked.retrieve(q, **kw), kept.retrieve(q, **kw), rtol=1e-5, atol=1e-6)
    if getattr(kept, "has_energy", True):
        np.testing.assert_allclose(masked.energy(q), kept.energy(q), rtol=1e-5, atol=1e-5)


def test_a_masked_modern_memory_relaxes_like_its_active_patterns():
    p, q = _data(1)
    active = _mask(1)
    masked, kept = M.modern(p, 2.0, active=jnp.asarray(active)), M.modern(p[active], 2.0)
    assert masked.network.layers["h"].shape == (int(active.sum()),)
    np.testing.assert_allclose(masked.relax(q).states["v"], kept.relax(q).states["v"], rtol=1e-5, atol=1e-6)


def test_bad_masks_are_refused_naming_the_argument():
    p, _ = _data(0)
    with pytest.raises(ValueError, match=r"active must be a boolean mask of shape \(12,\)"):
        M.modern(p, active=jnp.ones((5,), bool))
    with pytest.raises(TypeError, match="active must be a boolean mask"):
        M.universal(p, active=np.ones(K))
    with pytest.raises(ValueError, match="no stored pattern as active"):
        M.dense(jnp.sign(p), active=np.zeros(K, bool))


# ============================================================================= top-k
def test_topk_with_k_1_is_max_and_with_small_beta_the_mean_of_the_k_nearest():
    p, q = _data(3)
    np.testing.assert_allclose(M.universal(p, "dot", "topk", k=1).retrieve(q), M.universal(p, "dot", "max").retrieve(q))
    k = 4
    mean = M.universal(p, "euclidean", "topk", k=k, beta=1e-8).retrieve(q)
    d = np.sum((np.asarray(q)[:, None] - np.asarray(p)[None]) ** 2, -1)
    nearest = np.argsort(d, axis=1)[:, :k]
    np.testing.assert_allclose(mean, np.asarray(p)[nearest].mean(1), rtol=1e-5, atol=1e-6)


def test_topk_with_k_equal_to_all_patterns_is_softmax():
    p, q = _data(4)
    np.testing.assert_allclose(M.universal(p, "dot", "topk", k=K, beta=0.7).retrieve(q),
                               M.universal(p, "dot", "softmax", beta=0.7).retrieve(q), rtol=1e-5, atol=1e-6)


def test_approximate_topk_finds_the_exact_neighbours_on_cpu():
    p, q = _data(5)
    exact = M.universal(p, "dot", "topk", k=3, beta=2.0)
    approx = M.universal(p, "dot", "topk", k=3, beta=2.0, approximate=True, recall_target=0.9)
    np.testing.assert_allclose(approx.retrieve(q), exact.retrieve(q), rtol=1e-6)


def test_topk_energy_gradient_is_the_retrieval_residual():
    # E(q) = |q|²/2 - β⁻¹ log Σ_{top k} exp(β m·q): ∇E = q - Mᵀ topk_softmax(Mq), zero at a fixed point
    p, q = _data(6)
    mem = M.universal(p, "dot", "topk", k=3, beta=1.3)
    grad = jax.vmap(jax.grad(lambda x: mem.energy(x)))(q)
    np.testing.assert_allclose(grad, q - mem.retrieve(q), rtol=1e-5, atol=1e-5)


def test_topk_arguments_are_checked():
    p, _ = _data(0)
    with pytest.raises(ValueError, match="k=13 nearest memories asked of 12"):
        M.universal(p, "dot", "topk", k=13)
    with pytest.raises((TypeError, ValueError), match="k must be an integer"):
        M.universal(p, "dot", "topk", k=0)
    with pytest.raises(ValueError, match="recall_target"):
        M.universal(p, "dot", "topk", k=2, approximate=True, recall_target=1.5)
