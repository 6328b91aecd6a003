"""Property-based fuzzing of the public entry points (``Layer``, ``HAM``, every
``ham.memories`` constructor and its ``retrieve``/``energy``, the Energy Transformer)
with bad shapes, dtypes and values (NaN, ±inf, 0, negatives, huge): each call either
raises a clear error — a ValueError, TypeError or RuntimeError (``eqx.error_if`` under
``jit``) whose message names an argument — or returns a finite result of the right
shape. Never a NaN, never an error from deep inside JAX that names nothing.

The default profile runs a handful of examples per entry point (the whole file takes
well under 30 s); ``HYPOTHESIS_PROFILE=thorough`` runs 120.
"""

import functools as ft

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import ham
from ham.energy_transformer import EnergyTransformer

M = ham.memories
# jax.jit's cached executables re-raise a failed runtime check as ValueError, the first
# call as JaxRuntimeError, eqx.filter_jit as EquinoxRuntimeError (both RuntimeError).
CLEAR = (ValueError, TypeError, RuntimeError)

SPECIAL = [np.nan, np.inf, -np.inf, 0.0, -1.0, 1e30, -1e30, 3.0e38]
GOOD_SCALARS = [0.5, 1.0, 2.0]


def scalar_params():
    """Parameter values: good ones (half the time, so that the calls get past the
    constructors), the special values, arrays of good and bad shape, junk."""
    good = st.sampled_from(GOOD_SCALARS)
    return st.one_of(
        good, good, good,
        st.sampled_from(GOOD_SCALARS + SPECIAL),
        st.sampled_from(GOOD_SCALARS + SPECIAL).map(lambda v: jnp.asarray(v, jnp.float32)),
        st.sampled_from([np.ones(3), np.array([1.0, -1.0]), np.array([[2.0]])]),
        st.sampled_from([True, "1.0", None, 1 + 2j]),
    )


def arrays(shapes, *, pm1=False):
    """Arrays of one of ``shapes`` and a dtype (float, int, bool, complex), optionally
    with one entry replaced by a special value."""

    @st.composite
    def build(draw):
        shape = draw(st.sampled_from(shapes))
        seed = draw(st.integers(0, 2**16))
        rng = np.random.default_rng(seed)
        x = np.where(rng.random(shape) < 0.5, -1.0, 1.0) if pm1 else rng.normal(size=shape)
        kind = draw(st.sampled_from(["float32"] * 5 + ["int32", "bool", "complex64"]))
        if kind == "int32":
            x = np.round(x).astype(np.int32)
        elif kind == "bool":
            x = x > 0
        else:
            x = x.astype(kind)
            if x.size and draw(st.sampled_from([True, False, False])):
                value = draw(st.sampled_from(SPECIAL + [1e19]))
                x.flat[draw(st.integers(0, x.size - 1))] = value
        return x

    return build()


def check(fn, names, shape=None):
    """``fn()`` raises a clear error naming one of ``names`` or returns a finite result
    (of ``shape`` when given)."""
    try:
        out = jax.block_until_ready(fn())
    except CLEAR as e:
        msg = str(e)
        assert any(n in msg for n in names), f"{type(e).__name__} names none of {names}: {msg[:2000]}"
        return None
    for leaf in jax.tree_util.tree_leaves(out):
        leaf = np.asarray(leaf)
        if np.issubdtype(leaf.dtype, np.inexact):
            assert np.all(np.isfinite(leaf)), f"non-finite result without an error: {leaf}"
    if shape is not None:
        assert tuple(np.shape(out)) == tuple(shape), (np.shape(out), shape)
    return out


PATTERN_SHAPES = [(5, 4)] * 4 + [(4,), (0, 4), (5, 4, 1)]
QUERY_SHAPES = [(4,), (4,), (3, 4), (3, 4), (3, 4), (3, 5), (0, 4), (2, 3, 4)]
MEMORY_NAMES = ("patterns", "queries", "beta", "state", "steps", "n", "threshold", "projection", "similarity",
                "separation", "radius", "addresses", "max_sweeps", "mode", "sweeps")


def _query_shape(q):
    return np.shape(q)


# ============================================================================= Layer, HAM
LAGRANGIANS = [ham.lagrangians.identity, ham.lagrangians.relu, ft.partial(ham.lagrangians.tanh, beta=2.0),
               ft.partial(ham.lagrangians.softmax, beta=-1.0), lambda x: -ham.lagrangians.identity(x), "identity"]


@given(
    lagrangian=st.sampled_from(LAGRANGIANS),
    shape=st.sampled_from([(3,), (2, 3), (0,), (-1,), (2.5,), 3, "ab"]),
    tau=scalar_params(),
)
def test_layer_fuzz(lagrangian, shape, tau):
    kwargs = {} if tau is None else {"tau": tau}
    check(lambda: ham.Layer(lagrangian, shape, **kwargs).shape, ("lagrangian", "Lagrangian", "shape", "tau", "beta"))


@given(
    weight=arrays([(3, 2), (3, 2), (2, 3), (3,)]),
    tau=scalar_params(),
    state_v=arrays([(3,), (4, 3), (2,)]),
    scale=st.sampled_from([1.0, 1e20]),
)
def test_ham_fuzz(weight, tau, state_v, scale):
    def build_and_energy():
        net = ham.HAM(
            layers={"v": ham.Layer(ham.lagrangians.identity, (3,), tau=tau, check_convexity=False),
                    "h": ham.Layer(ft.partial(ham.lagrangians.softmax, beta=1.0), (2,), tau=0.1,
                                   check_convexity=False)},
            synapses={"w": ham.synapses.Dense(weight)},
            connections={"w": ("v", "h")},
        )
        v = (scale * np.asarray(state_v)).astype(np.float32) if np.asarray(state_v).dtype.kind == "f" else state_v
        h = np.zeros(np.shape(v)[:-1] + (2,), np.float32)
        return net.energy({"v": v, "h": h})

    check(build_and_energy, ("weight", "tau", "states", "shape", "layer", "result"))


# ============================================================================= memories
@given(patterns=arrays(PATTERN_SHAPES), beta=scalar_params(), queries=arrays(QUERY_SHAPES),
       steps=st.sampled_from([1, 1, 2, 0, -1, 1.5, True]))
def test_modern_fuzz(patterns, beta, queries, steps):
    def run():
        mem = M.modern(patterns, beta=beta)
        out = mem.retrieve(queries, steps=steps)
        assert out.shape == np.shape(queries)
        return out, mem.energy(queries)

    check(run, MEMORY_NAMES)


@given(patterns=arrays(PATTERN_SHAPES, pm1=True), queries=arrays(QUERY_SHAPES),
       model=st.sampled_from(["classical", "dense", "exponential"]), param=scalar_params(),
       binarize=st.booleans(), mode=st.sampled_from(["async", "sync", "parallel"]))
def test_binary_memories_fuzz(patterns, queries, model, param, binarize, mode):
    def run():
        if model == "classical":
            mem = M.classical(patterns, beta=param, binarize=binarize)
        elif model == "dense":
            mem = M.dense(patterns, n=param, binarize=binarize)
        else:
            mem = M.exponential(patterns, beta=param, binarize=binarize)
        out = mem.retrieve(queries, mode=mode, max_sweeps=5)
        assert out.shape == np.shape(queries)
        return out, mem.energy(out)

    check(run, MEMORY_NAMES + ("bias", "log_energy"))


@given(patterns=arrays(PATTERN_SHAPES), queries=arrays(QUERY_SHAPES),
       similarity=st.sampled_from(sorted(M.SIMILARITIES) + [lambda m, q: m @ q, lambda m, q: q, 3]),
       separation=st.sampled_from(list(M.SEPARATIONS) + [lambda s: s * 2, "argmax"]),
       beta=scalar_params(), n=st.sampled_from([2, 3, 2.5, 0, -1, np.nan]), threshold=scalar_params(),
       normalize=st.booleans())
def test_universal_fuzz(patterns, queries, similarity, separation, beta, n, threshold, normalize):
    def run():
        mem = M.universal(patterns, similarity, separation, beta=beta, n=n, threshold=threshold,
                          normalize=normalize)
        out = mem.retrieve(queries)
        assert out.shape == np.shape(queries)
        return out

    check(run, MEMORY_NAMES)


@given(addresses=arrays([(6, 4), (6, 4), (6, 5)], pm1=True), patterns=arrays(PATTERN_SHAPES, pm1=True),
       queries=arrays(QUERY_SHAPES), radius=st.sampled_from([0, 1, 2, -1, 1.5, "2", True, 10**6]),
       binarize_inputs=st.booleans(), steps=st.sampled_from([1, 2, 0]))
def test_sdm_fuzz(addresses, patterns, queries, radius, binarize_inputs, steps):
    def run():
        mem = M.sdm(addresses, patterns, radius, binarize_inputs=binarize_inputs)
        out = mem.retrieve(queries, steps=steps)
        assert out.shape == np.shape(queries)
        return out

    check(run, MEMORY_NAMES)


@given(patterns=arrays(PATTERN_SHAPES), model=st.sampled_from(["A", "B", "C", "D", None]), beta=scalar_params(),
       n=st.sampled_from([2, 3, 1, 0, 2.5]), queries=arrays([(4,), (2, 4), (2, 5)]))
def test_krotov_hopfield_2021_fuzz(patterns, model, beta, n, queries):
    def run():
        mem = M.krotov_hopfield_2021(patterns, model, beta=beta, n=n)
        return mem.effective_energy(queries), mem.update(queries)

    check(run, MEMORY_NAMES + ("model", "interaction", "visible_lagrangian", "v"))


KH_MEM = None


@given(queries=arrays([(2, 4), (2, 4), (2, 4), (2, 5)]))
def test_krotov_hopfield_2021_retrieve_fuzz(queries):
    global KH_MEM
    if KH_MEM is None:
        KH_MEM = M.krotov_hopfield_2021(np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32), "B", beta=2.0)
    check(lambda: KH_MEM.retrieve(queries), MEMORY_NAMES, shape=np.shape(queries) if np.shape(queries)[-1] == 4 else None)


@given(images=arrays([(2, 6, 6, 1), (2, 6, 6), (2, 6)]), beta=scalar_params(),
       num_features=st.sampled_from([4, 0, -1, 2.5]))
def test_convolutional_constructor_fuzz(images, beta, num_features):
    check(lambda: M.convolutional(images, key=jax.random.PRNGKey(0), beta=beta, num_features=num_features).patterns,
          ("patterns", "beta", "num_features", "kernel", "key"))


# ============================================================================= Energy Transformer
INTS = st.sampled_from([2, 2, 4, 4, None, None, 1, 0, -1, 2.5, True, "3"])


@given(tokens=st.sampled_from([5, 5, 5, 1, 0, -2, 2.5]), dim=st.sampled_from([8, 8, 8, 0, -1, 7.5]), heads=INTS, head_dim=INTS,
       memories=INTS, beta=scalar_params(), eps=scalar_params(), x=arrays([(5, 8), (2, 5, 8), (5, 7), (8,)]))
def test_energy_transformer_fuzz(tokens, dim, heads, head_dim, memories, beta, eps, x):
    def run():
        kw = dict(beta=beta, head_dim=head_dim, memories=memories)
        if heads is not None:
            kw["heads"] = heads
        if eps is not None:
            kw["eps"] = eps
        et = EnergyTransformer(tokens, dim, key=jax.random.PRNGKey(0), **kw)
        e = et.energy(x)
        assert e.shape == np.shape(x)[:-2]
        return e

    check(run, ("tokens", "dim", "heads", "head_dim", "memories", "beta", "eps", "x", "mask"))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_every_memory_refuses_a_non_finite_query_entry(bad):
    """The deterministic core of the fuzz: one bad entry in an otherwise valid query."""
    rng = np.random.default_rng(0)
    p = rng.normal(size=(5, 8)).astype(np.float32)
    s = np.sign(p)
    q = p[:2].copy()
    q[1, 3] = bad
    mems = [M.modern(p), M.universal(p, "euclidean", "softmax"), M.classical(s), M.dense(s), M.exponential(s),
            M.sdm(s, s, 2), M.krotov_hopfield_2021(p, "B")]
    for mem in mems:
        with pytest.raises(ValueError, match=r"queries must be finite.*entry \(1, 3\)"):
            mem.retrieve(q)


def _solver_net():
    return ham.HAM(
        layers={"v": ham.Layer(ham.lagrangians.identity, (3,), check_convexity=False),
                "h": ham.Layer(ft.partial(ham.lagrangians.softmax, beta=2.0), (4,), tau=0.1, check_convexity=False)},
        synapses={"w": ham.synapses.Dense(0.5 * jnp.ones((3, 4)))},
        connections={"w": ("v", "h")},
    )


SOLVER_VALUES = st.sampled_from([0.5, 1e-3, 0.0, -1.0, np.nan, np.inf, -np.inf, 1e30, None, "x", True])


@given(t1=SOLVER_VALUES, rtol=SOLVER_VALUES, atol=SOLVER_VALUES, max_steps=st.sampled_from([64, 0, -3, 2.5, None]),
       state=arrays([(3,), (2, 3), (4,)]))
def test_relax_gives_a_clear_error_or_a_finite_fixed_point(t1, rtol, atol, max_steps, state):
    net = _solver_net()
    kwargs = {k: v for k, v in dict(t1=t1, rtol=rtol, atol=atol, max_steps=max_steps).items() if v is not None}
    try:
        v = jnp.asarray(state)
        xs = {"v": v, "h": jnp.zeros(v.shape[:-1] + (4,), v.dtype if jnp.issubdtype(v.dtype, jnp.floating) else None)}
        sol = ham.relax(net, xs, **kwargs)
    except CLEAR as e:
        assert any(name in str(e) for name in ("t1", "rtol", "atol", "max_steps", "state", "layer", "shape", "dtype")), e
        return
    assert sol.states["v"].shape == jnp.asarray(state).shape
    finite = np.asarray(jnp.all(jnp.isfinite(sol.states["v"]), axis=-1))
    assert np.all(finite | ~np.asarray(sol.converged)), "a converged solve must be finite"
    assert np.all(np.asarray(sol.converged) | (np.asarray(sol.reason_code) != 0))


@given(step_size=SOLVER_VALUES, steps=st.sampled_from([5, 0, -1, 2.5]), state=arrays([(3,), (2, 3)]))
def test_descend_gives_a_clear_error_or_a_finite_descent(step_size, steps, state):
    net = _solver_net()
    try:
        v = jnp.asarray(state)
        xs = {"v": v, "h": jnp.zeros(v.shape[:-1] + (4,), v.dtype if jnp.issubdtype(v.dtype, jnp.floating) else None)}
        sol = ham.descend(net, xs, step_size=step_size, steps=steps)
    except CLEAR as e:
        assert any(name in str(e) for name in ("step_size", "steps", "state", "layer", "shape", "dtype")), e
        return
    assert sol.states["v"].shape == jnp.asarray(state).shape
    assert bool(jnp.all(jnp.isfinite(sol.energies)) | ~jnp.all(sol.converged))
