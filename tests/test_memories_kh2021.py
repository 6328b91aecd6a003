"""Krotov & Hopfield 2021's visible + hidden model: its limits A, B, C with fast hidden
neurons reproduce Dense Associative Memory, the modern Hopfield network and the
spherical model C (closed forms written out here), and every relaxation is Lyapunov."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ham

M = ham.memories


def pm1(rng, k, n):
    return np.where(rng.random((k, n)) < 0.5, -1.0, 1.0)


def tanh_legendre(v, beta):
    return v @ np.tanh(beta * v) - np.sum(np.log(np.cosh(beta * v))) / beta


@pytest.mark.parametrize("interaction", ["polynomial", "exponential"])
def test_model_a_effective_energy_is_dense_associative_memory_energy(interaction, x64):
    rng = np.random.default_rng(0)
    p = pm1(rng, 6, 10)
    if interaction == "polynomial":
        kh = M.krotov_hopfield_2021(p, "A", n=3, rectified=True, visible_beta=2.0)
        dam = M.dense(p, n=3, rectified=True)
    else:
        kh = M.krotov_hopfield_2021(p, "A", interaction="exponential", beta=0.5, visible_beta=2.0)
        dam = M.exponential(p, beta=0.5)
    v = rng.normal(size=(4, 10))
    g = np.tanh(2.0 * v)
    want = np.array([tanh_legendre(x, 2.0) for x in v]) + np.asarray(dam.energy(g))
    # the network energy with the hidden neurons at h = xi g(v) (tau_h -> 0) ...
    np.testing.assert_allclose(kh.network.energy({"v": v, "h": g @ p.T}), want, rtol=1e-10)
    # ... is the effective energy, and on binary states it is E_DAM(sigma) + const
    np.testing.assert_allclose(kh.effective_energy(v), want, rtol=1e-10)
    big = 50.0 * np.sign(v)  # tanh(2 * 50) = ±1 to double precision
    legendre_limit = 10 * np.log(2.0) / 2.0  # sum_i log 2 / beta
    np.testing.assert_allclose(kh.effective_energy(big), dam.energy(np.sign(v)) + legendre_limit, rtol=1e-10)


def test_model_a_relaxation_recovers_the_dense_associative_memory_and_is_lyapunov():
    rng = np.random.default_rng(1)
    p = pm1(rng, 8, 16)
    dam = M.dense(p, n=3, rectified=True)
    net_mem = M.krotov_hopfield_2021(p, "A", n=3, rectified=True, visible_beta=1.0)
    q = p[:3].copy()
    q[:, :3] *= -1
    sol = net_mem.relax(q)
    assert bool(jnp.all(sol.converged)), sol.reason
    ham.lyapunov.check(sol)
    g = net_mem.network.activations(sol.states)["v"]
    np.testing.assert_array_equal(np.sign(np.asarray(g)), np.asarray(dam.retrieve(q)))
    np.testing.assert_array_equal(np.sign(np.asarray(g)), p[:3])
    # dense(...).network is this model A network
    assert isinstance(dam.network, ham.HAM)
    assert M.dense(p, n=3).network is None  # z^3 is not convex: no HAM


def test_exponential_dam_network_relaxation_is_lyapunov_and_recalls():
    rng = np.random.default_rng(5)
    p = pm1(rng, 10, 12)
    mem = M.exponential(p, beta=0.3)
    kh = M.krotov_hopfield_2021(p, "A", interaction="exponential", beta=0.3)
    q = p[:2].copy()
    q[:, :2] *= -1
    sol = ham.relax(mem.network, kh.init_states(q))
    assert bool(jnp.all(sol.converged)), sol.reason
    ham.lyapunov.check(sol)
    g = mem.network.activations(sol.states)["v"]
    np.testing.assert_array_equal(np.sign(np.asarray(g)), np.asarray(mem.retrieve(q)))


def test_model_b_is_the_modern_hopfield_network_and_attention(x64):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(12, 5))
    kh = M.krotov_hopfield_2021(x, "B", beta=1.5)
    mod = M.modern(x, beta=1.5)
    v, h = rng.normal(size=(3, 5)), rng.normal(size=(3, 12))
    np.testing.assert_allclose(kh.network.energy({"v": v, "h": h}), mod.network.energy({"v": v, "h": h}), rtol=1e-12)
    att = jax.nn.softmax(1.5 * v @ x.T, axis=-1) @ x
    np.testing.assert_allclose(kh.update(v), att, rtol=1e-10)
    const = np.log(12) / 1.5 + 0.5 * np.max(np.sum(x * x, 1))
    np.testing.assert_allclose(kh.effective_energy(v) + const, mod.energy(v), rtol=1e-10)


def test_fast_hidden_neurons_follow_the_reduced_visible_dynamics():
    """tau_h -> 0: the full two-layer trajectory v(t) approaches that of the reduced ODE
    dv/dt = -v + xi^T softmax(beta xi v), with error shrinking with tau_h."""
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)
    kh = M.krotov_hopfield_2021(x, "B", beta=1.0)
    v0 = jnp.asarray(rng.normal(size=4), jnp.float32)
    reduced = diffrax.diffeqsolve(
        diffrax.ODETerm(lambda t, v, a: -v + x.T @ jax.nn.softmax(x @ v)), diffrax.Tsit5(), 0.0, 1.0, 0.01, v0,
        stepsize_controller=diffrax.PIDController(rtol=1e-6, atol=1e-7),
    ).ys[-1]
    errs = []
    for tau in (0.1, 0.003):
        sol = kh.relax(v0, hidden_tau=tau, t1=1.0)
        errs.append(float(jnp.linalg.norm(sol.states["v"] - reduced)))
    assert errs[1] < 0.05 * float(jnp.linalg.norm(reduced))
    assert errs[1] < errs[0] / 5


def test_model_c_is_the_spherical_memory(x64):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(6, 8))
    n = 3
    kh = M.krotov_hopfield_2021(x, "C", n=n)
    v = rng.normal(size=(3, 8))
    vhat = v / np.linalg.norm(v, axis=1, keepdims=True)
    want = -np.sum(np.maximum(vhat @ x.T, 0) ** n, axis=1) / n
    np.testing.assert_allclose(kh.effective_energy(v), want, rtol=1e-10)
    np.testing.assert_allclose(kh.network.energy({"v": v, "h": vhat @ x.T}), want, rtol=1e-10)
    sol = kh.relax(x[:2] + 0.2 * rng.normal(size=(2, 8)))
    assert bool(jnp.all(sol.converged)), sol.reason
    ham.lyapunov.check(sol)
    vs = np.asarray(sol.states["v"])
    vs_hat = vs / np.linalg.norm(vs, axis=1, keepdims=True)
    np.testing.assert_allclose(vs, np.maximum(vs_hat @ x.T, 0) ** (n - 1) @ x, rtol=1e-5, atol=1e-6)


def test_krotov_hopfield_2021_rejects_bad_input():
    p = np.ones((3, 4))
    with pytest.raises(ValueError, match="unknown model 'D'"):
        M.krotov_hopfield_2021(p, "D")
    with pytest.raises(ValueError, match="give model"):
        M.krotov_hopfield_2021(p)
    with pytest.raises(ValueError, match="not convex"):
        M.krotov_hopfield_2021(p, visible_lagrangian=lambda v: -jnp.sum(v**2), hidden_lagrangian=ham.lagrangians.relu)
    with pytest.raises(ValueError, match="not convex"):
        M.krotov_hopfield_2021(p, "A", n=3, rectified=False)
    with pytest.raises(ValueError, match="beta must be > 0"):
        M.krotov_hopfield_2021(p, "B", beta=0)
