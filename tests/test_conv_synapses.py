"""Convolution and pooling synapses, and the convolutional image HAM.

Oracles are loop-free NumPy: im2col patches from ``sliding_window_view`` then einsum,
with the padding computed by hand from the convolution arithmetic.
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ham
from ham.synapses import Conv, Pool

# ----------------------------------------------------------------------------- oracles


def _pads(size, window, stride, padding, axis):
    if padding == "VALID":
        return 0, 0
    if padding == "SAME":
        out = -(-size // stride)
        total = max((out - 1) * stride + window - size, 0)
        return total // 2, total - total // 2
    return padding[axis]


def _patches(g, window, stride, padding):
    """(H', W', C, kh, kw) patches of an (H, W, C) image, zero padded."""
    (kh, kw), (sh, sw) = window, stride
    ph = _pads(g.shape[0], kh, sh, padding, 0)
    pw = _pads(g.shape[1], kw, sw, padding, 1)
    gp = np.pad(g, (ph, pw, (0, 0)))
    win = np.lib.stride_tricks.sliding_window_view(gp, (kh, kw), axis=(0, 1))
    return win[::sh, ::sw]


def conv_oracle(g, kernel, stride, padding):
    p = _patches(g, kernel.shape[:2], stride, padding)
    return np.einsum("ijcab,abco->ijo", p, kernel)


def pool_oracle(g, window, stride, padding, kind):
    out = _patches(g, window, stride, padding).sum(axis=(-2, -1))
    return out / (window[0] * window[1]) if kind == "avg" else out


def softmax_lagrangian_np(x, beta):
    z = beta * x
    m = z.max()
    return (m + np.log(np.exp(z - m).sum())) / beta


# ----------------------------------------------------------------------------- Conv / Pool energies

CONV_CASES = [
    # (H, W, C_in, C_out, kh, kw, stride, padding)
    (7, 6, 1, 3, 3, 3, (1, 1), "VALID"),
    (7, 6, 2, 4, 3, 2, (2, 1), "SAME"),
    (8, 8, 3, 2, 3, 3, (2, 2), "SAME"),
    (6, 7, 2, 3, 2, 3, (1, 2), ((1, 0), (2, 1))),
    (5, 5, 1, 1, 5, 5, (1, 1), "VALID"),
    (9, 5, 2, 5, 1, 1, (3, 2), "SAME"),
]


@pytest.mark.parametrize("h,w,cin,cout,kh,kw,stride,padding", CONV_CASES)
def test_conv_energy_equals_numpy_im2col(x64, h, w, cin, cout, kh, kw, stride, padding):
    rng = np.random.default_rng(h * 100 + w * 10 + cin)
    kernel = rng.standard_normal((kh, kw, cin, cout))
    syn = Conv(kernel, stride=stride, padding=padding)
    g_in = rng.standard_normal((h, w, cin))
    expected_conv = conv_oracle(g_in, kernel, stride, padding)
    assert syn.output_shape((h, w, cin)) == expected_conv.shape
    g_out = rng.standard_normal(expected_conv.shape)
    np.testing.assert_allclose(np.asarray(syn.convolve(jnp.asarray(g_in))), expected_conv, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(float(syn.energy(g_in, g_out)), -np.sum(g_out * expected_conv), rtol=1e-12)
    # Bilinear: the forces are the convolution and its transpose.
    d_out = jax.grad(syn.energy, argnums=1)(g_in, g_out)
    np.testing.assert_allclose(np.asarray(d_out), -expected_conv, rtol=1e-12, atol=1e-12)
    # ∂E/∂g_in by the adjoint identity ⟨conv(e_i), g_out⟩ on the oracle (all unit images at once).
    basis = np.eye(h * w * cin).reshape(-1, h, w, cin)
    adj = -np.einsum("nijo,ijo->n", np.stack([conv_oracle(b, kernel, stride, padding) for b in basis]), g_out)
    d_in = jax.grad(syn.energy, argnums=0)(g_in, g_out)
    np.testing.assert_allclose(np.asarray(d_in).ravel(), adj, rtol=1e-10, atol=1e-10)


POOL_CASES = [
    # (H, W, C, window, stride, padding, kind)
    (8, 8, 2, (2, 2), None, "VALID", "avg"),
    (7, 6, 3, (2, 3), (1, 2), "SAME", "sum"),
    (6, 6, 1, (3, 3), (2, 2), ((1, 1), (0, 2)), "avg"),
    (5, 7, 2, (2, 2), (2, 1), "SAME", "avg"),
]


@pytest.mark.parametrize("h,w,c,window,stride,padding,kind", POOL_CASES)
def test_pool_energy_equals_numpy_windows(x64, h, w, c, window, stride, padding, kind):
    rng = np.random.default_rng(h + w + c)
    syn = Pool(window, stride=stride, kind=kind, padding=padding)
    g_in = rng.standard_normal((h, w, c))
    expected = pool_oracle(g_in, window, window if stride is None else stride, padding, kind)
    assert syn.output_shape((h, w, c)) == expected.shape
    g_out = rng.standard_normal(expected.shape)
    np.testing.assert_allclose(np.asarray(syn.pool(jnp.asarray(g_in))), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(float(syn.energy(g_in, g_out)), -np.sum(g_out * expected), rtol=1e-12)
    d_in = jax.grad(syn.energy)(g_in, g_out)  # reverse mode works (used by the dynamics)
    assert np.all(np.isfinite(np.asarray(d_in)))


def test_pool_refuses_max_pooling():
    with pytest.raises(ValueError, match="max pooling"):
        Pool(2, kind="max")


# ----------------------------------------------------------------------------- shape errors


def _image_net(syn, s_in, s_out):
    return ham.HAM(
        layers={
            "a": ham.Layer(ham.lagrangians.identity, s_in, check_convexity=False),
            "b": ham.Layer(ham.lagrangians.relu, s_out, check_convexity=False),
        },
        synapses={"c": syn},
        connections={"c": ("a", "b")},
    )


def test_conv_check_shapes_names_synapse_kernel_and_layers():
    syn = Conv(jnp.ones((3, 3, 2, 4)), stride=2, padding="SAME")
    _image_net(syn, (8, 8, 2), (4, 4, 4))  # fits
    with pytest.raises(ValueError) as e:
        _image_net(syn, (8, 8, 2), (8, 8, 4))
    msg = str(e.value)
    for part in ("'c'", "Conv", "(3, 3, 2, 4)", "(8, 8, 2)", "(8, 8, 4)", "(4, 4, 4)"):
        assert part in msg, (part, msg)
    with pytest.raises(ValueError, match=r"'c'.*\(3, 3, 2, 4\).*3 input channels|'c'.*\(3, 3, 2, 4\).*2 input channels"):
        _image_net(syn, (8, 8, 3), (4, 4, 4))
    with pytest.raises(ValueError, match=r"'c'.*\(H, W, C\)"):
        _image_net(syn, (64,), (4, 4, 4))
    with pytest.raises(ValueError, match="does not fit"):
        _image_net(Conv(jnp.ones((5, 5, 1, 1))), (3, 3, 1), (1, 1, 1))


def test_pool_check_shapes_names_synapse_and_layers():
    _image_net(Pool(2), (8, 6, 3), (4, 3, 3))
    with pytest.raises(ValueError) as e:
        _image_net(Pool(2), (8, 6, 3), (4, 4, 3))
    msg = str(e.value)
    for part in ("'c'", "Pool", "(8, 6, 3)", "(4, 4, 3)", "(4, 3, 3)"):
        assert part in msg, (part, msg)


def test_conv_and_pool_refuse_bad_arguments():
    with pytest.raises(ValueError, match="kernel"):
        Conv(jnp.ones((3, 3, 1)))
    with pytest.raises(ValueError, match="stride"):
        Conv(jnp.ones((3, 3, 1, 1)), stride=0)
    with pytest.raises(ValueError, match="padding"):
        Conv(jnp.ones((3, 3, 1, 1)), padding="FULL")
    with pytest.raises(ValueError, match="padding"):
        Pool(2, padding=((1, -1), (0, 0)))


# ----------------------------------------------------------------------------- the image HAM

IMG = (8, 8, 1)


def _random_memory(key, pool=None, pixel="identity", num=3):
    kp, kk = jax.random.split(key)
    patterns = jax.random.uniform(kp, (num, *IMG))
    return ham.memories.convolutional(patterns, key=kk, num_features=3, pool=pool, pixel=pixel, beta=2.0)


@pytest.mark.parametrize("pool,pixel", [(None, "identity"), ((2, 2), "sigmoid")])
def test_image_ham_energy_is_sum_of_independent_terms(x64, pool, pixel):
    mem = _random_memory(jax.random.PRNGKey(1), pool=pool, pixel=pixel)
    net = mem.network
    xs = net.init_states(key=jax.random.PRNGKey(2), scale=2.0)
    x = {k: np.asarray(v) for k, v in xs.items()}
    conv = net.synapses["conv"]
    kernel = np.asarray(conv.kernel)
    beta = 2.0

    if pixel == "identity":
        gv = x["pixels"]
        e = 0.5 * np.sum(gv**2)
    else:
        gv = 1 / (1 + np.exp(-x["pixels"]))
        e = np.sum(x["pixels"] * gv) - np.sum(np.logaddexp(0, x["pixels"]))
    gf = np.maximum(x["features"], 0)
    e += 0.5 * np.sum(gf**2)  # ReLU: x·relu(x) − ½relu(x)² = ½relu(x)²
    e += -np.sum(gf * conv_oracle(gv, kernel, conv.stride, conv.padding))
    top = gf
    if pool is not None:
        gp = np.maximum(x["pooled"], 0)
        e += 0.5 * np.sum(gp**2)
        e += -np.sum(gp * pool_oracle(gf, pool, pool, "VALID", "avg"))
        top = gp
    xm = x["memory"]
    gm = np.exp(beta * xm - beta * xm.max())
    gm /= gm.sum()
    e += np.sum(xm * gm) - softmax_lagrangian_np(xm, beta)
    weight = np.asarray(net.synapses["memory"].weight)
    e += -np.einsum("ijc,ijck,k->", top, weight, gm)
    e += -np.dot(np.asarray(net.synapses["memory_bias"].bias), gm)
    np.testing.assert_allclose(float(eqx.filter_jit(mem.energy)(xs)), e, rtol=1e-10)
    terms = eqx.filter_jit(net.energy_terms)(xs)
    np.testing.assert_allclose(float(sum(terms.values())), e, rtol=1e-10)


def test_energy_never_rises_along_relax_and_descend():
    # random stored images, random kernel, random start: conv + pool + dense + bias all active
    mem = _random_memory(jax.random.PRNGKey(10), pool=(2, 2))
    net = mem.network
    xs0 = net.init_states(batch_shape=(3,), key=jax.random.PRNGKey(20), scale=1.0)
    sol = ham.relax(net, xs0, max_steps=2000)
    ham.lyapunov.check(sol)
    assert bool(jnp.all(sol.converged)), sol.reason
    assert bool(jnp.all(sol.num_steps > 5))
    # the returned state is a fixed point: |dx/dt| tiny relative to the state
    scale = jnp.sqrt(sum(jnp.sum(v**2, axis=tuple(range(1, v.ndim))) for v in sol.states.values()))
    assert bool(jnp.all(sol.residual <= 1e-4 + 1e-4 * scale)), (sol.residual, scale)
    desc = ham.descend(net, xs0, step_size=0.05, steps=100)
    ham.lyapunov.check(desc)
    assert bool(jnp.all(desc.energies[:, -1] < desc.energies[:, 0] - 1e-3))


def test_stored_images_are_fixed_points(x64):
    mem = _random_memory(jax.random.PRNGKey(3), num=3)
    assert float(jnp.max(mem.reconstruction_error)) < 1e-8
    # start from the stored images with a perturbed memory layer: relaxes back to them
    xs0 = mem.initial_state(mem.patterns)
    xs0["memory"] = xs0["memory"] + jax.random.normal(jax.random.PRNGKey(7), xs0["memory"].shape)
    sol = ham.relax(mem.network, xs0, event_rtol=1e-9, event_atol=1e-9)
    ham.lyapunov.check(sol, rtol=1e-10, atol=1e-10)
    assert bool(jnp.all(sol.converged)), sol.reason
    out = mem.network.activations(sol.states)["pixels"]
    np.testing.assert_allclose(np.asarray(out), np.asarray(mem.patterns), atol=1e-6)
    scale = jnp.sqrt(sum(jnp.sum(v**2, axis=tuple(range(1, v.ndim))) for v in sol.states.values()))
    assert bool(jnp.all(sol.residual <= 1e-9 + 1e-9 * scale)), (sol.residual, scale)


def test_retrieve_rejects_wrong_image_shape():
    mem = _random_memory(jax.random.PRNGKey(6), num=2)
    with pytest.raises(ValueError, match=r"\(\*batch, 8, 8, 1\)"):
        mem.retrieve(jnp.zeros((8, 7, 1)))
    with pytest.raises(ValueError, match="mask"):
        mem.retrieve(jnp.zeros((2, 8, 8, 1)), mask=jnp.ones((3, 8, 8, 1), bool))


def test_builder_validates_arguments():
    with pytest.raises(ValueError, match="patterns"):
        ham.memories.convolutional(jnp.zeros((3, 64)), key=jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="key"):
        ham.memories.convolutional(jnp.zeros((3, 8, 8, 1)))
    with pytest.raises(ValueError, match=r"kernel.*\(kh, kw, 1, F\)"):
        ham.memories.convolutional(jnp.zeros((3, 8, 8, 1)), kernel=jnp.ones((3, 3, 2, 4)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ham.memories.convolutional(2 * jnp.ones((3, 8, 8, 1)), key=jax.random.PRNGKey(0), pixel="sigmoid")


@functools.cache
def _digits(num):
    from sklearn.datasets import load_digits

    d = load_digits()
    idx = [int(np.flatnonzero(d.target == k)[0]) for k in range(num)]
    return (d.images[idx] / 16.0).astype(np.float32)[..., None]


def test_corrupted_digits_relax_closer_to_their_stored_original():
    """Retrieval sanity on sklearn digits, through a jitted, batched ``retrieve``."""
    patterns = _digits(5)
    mem = ham.memories.convolutional(patterns, key=jax.random.PRNGKey(0), num_features=8, beta=1.0)
    rng = np.random.default_rng(0)
    noisy = np.clip(patterns + 0.3 * rng.standard_normal(patterns.shape), 0, 1).astype(np.float32)
    mask = np.ones(patterns.shape, bool)
    mask[:, :2] = False  # and the top two rows missing
    noisy = np.where(mask, noisy, 0.0)

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def retrieve(m, x, mask):
        return m.retrieve(x, mask=mask)

    out = np.asarray(retrieve(mem, noisy, mask))
    assert out.shape == patterns.shape
    before = np.linalg.norm((noisy - patterns).reshape(len(patterns), -1), axis=1)
    after = np.linalg.norm((out - patterns).reshape(len(patterns), -1), axis=1)
    assert np.all(after < before), (before, after)
    assert np.all(after < 0.1 * before), (before, after)
    # a new batch of queries does not recompile
    out2 = np.asarray(retrieve(mem, np.where(mask, noisy + 0.01, 0.0), mask))
    np.testing.assert_allclose(out2, out, atol=1e-3)
