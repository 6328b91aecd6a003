"""The Energy Transformer as a ham.HAM: its energy is the attention + Hopfield energy
(the paper's form, default), plus the layer-norm layer's Legendre energy with
legendre=True (checked against float64 oracles); the paper form has no leak; its
inference never raises the energy in either form; and patches tile images exactly."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ham
from ham.energy_transformer import EnergyTransformer, LayerNormLagrangian, patchify, unpatchify

from test_attention_hopfield_synapses import attention_energy_oracle, hopfield_energy_oracle


def _layernorm_oracle(x, gamma, delta, eps):
    """g = γ (x − x̄)/√(var + ε) + δ and E_layer = x·g − L per token, in float64."""
    x = np.asarray(x, np.float64)
    xc = x - x.mean(-1, keepdims=True)
    sd = np.sqrt((xc**2).mean(-1, keepdims=True) + eps)
    g = gamma * xc / sd + delta
    lagrangian = np.sum(x.shape[-1] * gamma * sd[..., 0]) + np.sum(delta * x)
    return g, float(np.sum(x * g) - lagrangian)


def _random_et(seed, kind="relu", tokens=5, dim=6, eps=1e-5, legendre=False):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    et = EnergyTransformer(
        tokens, dim, heads=2, head_dim=3, memories=7, kind=kind, hopfield_beta=1.5, eps=eps, legendre=legendre, key=k1
    )
    # non-trivial gamma and delta
    lag = LayerNormLagrangian(jnp.asarray(1.7), 0.3 * jax.random.normal(k2, (dim,)), eps)
    et = eqx.tree_at(lambda m: m.network.layers["tokens"].lagrangian, et, lag)
    return et, jax.random.normal(k3, (3, tokens, dim))


@pytest.mark.parametrize("legendre", [False, True])
@pytest.mark.parametrize("kind", ["relu", "softmax"])
def test_et_energy_is_attention_plus_hopfield_plus_legendre_if_asked(kind, legendre):
    with jax.enable_x64(True):
        et, xs = _random_et(0, kind, legendre=legendre)
        assert et.legendre is legendre
        att, hop = et.network.synapses["attention"], et.network.synapses["hopfield"]
        lag = et.network.layers["tokens"].lagrangian
        energies = eqx.filter_jit(lambda et, xs: et.energy(xs))(et, xs)
        for x, e in zip(xs, energies):
            g, e_layer = _layernorm_oracle(x, float(lag.gamma), np.asarray(lag.delta), lag.eps)
            want = (
                (e_layer if legendre else 0.0) + attention_energy_oracle(att.W_K, att.W_Q, att.beta, g)
                + hopfield_energy_oracle(hop.xi, g, kind, 1.5)
            )
            np.testing.assert_allclose(float(e), want, rtol=1e-9)
        g, _ = _layernorm_oracle(xs, float(lag.gamma), np.asarray(lag.delta), lag.eps)
        np.testing.assert_allclose(np.asarray(et.activations(xs)), g, rtol=1e-9, atol=1e-12)


def test_paper_form_has_no_leak_the_legendre_form_leaks_x(x64):
    """One step of size a: x1 = x0 - a dE_syn/dg (paper) and x1 = (1 - a) x0 - a dE_syn/dg (HAM),
    so the two steps from the same x0 differ by exactly -a x0."""
    a = 0.3
    paper, xs = _random_et(5)
    leaky = eqx.tree_at(lambda m: m.network, paper, _random_et(5, legendre=True)[0].network)
    step = eqx.filter_jit(lambda et, x: et.descend(x, step_size=a, steps=1).states["tokens"])
    diff = np.asarray(step(leaky, xs)) - np.asarray(step(paper, xs))
    np.testing.assert_allclose(diff, -a * np.asarray(xs), rtol=1e-9, atol=1e-12)


def test_et_default_structure():
    et = EnergyTransformer(4, 8, heads=2, key=jax.random.PRNGKey(0))
    assert et.legendre is False  # the paper's energy by default
    att, hop = et.network.synapses["attention"], et.network.synapses["hopfield"]
    assert att.W_K.shape == att.W_Q.shape == (2, 4, 8)
    assert att.beta == pytest.approx(0.5)
    assert hop.xi.shape == (32, 8) and hop.kind == "relu"
    assert et.shape == (4, 8)
    # gamma and delta are trainable arrays
    trainable = eqx.filter(et, eqx.is_inexact_array)
    assert trainable.network.layers["tokens"].lagrangian.gamma is not None
    assert trainable.network.layers["tokens"].lagrangian.delta.shape == (8,)


def test_layernorm_lagrangian_rejects_negative_gamma():
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        LayerNormLagrangian(jnp.asarray(-0.5), jnp.zeros(3))
    with pytest.raises(ValueError, match="eps must be > 0"):
        LayerNormLagrangian(1.0, 0.0, eps=0.0)


@pytest.mark.parametrize("legendre", [False, True])
@pytest.mark.parametrize("kind", ["relu", "softmax"])
def test_energy_never_rises_along_et_descend(kind, legendre):
    # (relax on the same network: test_attention_hopfield_synapses.py)
    descend = eqx.filter_jit(lambda et, x: et.descend(x, step_size=0.05, steps=60))
    for seed in range(3):
        et, xs = _random_et(seed, kind, legendre=legendre)
        sol = descend(et, xs)
        ham.lyapunov.check(sol)
        assert np.all(np.asarray(sol.energies[:, -1] < sol.energies[:, 0]))


def test_et_descend_is_differentiable_by_unrolling():
    et, xs = _random_et(4)

    @eqx.filter_jit
    def loss(et):
        return jnp.sum(et.activations(et.descend(xs, step_size=0.1, steps=5).states["tokens"]) ** 2)

    grads = eqx.filter_jit(eqx.filter_grad(loss))(et)
    g_wk = grads.network.synapses["attention"].W_K
    assert np.all(np.isfinite(np.asarray(g_wk))) and float(jnp.abs(g_wk).max()) > 0
    # central finite difference along one weight direction
    direction = jax.random.normal(jax.random.PRNGKey(1), g_wk.shape)
    eps = 1e-2
    shift = lambda s: eqx.tree_at(lambda m: m.network.synapses["attention"].W_K, et, et.network.synapses["attention"].W_K + s * direction)  # noqa: E731
    fd = (loss(shift(eps)) - loss(shift(-eps))) / (2 * eps)
    np.testing.assert_allclose(float(jnp.vdot(g_wk, direction)), float(fd), rtol=2e-2, atol=1e-3)


@pytest.mark.parametrize("shape", [(3, 8, 8), (2, 8, 12, 3)])
def test_patchify_unpatchify_round_trip(shape):
    images = np.random.default_rng(0).random(shape).astype(np.float32)
    p = patchify(images, 4)
    c = shape[3] if len(shape) == 4 else 1
    assert p.shape == (shape[0], (shape[1] // 4) * (shape[2] // 4), 16 * c)
    # the first patch is the top-left 4x4 block, row-major
    np.testing.assert_array_equal(np.asarray(p[0, 0]), images[0, :4, :4].reshape(-1))
    np.testing.assert_array_equal(np.asarray(unpatchify(p, shape[1:], 4)), images)


def test_patchify_rejects_indivisible_sizes():
    with pytest.raises(ValueError, match=r"image size 8x8 is not divisible by the patch size 3"):
        patchify(np.zeros((2, 8, 8)), 3)
    with pytest.raises(ValueError, match="do not tile"):
        unpatchify(np.zeros((2, 5, 4)), (8, 8), 2)
