"""The field's newest DenseAMs: random-feature DenseAM (Hoover et al. 2024) and the
Epanechnikov / log-sum-ReLU energy (Hoover et al. 2025), as one-layer HAMs.

The sharded test runs ``tests/_frontier_sharding_script.py`` in a subprocess with 8
virtual CPU devices (the flag must be set before JAX starts)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ham
import ham.memories as M

SCRIPT = Path(__file__).with_name("_frontier_sharding_script.py")


def _patterns(k, d, seed=0, scale=1.0):
    return np.random.default_rng(seed).normal(size=(k, d)) * scale


def _exact_kernel_sum(patterns, x, beta):
    d2 = np.sum((np.asarray(x)[..., None, :] - patterns) ** 2, axis=-1)
    return np.sum(np.exp(-0.5 * beta * d2), axis=-1)


# ============================================================================ random features
@pytest.mark.parametrize("kind", ["trigonometric", "positive"])
def test_random_feature_kernel_estimate_is_unbiased(kind, x64):
    # E[phi(x).T] = sum_mu exp(-beta/2 |x - xi_mu|^2): the mean over 400 seeds lies within
    # 4 standard errors of the exact sum (a biased estimator, e.g. 1.1x, fails by > 10 SE)
    p = _patterns(12, 6, scale=0.5)
    beta, y = 0.8, 64
    queries = jnp.asarray(np.concatenate([p[:2] + 0.1, np.zeros((1, 6))]))
    exact = _exact_kernel_sum(p, queries, beta)
    est = jax.vmap(lambda k: M.random_features(p, beta, y, kind=kind, key=k).estimate(queries))(
        jax.random.split(jax.random.key(1), 400))
    est = np.asarray(est)
    mean, se = est.mean(0), est.std(0, ddof=1) / np.sqrt(est.shape[0])
    assert np.all(np.abs(mean - exact) < 4 * se), (mean, exact, se)
    assert np.all(se < 0.2 * exact)  # the check has power: the CI is narrow


def test_random_feature_error_falls_like_inverse_sqrt_of_features(x64):
    p = _patterns(16, 8, scale=0.4)
    beta = 1.0
    queries = jnp.asarray(p[:8] + 0.05 * _patterns(8, 8, seed=3))
    exact = _exact_kernel_sum(p, queries, beta)
    ys = np.array([32, 128, 512, 2048])
    keys = jax.random.split(jax.random.key(2), 24)
    errs = []
    for y in ys:
        est = np.asarray(jax.vmap(lambda k: M.random_features(p, beta, int(y), key=k).estimate(queries))(keys))
        errs.append(np.sqrt(np.mean(((est - exact) / exact) ** 2)))
    slope = np.polyfit(np.log(ys), np.log(errs), 1)[0]
    assert -0.62 < slope < -0.38, (slope, errs)


@pytest.mark.parametrize("kind", ["trigonometric", "positive"])
def test_random_feature_dynamics_are_autodiff_of_the_approximate_energy(kind, x64):
    p = _patterns(10, 5, scale=0.6)
    beta, y = 1.3, 256
    mem = M.random_features(p, beta, y, kind=kind, key=jax.random.key(0))
    omega, t = np.asarray(mem.omega), np.asarray(mem.tensor)

    def oracle(x):  # the approximate energy written from the formula, independently
        z = jnp.sqrt(beta) * (jnp.asarray(omega) @ x)
        if kind == "trigonometric":
            return -jnp.log(jnp.sum(jnp.cos(z) * t[:, 0] + jnp.sin(z) * t[:, 1]) / y) / beta
        return -(jax.nn.logsumexp(z - beta * x @ x + t[:, 0]) - jnp.log(y)) / beta

    xs = jnp.asarray(p[:4] + 0.2 * _patterns(4, 5, seed=4))
    np.testing.assert_allclose(mem.energy(xs), jax.vmap(oracle)(xs), rtol=1e-10)
    want = -jax.vmap(jax.grad(oracle))(xs)
    got = mem.network.vector_field(0.0, {"x": xs})["x"]  # tau = 1: -dE/dg of the HAM
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(mem.gradient(xs), -want, rtol=1e-9, atol=1e-12)
    # and autodiff agrees with central finite differences of the energy
    h = 1e-6
    x0 = xs[0]
    fd = np.array([(mem.energy(x0 + h * e) - mem.energy(x0 - h * e)) / (2 * h) for e in np.eye(5)])
    np.testing.assert_allclose(fd, -want[0], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", ["trigonometric", "positive"])
def test_random_feature_write_of_two_halves_equals_one_write_of_all(kind, x64):
    p = _patterns(300, 7)
    key = jax.random.key(5)
    whole = M.random_features(p, 0.7, 96, kind=kind, key=key)
    halves = M.random_features(p[:113], 0.7, 96, kind=kind, key=key).write(p[113:])
    np.testing.assert_allclose(halves.tensor, whole.tensor, rtol=1e-10, atol=1e-10)
    assert int(halves.count) == int(whole.count) == 300
    # a written pattern changes the energy exactly as storing it from the start
    q = jnp.asarray(p[:3] + 0.1)
    np.testing.assert_allclose(halves.energy(q), whole.energy(q), rtol=1e-10)


@pytest.mark.parametrize("kind", ["trigonometric", "positive"])
@pytest.mark.parametrize("block_size", [1, 7, 64, 1000])
def test_random_feature_blocked_write_equals_the_naive_feature_sum(kind, block_size, x64):
    # K = 150 rows in blocks of 7 and 64 (neither divides K: the last block overlaps and is masked),
    # 1 (a block per pattern) and 1000 (one block larger than K)
    p = _patterns(150, 5, seed=3)
    beta, y = 0.6, 40
    mem = M.random_features(p[:1], beta, y, kind=kind, key=jax.random.key(9))
    mem = mem.write(p[1:], block_size=block_size)
    z = np.sqrt(beta) * p @ np.asarray(mem.omega).T  # (K, Y)
    if kind == "trigonometric":
        want = np.stack([np.cos(z).sum(0), np.sin(z).sum(0)], -1)
    else:
        want = np.log(np.exp(z - beta * (p**2).sum(-1, keepdims=True)).sum(0))[:, None]
    np.testing.assert_allclose(mem.tensor, want, rtol=1e-12, atol=1e-12)
    assert int(mem.count) == 150


def test_random_feature_float32_sincos_is_accurate_with_the_exact_derivative():
    from ham.memories._random_features import sincos

    z = np.concatenate([np.linspace(-1e4, 1e4, 200_001), np.linspace(-7, 7, 20_001),
                        np.arange(-40, 41) * np.pi / 4]).astype(np.float32)  # quadrant edges included
    cos, sin = jax.jit(sincos)(jnp.asarray(z))
    assert cos.dtype == sin.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(cos, np.float64), np.cos(z.astype(np.float64)), rtol=0, atol=2e-7)
    np.testing.assert_allclose(np.asarray(sin, np.float64), np.sin(z.astype(np.float64)), rtol=0, atol=2e-7)
    # derivative (custom_jvp): (-sin, cos), equal to central finite differences in float64
    zs = jnp.asarray([-3.3, -0.2, 0.0, 0.7, 2.4, 11.0], jnp.float32)
    dcos = jax.vmap(jax.grad(lambda t: sincos(t)[0]))(zs)
    dsin = jax.vmap(jax.grad(lambda t: sincos(t)[1]))(zs)
    np.testing.assert_allclose(dcos, -np.sin(np.asarray(zs, np.float64)), atol=2e-7)
    np.testing.assert_allclose(dsin, np.cos(np.asarray(zs, np.float64)), atol=2e-7)


def test_random_feature_float64_sincos_is_the_library_cos_and_sin_with_finite_difference_derivative(x64):
    from ham.memories._random_features import sincos

    z = np.linspace(-20, 20, 41)
    cos, sin = sincos(jnp.asarray(z))
    np.testing.assert_allclose(cos, np.cos(z), rtol=0, atol=1e-15)
    np.testing.assert_allclose(sin, np.sin(z), rtol=0, atol=1e-15)
    h = 1e-6
    for i, f in ((0, lambda t: sincos(t)[0]), (1, lambda t: sincos(t)[1])):
        fd = (np.asarray(f(jnp.asarray(z + h))) - np.asarray(f(jnp.asarray(z - h)))) / (2 * h)
        np.testing.assert_allclose(jax.vmap(jax.grad(f))(jnp.asarray(z)), fd, atol=1e-8)


def test_random_feature_footprint_does_not_grow_with_the_number_of_patterns():
    y, d = 128, 16
    small = M.random_features(_patterns(10, d), 1.0, y, key=jax.random.key(0))
    large = small.write(_patterns(20_000, d, seed=1))

    def array_bytes(m):
        return sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(eqx.filter(m, eqx.is_array)))

    assert int(large.count) == 20_010
    assert array_bytes(small) == array_bytes(large)  # every array leaf, the pattern counter included
    itemsize = jnp.dtype(small.dtype).itemsize
    assert small.nbytes == large.nbytes == y * (d + 2) * itemsize  # omega (Y x D) + tensor (Y x 2)
    assert array_bytes(small) - small.nbytes == 4  # the int32 pattern counter
    # the exact memory of the same patterns grows with K; this one does not
    assert M.log_sum_exp(_patterns(20_010, d)).patterns.nbytes > 100 * small.nbytes


def test_random_feature_memory_retrieves_like_the_exact_model():
    p = _patterns(8, 16, seed=7)  # well separated at beta = 1 (|xi - xi'|^2 ~ 32)
    beta = 1.0
    queries = jnp.asarray(p + 0.25 * _patterns(8, 16, seed=8), jnp.float32)
    exact = M.log_sum_exp(p, beta).retrieve(queries)
    approx = M.random_features(p, beta, 4096, key=jax.random.key(3)).retrieve(queries)
    near = lambda z: np.argmin(np.sum((np.asarray(z)[:, None] - p) ** 2, -1), axis=1)  # noqa: E731
    assert np.array_equal(near(exact), np.arange(8)) and np.array_equal(near(approx), np.arange(8))
    assert float(np.max(np.abs(np.asarray(approx) - np.asarray(exact)))) < 0.15


def test_random_feature_clipped_queries_sit_on_a_zero_gradient_plateau(x64):
    p = _patterns(50, 4)
    mem = M.random_features(p, 4.0, 16, key=jax.random.key(0))
    far = jnp.asarray(_patterns(64, 4, seed=9) * 3 + 10.0)  # far from every memory: estimate ~ noise
    clipped = np.asarray(mem.clipped(far))
    assert clipped.any() and not clipped.all()
    est = np.asarray(mem.estimate(far))
    assert np.all(est[clipped] <= mem.floor)
    np.testing.assert_allclose(mem.energy(far)[clipped], -np.log(mem.floor) / 4.0)
    assert np.all(np.asarray(mem.gradient(far))[clipped] == 0.0)
    out = np.asarray(mem.retrieve(far[clipped]))
    np.testing.assert_array_equal(out, np.asarray(far[clipped]))
    # positive features are never clipped
    assert not np.asarray(M.random_features(p, 4.0, 16, kind="positive", key=jax.random.key(0)).clipped(far)).any()


def test_random_feature_bad_inputs_are_refused():
    p = _patterns(5, 3)
    key = jax.random.key(0)
    for y in (0, -4):
        with pytest.raises(ValueError, match="num_features"):
            M.random_features(p, 1.0, y, key=key)
    with pytest.raises(ValueError, match="num_features"):
        M.random_features(p, 1.0, 2.5, key=key)
    for beta in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="beta"):
            M.random_features(p, beta, 8, key=key)
    with pytest.raises(ValueError, match="kind"):
        M.random_features(p, 1.0, 8, kind="laplace", key=key)
    with pytest.raises(TypeError, match="key"):
        M.random_features(p, 1.0, 8, key=None)
    with pytest.raises(ValueError, match=r"patterns must have shape \(num_patterns, dim\)"):
        M.random_features(p[0], 1.0, 8, key=key)
    with pytest.raises(ValueError, match="non-empty"):
        M.random_features(p[:0], 1.0, 8, key=key)
    bad = p.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"patterns must be finite.*\(2, 1\)"):
        M.random_features(bad, 1.0, 8, key=key)
    mem = M.random_features(p, 1.0, 8, key=key)
    with pytest.raises(ValueError, match="dim=3"):
        mem.write(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="patterns must be finite"):
        mem.write(bad)
    with pytest.raises(ValueError, match=r"queries must have shape \(dim,\) or \(batch, dim\) with dim=3"):
        mem.retrieve(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="queries must be finite"):
        mem.retrieve(np.array([0.0, np.nan, 1.0]))
    with pytest.raises(ValueError, match="state must be finite"):
        mem.energy(np.array([np.inf, 0.0, 1.0]))


# ============================================================================ Epanechnikov
def test_epanechnikov_energy_matches_the_numpy_formula(x64):
    p = _patterns(30, 4, seed=1)
    beta, eps = 0.7, 1e-3
    mem = M.epanechnikov(p, beta, eps=eps)
    xs = np.concatenate([p[:5], p[:5] + 0.4, _patterns(5, 4, seed=2) * 6])  # at, near and far from patterns
    d2 = np.sum((xs[:, None, :] - p[None]) ** 2, -1)
    want = -np.log(eps + np.maximum(1 - beta / 2 * d2, 0).sum(-1)) / beta
    np.testing.assert_allclose(mem.energy(xs), want, rtol=1e-12)
    outside = ~np.asarray(mem.in_support(xs))
    assert outside.any()  # the plateau: E = -log(eps)/beta
    np.testing.assert_allclose(np.asarray(mem.energy(xs))[outside], -np.log(eps) / beta, rtol=1e-12)


def test_epanechnikov_stored_patterns_are_exact_fixed_points_when_pairwise_far(x64):
    p = _patterns(40, 6, seed=3)
    d2 = np.sum((p[:, None] - p[None]) ** 2, -1) + np.diag(np.full(40, np.inf))
    beta = 2.0 / d2.min()  # every pairwise squared distance >= 2/beta (the closest pair exactly at it)
    # and a pair exactly on each other's support edge in exact binary arithmetic: beta = 2, d^2 = 1
    edge = M.epanechnikov(np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 5.0]]), 2.0)
    for mem, pats in ((M.epanechnikov(p, beta), p), (edge, np.asarray(edge.patterns))):
        assert np.all(np.asarray(mem.gradient(pats)) == 0.0)  # exactly, not approximately
        assert np.all(np.asarray(mem.support_counts(pats)) == 1)
    mem = M.epanechnikov(p, beta)
    sol = mem.relax(p)  # relaxation does not move them
    np.testing.assert_array_equal(np.asarray(sol.states["x"]), p)
    start = p + 0.05 * np.sqrt(2 / beta) * _patterns(40, 6, seed=4)
    own = np.asarray(mem.support_counts(start)) == 1  # inside its own support only (else: an overlap's minimum)
    assert own.sum() >= 30
    sol = mem.relax(start)  # same shape as above: one compilation
    assert bool(np.all(sol.converged))
    np.testing.assert_allclose(np.asarray(sol.states["x"])[own], p[own], atol=1e-5)  # steady-state tolerance
    ham.lyapunov.check(sol)


def test_epanechnikov_patterns_closer_than_the_radius_merge(x64):
    beta = 1.0
    p = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])  # d^2 = 1 < 2/beta: each inside the other's support
    mem = M.epanechnikov(p, beta)
    assert np.all(np.abs(np.asarray(mem.gradient(p))) .max(-1) > 0.1)  # neither is a fixed point
    out = np.asarray(mem.retrieve(p))
    np.testing.assert_allclose(out, np.tile([0.5, 0.0, 0.0], (2, 1)), atol=1e-6)  # both flow to the midpoint


@pytest.mark.parametrize("model", ["epanechnikov", "random_features"])
def test_energy_never_rises_along_relaxation(model):
    p = _patterns(64, 8, seed=5)
    beta = 0.4
    u = _patterns(16, 8, seed=6)
    starts = p[:16] + 0.8 * np.sqrt(2 / beta) * u / np.linalg.norm(u, axis=1, keepdims=True)  # 0.8 radii away
    if model == "epanechnikov":
        mem = M.epanechnikov(p, beta)
        assert np.all(np.asarray(mem.in_support(starts)))
    else:
        mem = M.random_features(p, beta, 1024, key=jax.random.key(0))
    sol = mem.relax(jnp.asarray(starts, jnp.float32))
    ham.lyapunov.check(sol)
    assert np.all(np.asarray(sol.num_steps) >= 1)
    assert bool(np.all(sol.converged))
    e0, e1 = np.asarray(mem.energy(starts)), np.asarray(mem.energy(sol.states["x"]))
    assert np.all(e1 <= e0 + 1e-5)


def test_epanechnikov_two_overlapping_supports_make_an_emergent_minimum_in_closed_form(x64):
    # xi_1 = 0, xi_2 = d e_1 with 2/beta <= d^2 < 8/beta. Where both supports contain x,
    # S(x) = 2 - beta/2 (|x|^2 + |x - xi_2|^2), a concave quadratic with its maximum at the
    # midpoint m = xi_2 / 2 (grad S = -beta (2x - xi_2) = 0), where |m - xi_mu|^2 = d^2/4 <
    # 2/beta: m is inside both supports, so it is a strict local minimum of E with
    #   E(m) = -log(eps + 2 - beta d^2/4) / beta,
    # and each xi_mu (outside the other's support since d^2 >= 2/beta) stays a minimum with
    #   E(xi_mu) = -log(eps + 1) / beta.  With d^2 = 3, beta = 1: S(m) = 1.25 > 1.
    beta, eps, d = 1.0, 1e-6, np.sqrt(3.0)
    p = np.array([[0.0, 0.0], [d, 0.0]])
    mem = M.epanechnikov(p, beta, eps=eps)
    m = np.array([d / 2, 0.0])
    np.testing.assert_allclose(mem.energy(m), -np.log(eps + 2 - beta * d**2 / 4) / beta, rtol=1e-12)
    np.testing.assert_allclose(mem.energy(p), -np.log(eps + 1.0) / beta, rtol=1e-12)
    np.testing.assert_allclose(mem.gradient(m), 0.0, atol=1e-15)
    assert int(mem.support_counts(m)) == 2
    # strict minimum: the Hessian there is (2/(eps + S)) I, positive definite
    hess = jax.hessian(mem.energy_of)(jnp.asarray(m))
    np.testing.assert_allclose(hess, 2.0 / (eps + 1.25) * np.eye(2), rtol=1e-9)
    # relaxation finds it from inside the overlap, and the stored patterns from their own parts
    starts = np.array([[0.7, 0.4], [1.1, -0.3], [0.1, 0.2], [d - 0.1, -0.1]])
    sol = mem.relax(starts)
    ham.lyapunov.check(sol)
    np.testing.assert_allclose(sol.states["x"], [m, m, p[0], p[1]], atol=1e-5)  # steady-state tolerance
    # the barrier between m and xi_1 on the segment sits on a kink: the path maximum is where the
    # segment leaves xi_2's support, |x - xi_2|^2 = 2/beta, i.e. x_1 = d - sqrt(2/beta)
    t = np.linspace(0, 1, 20001)
    path = t[:, None] * m
    e = np.asarray(mem.energy(path))
    x_star = d - np.sqrt(2 / beta)
    assert abs(path[np.argmax(e), 0] - x_star) < 1e-3
    np.testing.assert_allclose(e.max(), -np.log(eps + 1 - beta / 2 * x_star**2) / beta, atol=1e-4)  # grid step 4e-5


def test_epanechnikov_queries_outside_every_support_stay_put():
    p = _patterns(10, 3)
    mem = M.epanechnikov(p, 2.0)
    far = jnp.asarray(_patterns(4, 3, seed=1) + 50.0, jnp.float32)
    assert not np.asarray(mem.in_support(far)).any()
    np.testing.assert_array_equal(np.asarray(mem.retrieve(far)), np.asarray(far))


def test_epanechnikov_bad_inputs_are_refused():
    p = _patterns(5, 3)
    for beta in (0.0, -2.0, float("nan")):
        with pytest.raises(ValueError, match="epanechnikov: beta"):
            M.epanechnikov(p, beta)
    for eps in (0.0, -1e-3, float("inf")):
        with pytest.raises(ValueError, match="epanechnikov: eps"):
            M.epanechnikov(p, 1.0, eps=eps)
    with pytest.raises(ValueError, match=r"patterns must have shape \(num_patterns, dim\)"):
        M.epanechnikov(np.zeros((2, 3, 4)), 1.0)
    bad = p.copy()
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match="patterns must be finite"):
        M.epanechnikov(bad, 1.0)
    mem = M.epanechnikov(p, 1.0)
    with pytest.raises(ValueError, match="dim=3"):
        mem.retrieve(np.zeros(4))
    with pytest.raises(ValueError, match="queries must be finite"):
        mem.retrieve(np.array([[0.0, np.nan, 1.0]]))


def test_one_layer_memories_are_instances_of_the_core():
    p = _patterns(6, 4)
    for mem in (M.epanechnikov(p, 0.5), M.random_features(p, 0.5, 32, key=jax.random.key(0)), M.log_sum_exp(p, 0.5)):
        net = mem.network
        assert isinstance(net, ham.HAM) and set(net.layers) == {"x"}
        xs = jnp.asarray(p[:3] + 0.3, jnp.float32)
        np.testing.assert_allclose(net.energy({"x": xs}), mem.energy(xs), rtol=1e-5, atol=1e-6)
    assert mem.retrieve(xs[0]).shape == (4,) and mem.retrieve(xs).shape == (3, 4)  # batched or not


# ============================================================================ sharded
@pytest.fixture(scope="module")
def sharded_report():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # an 8-device subprocess (~25 s); tests/test_sharding.py keeps the sharded machinery in the default suite
def test_sharded_one_layer_memories_equal_the_unsharded_ones(sharded_report):
    for name, r in sharded_report["cases"].items():
        assert r["devices"] == 8, name
        # float32; relaxations stop within the steady-state tolerance (1e-4): summation order moves the stop
        assert r["retrieve_err"] < 2e-3, (name, r)
        assert r["energy_err"] < 1e-5, (name, r)
        assert r["rows_per_device"] == r["rows"] // 8, (name, r)


@pytest.mark.slow  # shares the 8-device subprocess above
def test_sharded_one_layer_programs_merge_partials_without_gathering_rows(sharded_report):
    for name, r in sharded_report["cases"].items():
        assert r["all_reduces"] >= 1, (name, r)
        assert r["gathers"] == [], (name, r)
        assert not r["full_rows_in_program"], (name, r)


def test_epanechnikov_start_at_a_support_edge_is_not_thrown_onto_the_plateau():
    # the gradient (x - xi)/(eps + S) is ~1e4 here; a step that leaves every support raises the
    # energy to the plateau -log(eps)/beta and must be rejected (it was accepted when the energy
    # was split into 1/2|x|^2 + (E - 1/2|x|^2), whose float32 round-off grows with |x|^2)
    mem = M.epanechnikov(np.array([[0.0, 0.0], [3.0, 0.0]], np.float32), 1.0)
    x0 = np.array([np.sqrt(2.0) * (1 - 2e-4), 0.0], np.float32)
    sol = mem.relax(x0)
    ham.lyapunov.check(sol)
    assert bool(sol.converged) and bool(mem.in_support(sol.states["x"]))
    np.testing.assert_allclose(sol.states["x"], [0.0, 0.0], atol=2e-4)
