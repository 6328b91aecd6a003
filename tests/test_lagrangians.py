"""Every Lagrangian: autodiff activation = closed form; convex; stable for large inputs."""

import functools as ft

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import ham
from _oracles import CATALOGUE, NAMES, np_softmax

L = ham.lagrangians
SHAPES = [(5,), (3, 4)]


@pytest.mark.parametrize("name", NAMES)
@given(seed=st.integers(0, 2**31 - 1), shape=st.sampled_from(SHAPES), scale=st.sampled_from([0.1, 1.0, 4.0]))
def test_activation_equals_closed_form(x64, name, seed, shape, scale):
    lag, act = CATALOGUE[name]
    x = scale * np.random.default_rng(seed).normal(size=shape)
    g = jax.grad(lag)(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(g), act(x), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
@given(seed=st.integers(0, 2**31 - 1), scale=st.sampled_from([0.3, 1.0, 3.0]))
def test_hessian_is_positive_semidefinite(x64, name, seed, scale):
    lag, _ = CATALOGUE[name]
    x = scale * np.random.default_rng(seed).normal(size=(6,))
    h = np.asarray(jax.hessian(lag)(jnp.asarray(x)))
    np.testing.assert_allclose(h, h.T, atol=1e-10)
    assert np.linalg.eigvalsh(h).min() >= -1e-9 * (1 + np.abs(h).max())


@pytest.mark.parametrize("name", NAMES)
def test_lagrangian_returns_scalar_and_legendre_energy_is_finite(name):
    lag, _ = CATALOGUE[name]
    x = jnp.linspace(-3, 3, 12).reshape(3, 4)
    assert jnp.shape(lag(x)) == ()
    layer = ham.Layer(lag, shape=(3, 4))
    assert jnp.isfinite(layer.energy(x))


@pytest.mark.parametrize(
    "lag",
    [
        ft.partial(L.softmax, beta=1e4),
        ft.partial(L.sigmoid, beta=1e4),
        ft.partial(L.tanh, beta=1e4),
        ft.partial(L.exponential, beta=50.0),
        ft.partial(L.layernorm, gamma=2.0),
        L.spherical,
        ft.partial(L.rectified_polynomial, n=4),
    ],
    ids=["softmax", "sigmoid", "tanh", "exponential", "layernorm", "spherical", "polynomial"],
)
def test_large_inputs_and_large_beta_stay_finite(lag):
    x = jnp.array([1e3, -1e3, 30.0, 0.0, 88.0], dtype=jnp.float32)
    val, g = jax.value_and_grad(lag)(x)
    assert jnp.isfinite(val), val
    assert jnp.all(jnp.isfinite(g)), g


def test_softmax_large_beta_is_argmax():
    x = jnp.array([0.1, 0.3, 0.2])
    g = jax.grad(ft.partial(L.softmax, beta=1e5))(x)
    np.testing.assert_allclose(g, [0.0, 1.0, 0.0], atol=1e-6)


def test_softmax_is_per_row_for_matrix_layers(x64):
    x = np.random.default_rng(0).normal(size=(3, 5))
    g = jax.grad(L.softmax)(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(g), np_softmax(x), rtol=1e-10)
    np.testing.assert_allclose(np.asarray(g).sum(-1), 1.0)


def test_exponential_saturates_instead_of_overflowing():
    g = jax.grad(ft.partial(L.exponential, max_exponent=10.0))(jnp.array([5.0, 10.0, 20.0]))
    np.testing.assert_allclose(g, [np.exp(5.0), np.exp(10.0), np.exp(10.0)], rtol=1e-5)


def test_spherical_at_origin_has_zero_gradient_not_nan():
    g = jax.grad(L.spherical)(jnp.zeros(4))
    assert jnp.all(g == 0)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: L.softmax(jnp.ones(3), beta=0.0), "beta must be > 0"),
        (lambda: L.sigmoid(jnp.ones(3), beta=-1.0), "beta must be > 0"),
        (lambda: L.tanh(jnp.ones(3), beta=0), "beta must be > 0"),
        (lambda: L.exponential(jnp.ones(3), beta=-2.0), "beta must be > 0"),
        (lambda: L.rectified_polynomial(jnp.ones(3), n=0.5), "n must be >= 1"),
        (lambda: L.layernorm(jnp.ones(3), gamma=-1.0), "gamma must be >= 0"),
    ],
)
def test_invalid_parameters_are_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_non_convex_lagrangian_is_refused_naming_the_layer():
    with pytest.raises(ValueError, match=r"not convex.*shape \(4,\)|Layer\(.*not convex"):
        ham.Layer(lambda x: -L.identity(x), shape=(4,))


def test_non_scalar_lagrangian_is_refused():
    with pytest.raises(ValueError, match="must return a scalar"):
        ham.Layer(lambda x: x**2, shape=(4,))
