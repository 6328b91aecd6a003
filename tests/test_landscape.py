"""ham.landscape against independent oracles: brute-force enumeration of small binary
networks, closed-form fixed points of a continuous net on both sides of its bifurcation,
finite-difference Jacobians, dense eigendecompositions."""

import itertools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ham
from ham import landscape as L


def _all_states(n):
    return np.array(list(itertools.product([-1, 1], repeat=n)), dtype=np.int64)


def _brute_energy(kind, patterns, states):
    """Energies from the models' formulas, in exact integer arithmetic where they are
    integers (N x classical energy; dense), float64 for the exponential."""
    m = states @ patterns.T  # (S, K) integer overlaps
    if kind == "classical":
        n = patterns.shape[1]
        counts = patterns.T @ patterns - patterns.shape[0] * np.eye(n, dtype=np.int64)
        return -np.einsum("si,ij,sj->s", states, counts, states) // 2  # N * E, exact (even)
    if kind == "dense":
        return -np.sum(m**3, axis=1)
    return -np.sum(np.exp(0.5 * m), axis=1)


def _brute_lowering_flips(kind, patterns, states):
    e = _brute_energy(kind, patterns, states)
    count = np.zeros(len(states), np.int64)
    for i in range(states.shape[1]):
        flipped = states.copy()
        flipped[:, i] *= -1
        d = _brute_energy(kind, patterns, flipped) - e
        if kind == "exponential":
            count += d < -1e-9 * np.abs(e)  # float energies: a relative round-off margin
        else:
            count += d < 0
    return count


def _model(kind, patterns):
    p = jnp.asarray(patterns, jnp.float32)
    return {"classical": ham.memories.classical, "dense": lambda q: ham.memories.dense(q, n=3),
            "exponential": lambda q: ham.memories.exponential(q, beta=0.5)}[kind](p)


@pytest.mark.parametrize("kind,n,k", [("classical", 12, 3), ("dense", 11, 4), ("exponential", 10, 3)])
def test_census_from_every_state_equals_brute_force_one_flip_stable_states(kind, n, k):
    rng = np.random.default_rng(n + k)
    patterns = rng.choice([-1, 1], size=(k, n)).astype(np.int64)
    states = _all_states(n)
    lowering = _brute_lowering_flips(kind, patterns, states)
    stable = {tuple(s) for s in states[lowering == 0]}
    mem = _model(kind, patterns)
    c = L.census(mem, states.astype(np.float32), chunk=1000)
    found = {tuple(int(v) for v in s) for s in np.asarray(c.points)}
    assert found == stable
    assert bool(jnp.all(c.converged)) and int(c.counts.sum()) == len(states)
    # each start's assigned point is where the sign dynamics took it
    assert np.all(np.asarray(c.assignment) >= 0)
    # classify's index is the brute-force number of lowering flips, for every state
    cl = L.classify(mem, states.astype(np.float32))
    np.testing.assert_array_equal(np.asarray(cl.index), lowering)
    assert set(cl.kind) >= {"1-flip-stable"}
    # the reported flip energy changes are negative exactly for the lowering flips
    neg = np.sum(np.asarray(cl.eigenvalues) < 0, axis=1)
    np.testing.assert_array_equal(np.minimum(neg, cl.eigenvalues.shape[1]),
                                  np.minimum(lowering, cl.eigenvalues.shape[1]))


def test_census_chunks_and_unconverged_starts():
    rng = np.random.default_rng(0)
    patterns = rng.choice([-1.0, 1.0], size=(3, 16))
    mem = ham.memories.classical(jnp.asarray(patterns, jnp.float32))
    key = jax.random.PRNGKey(3)
    whole = L.census(mem, 50, key=key)
    chunked = L.census(mem, 50, key=key, chunk=7)
    # chunking changes the random neuron order per chunk, not the set of fixed points' validity
    for c in (whole, chunked):
        assert int(c.counts.sum()) == int(c.converged.sum())
        assert bool(jnp.all(L.classify(mem, c.points).index == 0))
        assert np.all(np.diff(np.asarray(c.energies)) >= 0)  # sorted by energy
    starts = np.asarray(jax.random.rademacher(jax.random.PRNGKey(1), (40, 16), jnp.float32))
    a, b = L.census(mem, starts), L.census(mem, starts, chunk=6)
    np.testing.assert_array_equal(np.asarray(a.points), np.asarray(b.points))
    np.testing.assert_array_equal(np.asarray(a.assignment), np.asarray(b.assignment))
    # one sweep is not enough for some starts: those are -1 and not counted
    c1 = L.census(mem, starts, max_sweeps=1)
    assert not bool(jnp.all(c1.converged))
    assert np.all(np.asarray(c1.assignment)[~np.asarray(c1.converged)] == -1)
    assert int(c1.counts.sum()) == int(c1.converged.sum())


def _tanh_net(beta, n, xi):
    """tau x' = -x + W tanh(beta x), W = xi xi^T / N (diagonal kept): along x = a xi the
    fixed points solve a = tanh(beta a); a pitchfork at beta = 1."""
    w = jnp.outer(xi, xi) / n
    layer = ham.Layer(eqx.Partial(ham.lagrangians.tanh, beta=beta), shape=(n,))
    return ham.HAM(layers={"v": layer}, synapses={"w": ham.synapses.Dense(w)}, connections={"w": ("v",)})


def test_tanh_pitchfork_fixed_points_and_indices_match_closed_form(x64):
    n = 6
    xi = jnp.asarray(np.random.default_rng(0).choice([-1.0, 1.0], size=n))
    for beta in (0.8, 1.5):
        net = _tanh_net(jnp.asarray(beta), n, xi)
        c = L.census(net, 48, key=jax.random.PRNGKey(0))
        a_star = 0.0
        if beta > 1:  # the non-zero root of a = tanh(beta a)
            a_star = 1.0
            for _ in range(200):
                a_star = math.tanh(beta * a_star)
        want = sorted({a_star, -a_star})
        got = sorted(np.asarray(c.points["v"]) @ np.asarray(xi) / n)
        np.testing.assert_allclose(got, want, atol=1e-5)
        cl = L.classify(net, c.points)
        assert np.all(np.asarray(cl.index) == 0)
        # Jacobian -I + beta W diag(sech^2): -1 + beta sech^2(beta a) along xi, -1 across
        lead = -1 + beta / math.cosh(beta * a_star) ** 2
        np.testing.assert_allclose(np.asarray(cl.eigenvalues[:, 0]), lead, atol=1e-5)
        np.testing.assert_allclose(np.asarray(cl.eigenvalues[:, 1]), -1.0, atol=1e-6)
        # the origin: a minimum below the bifurcation, an index-1 saddle above
        z = L.classify(net, {"v": jnp.zeros((1, n))})
        assert int(z.index[0]) == (1 if beta > 1 else 0)
        np.testing.assert_allclose(float(z.eigenvalues[0, 0]), beta - 1, atol=1e-9)
        assert z.kind[0] == ("saddle (index 1)" if beta > 1 else "minimum")


def _fd_jacobian(net, x, free, h=1e-6):
    """Central finite differences of the vector field over the free layers (float64)."""
    names = list(free)
    sizes = [int(np.prod(net.layers[k].shape)) for k in names]
    flat = jnp.concatenate([jnp.asarray(x[k]).reshape(-1) for k in names])

    @jax.jit
    def columns(flat):
        def f(v):
            xs, off = dict(x), 0
            for k, s in zip(names, sizes):
                xs[k] = v[off:off + s].reshape(net.layers[k].shape)
                off += s
            d = net.vector_field(0.0, xs)
            return jnp.concatenate([d[k].reshape(-1) for k in names])

        eye = jnp.eye(flat.size, dtype=flat.dtype)
        return jax.vmap(lambda e: (f(flat + h * e) - f(flat - h * e)) / (2 * h))(eye)

    return np.asarray(columns(flat)).T


def test_jacobian_index_and_rates_match_finite_difference_jacobian(x64):
    rng = np.random.default_rng(1)
    p = rng.standard_normal((2, 5))
    p = 2.0 * p / np.linalg.norm(p, axis=1, keepdims=True)
    mem = ham.memories.modern(jnp.asarray(p), beta=3.0, hidden_tau=0.2)
    net = mem.network
    # the midpoint of two equal-norm patterns is a fixed point by symmetry (a saddle);
    # the relaxed state from near a pattern is a minimum
    mid = jnp.asarray((p[0] + p[1]) / 2)
    near = mem.relax(jnp.asarray(p[0] * 0.9), event_rtol=1e-12, event_atol=1e-12).states
    for v, want in ((mid, 1), (near["v"], 0)):
        x = {"v": v, "h": jnp.asarray(p) @ v}
        cl = L.classify(net, {k: a[None] for k, a in x.items()}, k=7)
        jac = _fd_jacobian(net, x, ("v", "h"))
        ev = np.linalg.eigvals(jac)
        assert np.max(np.abs(ev.imag)) < 1e-5  # real spectrum, as derived
        assert int(np.sum(ev.real > 1e-6)) == want == int(cl.index[0])
        np.testing.assert_allclose(np.asarray(cl.eigenvalues[0]), np.sort(ev.real)[::-1], atol=1e-5)


def test_clamped_layer_is_not_a_direction(x64):
    rng = np.random.default_rng(2)
    w = jnp.asarray(rng.standard_normal((4, 3)) * 3.0)
    wvv = rng.standard_normal((4, 4))
    net = ham.HAM(
        layers={"v": ham.Layer(eqx.Partial(ham.lagrangians.tanh, beta=jnp.asarray(2.0)), shape=(4,)),
                "c": ham.Layer(ham.lagrangians.tanh, shape=(3,), tau=jnp.inf)},
        synapses={"w": ham.synapses.Dense(w), "r": ham.synapses.Dense(jnp.asarray((wvv + wvv.T) / 2))},
        connections={"w": ("v", "c"), "r": ("v",)})
    fp = {"v": jnp.zeros(4), "c": jnp.zeros(3)}  # tanh(0) = 0: a fixed point for any weights
    cl = L.classify(net, {k: v[None] for k, v in fp.items()}, k=10)
    assert cl.eigenvalues.shape == (1, 4)  # the clamped layer's 3 neurons are not directions
    ev = np.linalg.eigvals(_fd_jacobian(net, fp, ("v",)))
    np.testing.assert_allclose(np.asarray(cl.eigenvalues[0]), np.sort(ev.real)[::-1], atol=1e-6)
    assert int(cl.index[0]) == int(np.sum(ev.real > 1e-6))


def test_lanczos_matches_dense_eigh_on_random_symmetric_matrices(x64):
    rng = np.random.default_rng(3)
    for n in (40,):
        a = rng.standard_normal((n, n))
        a = (a + a.T) / 2
        theta, resid = L.lanczos(lambda v: jnp.asarray(a) @ v, jnp.asarray(rng.standard_normal(n)), n)
        np.testing.assert_allclose(np.asarray(theta), np.linalg.eigvalsh(a), atol=1e-8)
    # fewer steps: the extreme Ritz values converge, interlacing holds, residuals bound the error
    n = 120
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    spec = np.concatenate([[-3.0, -2.0, -1.5], np.linspace(0.5, 4.0, n - 3)])
    a = (q * spec) @ q.T
    theta, resid = L.lanczos(lambda v: jnp.asarray(a) @ v, jnp.asarray(rng.standard_normal(n)), 40)
    np.testing.assert_allclose(np.asarray(theta[:3]), spec[:3], atol=1e-6)
    assert np.all(np.asarray(theta) >= np.sort(spec)[:40] - 1e-9)
    exact = np.sort(spec)
    assert all(np.min(np.abs(exact - t)) <= r + 1e-9 for t, r in zip(np.asarray(theta), np.asarray(resid)))
    # a rank-deficient operator: breakdown restarts, the spectrum is still complete
    b = np.diag([1.0, 1.0, 0.0, 0.0, 2.0, 2.0])
    theta, _ = L.lanczos(lambda v: jnp.asarray(b) @ v, jnp.ones(6), 6)
    np.testing.assert_allclose(np.asarray(theta), np.sort(np.diag(b)), atol=1e-10)


def test_classify_lanczos_path_matches_dense_path_on_random_nets(x64):
    rng = np.random.default_rng(4)
    nv, nh = 14, 10
    indices = []
    for trial in range(3):
        # tanh layers on both sides: x = 0 is a fixed point for any weights, with a random index
        w = jnp.asarray(rng.standard_normal((nv, nh)) * 0.6)
        net = ham.HAM(
            layers={"v": ham.Layer(eqx.Partial(ham.lagrangians.tanh, beta=jnp.asarray(1.5)), shape=(nv,), tau=1.0),
                    "h": ham.Layer(eqx.Partial(ham.lagrangians.tanh, beta=jnp.asarray(1.5)), shape=(nh,), tau=0.3)},
            synapses={"w": ham.synapses.Dense(w)}, connections={"w": ("v", "h")})
        pts = {"v": jnp.zeros((1, nv)), "h": jnp.zeros((1, nh))}
        dense = L.classify(net, pts, k=nv + nh)
        lz = L.classify(net, pts, k=nv + nh, dense_max=1, lanczos_steps=nv + nh)
        np.testing.assert_array_equal(np.asarray(dense.index), np.asarray(lz.index))
        np.testing.assert_allclose(np.asarray(lz.eigenvalues), np.asarray(dense.eigenvalues), atol=1e-8)
        ev = np.linalg.eigvals(_fd_jacobian(net, {k: v[0] for k, v in pts.items()}, ("v", "h")))
        np.testing.assert_allclose(np.asarray(dense.eigenvalues[0]), np.sort(ev.real)[::-1], atol=1e-6)
        indices.append(int(dense.index[0]))
    assert max(indices) > 0  # the oracle saw saddles, not only minima
    # fewer Lanczos steps than neurons: the leading (unstable) eigenvalues still agree
    xi = jnp.asarray(rng.choice([-1.0, 1.0], size=30))
    tn = _tanh_net(jnp.asarray(2.0), 30, xi)
    z = {"v": jnp.zeros((1, 30))}
    a, b = L.classify(tn, z, k=3), L.classify(tn, z, k=3, dense_max=5, lanczos_steps=12)
    assert int(a.index[0]) == int(b.index[0]) == 1
    np.testing.assert_allclose(np.asarray(b.eigenvalues), np.asarray(a.eigenvalues), atol=1e-8)
    # "index >= k": every one of the k computed eigenvalues unstable
    unstable = _tanh_net(jnp.asarray(2.0), 30, xi)
    unstable = eqx.tree_at(lambda m: m.synapses["w"].weight, unstable, jnp.asarray(4.0 * np.eye(30)))
    c = L.classify(unstable, z, k=3, dense_max=5, lanczos_steps=12)
    assert int(c.index[0]) == 3 and not bool(c.complete[0]) and c.kind[0] == "saddle (index >= 3)"
    assert int(L.classify(unstable, z, k=3).index[0]) == 30


def test_label_by_overlap_profile():
    rng = np.random.default_rng(5)
    n, k = 400, 10
    xi = rng.choice([-1.0, 1.0], size=(k, n))
    mix3 = np.sign(xi[0] - xi[3] + xi[5])
    maj5 = np.sign(xi[:5].sum(0))
    blend = np.where(rng.random(n) < 0.5, xi[1], xi[2])  # overlaps ~ 1/2 with two patterns: not symmetric
    noisy = xi[7] * np.where(rng.random(n) < 0.03, -1, 1)
    pts = np.stack([xi[4], -xi[2], mix3, maj5, blend, rng.choice([-1.0, 1.0], size=n), noisy])
    lab = L.label(pts, xi)
    assert lab.names == ("stored", "reversed", "symmetric mixture", "symmetric mixture", "other mixture",
                             "spin-glass", "stored")
    np.testing.assert_allclose(np.abs(np.asarray(lab.overlaps[2])[[0, 3, 5]]), 0.5, atol=0.15)
    assert int(lab.components[2]) == 3 and int(lab.components[3]) == 5
    with pytest.raises(ValueError, match="points must have shape"):
        L.label(pts[:, :-1], xi)
    with pytest.raises(ValueError, match="patterns"):
        L.label(pts, xi[0])


def test_attention_spread_from_global_average_to_one_pattern():
    rng = np.random.default_rng(6)
    p = rng.standard_normal((20, 16))
    p = 4.0 * p / np.linalg.norm(p, axis=1, keepdims=True)
    q = p[:3] + 0.01 * rng.standard_normal((3, 16))
    assert np.all(np.asarray(L.attention_spread(ham.memories.modern(jnp.asarray(p), beta=1e-4), q)) == 18)
    assert np.all(np.asarray(L.attention_spread(ham.memories.modern(jnp.asarray(p), beta=20.0), q)) == 1)
    # from the logits: hand-computed softmax masses
    s = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
    assert L.attention_spread(s, mass=0.5).tolist() == [1]
    assert L.attention_spread(s, mass=0.8).tolist() == [2]
    assert L.attention_spread(s, mass=0.9).tolist() == [3]
    assert L.attention_spread(s, mass=1.0).tolist() == [4]
    masked = ham.memories.modern(jnp.asarray(p), beta=1e-4, active=jnp.arange(20) < 10)
    assert np.all(np.asarray(L.attention_spread(masked, q, mass=1.0)) == 10)
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="mass must be in"):
            L.attention_spread(s, mass=bad)
    with pytest.raises(ValueError, match="queries must be None"):
        L.attention_spread(s, q)


def test_bad_inputs_are_refused_with_the_argument_named(x64):
    mem = ham.memories.classical(jnp.asarray(np.random.default_rng(0).choice([-1.0, 1.0], size=(2, 8))))
    with pytest.raises(ValueError, match=r"starts must have shape \(num_starts, 8\)"):
        L.census(mem, np.ones((3, 7)))
    with pytest.raises(TypeError, match="starts must be a real array"):
        L.census(mem, np.ones((3, 8), dtype=bool))
    with pytest.raises(ValueError, match="±1"):
        L.census(mem, 0.5 * np.ones((3, 8)))
    with pytest.raises(ValueError, match="needs a PRNG key"):
        L.census(mem, 10)
    with pytest.raises(TypeError, match="model must be a ham.HAM"):
        L.census(ham.memories.modern(jnp.ones((2, 3))), 3, key=jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=r"points must have shape \(M, 8\)"):
        L.classify(mem, np.ones((2, 5)))
    net = _tanh_net(jnp.asarray(1.5), 4, jnp.ones(4))
    with pytest.raises(TypeError, match=r"starts\['v'\] must be a floating array"):
        L.census(net, {"v": np.ones((3, 4), dtype=np.int32)})
    with pytest.raises(ValueError, match=r"starts\['v'\] must have shape"):
        L.census(net, {"v": jnp.ones((3, 5))})
    with pytest.raises(ValueError, match="point 0 is not a fixed point"):
        L.classify(net, {"v": jnp.full((1, 4), 0.3)})
    # per-neuron tau on a softmax layer: T and the Hessian do not commute
    p = jnp.asarray(np.random.default_rng(1).standard_normal((3, 4)))
    bad = ham.HAM(
        layers={"v": ham.Layer(ham.lagrangians.identity, shape=(4,)),
                "h": ham.Layer(ham.lagrangians.softmax, shape=(3,), tau=jnp.asarray([0.1, 0.2, 0.3]))},
        synapses={"w": ham.synapses.Dense(0 * p.T)}, connections={"w": ("v", "h")})
    with pytest.raises(ValueError, match="per-neuron time constants"):
        L.classify(bad, {"v": jnp.zeros((1, 4)), "h": jnp.zeros((1, 3))})  # a fixed point: g_v = 0, h = 0
    # the same tau per neuron on an elementwise Lagrangian is covered
    ok = ham.HAM(
        layers={"v": ham.Layer(ham.lagrangians.tanh, shape=(4,), tau=jnp.asarray([1.0, 2.0, 0.5, 1.0]))},
        synapses={"w": ham.synapses.Dense(jnp.zeros((4, 4)))}, connections={"w": ("v",)})
    r = L.classify(ok, {"v": jnp.zeros((1, 4))}, k=4)
    np.testing.assert_allclose(np.sort(np.asarray(r.eigenvalues[0])), [-2.0, -1.0, -1.0, -0.5], atol=1e-12)


def test_lanczos_with_the_softmax_factor_matches_dense_on_modern_hopfield(x64, monkeypatch):
    rng = np.random.default_rng(7)
    p = rng.standard_normal((6, 5))
    p = 2.0 * p / np.linalg.norm(p, axis=1, keepdims=True)
    net = ham.memories.modern(jnp.asarray(p), beta=3.0, hidden_tau=0.2).network
    sol = ham.relax(net, {"v": jnp.asarray(p[:3]), "h": jnp.asarray(p[:3] @ p.T)}, event_rtol=1e-12, event_atol=1e-12)
    dense = L.classify(net, sol.states, k=11)
    monkeypatch.setattr(L, "LAYER_DENSE_MAX", 2)  # the 6-neuron softmax layer takes the factor path
    lz = L.classify(net, sol.states, k=11, dense_max=1, lanczos_steps=11)
    np.testing.assert_array_equal(np.asarray(lz.index), np.asarray(dense.index))
    np.testing.assert_allclose(np.asarray(lz.eigenvalues), np.asarray(dense.eigenvalues), atol=1e-8)
