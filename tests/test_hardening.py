"""Hardening: every public class refuses bad parameters and non-finite data with an error
that names the argument and shows the value — eagerly for concrete values (numbers and
arrays), through ``eqx.error_if`` when the value is traced under ``jit`` — and never
returns NaN silently."""

import functools as ft
import os
import subprocess
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ham
from ham.energy_transformer import EnergyTransformer, LayerNormLagrangian

M = ham.memories
KEY = jax.random.PRNGKey(0)


def patterns(k=5, d=4, seed=0):
    return np.random.default_rng(seed).normal(size=(k, d)).astype(np.float32)


def pm1(k=5, d=8, seed=0):
    return np.where(np.random.default_rng(seed).random((k, d)) < 0.5, -1.0, 1.0).astype(np.float32)


def with_nan(x, idx=(1, 2), value=np.nan):
    x = np.array(x, copy=True)
    x[idx] = value
    return x


def raises_at_run_time(match):
    """A traced value fails when the compiled program runs: EquinoxRuntimeError under
    ``eqx.filter_jit``; under ``jax.jit`` JaxRuntimeError (a RuntimeError) on the first
    call and ValueError from a cached executable. All carry the message."""
    return pytest.raises((RuntimeError, ValueError), match=match)


# ============================================================================= Layer
def test_layer_checks_tau_numbers_arrays_and_traced_values():
    identity = ham.lagrangians.identity
    for tau in (-1.0, 0.0, np.nan, jnp.asarray(-1.0), np.array([1.0, -2.0, 1.0])):
        with pytest.raises(ValueError, match=r"Layer: tau must be > 0"):
            ham.Layer(identity, (3,), tau=tau)
    with pytest.raises(ValueError, match=r"tau must be a scalar or broadcast to the layer shape \(3,\).*\(4,\)"):
        ham.Layer(identity, (3,), tau=jnp.ones(4))
    with pytest.raises(TypeError, match="tau must be a number"):
        ham.Layer(identity, (3,), tau=True)
    with pytest.raises(TypeError, match="shape must be a tuple of positive ints"):
        ham.Layer(identity, (2.5,))
    assert ham.Layer(identity, (3,), tau=jnp.inf).tau == jnp.inf  # inf clamps the layer
    assert ham.Layer(identity, (3,), tau=jnp.full(3, 2.0)).tau.shape == (3,)  # per-neuron taus
    make = jax.jit(lambda t: ham.Layer(identity, (3,), tau=t).tau)
    assert float(make(jnp.asarray(2.0))) == 2.0
    with raises_at_run_time("Layer: tau must be > 0"):
        jax.block_until_ready(make(jnp.asarray(-1.0)))


def test_lagrangian_parameters_are_checked_when_they_are_concrete_arrays():
    L = ham.lagrangians
    with pytest.raises(ValueError, match=r"softmax: beta must be > 0 and finite, got -1.0"):
        L.softmax(jnp.ones(3), beta=jnp.asarray(-1.0))
    with pytest.raises(ValueError, match="tanh: beta must be > 0 and finite, got inf"):
        L.tanh(jnp.ones(3), beta=np.inf)
    with pytest.raises(ValueError, match="layernorm: gamma must be >= 0"):
        L.layernorm(jnp.ones(3), gamma=jnp.asarray(-1.0))
    with pytest.raises(ValueError, match="softmax: beta must be > 0"):  # the convexity probe
        ham.Layer(eqx.Partial(L.softmax, beta=jnp.asarray(-2.0)), shape=(4,))


# ============================================================================= HAM
def test_ham_refuses_bad_containers_and_non_finite_states():
    v = ham.Layer(ham.lagrangians.identity, (3,))
    with pytest.raises(TypeError, match="HAM: layers must be a dict"):
        ham.HAM(layers=[v], synapses={}, connections={})
    with pytest.raises(TypeError, match="HAM: connections must be a dict"):
        ham.HAM(layers={"v": v}, synapses={}, connections=[("w", "v")])
    with pytest.raises(ValueError, match=r"Dense: weight must be finite.*entry \(0, 1\) = nan"):
        ham.synapses.Dense(with_nan(np.eye(3), (0, 1)))
    net = ham.HAM(layers={"v": v}, synapses={"w": ham.synapses.Dense(np.eye(3) / 2)}, connections={"w": ("v",)})
    with pytest.raises(ValueError, match=r"HAM.energy: states\['v'\] must be finite.*entry \(1,\) = inf"):
        net.energy({"v": jnp.array([0.0, jnp.inf, 1.0])})
    with pytest.raises(TypeError, match="HAM.energy: states must be a dict"):
        net.energy(jnp.ones(3))
    with pytest.raises(ValueError, match="HAM.energy: the result is not finite"):
        net.energy({"v": jnp.full(3, 1e30)})  # ½x² overflows float32
    with raises_at_run_time(r"HAM.energy: states\['v'\] must be finite"):
        jax.block_until_ready(jax.jit(lambda xs: net.energy(xs))({"v": jnp.full(3, jnp.nan)}))
    with pytest.raises(ValueError, match="HAM.init_states: scale must be >= 0 and finite, got nan"):
        net.init_states(key=KEY, scale=np.nan)
    # the vector field is not data-checked: the solvers report non-finite states themselves
    assert not np.isfinite(np.asarray(net.vector_field(0.0, {"v": jnp.full(3, jnp.nan)})["v"])).any()


# ============================================================================= synapses
def test_attention_and_hopfield_check_array_beta_values_and_shapes():
    wk = jax.random.normal(KEY, (2, 3, 4))
    with pytest.raises(ValueError, match=r"Attention: beta must be > 0 and finite, got entry \(1,\) = -1.0"):
        ham.synapses.Attention(wk, wk, beta=jnp.array([1.0, -1.0]))
    with pytest.raises(ValueError, match=r"Attention: beta must be a scalar or have shape \(heads,\) = \(2,\)"):
        ham.synapses.Attention(wk, wk, beta=jnp.ones(3))
    with pytest.raises(ValueError, match="Attention: beta must be > 0 and finite, got inf"):
        ham.synapses.Attention(wk, wk, beta=np.inf)
    with pytest.raises(ValueError, match="Attention: W_Q must be finite"):
        ham.synapses.Attention(wk, wk.at[0, 0, 0].set(jnp.nan))
    with pytest.raises(ValueError, match="Hopfield: beta must be > 0 and finite, got nan"):
        ham.synapses.Hopfield(jnp.ones((3, 4)), kind="softmax", beta=jnp.asarray(np.nan))
    with pytest.raises(ValueError, match="Hopfield: beta must be a scalar"):
        ham.synapses.Hopfield(jnp.ones((3, 4)), kind="softmax", beta=jnp.ones(2))
    with pytest.raises(ValueError, match="Conv: kernel must be finite"):
        ham.synapses.Conv(with_nan(np.ones((3, 3, 1, 2)), (0, 0, 0, 0)))


# ============================================================================= modern
def test_modern_refuses_non_finite_patterns_queries_and_parameters():
    p = patterns()
    with pytest.raises(ValueError, match=r"modern: patterns must be finite.*entry \(1, 2\) = nan"):
        M.modern(with_nan(p))
    mem = M.modern(p, beta=2.0)
    with pytest.raises(ValueError, match=r"modern: queries must be finite.*entry \(1,\) = inf"):
        mem.retrieve(np.array([0.0, np.inf, 0.0, 0.0]))
    with pytest.raises(ValueError, match=r"modern: queries must be finite.*entry \(0, 3\) = nan"):
        mem.retrieve(with_nan(p, (0, 3)))
    with pytest.raises(ValueError, match="modern: state must be finite"):
        mem.energy(with_nan(p))
    with pytest.raises(ValueError, match="modern: beta must be > 0 and finite, got inf"):
        M.modern(p, beta=np.inf)
    with pytest.raises(ValueError, match=r"modern: beta must be a scalar, got an array of shape \(3,\)"):
        M.modern(p, beta=jnp.ones(3))
    with pytest.raises(ValueError, match="modern: beta must be > 0 and finite, got -1.0"):
        M.modern(p, beta=jnp.asarray(-1.0))
    with pytest.raises(ValueError, match="modern.make_network: visible_tau must be > 0 .*got -1.0"):
        mem.make_network(visible_tau=-1.0)
    with pytest.raises(ValueError, match="modern.retrieve: steps must be an integer >= 1, got 0"):
        mem.retrieve(p, steps=0)
    with raises_at_run_time("modern.retrieve: the result is not finite .*lower beta"):  # checked in the kernel
        M.modern(p * 1e19, beta=1e19).retrieve(p)  # finite inputs, beta·overlaps overflow float32
    # traced values: checked when the compiled program runs
    f = jax.jit(lambda b, q: M.modern(p, beta=b).retrieve(q))
    np.testing.assert_allclose(f(jnp.asarray(2.0), p), mem.retrieve(p), rtol=1e-6)
    with raises_at_run_time("modern: beta must be > 0"):
        jax.block_until_ready(f(jnp.asarray(-2.0), p))
    with raises_at_run_time("modern: queries must be finite"):
        jax.block_until_ready(f(jnp.asarray(2.0), with_nan(p)))
    with raises_at_run_time("modern: patterns must be finite"):
        jax.block_until_ready(eqx.filter_jit(lambda x: M.modern(x).retrieve(p))(with_nan(p)))


# ============================================================================= binary models
def test_classical_refuses_nan_instead_of_mapping_it_to_minus_one():
    p = pm1()
    mem = M.classical(p)
    q = p[0].copy()
    q[3] = np.nan
    with pytest.raises(ValueError, match=r"ClassicalHopfield: queries must be finite.*entry \(3,\) = nan"):
        mem.retrieve(q)
    with pytest.raises(ValueError, match="classical: patterns must be finite"):
        M.classical(with_nan(p), binarize=True)
    with pytest.raises(ValueError, match="classical: bias must be finite"):
        M.classical(p, bias=with_nan(np.zeros(8), (2,)))
    with pytest.raises(ValueError, match="classical: beta must be > 0 and finite, got inf"):
        M.classical(p, beta=jnp.asarray(np.inf))
    with pytest.raises(ValueError, match="max_sweeps must be an integer >= 1"):
        mem.retrieve(p, max_sweeps=0)
    with pytest.raises(TypeError, match="key must be a PRNG key"):
        mem.retrieve(p, key=jnp.arange(3))


def test_dense_and_exponential_energies_never_return_inf_silently():
    p = pm1(3, 400)
    mem = M.exponential(p)
    with pytest.raises(ValueError, match="exponential.energy: the result is not finite.*use log_energy"):
        mem.energy(p[0])  # exp(400) overflows float32
    assert np.isfinite(mem.log_energy(p[0]))
    with pytest.raises(ValueError, match="exponential: beta must be > 0 and finite, got nan"):
        M.exponential(p, beta=np.nan)
    with pytest.raises(ValueError, match="dense: the interaction power n must be an integer >= 2"):
        M.dense(p, n=2.5)
    with pytest.raises(ValueError, match="DenseAssociativeMemory: queries must be finite"):
        M.dense(p).retrieve(with_nan(p, (0, 0)))


# ============================================================================= universal, sdm
def test_universal_checks_data_parameters_and_callables():
    p = patterns()
    with pytest.raises(ValueError, match="universal: queries must be finite"):
        M.universal(p).retrieve(np.full(4, np.nan))
    with pytest.raises(ValueError, match="universal: projection must be finite"):
        M.universal(p, projection=with_nan(np.ones((5, 2)), (0, 0)))
    with pytest.raises(ValueError, match="universal: beta must be > 0 and finite, got inf"):
        M.universal(p, beta=np.inf)
    with pytest.raises(ValueError, match="universal: threshold must be > -inf and finite, got nan"):
        M.universal(p, "hamming", "threshold", threshold=np.nan)
    with pytest.raises(ValueError, match=r"universal: the similarity must return one score per stored pattern, shape \(5,\)"):
        M.universal(p, similarity=lambda m, q: m @ q[:, None]).retrieve(p)
    with raises_at_run_time("universal.retrieve: the result is not finite .*separation 'polynomial'"):
        M.universal(p, "euclidean", "polynomial", n=2.5).retrieve(p + 1)  # negative scores ** 2.5


def test_sdm_refuses_nan_even_when_binarizing():
    a, p = pm1(6, 8, 1), pm1(3, 8, 2)
    with pytest.raises(ValueError, match="sdm: patterns must be finite"):
        M.sdm(a, with_nan(p), 2, binarize_inputs=True)
    mem = M.sdm(a, p, 2)
    with pytest.raises(ValueError, match="sdm: queries must be finite"):
        mem.retrieve(with_nan(p, (0, 0)))
    with pytest.raises(TypeError, match="sdm: radius must be a non-negative integer"):
        M.sdm(a, p, "2")
    with pytest.raises(ValueError, match="sdm.retrieve: steps must be an integer >= 1"):
        mem.retrieve(p, steps=1.5)


def test_krotov_hopfield_2021_and_convolutional_check_parameters_and_data():
    p = patterns()
    with pytest.raises(ValueError, match="krotov_hopfield_2021: beta must be > 0 and finite, got inf"):
        M.krotov_hopfield_2021(p, "B", beta=np.inf)
    mem = M.krotov_hopfield_2021(p, "B", beta=2.0)
    with pytest.raises(ValueError, match="krotov_hopfield_2021: queries must be finite"):
        mem.retrieve(with_nan(p))
    with pytest.raises(ValueError, match="krotov_hopfield_2021: state must be finite"):
        mem.energy(with_nan(p))
    imgs = np.random.default_rng(0).random((2, 6, 6, 1)).astype(np.float32)
    with pytest.raises(ValueError, match="convolutional: patterns must be finite"):
        M.convolutional(with_nan(imgs, (0, 1, 1, 0)), key=KEY)
    with pytest.raises(ValueError, match="convolutional: beta must be > 0 and finite, got -1.0"):
        M.convolutional(imgs, key=KEY, beta=jnp.asarray(-1.0))
    with pytest.raises(TypeError, match="convolutional: key must be a PRNG key"):
        M.convolutional(imgs, key=3)


# ============================================================================= Energy Transformer
def test_energy_transformer_validates_its_constructor_and_inputs():
    for kw, match in [
        (dict(head_dim=-1), "head_dim must be an integer >= 1, got -1"),
        (dict(head_dim=0), "head_dim must be an integer >= 1, got 0"),
        (dict(heads=2.5), "heads must be an integer >= 1, got 2.5"),
        (dict(memories=0), "memories must be an integer >= 1, got 0"),
        (dict(beta=np.inf), "beta must be > 0 and finite, got inf"),
        (dict(beta=jnp.ones(3)), r"beta must be a scalar or have shape \(heads,\) = \(4,\)"),
        (dict(eps=0.0), "eps must be > 0 and finite, got 0.0"),
        (dict(init_std=np.nan), "init_std must be > 0 and finite, got nan"),
        (dict(tau=-1.0), "tau must be > 0 .*got -1.0"),
        (dict(kind="gelu"), "kind must be 'relu' or 'softmax'"),
        (dict(mask=np.ones((3, 3), bool)), r"mask must have shape \(tokens, tokens\) = \(5, 5\)"),
    ]:
        with pytest.raises(ValueError, match=f"EnergyTransformer: {match}"):
            EnergyTransformer(5, 8, key=KEY, **kw)
    with pytest.raises(TypeError, match="EnergyTransformer: key must be a PRNG key"):
        EnergyTransformer(5, 8, key=None)
    with pytest.raises(ValueError, match="LayerNormLagrangian: gamma must be >= 0"):
        LayerNormLagrangian(jnp.asarray(-1.0), jnp.zeros(8))
    et = EnergyTransformer(5, 8, key=KEY)
    x = jax.random.normal(KEY, (2, 5, 8))
    assert et.energy(x).shape == (2,)
    with pytest.raises(ValueError, match=r"EnergyTransformer.energy: x must be finite.*entry \(1, 0, 0\) = nan"):
        et.energy(x.at[1, 0, 0].set(jnp.nan))
    with pytest.raises(ValueError, match=r"EnergyTransformer.descend: x0 must have shape \(\*batch, tokens, dim\)"):
        et.descend(jnp.ones((5, 7)))


# ============================================================================= the switch
def test_data_checks_switch_turns_off_only_runtime_data_checks():
    code = (
        "import numpy as np, ham\n"
        "p = np.eye(3, dtype=np.float32)\n"
        "out = ham.memories.modern(p).retrieve(np.array([np.nan, 0, 0], np.float32))\n"
        "assert np.isnan(np.asarray(out)).all(), out\n"
        "try:\n    ham.memories.modern(p, beta=-1.0)\nexcept ValueError as e:\n    print('param:', e)\n"
        "try:\n    ham.memories.modern(np.full((2, 2), np.nan))\nexcept ValueError as e:\n    print('patterns:', e)\n"
    )
    env = {**os.environ, "HAM_DATA_CHECKS": "0"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "param: modern: beta must be > 0" in r.stdout
    assert "patterns: modern: patterns must be finite" in r.stdout


def test_array_parameters_of_the_wrong_shape_are_named():
    with pytest.raises(ValueError, match=r"softmax: beta must be a scalar, got an array of shape \(3,\)"):
        ham.Layer(ft.partial(ham.lagrangians.softmax, beta=jnp.ones(3)), shape=(4,))
    with pytest.raises(ValueError, match=r"layernorm: delta of shape \(5,\) does not broadcast against the state"):
        ham.lagrangians.layernorm(jnp.ones((2, 4)), delta=jnp.zeros(5))
    with pytest.raises(ValueError, match=r"layernorm: gamma must be a scalar"):
        ham.lagrangians.layernorm(jnp.ones((2, 4)), gamma=jnp.full(4, 2.0))
    # a per-feature delta that broadcasts is fine
    assert ham.lagrangians.layernorm(jnp.ones((2, 4)), gamma=2.0, delta=jnp.zeros(4)).shape == ()
