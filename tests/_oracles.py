"""Closed-form activations (oracles for the autodiff ones) and Lagrangian catalogue."""

import functools as ft

import jax.numpy as jnp
import numpy as np

import ham

L = ham.lagrangians


def np_softmax(z, axis=-1):
    z = z - np.max(z, axis=axis, keepdims=True)
    e = np.exp(z)
    return e / np.sum(e, axis=axis, keepdims=True)


def np_sigmoid(z):
    return 0.5 * (1 + np.tanh(0.5 * z))


def layernorm_act(x, gamma, delta, eps):
    xc = x - x.mean(-1, keepdims=True)
    return gamma * xc / np.sqrt((xc**2).mean(-1, keepdims=True) + eps) + delta


# name -> (lagrangian, closed-form activation on numpy float64 arrays)
CATALOGUE = {
    "identity": (L.identity, lambda x: x),
    "relu": (L.relu, lambda x: np.maximum(x, 0)),
    "sigmoid": (ft.partial(L.sigmoid, beta=2.0), lambda x: np_sigmoid(2.0 * x)),
    "tanh": (ft.partial(L.tanh, beta=1.5), lambda x: np.tanh(1.5 * x)),
    "softmax": (ft.partial(L.softmax, beta=3.0), lambda x: np_softmax(3.0 * x)),
    "layernorm": (
        ft.partial(L.layernorm, gamma=1.3, delta=0.2, eps=1e-5),
        lambda x: layernorm_act(x, 1.3, 0.2, 1e-5),
    ),
    "spherical": (L.spherical, lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)),
    "rectified_polynomial": (
        ft.partial(L.rectified_polynomial, n=3),
        lambda x: np.maximum(x, 0) ** 2,
    ),
    "exponential": (ft.partial(L.exponential, beta=0.5), lambda x: np.exp(0.5 * x)),
}
NAMES = sorted(CATALOGUE)
