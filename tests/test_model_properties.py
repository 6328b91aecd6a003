"""Property tests (hypothesis) for the models, over random seeds, a few fixed shapes
(every new shape recompiles) and the models' parameters / Lagrangians.

- ``universal``: every similarity × separation; batch retrieval equals per-query
  retrieval and an independent NumPy formula; a stored pattern is retrieved exactly
  (max) or nearly so (softmax, large β) when its similarity to itself is the largest.
- ``classical``, ``dense``, ``exponential``: the energy never rises along the per-flip
  asynchronous trace, each flip is the lower-energy choice, returned states are
  fixed points of the sign update; for K ≪ N stored patterns are fixed points.
- ``modern``: one step is ``softmax(β Q Ξᵀ) Ξ``; Ramsauer et al.'s energy never rises
  under repeated updates (CCCP); ``relax`` ends at a fixed point of the update.
- ``Attention``/``Hopfield``/``Conv``/``Pool`` networks and the Energy Transformer: the
  energy never rises along ``ham.descend`` with a small step, and is invariant to
  batching.
- jit / vmap / grad: jitted retrieval equals eager retrieval, vmap over queries equals
  batch retrieval, and ``jax.grad`` of the modern retrieval matches finite differences.

Run with ``HYPOTHESIS_PROFILE=thorough`` for 120 examples per property.
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import ham
from ham.synapses import Attention, Conv, Hopfield, Pool

M = ham.memories
L = ham.lagrangians

seeds = st.integers(0, 2**32 - 1)


def pm1(rng, *shape):
    return np.where(rng.random(shape) < 0.5, -1.0, 1.0)


# ============================================================================= oracles (NumPy, float64)
def np_similarity(name, m, q):
    """Millidge et al. 2022's similarity of a query q (D,) to every memory (rows of m)."""
    d = m - q[None, :]
    if name == "dot":
        return m @ q
    if name == "cosine":
        return (m @ q) / np.maximum(np.sqrt((m * m).sum(1)) * np.sqrt(q @ q), 1e-12)
    if name == "euclidean":
        return -(d * d).sum(1)
    if name == "manhattan":
        return -np.abs(d).sum(1)
    if name == "euclidean_reciprocal":
        return 1.0 / np.maximum((d * d).sum(1), 1e-12)
    if name == "manhattan_reciprocal":
        return 1.0 / np.maximum(np.abs(d).sum(1), 1e-12)
    if name == "hamming":
        return (m == q[None, :]).sum(1).astype(float)
    raise KeyError(name)


TOPK = 2  # k of the "topk" separation in these tests


def np_separation(name, s, beta, n, threshold):
    if name == "identity":
        return s
    if name == "polynomial":
        return s**n
    if name == "softmax":
        z = beta * s
        e = np.exp(z - z.max())
        return e / e.sum()
    if name == "max":
        out = np.zeros_like(s)
        out[np.argmax(s)] = 1.0
        return out
    if name == "threshold":
        return (s >= threshold).astype(float)
    if name == "topk":  # softmax over the TOPK largest scores (ties: lower index first)
        top = np.argsort(-s, kind="stable")[:TOPK]
        out = np.zeros_like(s)
        out[top] = np_separation("softmax", s[top], beta, n, threshold)
        return out
    raise KeyError(name)


def np_universal(m, proj, q, sim, sep, beta, n, threshold):
    """z = Pᵀ sep(sim(M, q)) for every query (rows of q)."""
    return np.stack([proj.T @ np_separation(sep, np_similarity(sim, m, x), beta, n, threshold) for x in q])


def np_softmax_rows(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_ramsauer_energy(x, beta, v):
    """E(ξ) = −β⁻¹ log Σ_μ exp(β ξ_μ·ξ) + ½ ξᵀξ + β⁻¹ log K + ½ M² (Ramsauer et al. 2020, eq. 2)."""
    z = beta * (v @ x.T)
    zmax = z.max(-1)
    lse = zmax + np.log(np.exp(z - zmax[..., None]).sum(-1))
    big_m = np.max((x * x).sum(1))
    return -lse / beta + 0.5 * (v * v).sum(-1) + np.log(x.shape[0]) / beta + 0.5 * big_m


def np_binary_energy(model, p, beta, s):
    """Energies of ±1 states s (..., N): classical −½ sᵀWs (Hebbian W, zero diagonal);
    dense −Σ_μ F(ξ_μ·s) with F = z³ or max(z, 0)⁴; exponential −Σ_μ exp(β ξ_μ·s)."""
    s = np.asarray(s, np.float64)
    if model == "classical":
        w = p.T @ p / p.shape[1]
        np.fill_diagonal(w, 0.0)
        return -0.5 * np.einsum("...i,ij,...j->...", s, w, s)
    o = s @ p.T
    if model == "dense3":
        return -(o**3).sum(-1)
    if model == "dense4_rectified":
        return -(np.maximum(o, 0.0) ** 4).sum(-1)
    if model == "exponential":
        return -np.exp(beta * o).sum(-1)
    raise KeyError(model)


def make_binary(model, p, beta):
    if model == "classical":
        return M.classical(p)
    if model == "dense3":
        return M.dense(p, n=3)
    if model == "dense4_rectified":
        return M.dense(p, n=4, rectified=True)
    return M.exponential(p, beta=jnp.asarray(beta))  # an array: new values do not recompile


BINARY_MODELS = ["classical", "dense3", "dense4_rectified", "exponential"]


# ============================================================================= universal
# (K, D, projection output dim or None = auto-associative, batch)
UHN_CONFIGS = [(5, 4, None, 3), (8, 6, 3, 2)]


@pytest.mark.parametrize("sep", M.SEPARATIONS)
@pytest.mark.parametrize("sim", sorted(M.SIMILARITIES))
@given(seed=seeds, config=st.sampled_from(UHN_CONFIGS), beta=st.floats(0.1, 5.0), threshold=st.floats(-1.0, 1.0, allow_subnormal=False))  # XLA flushes subnormals to 0
def test_universal_batch_equals_per_query_and_numpy_formula(x64, sim, sep, seed, config, beta, threshold):
    k, d, out, b = config
    rng = np.random.default_rng(seed)
    if sim == "hamming":
        m, q = pm1(rng, k, d), pm1(rng, b, d)
    else:
        m, q = rng.normal(size=(k, d)), rng.normal(size=(b, d))
    proj = None if out is None else rng.normal(size=(k, out))
    n = 3
    mem = M.universal(m, sim, sep, beta=jnp.asarray(beta), n=n, threshold=jnp.asarray(threshold), projection=proj,
                      k=TOPK)
    batch = np.asarray(mem.retrieve(q))
    want = np_universal(m, m if proj is None else proj, q, sim, sep, beta, n, threshold)
    scale = 1.0 + np.max(np.abs(want))
    np.testing.assert_allclose(batch, want, rtol=1e-9, atol=1e-10 * scale)
    single = np.stack([np.asarray(mem.retrieve(x)) for x in q])
    np.testing.assert_allclose(batch, single, rtol=1e-12, atol=1e-12 * scale)


@pytest.mark.parametrize(
    "sim,sep",
    [("euclidean", "softmax"), ("manhattan", "softmax"), ("euclidean", "max"), ("manhattan", "max"),
     ("cosine", "max"), ("hamming", "max")],
)
@given(seed=seeds, config=st.sampled_from([(5, 8, None), (12, 16, 3)]))
def test_universal_retrieves_a_stored_pattern_queried_exactly(sim, sep, seed, config):
    """Queried with memory μ itself, sim(M, ξ_μ) peaks at μ (distance 0 / cosine 1 /
    all components agree), so max separation returns P_μ exactly and softmax with
    β·(gap to the runner-up) ≥ 30 returns it up to e⁻³⁰."""
    k, d, out = config
    rng = np.random.default_rng(seed)
    m = pm1(rng, k, d) if sim == "hamming" else rng.normal(size=(k, d))
    assume(len(np.unique(m, axis=0)) == k)  # distinct memories (±1 rows may repeat)
    proj = m if out is None else rng.normal(size=(k, out))
    sims = np.stack([np_similarity(sim, m, x) for x in m])  # [query μ, memory ν]
    assert np.all(np.argmax(sims, axis=1) == np.arange(k))  # the oracle agrees: argmax is itself
    gap = np.min(np.diag(sims)[:, None] - np.where(np.eye(k, dtype=bool), -np.inf, sims))
    beta = 30.0 / gap
    mem = M.universal(m.astype(np.float32), sim, sep, beta=jnp.asarray(beta, jnp.float32),
                      projection=None if out is None else proj.astype(np.float32))
    got = np.asarray(mem.retrieve(m.astype(np.float32)))
    if sep == "max":
        np.testing.assert_array_equal(got, proj.astype(np.float32))
    else:
        np.testing.assert_allclose(got, proj, rtol=1e-5, atol=1e-5 * np.max(np.abs(proj)))


# ============================================================================= binary models
# (K, N, random neuron order); the order is tied to the shape so that each shape compiles
# once; N = 2^m: see test_classical_fixed_point_is_stable_at_exact_ties.
BIN_CONFIGS = [(6, 16, False), (12, 32, True)]


@pytest.mark.parametrize("model", BINARY_MODELS)
@given(seed=seeds, config=st.sampled_from(BIN_CONFIGS), beta=st.floats(0.05, 1.0))
def test_binary_energy_never_rises_along_per_flip_async_trace(x64, model, seed, config, beta):
    k, n, random_order = config
    rng = np.random.default_rng(seed)
    p = pm1(rng, k, n)
    mem = make_binary(model, p, beta)
    key = jax.random.PRNGKey(seed % 2**31) if random_order else None
    states, energies = mem.async_energy_trace(rng.normal(size=n), sweeps=2, key=key)
    s = np.asarray(states)
    assert s.shape == (2 * n + 1, n) and set(np.unique(s)) <= {-1.0, 1.0}
    e = np_binary_energy(model, p, beta, s)
    tol = 1e-10 * (1.0 + np.max(np.abs(e)))
    np.testing.assert_allclose(np.asarray(energies), e, rtol=1e-10, atol=tol)
    # one neuron at a time, and the energy never rises
    assert np.all(np.sum(s[1:] != s[:-1], axis=1) <= 1)
    assert np.all(np.diff(e) <= tol), np.max(np.diff(e))
    if not random_order:
        # sequential order: update t sets neuron t mod N to its lower-energy sign (tie: either)
        for t in range(2 * n):
            i = t % n
            up, down = s[t].copy(), s[t].copy()
            up[i], down[i] = 1.0, -1.0
            e_up, e_down = np_binary_energy(model, p, beta, np.stack([up, down]))
            assert np.all(s[t + 1][np.arange(n) != i] == s[t][np.arange(n) != i])
            if e_up < e_down - tol:
                assert s[t + 1][i] == 1.0
            elif e_down < e_up - tol:
                assert s[t + 1][i] == -1.0


@pytest.mark.parametrize("model", BINARY_MODELS)
@given(seed=seeds, config=st.sampled_from(BIN_CONFIGS), beta=st.floats(0.05, 1.0))
def test_binary_retrieve_returns_fixed_points_of_the_sign_update(x64, model, seed, config, beta):
    k, n, random_order = config
    rng = np.random.default_rng(seed)
    p = pm1(rng, k, n)
    mem = make_binary(model, p, beta)
    key = jax.random.PRNGKey(seed % 2**31) if random_order else None
    s, _, converged = mem.run(rng.normal(size=(3, n)), key=key)
    assert bool(np.all(converged))
    s = np.asarray(s)
    # oracle: no single flip lowers the energy (the sign update's fixed-point condition)
    e = np_binary_energy(model, p, beta, s)
    flipped = s[:, None, :] * np.where(np.eye(n, dtype=bool), -1.0, 1.0)  # [batch, i, N]
    e_flip = np_binary_energy(model, p, beta, flipped)
    tol = 1e-10 * (1.0 + np.max(np.abs(e)))
    assert np.all(e_flip >= e[:, None] - tol)
    # one more sweep changes nothing (max_sweeps stays at its default: a new static value
    # would recompile; stopping after one sweep with converged=True is the same statement)
    s2, sweeps, conv2 = mem.run(s, key=key)
    np.testing.assert_array_equal(np.asarray(s2), s)
    assert bool(np.all(conv2)) and np.all(np.asarray(sweeps) == 1)


def test_classical_fixed_point_is_stable_at_exact_ties(x64):
    """K = 12, N = 24 (W = k/24 is inexact in binary floating point), seed 0: the
    returned converged states have neurons with exact local field 0 (a tie, which
    keeps the neuron), and one more sweep must change nothing."""
    rng = np.random.default_rng(0)
    p = pm1(rng, 12, 24)
    mem = M.classical(p)
    s, _, conv = mem.run(rng.normal(size=(3, 24)))
    assert bool(np.all(conv))
    s = np.asarray(s)
    w = p.T @ p
    np.fill_diagonal(w, 0.0)
    fields = s @ w  # N·h exactly (integers)
    assert np.all(fields * s >= 0) and np.any(fields == 0)  # a fixed point with ties
    for mode in ("async", "sync"):
        s2, _, conv2 = mem.run(s, mode=mode)
        np.testing.assert_array_equal(np.asarray(s2), s)
        assert bool(np.all(conv2))


@given(seed=seeds)
def test_classical_stores_few_random_patterns_as_fixed_points(seed):
    """N = 64, K = 3: ξ_μi h_i(ξ_μ) = [(N−1) + Σ_{ν≠μ}(±o_μν − 1)]/N > 0 whenever
    Σ_{ν≠μ}(|o_μν| + 1) < N − 1 (o = overlaps), which random patterns satisfy except with
    probability ~1e-6 (assumed, so the test states an exact implication)."""
    k, n = 3, 64
    rng = np.random.default_rng(seed)
    p = pm1(rng, k, n)
    o = np.abs(p @ p.T) * (1 - np.eye(k))
    assume(np.all(np.sum(o + 1 - np.eye(k), axis=1) < n - 1))
    mem = M.classical(p)
    for mode in ("async", "sync"):
        s, sweeps, conv = mem.run(p, mode=mode)
        np.testing.assert_array_equal(np.asarray(s), p)
        assert bool(np.all(conv)) and np.all(np.asarray(sweeps) == 1)


# ============================================================================= modern
MODERN_SHAPES = [(5, 4, 3), (12, 6, 2)]  # (K, D, batch)


@given(seed=seeds, shape=st.sampled_from(MODERN_SHAPES), beta=st.floats(0.05, 8.0))
def test_modern_one_step_is_softmax_attention(x64, seed, shape, beta):
    k, d, b = shape
    rng = np.random.default_rng(seed)
    x, q = rng.normal(size=(k, d)), rng.normal(size=(b, d))
    mem = M.modern(x, beta=jnp.asarray(beta))
    want = np_softmax_rows(beta * q @ x.T) @ x
    np.testing.assert_allclose(np.asarray(mem.retrieve(q)), want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.asarray(mem.retrieve(q[0])), want[0], rtol=1e-10, atol=1e-12)


@given(seed=seeds, shape=st.sampled_from(MODERN_SHAPES), beta=st.floats(0.05, 8.0), spread=st.floats(0.2, 3.0))
def test_modern_energy_never_rises_under_repeated_updates(x64, seed, shape, beta, spread):
    """Ramsauer et al. 2020 (Theorem 1): the update is CCCP, so E(ξ_{t+1}) ≤ E(ξ_t)."""
    k, d, b = shape
    rng = np.random.default_rng(seed)
    x, q = spread * rng.normal(size=(k, d)), spread * rng.normal(size=(b, d))
    mem = M.modern(x, beta=jnp.asarray(beta))
    traj = [q]
    for _ in range(12):
        traj.append(np.asarray(mem.retrieve(traj[-1])))
    traj = np.stack(traj)  # [t, batch, D]
    e = np_ramsauer_energy(x, beta, traj)
    tol = 1e-10 * (1.0 + np.max(np.abs(e)))
    assert np.all(np.diff(e, axis=0) <= tol), np.max(np.diff(e, axis=0))
    assert np.all(e >= -tol)  # E ≥ 0 (Ramsauer et al., Lemma A1)
    # the fixed-step iteration agrees with retrieve(steps=12)
    np.testing.assert_allclose(np.asarray(mem.retrieve(q, steps=12)), traj[-1], rtol=1e-9, atol=1e-10)


@given(seed=seeds, beta=st.floats(0.3, 4.0), noise=st.floats(0.0, 1.0))
def test_modern_relax_ends_at_a_fixed_point_of_the_update(seed, beta, noise):
    k, d, b = 6, 5, 3
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(k, d)).astype(np.float32)
    q = (x[:b] + noise * rng.normal(size=(b, d))).astype(np.float32)
    mem = M.modern(x, beta=jnp.asarray(beta, jnp.float32))
    sol = mem.relax(q)
    assert bool(jnp.all(sol.converged)), sol.reason
    ham.lyapunov.check(sol)
    v = np.asarray(sol.states["v"], np.float64)
    scale = 1.0 + np.max(np.abs(x))
    np.testing.assert_allclose(v, np_softmax_rows(beta * v @ x.T) @ x, atol=2e-3 * scale)
    # the hidden layer sits at its equilibrium h = Ξ v
    np.testing.assert_allclose(np.asarray(sol.states["h"]), v @ x.T, atol=2e-3 * scale * np.sqrt(d))


# ============================================================================= synapse networks
def _lagrangian(name, rng, dim):
    """A convex Lagrangian with random array parameters (new values do not recompile)."""
    beta = jnp.asarray(rng.uniform(0.5, 3.0))
    if name == "layernorm":
        return eqx.Partial(L.layernorm, gamma=jnp.asarray(rng.uniform(0.5, 2.0)),
                           delta=jnp.asarray(0.3 * rng.normal(size=dim)))
    return eqx.Partial({"softmax": L.softmax, "tanh": L.tanh, "sigmoid": L.sigmoid}[name], beta=beta)


# Two fixed configurations per network, each compiled once: (size, dim, memory/pool kind,
# layer Lagrangian). Size and dim are the token layer's (tokens, dim), or the input image
# side of the conv net. The Lagrangian is tied to the configuration (every distinct one
# recompiles); over the file every catalogue entry used by these networks is covered.
NET_CONFIGS = {
    "attention": [(3, 4, None, "layernorm"), (5, 6, None, "softmax")],
    "hopfield": [(3, 4, "relu", "tanh"), (5, 6, "softmax", "sigmoid")],
    "energy_transformer": [(3, 4, "relu", "layernorm"), (5, 4, "softmax", "layernorm")],
    "conv_pool": [(6, None, "avg", "tanh"), (5, None, "sum", "softmax")],
}


@functools.cache
def _energy_transformer(config):
    """One ``ham.energy_transformer.EnergyTransformer`` per configuration (its random
    initialisation compiles per weight shape); examples then draw new parameters."""
    size, dim, mem_kind, _ = NET_CONFIGS["energy_transformer"][config]
    with jax.enable_x64(True):
        return ham.energy_transformer.EnergyTransformer(
            size, dim, heads=2, memories=2 * dim, kind=mem_kind, key=jax.random.PRNGKey(0)).network


def random_states(net, rng, batch):
    """Standard normal float64 states (NumPy: no per-shape compilation of jax.random)."""
    return {k: jnp.asarray(rng.normal(size=(*batch, *layer.shape))) for k, layer in net.layers.items()}


def make_network(kind, rng, config):
    """A HAM of the given kind and configuration with random parameters."""
    size, dim, mem_kind, lagrangian = NET_CONFIGS[kind][config]
    if kind == "energy_transformer":
        net = _energy_transformer(config)
        att, hop = net.synapses["attention"], net.synapses["hopfield"]
        new = (0.6 * rng.normal(size=att.W_K.shape), 0.6 * rng.normal(size=att.W_Q.shape),
               0.6 * rng.normal(size=hop.xi.shape), rng.uniform(0.5, 2.0), 0.3 * rng.normal(size=dim))
        return eqx.tree_at(
            lambda n: (n.synapses["attention"].W_K, n.synapses["attention"].W_Q, n.synapses["hopfield"].xi,
                       n.layers["tokens"].lagrangian.gamma, n.layers["tokens"].lagrangian.delta),
            net, tuple(jnp.asarray(a, jnp.float64) for a in new))
    if kind == "conv_pool":
        h = size
        # in (h, h, 2) -conv 3x3-> mid (h-2, h-2, 3) -pool 2x2 (VALID)-> out
        shapes = {"in": (h, h, 2), "mid": (h - 2, h - 2, 3), "out": ((h - 2) // 2, (h - 2) // 2, 3)}
        return ham.HAM(
            layers={k: ham.Layer(_lagrangian(lagrangian, rng, s[-1]), s, check_convexity=False)
                    for k, s in shapes.items()},
            synapses={"conv": Conv(0.5 * rng.normal(size=(3, 3, 2, 3))), "pool": Pool(2, kind=mem_kind)},
            connections={"conv": ("in", "mid"), "pool": ("mid", "out")},
        )
    if kind == "attention":
        syn = Attention(0.6 * rng.normal(size=(2, 3, dim)), 0.6 * rng.normal(size=(2, 3, dim)),
                        beta=jnp.asarray(rng.uniform(0.2, 2.0, size=2)))
    else:
        syn = Hopfield(0.6 * rng.normal(size=(2 * dim, dim)), kind=mem_kind, beta=jnp.asarray(rng.uniform(0.5, 3.0)))
    return ham.HAM(
        layers={"tokens": ham.Layer(_lagrangian(lagrangian, rng, dim), (size, dim), check_convexity=False)},
        synapses={"s": syn},
        connections={"s": ("tokens",)},
    )


@eqx.filter_jit
def _batched_and_per_element_energies(net, xs):
    """``net.energy`` of a (2,) batch and of each element on its own (``lax.map``: the
    unbatched code path, no vmap)."""
    return net.energy(xs), jax.lax.map(net.energy, xs)


@pytest.mark.parametrize("kind", sorted(NET_CONFIGS))
@given(seed=seeds, config=st.sampled_from([0, 1]))
def test_network_energy_never_rises_along_descend_and_is_invariant_to_batching(x64, kind, seed, config):
    """Random parameters (weights, β, γ, δ) and states: ``ham.lyapunov.check`` passes
    along ``ham.descend`` with a small step (first order: ΔE = −α ∂E/∂gᵀ ∇²L ∂E/∂g ≤ 0),
    and the energy of a batch equals the per-element energies."""
    rng = np.random.default_rng(seed)
    net = make_network(kind, rng, config)
    xs0 = random_states(net, rng, (2,))
    sol = ham.descend(net, xs0, step_size=0.02, steps=30)
    ham.lyapunov.check(sol, rtol=1e-9, atol=1e-9)
    assert np.all(np.asarray(sol.energies[:, -1]) <= np.asarray(sol.energies[:, 0]))
    batched, per = (np.asarray(a) for a in _batched_and_per_element_energies(net, xs0))
    assert batched.shape == (2,)
    np.testing.assert_allclose(batched, per, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(sol.energies[:, 0]), batched, rtol=1e-12, atol=1e-12)


# ============================================================================= jit / vmap / grad
_jit_retrieve = eqx.filter_jit(lambda m, x: m.retrieve(x))


def _memory(name, rng, k, d):
    x = rng.normal(size=(k, d)).astype(np.float32)
    beta = jnp.asarray(rng.uniform(0.2, 4.0), jnp.float32)
    if name == "modern":
        return M.modern(x, beta=beta)
    if name == "universal_euclidean_softmax":
        return M.universal(x, "euclidean", "softmax", beta=beta)
    return make_binary(name, pm1(rng, k, d).astype(np.float32), jnp.asarray(rng.uniform(0.1, 1.0), jnp.float32))


@pytest.mark.parametrize("name", ["modern", "universal_euclidean_softmax"])
@given(seed=seeds, shape=st.sampled_from([(5, 8, 3), (9, 12, 2)]))
def test_jitted_and_vmapped_retrieve_equal_eager_retrieve(name, seed, shape):
    k, d, b = shape
    rng = np.random.default_rng(seed)
    mem = _memory(name, rng, k, d)
    q = jnp.asarray(rng.normal(size=(b, d)), jnp.float32)
    jitted = np.asarray(_jit_retrieve(mem, q))
    vmapped = np.asarray(jax.vmap(mem.retrieve)(q))
    with jax.disable_jit():
        eager = np.asarray(mem.retrieve(q))
    np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(vmapped, eager, rtol=1e-5, atol=1e-5)


@given(seed=seeds, shape=st.sampled_from([(5, 8, 3), (9, 12, 2)]))
def test_binary_retrieve_under_filter_jit_and_vmap_equals_plain_call(seed, shape):
    """(Eager execution of the lax while/fori loops takes seconds per call, so the
    binary models are compared across jit boundaries and vmap only.)"""
    k, d, b = shape
    rng = np.random.default_rng(seed)
    mem = _memory("classical", rng, k, d)
    q = jnp.asarray(rng.normal(size=(b, d)), jnp.float32)
    plain = np.asarray(mem.retrieve(q))
    np.testing.assert_array_equal(np.asarray(_jit_retrieve(mem, q)), plain)
    np.testing.assert_array_equal(np.asarray(jax.vmap(mem.retrieve)(q)), plain)


def _weighted_retrieval(patterns, beta, q, w, steps):
    return jnp.sum(w * M.modern(patterns, beta=beta).retrieve(q, steps=steps))


@functools.partial(jax.jit, static_argnames="steps")
def _grad_and_central_differences(x, beta, q, w, steps, eps):
    """jax.grad of the weighted retrieval w.r.t. the patterns, and central differences
    (f(x + ε e_i) − f(x − ε e_i)) / 2ε in every coordinate."""
    f = functools.partial(_weighted_retrieval, beta=beta, q=q, w=w, steps=steps)
    basis = eps * jnp.eye(x.size, dtype=x.dtype).reshape(x.size, *x.shape)
    fd = (jax.vmap(f)(x + basis) - jax.vmap(f)(x - basis)) / (2 * eps)
    return jax.grad(f)(x), fd.reshape(x.shape)


@given(seed=seeds, shape=st.sampled_from(MODERN_SHAPES), beta=st.floats(0.1, 3.0), steps=st.sampled_from([1, 3]))
def test_modern_retrieve_gradient_wrt_patterns_matches_finite_differences(x64, seed, shape, beta, steps):
    k, d, b = shape
    rng = np.random.default_rng(seed)
    x, q, w = rng.normal(size=(k, d)), rng.normal(size=(b, d)), rng.normal(size=(b, d))
    grad, fd = _grad_and_central_differences(
        jnp.asarray(x), jnp.asarray(beta), jnp.asarray(q), jnp.asarray(w), steps, 1e-6)
    grad, fd = np.asarray(grad), np.asarray(fd)
    assert grad.dtype == np.float64
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-7 * (1.0 + np.max(np.abs(fd))))
