"""Softmax logits of the Energy Transformer's energies (``Attention.scores``,
``Hopfield.scores``) against independent NumPy formulas, their log-sum-exp against the
energies, and ``ham.landscape.attention_spread`` of them on hand-made cases."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ham
from ham import landscape as L
from ham.synapses import Attention, Hopfield


def _attention_scores_oracle(WK, WQ, beta, g, allowed):
    """scores[h, C, B] = beta_h (W_K[h] g_B) . (W_Q[h] g_C) where allowed[C, B], else -inf (loops)."""
    WK, WQ, g = (np.asarray(a, np.float64) for a in (WK, WQ, g))
    heads, tokens = WK.shape[0], g.shape[0]
    betas = np.broadcast_to(np.asarray(beta, np.float64), (heads,))
    out = np.full((heads, tokens, tokens), -np.inf)
    for h in range(heads):
        for c in range(tokens):
            for b in range(tokens):
                if allowed[c, b]:
                    out[h, c, b] = betas[h] * float((WK[h] @ g[b]) @ (WQ[h] @ g[c]))
    return out


def _random(seed, heads=3, head_dim=4, dim=6, tokens=5, batch=()):
    k = jax.random.split(jax.random.PRNGKey(seed), 3)
    WK = 0.6 * jax.random.normal(k[0], (heads, head_dim, dim), jnp.float64)
    WQ = 0.6 * jax.random.normal(k[1], (heads, head_dim, dim), jnp.float64)
    g = jax.random.normal(k[2], (*batch, tokens, dim), jnp.float64)
    return WK, WQ, g


@pytest.mark.parametrize("seed", [0, 1])
def test_attention_scores_equal_numpy_formula_with_default_and_custom_mask(x64, seed):
    WK, WQ, g = _random(seed, batch=(2,))
    beta = jnp.array([0.3, 1.0, 2.5])
    default = Attention(WK, WQ, beta=beta)
    got = np.asarray(default.scores(g))
    assert got.shape == (2, 3, 5, 5)
    for i in range(2):
        np.testing.assert_allclose(got[i], _attention_scores_oracle(WK, WQ, beta, g[i], ~np.eye(5, dtype=bool)),
                                   rtol=1e-12, atol=1e-12)
    assert np.all(np.isneginf(np.diagonal(got, axis1=-2, axis2=-1)))  # a token never attends to itself
    allowed = np.random.default_rng(seed).random((5, 5)) < 0.5
    allowed[0] = False  # a query with no allowed key: an all -inf row
    masked = Attention(WK, WQ, beta=0.7, mask=allowed)
    got = np.asarray(masked.scores(g[0]))
    np.testing.assert_allclose(got, _attention_scores_oracle(WK, WQ, 0.7, g[0], allowed), rtol=1e-12, atol=1e-12)
    assert np.all(np.isneginf(got[:, 0]))


def test_attention_energy_is_minus_logsumexp_of_its_scores(x64):
    WK, WQ, g = _random(3)
    beta = np.array([0.5, 1.5, 3.0])
    att = Attention(WK, WQ, beta=jnp.asarray(beta))
    s = np.asarray(att.scores(g))
    m = s.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(s - m).sum(-1, keepdims=True)))[..., 0]
    assert float(att.energy(g)) == pytest.approx(-np.sum(lse.sum(-1) / beta), rel=1e-12)


def test_hopfield_scores_equal_numpy_formula_and_energy(x64):
    k = jax.random.split(jax.random.PRNGKey(5), 2)
    xi = jax.random.normal(k[0], (7, 6), jnp.float64)
    g = jax.random.normal(k[1], (2, 4, 6), jnp.float64)
    hop = Hopfield(xi, kind="softmax", beta=1.7)
    got = np.asarray(hop.scores(g))
    want = np.array([[[1.7 * float(np.dot(np.asarray(m), np.asarray(g[i, b]))) for m in xi] for b in range(4)]
                     for i in range(2)])
    np.testing.assert_allclose(got, want, rtol=1e-12)
    m = got.max(-1, keepdims=True)
    lse = m[..., 0] + np.log(np.exp(got - m).sum(-1))
    assert float(hop.energy(g[0])) == pytest.approx(-lse[0].sum() / 1.7, rel=1e-12)


def test_spread_of_attention_scores_is_one_for_a_dominant_key_and_all_for_equal_logits():
    tokens = 16
    # one head, scores = beta * g_B[0] * g_C[0]: token 0 has a large first feature, the others 1
    g = jnp.ones((tokens, 2)).at[0, 0].set(10.0)
    att = Attention(jnp.array([[[1.0, 0.0]]]), jnp.array([[[1.0, 0.0]]]), beta=1.0)
    s = att.scores(g)
    spread = np.asarray(L.attention_spread(s))[0]
    # queries C != 0: key 0 holds e^10 / (e^10 + 14 e) > 0.99 of the weight; query 0 sees 15 equal keys
    assert spread[1:].tolist() == [1] * (tokens - 1)
    assert spread[0] == math.ceil(0.9 * (tokens - 1)) == 14
    assert np.asarray(L.attention_spread(s, mass=0.5))[0, 0] == math.ceil(0.5 * (tokens - 1)) == 8
    # zero key weights: every allowed key has logit 0, the global average
    flat = Attention(jnp.zeros((2, 1, 2)), jnp.ones((2, 1, 2)), beta=1.0)
    assert np.all(np.asarray(L.attention_spread(flat.scores(g))) == 14)
    # a window of 3 allowed keys per query: ceil(0.9 * 3) = 3
    allowed = np.zeros((tokens, tokens), bool)
    for c in range(tokens):
        allowed[c, [(c + 1) % tokens, (c + 2) % tokens, (c + 3) % tokens]] = True
    window = Attention(jnp.zeros((1, 1, 2)), jnp.ones((1, 1, 2)), mask=allowed)
    assert np.all(np.asarray(L.attention_spread(window.scores(g))) == 3)


def test_spread_of_softmax_hopfield_scores_counts_the_memories_a_token_averages():
    xi = 3.0 * jnp.eye(5, 4)[:4]  # four orthogonal memories of norm 3
    hop = Hopfield(xi, kind="softmax", beta=10.0)
    g = jnp.stack([jnp.eye(4)[1], jnp.zeros(4)])  # aligned with memory 1; orthogonal to all
    assert L.attention_spread(hop.scores(g)).tolist() == [1, 4]


def test_scores_on_an_energy_transformer_state():
    et = ham.energy_transformer.EnergyTransformer(6, 8, heads=2, memories=10, kind="softmax",
                                                  key=jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 6, 8))
    g = et.activations(x)
    s = et.network.synapses["attention"].scores(g)
    h = et.network.synapses["hopfield"].scores(g)
    assert s.shape == (3, 2, 6, 6) and h.shape == (3, 6, 10)
    spread = np.asarray(L.attention_spread(s))
    assert np.all((spread >= 1) & (spread <= 5))
    # jit (and vmap) give the eager values, without recompiling per call
    f = eqx.filter_jit(eqx.debug.assert_max_traces(lambda syn, g: syn.scores(g), max_traces=1))
    np.testing.assert_allclose(np.asarray(f(et.network.synapses["attention"], g)), np.asarray(s), rtol=1e-6)
    f(et.network.synapses["attention"], g + 1.0)
    v = jax.vmap(et.network.synapses["hopfield"].scores)(g)
    np.testing.assert_allclose(np.asarray(v), np.asarray(h), rtol=1e-6)


def test_scores_errors_name_the_argument_and_shapes():
    att = Attention(jnp.ones((2, 3, 4)), jnp.ones((2, 3, 4)))
    with pytest.raises(ValueError, match=r"Attention.scores: g must have shape \(\*batch, tokens, dim\) with dim = 4.*\(5, 3\)"):
        att.scores(jnp.ones((5, 3)))
    with pytest.raises(ValueError, match=r"Attention.scores: g must have shape.*\(4,\)"):
        att.scores(jnp.ones(4))
    with pytest.raises(ValueError, match="at least 2 tokens"):
        att.scores(jnp.ones((1, 4)))
    masked = Attention(jnp.ones((2, 3, 4)), jnp.ones((2, 3, 4)), mask=np.ones((5, 5), bool))
    with pytest.raises(ValueError, match=r"g has 6 tokens but the mask has shape \(5, 5\)"):
        masked.scores(jnp.ones((6, 4)))
    with pytest.raises(ValueError, match="g must be finite"):
        att.scores(jnp.full((3, 4), jnp.nan))
    with pytest.raises(ValueError, match=r"Hopfield.scores: only kind='softmax'.*kind='relu'"):
        Hopfield(jnp.ones((3, 4))).scores(jnp.ones((2, 4)))
    hop = Hopfield(jnp.ones((3, 4)), kind="softmax")
    with pytest.raises(ValueError, match=r"Hopfield.scores: g must have shape \(\*tokens, dim\) with dim = 4.*\(2, 5\)"):
        hop.scores(jnp.ones((2, 5)))
