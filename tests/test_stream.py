"""Streamed relaxation (``ham.relax(..., window=W)``): per query the same result as the
vmapped solve, at a cost of about N·mean/W + max loop iterations."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ham
from ham import _stream


def _classical(dtype, batch, key, n=64, k=6, flip=0.15):
    k1, k2 = jax.random.split(key)
    p = jnp.where(jax.random.bernoulli(k1, 0.5, (k, n)), 1.0, -1.0).astype(dtype)
    q = p[jnp.arange(batch) % k] * jnp.where(jax.random.bernoulli(k2, flip, (batch, n)), -1.0, 1.0).astype(dtype)
    return ham.memories.classical(p).make_network(beta=4.0), {"v": 0.5 * q}


def _modern(dtype, batch, key, num=40, dim=16):
    k1, k2 = jax.random.split(key)
    x = (jax.random.normal(k1, (num, dim)) / np.sqrt(dim)).astype(dtype)
    q = x[jnp.arange(batch) % num] + (0.5 / np.sqrt(dim)) * jax.random.normal(k2, (batch, dim), dtype)
    mem = ham.memories.modern(x, beta=8.0)
    return mem.network, mem.init_states(q)


def _dense_model_a(dtype, batch, key, n=32, k=24):
    k1, k2 = jax.random.split(key)
    p = jnp.where(jax.random.bernoulli(k1, 0.5, (k, n)), 1.0, -1.0).astype(dtype)
    mem = ham.memories.krotov_hopfield_2021(p / jnp.sqrt(jnp.asarray(n, dtype)), model="A", n=3)
    q = p[jnp.arange(batch) % k] * jnp.where(jax.random.bernoulli(k2, 0.15, (batch, n)), -1.0, 1.0).astype(dtype)
    return mem.network, mem.init_states(q)


NETS = {"classical_tanh": _classical, "modern_two_layer": _modern, "dense_model_A": _dense_model_a}


def _tolerance(sol_ref, dtype):
    """The steady-state tolerance per query and layer: event_atol + event_rtol |x*_A|."""
    tol = ham.default_tolerances(dtype)
    return {k: tol["event_atol"] + tol["event_rtol"] * np.linalg.norm(np.asarray(v).reshape(v.shape[0], -1), axis=1)
            for k, v in sol_ref.states.items()}


def _distance(a, b):
    return {k: np.linalg.norm((np.asarray(a.states[k]) - np.asarray(b.states[k])).reshape(a.states[k].shape[0], -1),
                              axis=1) for k in a.states}


def _assert_same_per_query(ref, got, dtype, steps_slack=0):
    """Same converged flags; num_steps within ``steps_slack`` (then both stops lie within
    the tolerance of the fixed point, so the states within twice it), otherwise the same
    reason and the states within the tolerance. Returns the fraction of equal num_steps."""
    tol = _tolerance(ref, dtype)
    d = _distance(ref, got)
    for k in d:
        assert np.all(d[k] <= (2 if steps_slack else 1) * tol[k]), (k, d[k].max(), tol[k].min())
    dn = np.abs(np.asarray(ref.num_steps) - np.asarray(got.num_steps))
    assert dn.max() <= steps_slack, (np.asarray(ref.num_steps), np.asarray(got.num_steps))
    np.testing.assert_array_equal(np.asarray(ref.converged), np.asarray(got.converged))
    if steps_slack == 0:
        np.testing.assert_array_equal(np.asarray(ref.reason_code), np.asarray(got.reason_code))
    return float(np.mean(dn == 0))


# One batch size and window for most tests, so the compiled solves are shared between them.
N, W = 37, 8


@pytest.mark.parametrize("name", sorted(NETS))
def test_streamed_equals_vmapped_per_query_float64(x64, name):
    net, xs = NETS[name](jnp.float64, N, jax.random.PRNGKey(1))
    ref = ham.relax(net, xs, window=None)
    got = ham.relax(net, xs, window=W)  # 37 queries: not a multiple of the window
    _assert_same_per_query(ref, got, jnp.float64)
    assert got.states[next(iter(got.states))].dtype == jnp.float64
    # the energy trace, padding included, and the residual are the vmapped solve's
    np.testing.assert_allclose(np.asarray(got.energies), np.asarray(ref.energies), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(np.asarray(got.times), np.asarray(ref.times), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(got.residual), np.asarray(ref.residual), rtol=1e-6, atol=1e-12)
    # work: the vmapped solve's (both: one start evaluation, the residual read from the monitor)
    np.testing.assert_allclose(np.asarray(got.num_evaluations), np.asarray(ref.num_evaluations))


# float32: modern in the default suite, the other two (about 1 min of compiles) marked slow
@pytest.mark.parametrize("name", [pytest.param("classical_tanh", marks=pytest.mark.slow),
                                  pytest.param("dense_model_A", marks=pytest.mark.slow), "modern_two_layer"])
def test_streamed_float32_within_two_steps_of_vmapped(name, record_property):
    net, xs = NETS[name](jnp.float32, 48, jax.random.PRNGKey(2))
    ref = ham.relax(net, xs, window=None)
    got = ham.relax(net, xs, window=12)
    assert got.states[next(iter(got.states))].dtype == ref.states[next(iter(ref.states))].dtype == jnp.float32
    equal = _assert_same_per_query(ref, got, jnp.float32, steps_slack=2)
    record_property("same_num_steps_fraction", equal)
    print(f"{name} float32: same num_steps for {equal:.1%} of queries")


def test_energy_transformer_float32_streams_with_the_vmapped_steps(record_property):
    """The ET's long float32 solves (up to ~250 adaptive steps here) amplify last-bit
    differences: a refill's start evaluated on 2 queries (XLA picks other kernels for so
    small a batch) moved 12 % of the stops by up to 2 steps. Starts are evaluated on at
    least ``START_BATCH`` rows, and every query takes the vmapped solve's steps."""
    et = ham.energy_transformer.EnergyTransformer(16, 32, heads=4, legendre=True, key=jax.random.PRNGKey(0))
    x0 = {"tokens": jax.random.normal(jax.random.PRNGKey(1), (96, 16, 32), jnp.float32)}
    ref = ham.relax(et.network, x0, window=None)
    got = ham.relax(et.network, x0, window=_stream.Window(16, 2))  # refills of 2 queries
    equal = _assert_same_per_query(ref, got, jnp.float32, steps_slack=2)
    record_property("same_num_steps_fraction", equal)
    assert equal == 1.0, equal


def test_heterogeneous_queries_at_rest_and_at_max_steps(x64):
    net, xs = _classical(jnp.float64, N, jax.random.PRNGKey(3), flip=0.3)
    # every third query starts at rest (x = 0, an exact fixed point: 0 steps); a small
    # max_steps stops the slow ones
    start = {"v": jnp.where((jnp.arange(N) % 3 == 0)[:, None], 0.0, xs["v"])}
    ref = ham.relax(net, start, max_steps=9, window=None)
    got = ham.relax(net, start, max_steps=9, window=W)
    codes = np.asarray(ref.reason_code)
    assert np.all(np.asarray(ref.num_steps)[::3] == 0) and {0, 1} <= set(codes.tolist())
    _assert_same_per_query(ref, got, jnp.float64)
    np.testing.assert_array_equal(np.asarray(got.reason_code), codes)
    assert np.all(np.asarray(got.num_steps)[codes == 1] <= 9)


@pytest.mark.parametrize("window", [1, 100])
def test_one_slot_and_more_slots_than_queries_give_the_same_results(x64, window):
    net, xs = _classical(jnp.float64, N, jax.random.PRNGKey(4))
    ref = ham.relax(net, xs, window=None)
    got = ham.relax(net, xs, window=window)
    _assert_same_per_query(ref, got, jnp.float64)


def test_refill_chunk_does_not_change_results(x64):
    net, xs = _modern(jnp.float64, N, jax.random.PRNGKey(5))
    ref = ham.relax(net, xs, window=None)
    w = _stream.Window(W, 3)
    got = ham.relax(net, xs, window=w)
    _assert_same_per_query(ref, got, jnp.float64)
    assert w.stats["chunk"] == 3
    # 29 queries after the first window, loaded 3 at a time (the last chunk is short)
    assert w.stats["refills"] == -(-(N - W) // 3)


def test_iterations_scale_with_mean_steps_not_with_slowest(x64):
    """A vmapped batch costs N/W · max iterations of W queries; the stream about N·mean/W + max."""
    net, noisy = _classical(jnp.float64, N, jax.random.PRNGKey(6), flip=0.3)
    _, near = _classical(jnp.float64, N, jax.random.PRNGKey(6), flip=0.02)
    # one query in six is noisy (many steps), the others start near a stored pattern (few)
    start = {"v": jnp.where((jnp.arange(N) % 6 == 0)[:, None], noisy["v"], near["v"])}
    ref = ham.relax(net, start, window=None)
    w = _stream.Window(W)
    got = ham.relax(net, start, window=w)
    _assert_same_per_query(ref, got, jnp.float64)
    # one moving layer: evaluations = 1 + attempted steps in the vmapped count
    attempted = np.asarray(ref.num_evaluations) - 1.0
    bound = N * attempted.mean() / W + attempted.max()
    vmapped_cost = N / W * attempted.max()
    assert attempted.max() > 2 * attempted.mean()  # a heterogeneous set
    assert attempted.sum() / W <= w.stats["iterations"] <= 1.1 * bound, (w.stats, bound)
    assert w.stats["iterations"] < 0.6 * vmapped_cost, (w.stats, vmapped_cost)


def test_summary_trace_keeps_start_and_end(x64):
    net, xs = _classical(jnp.float64, N, jax.random.PRNGKey(7))
    ref = ham.relax(net, xs, window=None)
    got = ham.relax(net, xs, window=W, trace=False)
    assert got.energies.shape == (N, 2) and got.times.shape == (N, 2)
    n = np.asarray(ref.num_steps)
    e, t = np.asarray(ref.energies), np.asarray(ref.times)
    np.testing.assert_allclose(np.asarray(got.energies), np.stack([e[:, 0], e[np.arange(N), n]], 1), rtol=1e-10)
    np.testing.assert_allclose(np.asarray(got.times), np.stack([t[:, 0], t[np.arange(N), n]], 1), rtol=1e-12)
    _assert_same_per_query(ref, got, jnp.float64)
    # the whole batch in flight (W = N: no refill, the starts are the slots): the same summary
    whole = ham.relax(net, xs, window=N, trace=False)
    np.testing.assert_allclose(np.asarray(whole.energies), np.asarray(got.energies), rtol=1e-12)
    np.testing.assert_array_equal(np.asarray(whole.num_steps), n)
    # the vmapped solve keeps the same summary (no max_steps-long buffers), the same solve
    vm = ham.relax(net, xs, window=None, trace=False)
    assert vm.energies.shape == (N, 2) and vm.times.shape == (N, 2)
    np.testing.assert_array_equal(np.asarray(vm.energies), np.stack([e[:, 0], e[np.arange(N), n]], 1))
    np.testing.assert_array_equal(np.asarray(vm.times), np.stack([t[:, 0], t[np.arange(N), n]], 1))
    _assert_same_per_query(ref, vm, jnp.float64)
    np.testing.assert_array_equal(np.asarray(vm.states["v"]), np.asarray(ref.states["v"]))
    # mask and trace() read the summary like a trace: the start, and the end if a step was taken
    assert np.all(np.asarray(vm.mask)[:, 0]) and np.array_equal(np.asarray(vm.mask)[:, 1], n >= 1)
    i = int(np.argmax(n))
    np.testing.assert_array_equal(vm.trace((i,))[1], np.asarray(vm.energies)[i])
    with pytest.raises(TypeError, match="trace must be True"):
        ham.relax(net, xs, trace="summary")


def test_batch_shape_jit_and_finite_t1(x64):
    net, xs = _classical(jnp.float64, 12, jax.random.PRNGKey(8))
    xs2 = {"v": xs["v"].reshape(3, 4, -1)}
    ref = ham.relax(net, xs2, t1=1.5, window=None)
    got = jax.jit(lambda x: ham.relax(net, x, t1=1.5, window=5))(xs2)
    assert got.num_steps.shape == (3, 4) and got.states["v"].shape == xs2["v"].shape
    np.testing.assert_array_equal(np.asarray(got.num_steps), np.asarray(ref.num_steps))
    np.testing.assert_array_equal(np.asarray(got.reason_code), np.asarray(ref.reason_code))
    np.testing.assert_allclose(np.asarray(got.states["v"]), np.asarray(ref.states["v"]), rtol=1e-9, atol=1e-12)
    # the end clipping lands every unconverged query on t1 exactly
    t_end = np.asarray(got.times)[..., -1]
    np.testing.assert_array_equal(t_end[np.asarray(got.reason_code) != 0], 1.5)


def test_implicit_gradient_through_streamed_solve_equals_vmapped(x64):
    k1, k2 = jax.random.split(jax.random.PRNGKey(9))
    x = jax.random.normal(k1, (12, 8)) / np.sqrt(8)
    q = x[jnp.arange(10) % 12] + 0.2 * jax.random.normal(k2, (10, 8))

    def loss(patterns, window):
        mem = ham.memories.modern(patterns, beta=4.0)
        sol = ham.relax(mem.network, mem.init_states(q), window=window)
        return jnp.sum(jnp.sin(sol.states["v"]))

    g_ref = jax.grad(loss)(x, None)
    g = jax.grad(loss)(x, 4)
    assert float(jnp.max(jnp.abs(g_ref))) > 1e-3
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), rtol=1e-6, atol=1e-9)


def test_bad_window_arguments_are_refused():
    net, xs = _classical(jnp.float32, 4, jax.random.PRNGKey(10), n=16, k=2)
    with pytest.raises(ValueError, match="window must be a positive integer.*got 0"):
        ham.relax(net, xs, window=0)
    with pytest.raises(ValueError, match="window must be a positive integer.*got -3"):
        ham.relax(net, xs, window=-3)
    for bad in (2.5, True, np.float32(4.0)):
        with pytest.raises(TypeError, match="window must be a positive integer"):
            ham.relax(net, xs, window=bad)
    with pytest.raises(ValueError, match="window must be a positive integer .*'auto' or None, got 'fast'"):
        ham.relax(net, xs, window="fast")
    # "auto" (the default) never refuses a solver or adjoint: it vmaps those it cannot stream
    w = _stream.Window("auto")
    ham.relax(net, xs, window=w, solver=diffrax.Tsit5())
    assert w.stats["window"] is None and w.stats["auto"]["reason"] == "solver or adjoint not streamed"
    with pytest.raises(ValueError, match="refill chunk must be a positive integer"):
        ham.relax(net, xs, window=_stream.Window(4, 0))
    with pytest.raises(ValueError, match="ExponentialEuler only, got solver=Tsit5"):
        ham.relax(net, xs, window=4, solver=diffrax.Tsit5())
    with pytest.raises(ValueError, match="implicit function theorem only; got adjoint=RecursiveCheckpointAdjoint"):
        ham.relax(net, xs, window=4, adjoint=diffrax.RecursiveCheckpointAdjoint())
    # trace=False works with or without a window (test_summary_trace_keeps_start_and_end); not a bool is refused
    with pytest.raises(TypeError, match="trace must be True .* or False"):
        ham.relax(net, xs, window=4, trace=1)
    with pytest.raises(ValueError, match="at least one query"):
        ham.relax(net, {"v": xs["v"][:0]}, window=4)



@pytest.mark.parametrize("window", [None, 3])
def test_float32_solve_stays_float32_under_x64(x64, window):
    """Under x64 a Python-float or float64 tau (hence dt0) must not promote a float32 solve."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(12, 5)).astype(np.float32) / 4
    layers = {"v": ham.Layer(ham.lagrangians.tanh, (12,), tau=1.0),  # a Python float
              "h": ham.Layer(ham.lagrangians.softmax, (5,), tau=jnp.asarray(0.1, jnp.float64))}
    net = ham.HAM(layers=layers, synapses={"w": ham.synapses.Dense(jnp.asarray(w))}, connections={"w": ("v", "h")})
    xs = {"v": jnp.asarray(rng.normal(size=(6, 12)), jnp.float32), "h": jnp.zeros((6, 5), jnp.float32)}
    sol = ham.relax(net, xs, window=window)
    for leaf in (*sol.states.values(), sol.energies, sol.times, sol.residual):
        assert leaf.dtype == jnp.float32, leaf.dtype
    assert bool(jnp.all(sol.converged))
    sol64 = ham.relax(net, {k: v.astype(jnp.float64) for k, v in xs.items()}, window=window)
    assert sol64.states["v"].dtype == jnp.float64 and sol64.times.dtype == jnp.float64


# ----------------------------------------------------------------------------- window="auto"
def test_auto_window_rule_on_synthetic_pilots():
    pick = _stream.pick_window
    assert pick(200, 400, 10.0, 60.0) is None  # a small batch: vmapped
    assert pick(4096, 400, 10.0, 14.0) is None  # max/mean 1.4 < 1.5: vmapped
    # the tail rule W = N mean / (4 max), the tail W max then a quarter of the useful work N mean
    w = pick(4096, 400, 10.0, 60.0)
    assert w == int(4096 * 10 / 240) and w * 60.0 <= 0.25 * 4096 * 10
    assert pick(4096, 400, 0.0, 0.0) is None  # every query at rest: nothing to stream
    # a small state raises the floor (W x state >= 4096 numbers, at most 128 slots)
    assert _stream.min_window(16) == 128 and _stream.min_window(400) == 11 and _stream.min_window(10**6) == 8
    assert pick(1000, 16, 10.0, 100.0) == 128
    # the floor makes the predicted gain N max / (N mean + W max) = 0.95 < 1.25: vmapped
    assert pick(300, 16, 10.0, 16.0) is None
    assert pick(10**6, 64, 9.0, 44.0) == int(10**6 * 9 / 176)
    assert pick(400, 10**4, 10.0, 16.0) == 62  # N mean/(4 max) = 62.5


def test_auto_extrapolates_the_pilot_maximum_to_the_batch():
    assert len(_stream.pilot_indices(300)) == 18 and len(_stream.pilot_indices(10**5)) == 64
    assert len(_stream.pilot_indices(100)) == 16 and len(set(_stream.pilot_indices(4096))) == 64
    steps = np.array([10] * 63 + [30])
    mean = steps.mean()
    assert _stream.estimate_max(steps, 4096) == pytest.approx(mean + (30 - mean) * 2.0)  # ln 4096 / ln 64 = 2
    assert _stream.estimate_max(steps, 4096, limit=40) == 40  # never above max_steps
    assert _stream.estimate_max(steps, 64) == 30  # the pilot is the batch
    assert _stream.estimate_max(np.full(64, 7), 10**6) == 7  # no spread, nothing to extrapolate
    # on exponential-tailed draws the estimate is nearer the batch maximum than the pilot's
    rng = np.random.default_rng(0)
    errs_pilot, errs_est = [], []
    for _ in range(50):
        batch = np.ceil(rng.exponential(9.0, 4096)) + 3
        pilot = batch[_stream.pilot_indices(4096)]
        errs_pilot.append(abs(pilot.max() - batch.max()))
        errs_est.append(abs(_stream.estimate_max(pilot, 4096) - batch.max()))
    assert np.mean(errs_est) < 0.6 * np.mean(errs_pilot), (np.mean(errs_est), np.mean(errs_pilot))


def _mixed(n, dtype=jnp.float64, units=64, k=6, flip=0.3):
    """One query in six noisy (many steps), the others near a stored pattern (few)."""
    net, noisy = _classical(dtype, n, jax.random.PRNGKey(11), n=units, k=k, flip=flip)
    _, near = _classical(dtype, n, jax.random.PRNGKey(11), n=units, k=k, flip=0.02)
    return net, {"v": jnp.where((jnp.arange(n) % 6 == 0)[:, None], noisy["v"], near["v"])}


@pytest.mark.slow  # ~15 s of compiles; the memories test covers auto = vmapped by default
def test_auto_streams_a_heterogeneous_batch_with_per_query_results_of_vmap(x64):
    net, xs = _mixed(300)
    ref = ham.relax(net, xs, window=None)
    w = _stream.Window("auto")
    got = ham.relax(net, xs, window=w)
    info = w.stats["auto"]
    assert info["pilot_queries"] == 300 // 16 and isinstance(w.stats["window"], int), w.stats
    steps = np.asarray(ref.num_steps)
    assert steps.max() >= 1.5 * steps.mean()
    # the rule on the pilot's numbers, and its tail bound against the whole batch's
    assert w.stats["window"] == _stream.pick_window(300, 64, info["pilot_mean_steps"], info["estimated_max_steps"])
    tail_rule = int(300 * max(info["pilot_mean_steps"], 1) / (4 * info["estimated_max_steps"]))
    assert w.stats["window"] == max(tail_rule, _stream.min_window(64))
    assert info["estimated_max_steps"] >= info["pilot_max_steps"]
    _assert_same_per_query(ref, got, jnp.float64)
    np.testing.assert_allclose(np.asarray(got.energies), np.asarray(ref.energies), rtol=1e-10, atol=1e-10)


def test_auto_keeps_a_small_batch_in_flight_and_shrinks_its_window_at_the_tail(x64):
    """Below 256 queries (no pilot) "auto" streams the whole batch through W = N slots and
    gathers the busy ones into N/4 slots once they fit: per query the vmapped results,
    in fewer slot steps. A batch too small to shrink is the vmapped solve."""
    net, xs = _mixed(64, units=256, k=20, flip=0.35)  # 256 units: windows down to 16 slots (min_window)
    ref = ham.relax(net, xs, window=None)
    w = _stream.Window("auto")
    got = ham.relax(net, xs, window=w)  # the default
    assert w.stats["auto"]["reason"] == "fewer than 256 queries: the whole batch in flight, the window shrinking at the tail"
    assert w.stats["window"] == 64 and w.stats["refills"] == 0
    assert _stream.tail_widths(64, 256) == (16,) and _stream.tail_widths(64, 64) == ()
    assert _stream.tail_widths(4096, 512) == (1024, 256) and _stream.tail_widths(31, 512) == ()
    _assert_same_per_query(ref, got, jnp.float64)
    np.testing.assert_allclose(np.asarray(got.energies), np.asarray(ref.energies), rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(np.asarray(got.num_evaluations), np.asarray(ref.num_evaluations))
    # the shrink did happen and paid: 64 slots until at most 16 queries run, then 16 slots
    steps = np.asarray(ref.num_steps)
    assert steps.max() >= 5 * steps.mean()
    assert w.stats["iterations"] >= steps.max() and w.stats["tail"] == (16,)
    busy_16 = np.sort(steps)[-17]  # after this many steps at most 16 queries still run (no step is refused here)
    assert w.stats["slot_steps"] == 64 * busy_16 + 16 * (w.stats["iterations"] - busy_16), (w.stats, busy_16)
    assert w.stats["slot_steps"] < 0.7 * 64 * w.stats["iterations"]  # the unshrunk window's slot steps
    # too few queries to shrink (N < 4 x the minimum window): the vmapped solve
    small_net, small = _classical(jnp.float64, N, jax.random.PRNGKey(12))
    w = _stream.Window("auto")
    got = ham.relax(small_net, small, window=w)
    assert w.stats["window"] is None and "too few to shrink" in w.stats["auto"]["reason"], w.stats
    np.testing.assert_array_equal(np.asarray(got.states["v"]), np.asarray(ham.relax(small_net, small, window=None).states["v"]))
    # traced queries: no pilot can run, the whole batch in flight (as a small batch)
    w = _stream.Window("auto")
    jitted = jax.jit(lambda x: ham.relax(net, x, window=w).num_steps)(xs)
    assert w.stats["window"] == 64 and "traced" in w.stats["auto"]["reason"]
    np.testing.assert_array_equal(np.asarray(jitted), steps)


# ----------------------------------------------------------------------------- sharded queries
def test_queries_sharded_over_a_data_axis_stream_per_device():
    """8 virtual CPU devices (in a subprocess: the flag must be set before JAX starts)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    script = Path(__file__).with_name("_stream_sharding_script.py")
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["devices"] == 8
    # results sharded like the queries; each device streamed its own 6 queries through 2 slots
    assert r["state_spec"] == r["steps_spec"] == "P('data',)" and r["state_shard_shape"] == [6, 64]
    s = r["stats"]
    assert s["devices"] == 8 and s["queries_per_device"] == 6 and s["window"] == 2
    assert len(s["iterations_per_device"]) == 8 and s["iterations"] == max(s["iterations_per_device"])
    # per query the vmapped (unsharded) solve's steps, reasons, states and trace
    assert r["same_steps"] and r["same_reason"] and r["within_tol"] and r["energies_err"] < 1e-10
    # "auto" applies its rule to one device's 256 queries
    a = r["auto_stats"]
    assert a["auto"]["queries_per_device"] == 256 and a["auto"]["pilot_queries"] == 16
    assert a["window"] == a["auto"]["window"] and a["window"] is not None and a["devices"] == 8
    assert r["auto_same_steps"] and r["auto_spec"] == "P('data',)"


# ----------------------------------------------------------------------------- the library's callers
def test_memories_stream_large_batches_by_default_with_per_query_results_of_vmap(x64):
    net, xs = _mixed(300)
    mem = ham.memories.classical(jnp.where(jax.random.bernoulli(jax.random.PRNGKey(11), 0.5, (6, 64)), 1.0, -1.0))
    q = xs["v"]
    w = _stream.Window("auto")
    default = mem.relax(q, beta=4.0)  # 300 queries: "auto" (streamed)
    traced = mem.relax(q, beta=4.0, window=w)
    assert isinstance(w.stats["window"], int)
    # the pilot (18 queries) was streamed through 8 slots; its results are kept, so the
    # equality below covers the pilot's queries and the streamed rest, merged in order
    info = w.stats["auto"]
    assert info["pilot_queries"] == 18 and info["pilot_window"] == _stream.pilot_window(18) == 8
    assert info["pilot_iterations"] >= info["pilot_max_steps"]
    vmapped = mem.relax(q, beta=4.0, window=None)
    _assert_same_per_query(vmapped, default, jnp.float64)
    np.testing.assert_array_equal(np.asarray(default.num_steps), np.asarray(traced.num_steps))
    # the single-shot jitted path is kept for small batches (exactly the vmapped solve)
    small = mem.relax(q[:20], beta=4.0)
    np.testing.assert_array_equal(np.asarray(small.states["v"]), np.asarray(vmapped.states["v"])[:20])
    np.testing.assert_allclose(np.asarray(mem.retrieve_continuous(q, beta=4.0)),
                               np.asarray(jnp.tanh(4.0 * vmapped.states["v"])), atol=1e-6)
    # a default window is never forced on a solver that cannot stream
    assert "window" not in _stream.default_window({"solver": diffrax.Tsit5()}, 10**4)
    assert _stream.default_window({}, 10**4) == {"window": "auto"} and _stream.default_window({}, 255) == {}
    assert _stream.default_window({"window": None}, 10**4) == {"window": None}


@pytest.mark.slow  # ~15 s of compiles (run with -m slow); per-query equality of streaming is tested by default above
def test_census_with_and_without_streaming_finds_the_same_points_and_counts():
    k1, k2 = jax.random.split(jax.random.PRNGKey(13))
    mem = ham.memories.modern(jax.random.normal(k1, (6, 8)) / np.sqrt(8), beta=3.0)
    w = _stream.Window(24)
    streamed = ham.landscape.census(mem.network, 256, key=k2, window=w)
    assert w.stats["window"] == 24 and w.stats["refills"] >= 29, w.stats  # the window reached relax
    vmapped = ham.landscape.census(mem.network, 256, key=k2, window=None)
    assert streamed.points["v"].shape == vmapped.points["v"].shape and streamed.points["v"].shape[0] >= 2
    np.testing.assert_array_equal(np.asarray(streamed.counts), np.asarray(vmapped.counts))
    np.testing.assert_array_equal(np.asarray(streamed.assignment), np.asarray(vmapped.assignment))
    for k in vmapped.points:
        np.testing.assert_allclose(np.asarray(streamed.points[k]), np.asarray(vmapped.points[k]), atol=1e-3)
    np.testing.assert_allclose(np.asarray(streamed.energies), np.asarray(vmapped.energies), rtol=1e-4, atol=1e-4)


def test_default_relax_under_vmap_and_grad_gives_the_vmapped_solve(x64):
    """relax's default keeps a traced batch in flight (W = N, shrinking at the tail):
    vmapped over an outer axis, and differentiated through the fixed point, it gives the
    plain vmapped solve's steps and gradient."""
    net, xs = _mixed(64, units=256, k=20, flip=0.35)
    outer = jnp.stack([xs["v"], xs["v"][::-1]])
    got = jax.vmap(lambda x: ham.relax(net, {"v": x}).num_steps)(outer)
    ref = ham.relax(net, {"v": outer}, window=None).num_steps
    np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))

    k1, _ = jax.random.split(jax.random.PRNGKey(11))  # the stored patterns of _mixed, differentiated
    patterns = jnp.where(jax.random.bernoulli(k1, 0.5, (20, 256)), 1.0, -1.0)

    def loss(p, window):  # through the fixed point: the implicit function theorem, per query
        sol = ham.relax(ham.memories.classical(p).make_network(beta=4.0), xs, window=window)
        return jnp.sum(jnp.sin(sol.states["v"]))

    g = jax.grad(loss)(patterns, "auto")
    g_ref = jax.grad(loss)(patterns, None)
    assert float(jnp.max(jnp.abs(g_ref))) > 1e-3
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), rtol=1e-8, atol=1e-10)
