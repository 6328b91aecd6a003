"""ham.memories: classical, dense, exponential, modern, universal, sdm — each checked
against its paper's formula written out by hand (NumPy / plain jnp), plus Lyapunov
tests and bad-input errors."""

import functools as ft

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ham

M = ham.memories


def pm1(rng, k, n):
    return np.where(rng.random((k, n)) < 0.5, -1.0, 1.0)


def corrupt(rng, p, flips):
    q = p.copy()
    for row in q:
        idx = rng.choice(p.shape[1], flips, replace=False)
        row[idx] *= -1
    return q


# ----------------------------------------------------------------------------- oracles
def np_async(q, choose, sweeps=100):
    """Sequential-order asynchronous dynamics: neuron i takes choose(s, i) (+1, -1 or 0 = keep)."""
    s = np.where(q >= 0, 1.0, -1.0)
    for _ in range(sweeps):
        changed = False
        for i in range(s.size):
            c = choose(s, i)
            if c != 0 and c != s[i]:
                s[i], changed = c, True
        if not changed:
            break
    return s


def energy_choice(energy):
    """Pick the sign of neuron i with the lower energy (tie: keep)."""
    def choose(s, i):
        sp, sm = s.copy(), s.copy()
        sp[i], sm[i] = 1.0, -1.0
        ep, em = energy(sp), energy(sm)
        return 1.0 if ep < em else (-1.0 if em < ep else 0.0)
    return choose


# ============================================================================= classical
def test_hebbian_weights_are_outer_products_with_zero_diagonal():
    rng = np.random.default_rng(0)
    p = pm1(rng, 4, 10)
    w = np.zeros((10, 10))
    for mu in range(4):
        for i in range(10):
            for j in range(10):
                if i != j:
                    w[i, j] += p[mu, i] * p[mu, j] / 10
    np.testing.assert_allclose(M.classical(p).weights, w, atol=1e-6)


def test_classical_async_equals_handwritten_sign_updates():
    rng = np.random.default_rng(1)
    p = pm1(rng, 5, 24)
    q = corrupt(rng, p, 6)
    mem = M.classical(p)
    w = np.asarray(mem.weights, np.float64)
    choose = lambda s, i: np.sign(w[i] @ s)  # noqa: E731
    want = np.stack([np_async(x, choose) for x in q])
    np.testing.assert_array_equal(np.asarray(mem.retrieve(q)), want)


def test_classical_sync_ends_at_fixed_point_of_sign_of_weights():
    rng = np.random.default_rng(2)
    p = pm1(rng, 3, 40)
    mem = M.classical(p)
    s, _, conv = mem.run(corrupt(rng, p, 5), mode="sync")
    assert bool(jnp.all(conv))
    np.testing.assert_array_equal(np.sign(s @ np.asarray(mem.weights).T), s)
    np.testing.assert_array_equal(s, p)  # low load: exact recall


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classical_energy_never_rises_along_async_updates(seed):
    rng = np.random.default_rng(seed)
    p = pm1(rng, 8, 30)  # above capacity: many flips, spurious minima
    mem = M.classical(p)
    states, e = mem.async_energy_trace(rng.normal(size=30), sweeps=3, key=jax.random.PRNGKey(seed))
    w = np.asarray(mem.weights, np.float64)
    s = np.asarray(states, np.float64)
    want = -0.5 * np.einsum("ti,ij,tj->t", s, w, s)
    np.testing.assert_allclose(e, want, rtol=1e-5, atol=1e-5)
    assert np.all(np.diff(want) <= 1e-5)  # float32 weights: round-off only
    assert np.any(np.diff(want) < 0)


def test_classical_random_order_depends_only_on_key():
    rng = np.random.default_rng(3)
    p = pm1(rng, 6, 30)
    q = rng.normal(size=(4, 30))
    mem = M.classical(p)
    a = mem.retrieve(q, key=jax.random.PRNGKey(5))
    b = mem.retrieve(q, key=jax.random.PRNGKey(5))
    np.testing.assert_array_equal(a, b)
    assert set(np.unique(np.asarray(a))) <= {-1.0, 1.0}


def test_classical_continuous_relax_is_lyapunov_and_recalls():
    rng = np.random.default_rng(4)
    p = pm1(rng, 3, 32)
    mem = M.classical(p, beta=4.0)
    q = 0.5 * corrupt(rng, p, 4)
    sol = mem.relax(q)
    assert bool(jnp.all(sol.converged))
    ham.lyapunov.check(sol)
    g = mem.retrieve_continuous(q)
    np.testing.assert_array_equal(np.sign(np.asarray(g)), p)
    # the network is the one-layer tanh HAM with energy Legendre - 1/2 g^T W g
    x = rng.normal(size=32)
    gx = np.tanh(4.0 * x)
    legendre = x @ gx - np.sum(np.log(np.cosh(4.0 * x))) / 4.0
    want = legendre - 0.5 * gx @ np.asarray(mem.weights) @ gx
    np.testing.assert_allclose(mem.network.energy({"v": jnp.asarray(x, jnp.float32)}), want, rtol=1e-5)


def test_classical_rejects_non_bipolar_patterns_unless_binarize():
    p = np.array([[1.0, -1.0, 0.5], [1.0, 1.0, -1.0]])
    with pytest.raises(ValueError, match="±1"):
        M.classical(p)
    mem = M.classical(p, binarize=True)
    np.testing.assert_array_equal(mem.patterns, [[1, -1, 1], [1, 1, -1]])
    with pytest.raises(ValueError, match="±1"):
        M.dense(p)


# ============================================================================= dense / exponential
@pytest.mark.parametrize("n,rectified", [(2, False), (3, False), (4, True)])
def test_dense_async_equals_krotov_hopfield_2016_rule(n, rectified):
    rng = np.random.default_rng(10 + n)
    p = pm1(rng, 12, 16)
    q = corrupt(rng, p[:4], 5)
    F = (lambda z: np.maximum(z, 0) ** n) if rectified else (lambda z: z**n)
    energy = lambda s: -np.sum(F(p @ s))  # noqa: E731
    want = np.stack([np_async(x, energy_choice(energy)) for x in q])
    mem = M.dense(p, n=n, rectified=rectified)
    np.testing.assert_array_equal(np.asarray(mem.retrieve(q)), want)
    s = rng.choice([-1.0, 1.0], size=(3, 16))
    np.testing.assert_allclose(mem.energy(s), [energy(x) for x in s], rtol=1e-6)


def test_dense_with_n_2_is_the_classical_network():
    rng = np.random.default_rng(11)
    p = pm1(rng, 7, 30)  # N even, K odd: no ties
    q = corrupt(rng, p, 8)
    np.testing.assert_array_equal(M.dense(p, n=2).retrieve(q), M.classical(p).retrieve(q))


@pytest.mark.parametrize("model", ["dense", "rectified", "exponential"])
def test_dam_energy_never_rises_along_async_updates(model):
    rng = np.random.default_rng(12)
    p = pm1(rng, 40, 20)
    mem = {"dense": lambda: M.dense(p, 3), "rectified": lambda: M.dense(p, 5, rectified=True),
           "exponential": lambda: M.exponential(p, beta=0.5)}[model]()
    _, e = mem.async_energy_trace(rng.normal(size=20), sweeps=3, key=jax.random.PRNGKey(0))
    e = np.asarray(e, np.float64)
    assert np.all(np.diff(e) <= 1e-6 * np.abs(e[:-1]))
    assert e[-1] < e[0]


def test_exponential_async_equals_demircigil_rule_and_is_stable_for_large_overlaps():
    rng = np.random.default_rng(13)
    p = pm1(rng, 30, 12)
    q = corrupt(rng, p[:5], 2)
    energy = lambda s: -np.sum(np.exp(p @ s))  # noqa: E731
    want = np.stack([np_async(x, energy_choice(energy)) for x in q])
    mem = M.exponential(p)
    np.testing.assert_array_equal(np.asarray(mem.retrieve(q)), want)
    np.testing.assert_allclose(mem.energy(p[0]), energy(p[0]), rtol=1e-5)
    # N = 400: exp(400) overflows float32, but the update and log-energy stay finite.
    big = pm1(rng, 50, 400)
    memb = M.exponential(big)
    out = memb.retrieve(corrupt(rng, big[:3], 60))
    np.testing.assert_array_equal(out, big[:3])
    assert np.all(np.isfinite(memb.log_energy(out)))
    np.testing.assert_allclose(memb.log_energy(big[0]), -400.0, rtol=1e-5)


def test_dense_capacity_exceeds_classical():
    rng = np.random.default_rng(14)
    p = pm1(rng, 30, 40)  # 0.75 N: far beyond the classical 0.138 N
    ok_dense = np.mean(np.all(np.asarray(M.dense(p, 4).retrieve(p)) == p, axis=1))
    ok_classical = np.mean(np.all(np.asarray(M.classical(p).retrieve(p)) == p, axis=1))
    assert ok_dense == 1.0 and ok_classical < 0.5


def test_dense_rejects_bad_parameters():
    p = np.ones((2, 4))
    with pytest.raises(ValueError, match="n must be an integer >= 2"):
        M.dense(p, n=1)
    with pytest.raises(ValueError, match="beta must be > 0"):
        M.exponential(p, beta=0.0)
    with pytest.raises(ValueError, match="mode"):
        M.dense(p).retrieve(p, mode="parallel")


# ============================================================================= modern
def attention(q, x, beta):
    return jax.nn.softmax(beta * q @ x.T, axis=-1) @ x


def test_modern_update_equals_attention():
    rng = np.random.default_rng(20)
    x = jnp.asarray(rng.normal(size=(50, 8)), jnp.float32)
    q = jnp.asarray(rng.normal(size=(7, 8)), jnp.float32)
    mem = M.modern(x, beta=0.7)
    np.testing.assert_allclose(mem.retrieve(q), attention(q, x, 0.7), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mem.retrieve(q[0]), attention(q[:1], x, 0.7)[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mem.retrieve(q, steps=3), attention(attention(attention(q, x, 0.7), x, 0.7), x, 0.7),
                               rtol=1e-4, atol=1e-5)


def test_modern_energy_is_ramsauer_eq2_and_decreases_under_the_update(x64):
    rng = np.random.default_rng(21)
    x = rng.normal(size=(20, 6))
    beta = 1.3
    mem = M.modern(x, beta=beta)
    q = rng.normal(size=(5, 6))

    def E(v):
        z = beta * x @ v
        lse = np.log(np.sum(np.exp(z - z.max()))) + z.max()
        return -lse / beta + 0.5 * v @ v + np.log(20) / beta + 0.5 * np.max(np.sum(x * x, 1))

    np.testing.assert_allclose(mem.energy(q), [E(v) for v in q], rtol=1e-10)
    e0 = mem.energy(q)
    e1 = mem.energy(mem.retrieve(q))
    assert np.all(np.asarray(e1) <= np.asarray(e0) + 1e-12)  # CCCP: the update never raises E
    assert np.all(np.asarray(mem.energy(q)) >= 0)  # E >= 0 (Ramsauer et al., Lemma A1)


def test_modern_network_energy_with_fast_hidden_neurons_equals_ramsauer_energy(x64):
    rng = np.random.default_rng(22)
    x = rng.normal(size=(15, 5))
    mem = M.modern(x, beta=2.0)
    v = rng.normal(size=(4, 5))
    e_net = mem.network.energy({"v": v, "h": v @ x.T})
    const = np.log(15) / 2.0 + 0.5 * np.max(np.sum(x * x, 1))
    np.testing.assert_allclose(e_net + const, mem.energy(v), rtol=1e-10)


def test_modern_relax_with_fast_hidden_neurons_reaches_a_fixed_point_of_the_update():
    rng = np.random.default_rng(23)
    x = jnp.asarray(rng.normal(size=(12, 6)), jnp.float32)
    mem = M.modern(x, beta=1.5)
    q = x[:4] + 0.3 * jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)
    sol = mem.relax(q, hidden_tau=0.02)
    assert bool(jnp.all(sol.converged))
    ham.lyapunov.check(sol)
    v = sol.states["v"]
    np.testing.assert_allclose(v, attention(v, x, 1.5), atol=2e-3)
    # ... and the same fixed point as iterating the one-step update
    np.testing.assert_allclose(v, mem.retrieve(q, steps=200), atol=2e-3)


def test_modern_retrieve_does_not_recompile():
    x = jnp.ones((5, 3))
    mem = M.modern(x, beta=1.0)
    mem.retrieve(jnp.zeros((4, 3)))
    before = M._modern._retrieve._cache_size()
    for i in range(3):
        mem.retrieve(jnp.full((4, 3), float(i)))
    M.modern(2 * x, beta=0.5).retrieve(jnp.zeros((4, 3)))
    assert M._modern._retrieve._cache_size() == before


def test_memories_reject_bad_shapes_and_parameters():
    with pytest.raises(ValueError, match="rank 1"):
        M.modern(jnp.ones(5))
    with pytest.raises(ValueError, match="rank 3"):
        M.classical(jnp.ones((2, 3, 4)))
    mem = M.modern(jnp.ones((5, 3)))
    with pytest.raises(ValueError, match=r"dim=3.*\(4, 7\)"):
        mem.retrieve(jnp.ones((4, 7)))
    with pytest.raises(ValueError, match="beta must be > 0"):
        M.modern(jnp.ones((5, 3)), beta=0.0)
    with pytest.raises(ValueError, match="beta must be > 0"):
        M.modern(jnp.ones((5, 3)), beta=-1.0)
    with pytest.raises(ValueError, match="dim=3"):
        M.classical(jnp.ones((2, 3))).retrieve(jnp.ones(4))
    with pytest.raises(ValueError, match="dim=3"):
        M.universal(jnp.ones((2, 3))).retrieve(jnp.ones((2, 2)))


# ============================================================================= universal
def np_sim(name, m, q):
    if name == "dot":
        return m @ q
    if name == "cosine":
        return (m @ q) / (np.linalg.norm(m, axis=1) * np.linalg.norm(q))
    if name == "euclidean":
        return -np.sum((m - q) ** 2, axis=1)
    if name == "manhattan":
        return -np.sum(np.abs(m - q), axis=1)
    if name == "euclidean_reciprocal":
        return 1 / np.sum((m - q) ** 2, axis=1)
    if name == "manhattan_reciprocal":
        return 1 / np.sum(np.abs(m - q), axis=1)
    raise KeyError(name)


def np_sep(name, s, beta=2.0, n=3):
    if name == "identity":
        return s
    if name == "polynomial":
        return s**n
    if name == "softmax":
        e = np.exp(beta * s - np.max(beta * s))
        return e / e.sum()
    if name == "max":
        out = np.zeros_like(s)
        out[np.argmax(s)] = 1
        return out
    raise KeyError(name)


@pytest.mark.parametrize("sim", ["dot", "cosine", "euclidean", "manhattan", "euclidean_reciprocal",
                                 "manhattan_reciprocal"])
@pytest.mark.parametrize("sep", ["identity", "polynomial", "softmax", "max"])
def test_universal_equals_projection_of_separated_similarity(sim, sep, x64):
    rng = np.random.default_rng(30)
    m = rng.normal(size=(9, 5))
    proj = rng.normal(size=(9, 3))
    q = rng.normal(size=(4, 5))
    mem = M.universal(m, sim, sep, beta=2.0, n=3, projection=proj)
    want = np.stack([proj.T @ np_sep(sep, np_sim(sim, m, x)) for x in q])
    np.testing.assert_allclose(mem.retrieve(q), want, rtol=1e-9, atol=1e-12)
    auto = M.universal(m, sim, sep, beta=2.0, n=3, normalize=True)
    def norm_sep(s):
        s = s / s.sum()
        s = np_sep(sep, s)
        return s / s.sum()
    want = np.stack([m.T @ norm_sep(np_sim(sim, m, x)) for x in q])
    np.testing.assert_allclose(auto.retrieve(q), want, rtol=1e-7, atol=1e-10)


def test_universal_hetero_association_returns_the_paired_value():
    rng = np.random.default_rng(31)
    keys = pm1(rng, 20, 64)
    values = rng.normal(size=(20, 7))
    mem = M.universal(keys, "manhattan", "max", projection=values)
    np.testing.assert_allclose(mem.retrieve(corrupt(rng, keys, 10)), values, rtol=1e-6)


def test_universal_callables_and_threshold():
    rng = np.random.default_rng(32)
    m = rng.normal(size=(6, 4))
    q = rng.normal(size=(3, 4))
    mem = M.universal(m, lambda mm, x: -jnp.max(jnp.abs(mm - x), axis=-1), lambda s: jnp.exp(s))
    want = np.stack([m.T @ np.exp(-np.max(np.abs(m - x), 1)) for x in q])
    np.testing.assert_allclose(mem.retrieve(q), want, rtol=1e-5)
    thr = M.universal(m, "dot", "threshold", threshold=0.5)
    want = np.stack([m.T @ (m @ x >= 0.5) for x in q])
    np.testing.assert_allclose(thr.retrieve(q), want, rtol=1e-5, atol=1e-6)


def test_universal_dot_softmax_is_modern_hopfield_with_its_energy(x64):
    rng = np.random.default_rng(33)
    m = rng.normal(size=(10, 4))
    q = rng.normal(size=(3, 4))
    uhn, mod = M.universal(m, "dot", "softmax", beta=1.7), M.modern(m, beta=1.7)
    np.testing.assert_allclose(uhn.retrieve(q), mod.retrieve(q), rtol=1e-12)
    const = np.log(10) / 1.7 + 0.5 * np.max(np.sum(m * m, 1))
    np.testing.assert_allclose(uhn.energy(q) + const, mod.energy(q), rtol=1e-12)
    assert uhn.network is not None
    # energy 1/2|q|^2 - Phi(Mq): its gradient is q - M^T sep(Mq), zero at a fixed point
    for sep in ["identity", "polynomial", "softmax"]:
        u = M.universal(m, "dot", sep, beta=1.7, n=3)
        grad = jax.vmap(jax.grad(lambda x: u.energy(x)))(q)
        np.testing.assert_allclose(grad, q - u.retrieve(q), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="no energy"):
        M.universal(m, "euclidean", "softmax").energy(q)


def test_universal_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown similarity 'l2'.*'cosine'.*'dot'"):
        M.universal(np.ones((2, 3)), "l2")
    with pytest.raises(ValueError, match=r"unknown separation 'argmax'.*'identity'.*'softmax'"):
        M.universal(np.ones((2, 3)), "dot", "argmax")
    with pytest.raises(ValueError, match="projection"):
        M.universal(np.ones((2, 3)), projection=np.ones((3, 3)))


# ============================================================================= sdm
def kanerva_read(addresses, counters, radius, q):
    """Direct SDM read: sum the counters of every hard location within Hamming radius, sign."""
    total = np.zeros(counters.shape[1])
    for a, c in zip(addresses, counters):
        if np.sum(a != q) <= radius:
            total += c
    return np.where(total >= 0, 1.0, -1.0)


def kanerva_write(addresses, patterns, values, radius):
    counters = np.zeros((addresses.shape[0], values.shape[1]))
    for x, w in zip(patterns, values):
        for m, a in enumerate(addresses):
            if np.sum(a != x) <= radius:
                counters[m] += w
    return counters


@pytest.mark.parametrize("hetero", [False, True])
def test_sdm_equals_kanerva_write_and_read(hetero):
    rng = np.random.default_rng(40)
    n, locs, k, r = 32, 300, 6, 11
    addr, pats = pm1(rng, locs, n), pm1(rng, k, n)
    vals = pm1(rng, k, 10) if hetero else pats
    mem = M.sdm(addr, pats, r, values=vals if hetero else None)
    counters = kanerva_write(addr, pats, vals, r)
    np.testing.assert_array_equal(mem.counters, counters)
    q = corrupt(rng, pats, 3)
    want = np.stack([kanerva_read(addr, counters, r, x) for x in q])
    np.testing.assert_array_equal(mem.retrieve(q), want)
    np.testing.assert_array_equal(mem.activation(q[0]), [np.sum(a != q[0]) <= r for a in addr])
    assert mem.network is None
    with pytest.raises(ValueError, match="no energy"):
        mem.energy(q)


def test_sdm_rejects_bad_input():
    rng = np.random.default_rng(41)
    with pytest.raises(ValueError, match="dim 5 but addresses have dim 4"):
        M.sdm(pm1(rng, 10, 4), pm1(rng, 2, 5), 1)
    with pytest.raises(ValueError, match="radius"):
        M.sdm(pm1(rng, 10, 4), pm1(rng, 2, 4), -1)
    with pytest.raises(ValueError, match="±1"):
        M.sdm(pm1(rng, 10, 4), 0.5 * pm1(rng, 2, 4), 1)
