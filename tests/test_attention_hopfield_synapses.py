"""Attention and token-wise Hopfield synapses (Energy Transformer, Hoover et al. 2023):
energies against hand-written float64 loops, gradients against the paper's update
rules, shape errors, and energy descent along relax / descend trajectories."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ham
from ham.synapses import Attention, Hopfield


# ----------------------------------------------------------------------------- oracles
def _logsumexp(v):
    m = max(v)
    return m + np.log(sum(np.exp(x - m) for x in v))


def attention_energy_oracle(WK, WQ, beta, g, allowed=None):
    """E = −Σ_h β_h⁻¹ Σ_C log Σ_{B allowed} exp(β_h K_hB·Q_hC), written with loops."""
    WK, WQ, g = (np.asarray(a, np.float64) for a in (WK, WQ, g))
    heads, tokens = WK.shape[0], g.shape[0]
    betas = np.broadcast_to(np.asarray(beta, np.float64), (heads,))
    if allowed is None:
        allowed = ~np.eye(tokens, dtype=bool)
    e = 0.0
    for h in range(heads):
        for c in range(tokens):
            q = WQ[h] @ g[c]
            scores = [betas[h] * float((WK[h] @ g[b]) @ q) for b in range(tokens) if allowed[c, b]]
            if scores:
                e -= _logsumexp(scores) / betas[h]
    return e


def attention_grad_oracle(WK, WQ, beta, g):
    """The paper's attention update (Hoover et al. 2023, eq. 5) as −∂E/∂g_A, with the
    attention matrix A_h[B, C] = softmax over B ≠ C of β K_B·Q_C:
    ∂E/∂g_A = −Σ_h [Σ_C W_Kᵀ Q_C A_h[A, C] + W_Qᵀ Σ_B K_B A_h[B, A]]."""
    WK, WQ, g = (np.asarray(a, np.float64) for a in (WK, WQ, g))
    heads, tokens = WK.shape[0], g.shape[0]
    betas = np.broadcast_to(np.asarray(beta, np.float64), (heads,))
    grad = np.zeros_like(g)
    for h in range(heads):
        K = g @ WK[h].T
        Q = g @ WQ[h].T
        S = betas[h] * K @ Q.T  # [B, C]
        np.fill_diagonal(S, -np.inf)
        A = np.exp(S - S.max(axis=0, keepdims=True))
        A /= A.sum(axis=0, keepdims=True)  # softmax over B for each C
        for a in range(tokens):
            grad[a] -= WK[h].T @ sum(Q[c] * A[a, c] for c in range(tokens))
            grad[a] -= WQ[h].T @ sum(K[b] * A[b, a] for b in range(tokens))
    return grad


def hopfield_energy_oracle(xi, g, kind, beta=1.0):
    xi, g = np.asarray(xi, np.float64), np.asarray(g, np.float64)
    e = 0.0
    for token in g.reshape(-1, g.shape[-1]):
        overlaps = [float(m @ token) for m in xi]
        if kind == "relu":
            e -= 0.5 * sum(max(o, 0.0) ** 2 for o in overlaps)
        else:
            e -= _logsumexp([beta * o for o in overlaps]) / beta
    return e


def _params(seed, heads=2, head_dim=3, dim=5, tokens=4, memories=6, scale=0.7):
    k = jax.random.split(jax.random.PRNGKey(seed), 4)
    WK = scale * jax.random.normal(k[0], (heads, head_dim, dim))
    WQ = scale * jax.random.normal(k[1], (heads, head_dim, dim))
    xi = scale * jax.random.normal(k[2], (memories, dim))
    g = jax.random.normal(k[3], (tokens, dim))
    return WK, WQ, xi, g


# ----------------------------------------------------------------------------- energies
@given(seed=st.integers(0, 2**16), tokens=st.sampled_from([2, 5]))
@settings(max_examples=4)
def test_attention_energy_equals_loop_oracle(seed, tokens):
    with jax.enable_x64(True):
        WK, WQ, _, g = _params(seed, tokens=tokens)
        beta = jnp.array([0.5, 1.7])
        e = Attention(WK, WQ, beta=beta).energy(g)
        assert e.dtype == jnp.float64
        np.testing.assert_allclose(float(e), attention_energy_oracle(WK, WQ, beta, g), rtol=1e-10, atol=1e-10)


def test_attention_default_beta_is_inverse_sqrt_head_dim():
    WK, WQ, _, g = _params(0, head_dim=4)
    att = Attention(WK, WQ)
    assert att.beta == pytest.approx(0.5)
    with jax.enable_x64(True):
        WK, WQ, g = (jnp.asarray(a, jnp.float64) for a in (WK, WQ, g))
        np.testing.assert_allclose(float(Attention(WK, WQ).energy(g)), attention_energy_oracle(WK, WQ, 0.5, g), rtol=1e-10)


def test_attention_mask_restricts_pairs_and_empty_rows_contribute_nothing():
    with jax.enable_x64(True):
        WK, WQ, _, g = _params(3, tokens=5)
        causal = np.tril(np.ones((5, 5), bool), k=-1)  # query C sees keys B < C; token 0 sees none
        att = Attention(WK, WQ, beta=0.8, mask=causal)
        np.testing.assert_allclose(float(att.energy(g)), attention_energy_oracle(WK, WQ, 0.8, g, causal), rtol=1e-10)
        grad = jax.grad(att.energy)(g)
        assert np.all(np.isfinite(np.asarray(grad)))
        # the gradient against central finite differences, in every coordinate
        eps = 1e-6
        fd = np.zeros(g.shape)
        for idx in np.ndindex(*g.shape):
            d = np.zeros(g.shape)
            d[idx] = eps
            fd[idx] = (float(att.energy(g + d)) - float(att.energy(g - d))) / (2 * eps)
        np.testing.assert_allclose(np.asarray(grad), fd, rtol=1e-6, atol=1e-6)


def test_attention_gradient_equals_paper_update_rule():
    with jax.enable_x64(True):
        WK, WQ, _, g = _params(7, tokens=4)
        att = Attention(WK, WQ, beta=jnp.array([0.9, 0.4]))
        np.testing.assert_allclose(
            np.asarray(jax.grad(att.energy)(g)), attention_grad_oracle(WK, WQ, [0.9, 0.4], g), rtol=1e-9, atol=1e-10
        )


@pytest.mark.parametrize("kind", ["relu", "softmax"])
def test_hopfield_energy_equals_loop_oracle(kind):
    with jax.enable_x64(True):
        _, _, xi, g = _params(11)
        hop = Hopfield(xi, kind=kind, beta=2.5)
        np.testing.assert_allclose(float(hop.energy(g)), hopfield_energy_oracle(xi, g, kind, 2.5), rtol=1e-10)
        # token-wise: a single token (dim,) and a grid of tokens (2, 2, dim) are the same sum
        np.testing.assert_allclose(float(hop.energy(g[0])), hopfield_energy_oracle(xi, g[:1], kind, 2.5), rtol=1e-10)
        np.testing.assert_allclose(
            float(hop.energy(g.reshape(2, 2, -1))), hopfield_energy_oracle(xi, g, kind, 2.5), rtol=1e-10
        )


def test_hopfield_relu_gradient_is_memory_readout():
    """−∂E/∂g_B = Σ_μ ξ_μ relu(ξ_μ·g_B) (the ET's Hopfield update)."""
    with jax.enable_x64(True):
        _, _, xi, g = _params(5)
        grad = jax.grad(Hopfield(xi).energy)(g)
        xi_np, g_np = np.asarray(xi), np.asarray(g)
        want = -np.stack([sum(m * max(float(m @ t), 0.0) for m in xi_np) for t in g_np])
        np.testing.assert_allclose(np.asarray(grad), want, rtol=1e-10, atol=1e-12)


def test_softmax_hopfield_and_attention_are_finite_for_large_beta():
    WK, WQ, xi, g = _params(2)
    hop = Hopfield(100.0 * xi, kind="softmax", beta=1e3)
    att = Attention(100.0 * WK, 100.0 * WQ, beta=1e3)
    for syn in (hop, att):
        e, grad = jax.value_and_grad(syn.energy)(g)
        assert np.isfinite(float(e)) and np.all(np.isfinite(np.asarray(grad)))


# ----------------------------------------------------------------------------- validation
def _net(syn, shape):
    return ham.HAM(
        layers={"tokens": ham.Layer(ham.lagrangians.identity, shape)},
        synapses={"s": syn}, connections={"s": ("tokens",)},
    )


def test_attention_shape_errors_name_the_synapse_and_shapes():
    WK, WQ, _, _ = _params(0)  # (2, 3, 5)
    with pytest.raises(ValueError, match=r"synapse 's' \(Attention\).*dimension 5.*\(4, 7\)"):
        _net(Attention(WK, WQ), (4, 7))
    with pytest.raises(ValueError, match=r"\(tokens, dim\).*\(20,\)"):
        _net(Attention(WK, WQ), (20,))
    with pytest.raises(ValueError, match=r"mask of shape \(3, 3\).*\(4, 4\)"):
        _net(Attention(WK, WQ, mask=np.ones((3, 3), bool)), (4, 5))
    with pytest.raises(ValueError, match="at least 2 tokens"):
        _net(Attention(WK, WQ), (1, 5))
    with pytest.raises(ValueError, match=r"W_K \(2, 3, 5\) and W_Q \(2, 4, 5\)"):
        Attention(WK, jnp.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match="beta must be a scalar or have shape"):
        Attention(WK, WQ, beta=jnp.ones(3))
    with pytest.raises(ValueError, match="beta must be > 0"):
        Attention(WK, WQ, beta=0.0)
    with pytest.raises(ValueError, match="mask must be square"):
        Attention(WK, WQ, mask=np.ones((2, 3), bool))


def test_hopfield_shape_errors_name_the_synapse_and_shapes():
    _, _, xi, _ = _params(0)  # (6, 5)
    with pytest.raises(ValueError, match=r"synapse 's' \(Hopfield\).*xi of shape \(6, 5\).*\(4, 7\)"):
        _net(Hopfield(xi), (4, 7))
    with pytest.raises(ValueError, match="kind must be one of"):
        Hopfield(xi, kind="tanh")
    with pytest.raises(ValueError, match=r"xi must have shape \(num_memories, dim\)"):
        Hopfield(jnp.zeros(5))
    with pytest.raises(ValueError, match="beta must be > 0"):
        Hopfield(xi, kind="softmax", beta=-1.0)


# ----------------------------------------------------------------------------- dynamics
def _et_like_net(seed, kind, tokens=4, dim=5):
    WK, WQ, xi, _ = _params(seed, tokens=tokens, dim=dim)
    lagrangian = eqx.Partial(ham.lagrangians.layernorm, gamma=jnp.array(1.3), delta=0.1 * jnp.arange(dim, dtype=float))
    return ham.HAM(
        layers={"tokens": ham.Layer(lagrangian, (tokens, dim))},
        synapses={"att": Attention(WK, WQ), "hop": Hopfield(xi, kind=kind, beta=1.5)},
        connections={"att": ("tokens",), "hop": ("tokens",)},
    )


@pytest.mark.parametrize("kind", ["relu", "softmax"])
def test_energy_never_rises_along_descend(kind):
    descend = eqx.filter_jit(ham.descend)
    for seed in range(3):
        net = _et_like_net(seed, kind)
        xs0 = net.init_states((3,), key=jax.random.PRNGKey(100 + seed))
        sol = descend(net, xs0, step_size=0.02, steps=150)
        ham.lyapunov.check(sol)
        assert np.all(np.asarray(sol.energies[:, -1] < sol.energies[:, 0]))


@pytest.mark.parametrize("kind", ["relu", "softmax"])
def test_energy_never_rises_along_relax_and_reaches_a_fixed_point(kind):
    net = _et_like_net(1, kind)
    xs0 = net.init_states((4,), key=jax.random.PRNGKey(3))
    sol = eqx.filter_jit(ham.relax)(net, xs0)
    ham.lyapunov.check(sol)
    assert bool(jnp.all(sol.converged)), sol.reason
    # dE/dt from the formula is <= 0 at random states (Lyapunov, not just along one trace)
    assert np.all(np.asarray(ham.lyapunov.energy_rate(net, xs0)) <= 1e-6)


def test_synapses_jit_vmap_without_recompiling():
    WK, WQ, xi, _ = _params(0)
    gs = jax.random.normal(jax.random.PRNGKey(1), (3, 4, 5))

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def energies(att, hop, gs):
        return jax.vmap(lambda g: att.energy(g) + hop.energy(g))(gs)

    for scale in (1.0, 2.0):
        out = energies(Attention(scale * WK, WQ), Hopfield(scale * xi), gs)
        want = [float(Attention(scale * WK, WQ).energy(g) + Hopfield(scale * xi).energy(g)) for g in gs]
        np.testing.assert_allclose(np.asarray(out), want, rtol=1e-5)
