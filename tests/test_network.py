"""HAM energy, activations and vector field against independent formulas; construction errors."""

import functools as ft

import chex
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ham
from _oracles import CATALOGUE, np_sigmoid, np_softmax

L = ham.lagrangians


def two_layer(key, nv=5, nh=4, beta_v=2.0, beta_h=3.0, tau_v=1.0, tau_h=0.5):
    kw, kb = jax.random.split(key)
    W = jax.random.normal(kw, (nv, nh)) / np.sqrt(nv)
    b = 0.1 * jax.random.normal(kb, (nv,))
    net = ham.HAM(
        layers={
            "v": ham.Layer(ft.partial(L.sigmoid, beta=beta_v), (nv,), tau=tau_v),
            "h": ham.Layer(ft.partial(L.softmax, beta=beta_h), (nh,), tau=tau_h),
        },
        synapses={"w": ham.synapses.Dense(W), "b": ham.synapses.Bias(b)},
        connections={"w": ("v", "h"), "b": ("v",)},
    )
    return net, np.asarray(W), np.asarray(b)


def hand_energy(v, h, W, b, beta_v=2.0, beta_h=3.0):
    gv, gh = np_sigmoid(beta_v * v), np_softmax(beta_h * h)
    lv = np.sum(np.logaddexp(0.0, beta_v * v)) / beta_v
    m = np.max(beta_h * h)
    lh = (m + np.log(np.sum(np.exp(beta_h * h - m)))) / beta_h
    return v @ gv - lv + h @ gh - lh - gv @ W @ gh - b @ gv


def test_two_layer_energy_equals_hand_written_formula(x64):
    net, W, b = two_layer(jax.random.PRNGKey(0))
    rng = np.random.default_rng(1)
    for _ in range(5):
        v, h = rng.normal(size=5), rng.normal(size=4)
        e = net.energy({"v": jnp.asarray(v), "h": jnp.asarray(h)})
        np.testing.assert_allclose(float(e), hand_energy(v, h, W, b), rtol=1e-12)


def test_vector_field_equals_hand_written_dynamics(x64):
    net, W, b = two_layer(jax.random.PRNGKey(0))
    rng = np.random.default_rng(2)
    v, h = rng.normal(size=5), rng.normal(size=4)
    dx = net.vector_field(0.0, {"v": jnp.asarray(v), "h": jnp.asarray(h)})
    gv, gh = np_sigmoid(2.0 * v), np_softmax(3.0 * h)
    np.testing.assert_allclose(dx["v"], -(v - W @ gh - b) / 1.0, rtol=1e-12)
    np.testing.assert_allclose(dx["h"], -(h - W.T @ gv) / 0.5, rtol=1e-12)


def test_vector_field_is_minus_energy_gradient_wrt_activations(x64):
    net, W, b = two_layer(jax.random.PRNGKey(3))
    xs = net.init_states(key=jax.random.PRNGKey(4))
    # dE/dg with x held fixed: differentiate E(x, g) = sum x.g - L(x) + E_syn(g) in g.
    def e_of_g(gs):
        e = sum(jnp.vdot(xs[k], gs[k]) - net.layers[k].lagrangian(xs[k]) for k in xs)
        return e + net._synapse_energy(gs)

    dEdg = jax.grad(e_of_g)(net.activations(xs))
    dx = net.vector_field(0.0, xs)
    chex.assert_trees_all_close(dx, {k: -dEdg[k] / net.layers[k].tau for k in xs}, rtol=1e-12)


@pytest.mark.parametrize("name", ["identity", "sigmoid", "tanh", "exponential", "rectified_polynomial"])
def test_legendre_identity_dE_layer_dg_equals_x(x64, name):
    """E_A(g) = x.g - L(x) with x = x(g): chain rule gives dE/dx = H x, so dE/dg = H^{-1} H x = x."""
    lag, _ = CATALOGUE[name]
    layer = ham.Layer(lag, (6,))
    x = jnp.asarray(np.random.default_rng(5).uniform(0.2, 1.5, size=6))  # > 0: relu/poly invertible
    dEdx = jax.grad(lambda z: layer.energy(z))(x)
    H = jax.hessian(lag)(x)
    np.testing.assert_allclose(np.linalg.solve(np.asarray(H), np.asarray(dEdx)), np.asarray(x), rtol=1e-8)


def test_energy_terms_sum_to_energy_and_batching_matches_single(x64):
    net, _, _ = two_layer(jax.random.PRNGKey(0))
    xs = net.init_states(batch_shape=(2, 3), key=jax.random.PRNGKey(6))
    e = net.energy(xs)
    assert e.shape == (2, 3)
    terms = net.energy_terms(xs)
    np.testing.assert_allclose(sum(terms.values()), e, rtol=1e-12)
    single = net.energy({k: v[1, 2] for k, v in xs.items()})
    np.testing.assert_allclose(e[1, 2], single, rtol=1e-12)
    g = net.activations(xs)
    assert g["h"].shape == (2, 3, 4)
    np.testing.assert_allclose(g["h"].sum(-1), 1.0)


def test_init_states_are_deterministic_per_key():
    net, _, _ = two_layer(jax.random.PRNGKey(0))
    a = net.init_states(batch_shape=(4,), key=jax.random.PRNGKey(7))
    b = net.init_states(batch_shape=(4,), key=jax.random.PRNGKey(7))
    c = net.init_states(batch_shape=(4,), key=jax.random.PRNGKey(8))
    chex.assert_trees_all_equal(a, b)
    assert not np.allclose(a["v"], c["v"])
    z = net.init_states()
    assert all(np.all(v == 0) for v in z.values())


class Trilinear(ham.synapses.Synapse):
    """A synapse joining three layers: E = -sum_ijk T_ijk a_i b_j c_k."""

    T: jax.Array

    def energy(self, a, b, c):
        return -jnp.einsum("ijk,i,j,k->", self.T, a, b, c)


def test_synapse_joining_three_layers_and_layers_of_any_shape(x64):
    T = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 4))
    net = ham.HAM(
        layers={
            "a": ham.Layer(L.tanh, (2,)),
            "b": ham.Layer(L.identity, (3,)),
            "c": ham.Layer(L.softmax, (4,)),
            "img": ham.Layer(L.relu, (2, 2, 3)),
        },
        synapses={"t": Trilinear(T), "d": ham.synapses.Dense(jnp.ones((2, 2, 3, 3)) * 0.01)},
        connections={"t": ("a", "b", "c"), "d": ("img", "b")},
    )
    xs = net.init_states(key=jax.random.PRNGKey(1))
    ga, gb, gc = np.tanh(xs["a"]), np.asarray(xs["b"]), np_softmax(np.asarray(xs["c"]))
    dx = net.vector_field(0.0, xs)
    np.testing.assert_allclose(dx["a"], -(xs["a"] - np.einsum("ijk,j,k->i", T, gb, gc)), rtol=1e-10)
    np.testing.assert_allclose(dx["c"], -(xs["c"] - np.einsum("ijk,i,j->k", T, ga, gb)), rtol=1e-10)


# ---------------------------------------------------------------- construction errors
def _layers():
    return {"v": ham.Layer(L.identity, (5,)), "h": ham.Layer(L.softmax, (4,))}


def test_dense_shape_mismatch_names_synapse_and_shapes():
    with pytest.raises(ValueError, match=r"synapse 'w'.*\(4, 5\).*\(5, 4\).*\(5,\), \(4,\)"):
        ham.HAM(layers=_layers(), synapses={"w": ham.synapses.Dense(jnp.zeros((4, 5)))}, connections={"w": ("v", "h")})


def test_bias_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match=r"synapse 'b' \(Bias\).*\(3,\)"):
        ham.HAM(layers=_layers(), synapses={"b": ham.synapses.Bias(jnp.zeros(3))}, connections={"b": ("v",)})


def test_unknown_layer_in_connections_is_refused():
    with pytest.raises(ValueError, match=r"synapse 'w' joins unknown layer 'hidden'.*\['h', 'v'\]"):
        ham.HAM(layers=_layers(), synapses={"w": ham.synapses.Dense(jnp.zeros((5, 4)))}, connections={"w": ("v", "hidden")})


def test_synapse_without_connection_is_refused():
    with pytest.raises(ValueError, match=r"no entry in connections"):
        ham.HAM(layers=_layers(), synapses={"w": ham.synapses.Dense(jnp.zeros((5, 4)))}, connections={})


def test_states_with_wrong_shape_or_batch_are_refused():
    net = ham.HAM(layers=_layers(), synapses={"w": ham.synapses.Dense(jnp.zeros((5, 4)))}, connections={"w": ("v", "h")})
    with pytest.raises(ValueError, match=r"layer 'v' has shape \(6,\)"):
        net.energy({"v": jnp.zeros(6), "h": jnp.zeros(4)})
    with pytest.raises(ValueError, match=r"different batch shapes"):
        net.energy({"v": jnp.zeros((2, 5)), "h": jnp.zeros((3, 4))})
    with pytest.raises(ValueError, match=r"states have layers"):
        net.energy({"v": jnp.zeros(5)})


def test_network_is_a_pytree_that_jit_vmap_and_grad_go_through():
    net, _, _ = two_layer(jax.random.PRNGKey(0))
    xs = net.init_states(batch_shape=(3,), key=jax.random.PRNGKey(1))
    e_jit = eqx.filter_jit(lambda n, x: n.energy(x))(net, xs)
    np.testing.assert_allclose(e_jit, net.energy(xs), rtol=1e-6)
    grads = eqx.filter_grad(lambda n: jnp.sum(n.energy(xs)))(net)
    assert grads.synapses["w"].weight.shape == (5, 4)
    # dE/dW = -g_v g_h^T summed over the batch
    g = net.activations(xs)
    np.testing.assert_allclose(grads.synapses["w"].weight, -jnp.einsum("bi,bj->ij", g["v"], g["h"]), rtol=1e-5)
