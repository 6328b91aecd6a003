"""The relaxation engine: ham.ExponentialEuler (exact leak, Gauss–Seidel sweep, energy-checked
steps) as ham.relax's default — exactness, Lyapunov, per-query stopping, per-layer steady
state, no retracing, gradients."""

import functools as ft

import chex
import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ham
from ham import lagrangians as L
from hypothesis import given, settings
from hypothesis import strategies as st


def _modern(num=40, dim=8, beta=4.0, batch=6, seed=0):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    x = jax.random.normal(k1, (num, dim)) / np.sqrt(dim)
    q = x[:batch] + 0.3 / np.sqrt(dim) * jax.random.normal(k2, (batch, dim))
    mem = ham.memories.modern(x, beta=beta)
    return mem, x, q


def test_leak_is_integrated_exactly(x64):
    # No synapse: tau dx/dt = -x, so one step of any size h gives x0 exp(-h/tau) exactly.
    net = ham.HAM(layers={"v": ham.Layer(L.identity, (3,), tau=0.7)}, synapses={}, connections={})
    y0 = ham.integrator.monitored(net, {"v": jnp.array([1.0, -2.0, 0.5])})
    solver = ham.ExponentialEuler()
    term = diffrax.ODETerm(lambda t, y, a: None)
    state = solver.init(term, 0.0, 5.0, y0, net)
    y1, err, *_ = solver.step(term, 0.0, 5.0, y0, net, state, False)
    np.testing.assert_allclose(y1.x["v"], y0.x["v"] * np.exp(-5.0 / 0.7), rtol=1e-12)
    np.testing.assert_allclose(err.x["v"], 0.0, atol=1e-15)  # the ETD2 estimate is exact for a linear field


def test_large_step_is_the_modern_update(x64):
    # With h >> tau the Gauss–Seidel sweep (slow visible first, then the fast hidden layer)
    # is the discrete update: v <- Xi^T softmax(beta h), h <- Xi v (Ramsauer et al. 2020).
    mem, x, q = _modern(batch=1)
    net = mem.network
    xs = {k: v[0] for k, v in mem.init_states(q).items()}  # h = Xi v
    solver = ham.ExponentialEuler(layer_order=ham.integrator.sweep_order(net))
    assert solver.layer_order == ("v", "h")
    y0 = ham.integrator.monitored(net, xs)
    term = diffrax.ODETerm(lambda t, y, a: None)
    y1, *_ = solver.step(term, 0.0, 200.0, y0, net, solver.init(term, 0.0, 200.0, y0, net), False)
    v1 = x.T @ jax.nn.softmax(mem.beta * (x @ xs["v"]))
    np.testing.assert_allclose(y1.x["v"], v1, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(y1.x["h"], x @ v1, rtol=1e-10, atol=1e-12)


def test_equal_taus_are_swept_most_connected_layer_first_and_take_fewer_evaluations():
    # pixels - features - memory, every tau 1: the hidden features layer (joined to both
    # others) first, then the layers that see only it (red-black block Gauss-Seidel)
    from experiments.data import load_dataset

    imgs = jnp.asarray(load_dataset("digits").flat()[:16].reshape(-1, 8, 8, 1), jnp.float32)
    mem = ham.memories.convolutional(imgs, key=jax.random.PRNGKey(0), num_features=4, beta=4.0)
    net = mem.network
    assert ham.integrator.sweep_order(net)[0] == "features"
    q = imgs + 0.2 * jax.random.normal(jax.random.PRNGKey(1), imgs.shape)
    xs0 = mem.initial_state(q)
    hub = ham.relax(net, xs0)
    inputs_first = ham.relax(net, xs0, solver=ham.ExponentialEuler(layer_order=("pixels", "features", "memory")))
    assert bool(jnp.all(hub.converged)) and bool(jnp.all(inputs_first.converged))
    ham.lyapunov.check(hub)
    assert float(jnp.mean(hub.num_evaluations)) < 0.9 * float(jnp.mean(inputs_first.num_evaluations))
    for k in net.layers:  # the same fixed point, to a few steady-state tolerances
        scale = 1.0 + jnp.linalg.norm(inputs_first.states[k].reshape(16, -1), axis=-1)
        gap = jnp.linalg.norm((hub.states[k] - inputs_first.states[k]).reshape(16, -1), axis=-1)
        assert float(jnp.max(gap / scale)) < 1e-2, k


@settings(max_examples=25, deadline=None)
@given(taus=st.lists(st.sampled_from([0.25, 1.0, 4.0]), min_size=1, max_size=5), data=st.data())
def test_sweep_order_is_slowest_first_then_most_connected_then_the_networks_own(taus, data):
    names = [f"l{i}" for i in range(len(taus))]
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    edges = data.draw(st.lists(st.sampled_from(pairs), unique=True, max_size=len(pairs))) if pairs else []
    net = ham.HAM(
        layers={n: ham.Layer(L.tanh, (2,), tau=t) for n, t in zip(names, taus)},
        synapses={f"w{i}": ham.synapses.Dense(0.1 * jnp.ones((2, 2))) for i in range(len(edges))},
        connections={f"w{i}": e for i, e in enumerate(edges)},
    )
    order = ham.integrator.sweep_order(net)
    assert sorted(order) == names
    degree = {n: len({m for e in edges if n in e for m in e if m != n}) for n in names}
    key = [(-net.layers[n].tau, -degree[n], names.index(n)) for n in order]
    assert key == sorted(key)


def test_default_relax_reaches_the_modern_fixed_point_without_energy_rise(x64):
    mem, x, q = _modern()
    sol = mem.relax(q)
    assert bool(jnp.all(sol.converged)), sol.reason
    ham.lyapunov.check(sol)
    v = sol.states["v"]
    fixed = jax.vmap(lambda v: x.T @ jax.nn.softmax(mem.beta * (x @ v)))(v)
    np.testing.assert_allclose(v, fixed, atol=1e-6)
    ref = ham.relax(mem.network, mem.init_states(q), solver=diffrax.Tsit5())
    np.testing.assert_allclose(v, ref.states["v"], atol=1e-5)
    # fewer steps than explicit Runge–Kutta on the stiff two-time-scale net
    assert int(jnp.max(sol.num_evaluations)) < int(jnp.max(ref.num_evaluations)) / 5


def test_each_query_stops_on_its_own_residual():
    mem, x, q = _modern(batch=4)
    xs0 = mem.init_states(q)
    tol = ham.default_tolerances(jnp.float32)
    first = ham.relax(mem.network, xs0, event_rtol=1e-3 * tol["event_rtol"], event_atol=1e-3 * tol["event_atol"])
    # put query 0 at its fixed point: it must stop at once while the others run on
    xs1 = {k: v.at[0].set(first.states[k][0]) for k, v in xs0.items()}
    sol = ham.relax(mem.network, xs1)
    assert bool(jnp.all(sol.converged))
    steps = np.asarray(sol.num_steps)
    assert steps[0] <= 1 < steps[1:].min(), steps
    dx = mem.network.vector_field(0.0, sol.states)
    for k in dx:  # no query is reported converged before its own residual is small, per layer
        speed = jnp.linalg.norm(dx[k], axis=-1)
        scale = tol["event_atol"] + tol["event_rtol"] * jnp.linalg.norm(sol.states[k], axis=-1)
        assert bool(jnp.all(speed <= 1.01 * scale)), (k, speed, scale)


def test_steady_state_is_judged_per_layer(x64):
    # One huge layer must not hide the residual of a small one: a decoupled pair whose big
    # layer sits at its fixed point and whose small layer does not.
    net = ham.HAM(
        layers={"big": ham.Layer(L.identity, (4,), check_convexity=False),
                "small": ham.Layer(L.identity, (2,), check_convexity=False)},
        synapses={"b": ham.synapses.Bias(jnp.full((4,), 1e6))},
        connections={"b": ("big",)},
    )
    xs = {"big": jnp.full((4,), 1e6), "small": jnp.array([1e-2, 0.0])}
    sol = ham.relax(net, xs, max_steps=3, event_rtol=1e-4, event_atol=1e-4)
    # the whole-state relative test would pass at once (|dx| = 1e-2 << 1e-4 * 2e6)
    assert int(sol.num_steps) > 0
    sol = ham.relax(net, xs)
    assert bool(sol.converged) and abs(float(sol.states["small"][0])) < 2e-4


def _slow_linear_net(slow_rate=0.02, n=8, seed=0):
    """ẋ = A x + c with A = -I + W symmetric: one slow mode (rate ``slow_rate``), the others ~1."""
    q, _ = jnp.linalg.qr(jax.random.normal(jax.random.PRNGKey(seed), (n, n)))
    lam = jnp.concatenate([jnp.array([1.0 - slow_rate]), jnp.linspace(-0.5, 0.5, n - 1)])
    w = (q * lam) @ q.T
    b = jax.random.normal(jax.random.PRNGKey(seed + 1), (n,))

    def net_for(weight):
        return ham.HAM(layers={"v": ham.Layer(L.identity, (n,))},
                       synapses={"w": ham.synapses.Dense(weight), "b": ham.synapses.Bias(b)},
                       connections={"w": ("v",), "b": ("v",)})

    # the synapse's convention for a self-coupling (force W g or 2 W g) is read off its Jacobian
    scale = jax.jacfwd(lambda x: net_for(w).vector_field(0.0, {"v": x})["v"])(jnp.zeros(n)) + jnp.eye(n)
    return net_for(w * (w[0, 0] / scale[0, 0]))


def test_stops_within_tolerance_of_the_fixed_point_along_a_slow_mode(x64):
    # A residual |ẋ| <= tol leaves the state |ẋ| / rate = 50 tol away along a mode of rate
    # 0.02: the stop rule also asks the estimated distance to the fixed point to be within tol.
    net = _slow_linear_net()
    f = lambda x: net.vector_field(0.0, {"v": x})["v"]  # noqa: E731
    a = jax.jacfwd(f)(jnp.zeros(8))
    assert float(jnp.max(jnp.linalg.eigvalsh(a))) == pytest.approx(-0.02, rel=1e-6)
    x_star = -jnp.linalg.solve(a, f(jnp.zeros(8)))  # exact fixed point of the linear field
    tol = ham.default_tolerances(jnp.float64)
    for x0 in (jnp.zeros(8), x_star + jnp.linspace(-3.0, 3.0, 8)):
        sol = ham.relax(net, {"v": x0})
        assert bool(sol.converged), sol.reason
        err = float(jnp.linalg.norm(sol.states["v"] - x_star))
        assert err <= 2 * (tol["event_atol"] + tol["event_rtol"] * float(jnp.linalg.norm(x_star))), err
        ham.lyapunov.check(sol)


def test_layers_without_leak_take_energy_checked_euler_steps():
    # legendre=False (the ET paper's energy): no leak, so the step is explicit Euler,
    # accepted only downhill. Layer norm is scale invariant, so x may drift outwards
    # with no fixed point in x: only the descent is asserted.
    et = ham.energy_transformer.EnergyTransformer(6, 8, heads=2, key=jax.random.PRNGKey(0))
    assert not et.legendre
    x0 = jax.random.normal(jax.random.PRNGKey(1), (3, 6, 8))
    sol = et.relax(x0, max_steps=300)
    ham.lyapunov.check(sol)
    e = np.asarray(sol.energies)
    assert np.all(e[:, -1] < e[:, 0] - 1.0)
    chex.assert_tree_all_finite(sol.states)


def test_energy_transformer_with_leak_relaxes_downhill_to_a_fixed_point():
    et = ham.energy_transformer.EnergyTransformer(6, 8, heads=2, legendre=True, key=jax.random.PRNGKey(2))
    sol = et.relax(jax.random.normal(jax.random.PRNGKey(3), (2, 6, 8)), max_steps=2000)
    ham.lyapunov.check(sol)
    assert bool(jnp.all(sol.converged)), sol.reason


def _relax_traced_at_most_once():
    """A jitted relax that raises if it is traced a second time."""

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def run(net, xs):
        return ham.relax(net, xs).states["v"]

    return run


def test_no_retrace_when_only_values_change():
    mem, x, q = _modern()
    run = _relax_traced_at_most_once()
    for beta, tau, scale, shift in [(4.0, 0.1, 1.0, 0.0), (6.0, 0.2, 0.9, 0.1), (2.0, 0.05, 1.1, -0.1)]:
        m = ham.memories.modern(x * scale, beta=beta)
        net = m.make_network(hidden_tau=tau)
        run(net, m.init_states(q + shift))


def test_recompiles_are_counted_not_hidden():
    # the counter above would catch a retrace: a different shape must trace again
    mem, x, q = _modern()
    run = _relax_traced_at_most_once()
    run(mem.network, mem.init_states(q))
    with pytest.raises(RuntimeError):
        run(mem.network, mem.init_states(q[:2]))


@ft.partial(jax.jit, static_argnums=2)
def _modern_loss(x, q, adjoint):
    mem = ham.memories.modern(x, beta=4.0)
    sol = ham.relax(mem.network, mem.init_states(q), adjoint=adjoint, event_rtol=1e-10, event_atol=1e-10,
                    max_steps=2000)
    sol = eqx.error_if(sol, ~jnp.all(sol.converged), "gradient test: relax did not converge")
    return jnp.sum(jnp.tanh(sol.states["v"]))


@pytest.mark.slow  # 23 s under -n 2; the default suite proves the same (implicit = unrolled = finite
# differences with the default solver) in test_relax.py::test_implicit_gradient_agrees_with_unrolled_and_finite_differences
def test_implicit_gradient_on_modern_net_with_new_default(x64):
    mem, x, q = _modern(batch=3)
    g_imp = jax.grad(_modern_loss)(x, q, diffrax.ImplicitAdjoint())
    g_unr = jax.grad(_modern_loss)(x, q, diffrax.RecursiveCheckpointAdjoint())
    np.testing.assert_allclose(g_imp, g_unr, rtol=1e-5, atol=1e-8)
    d = jax.random.normal(jax.random.PRNGKey(5), x.shape)
    eps = 1e-6
    imp = diffrax.ImplicitAdjoint()
    fd = (_modern_loss(x + eps * d, q, imp) - _modern_loss(x - eps * d, q, imp)) / (2 * eps)
    np.testing.assert_allclose(jnp.vdot(g_imp, d), fd, rtol=1e-5)


def test_tsit5_stays_selectable_and_agrees(x64):
    mem, x, q = _modern()
    a = ham.relax(mem.network, mem.init_states(q))
    b = ham.relax(mem.network, mem.init_states(q), solver=diffrax.Tsit5())
    assert bool(jnp.all(a.converged)) and bool(jnp.all(b.converged))
    np.testing.assert_allclose(a.states["v"], b.states["v"], atol=1e-5)


def test_bench_relax_smoke(tmp_path):
    from experiments import bench_relax

    rows = bench_relax.main(["--smoke", "--cases", "modern_1000x64", "--dtypes", "float32", "--out", str(tmp_path)])
    (row,) = rows
    for field in ("case", "evals", "euler_evals", "seconds", "euler_seconds", "same_fixed_point", "compile_s"):
        assert field in row
    assert row["converged"] and row["energy_never_rose"] and row["same_retrieval"] == 1.0
    # a two-time-scale net, judged by the >= 5x evaluations / >= 3x wall-clock targets
    assert row["single_time_scale"] is False and row["target_evals_ratio"] == 5.0 and "meets_target" in row
    assert 0.0 <= row["same_fixed_point_as_euler"] <= 1.0 and row["load_1min_start"] >= 0.0
    assert (tmp_path / "bench_relax_smoke.json").exists() and (tmp_path / "bench_relax_smoke.png").exists()


def test_bench_single_time_scale_cases_are_judged_against_the_discrete_update():
    from experiments import bench_relax

    key = jax.random.PRNGKey(0)
    for name, single in (("classical_tanh_400", True), ("conv_image", True), ("conv_fast_memory", False),
                         ("modern_1000x64", False)):
        case = bench_relax.build(name, jnp.float32, 2, key)
        assert bench_relax.single_time_scale(case.net) is single, name
        assert ham.solve.single_time_scale(case.net) is single, name
    # the fast memory layer: tau 0.1 against 1 for the pixels and features
    net = bench_relax.build("conv_fast_memory", jnp.float32, 2, key).net
    assert float(net.layers["memory"].tau) == pytest.approx(0.1) and float(net.layers["pixels"].tau) == 1.0


def _classical_net(n=32, k=3, batch=5, seed=0):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    p = jnp.where(jax.random.bernoulli(k1, 0.5, (k, n)), 1.0, -1.0)
    q = p[jnp.arange(batch) % k] * jnp.where(jax.random.bernoulli(k2, 0.2, (batch, n)), -1.0, 1.0)
    return ham.memories.classical(p).make_network(beta=4.0), {"v": 0.5 * q}


def test_single_time_scale_net_starts_with_its_discrete_update(x64):
    # every tau equal: the first step is the largest (dtmax = 100 tau), the network's own
    # synchronous update x <- N(x) = x + tau dx/dt (what Euler at dt = tau takes), accepted
    # here because it lowers the energy
    net, xs = _classical_net()
    assert ham.solve.single_time_scale(net)
    one = ham.relax(net, xs, max_steps=1)
    update = {k: xs[k] + net.layers[k].tau * v for k, v in net.vector_field(0.0, xs).items()}
    e0, e1 = net.energy(xs), net.energy(update)
    assert bool(jnp.all(e1 < e0))
    assert np.all(np.asarray(one.num_steps) == 1)
    np.testing.assert_allclose(np.asarray(one.times)[:, 1], 100.0)
    np.testing.assert_allclose(one.states["v"], update["v"], rtol=1e-10, atol=1e-12)
    # under jit, with the taus traced (a network argument), the same start: the same states
    jitted = eqx.filter_jit(lambda n, x: ham.relax(n, x))(eqx.tree_at(lambda n: n.layers["v"].tau, net,
                                                                       jnp.asarray(1.0)), xs)
    np.testing.assert_allclose(jitted.states["v"], ham.relax(net, xs).states["v"], rtol=1e-10, atol=1e-12)
    # a two-time-scale net keeps the cautious first step dt0 = min tau
    mem, _, q = _modern(batch=2)
    assert not ham.solve.single_time_scale(mem.network)
    two = ham.relax(mem.network, mem.init_states(q), max_steps=1)
    np.testing.assert_allclose(np.asarray(two.times)[:, 1], float(mem.network.layers["h"].tau))


def test_single_time_scale_steps_are_kept_by_the_energy_alone_and_a_rising_update_is_retried_smaller(x64):
    # the classical memory of one pattern (+1, -1) couples its two units by -1: from
    # (0.3, 0.2) the synchronous update x <- W tanh(4x) overshoots to (-0.33, -0.42) and
    # raises the energy (0.44 -> 0.65), the first half of a 2-cycle
    net = ham.memories.classical(jnp.array([[1.0, -1.0]])).make_network(beta=4.0)
    xs = {"v": jnp.array([[0.3, 0.2], [2.0, -1.5]])}
    update = {"v": xs["v"] + net.layers["v"].tau * net.vector_field(0.0, xs)["v"]}
    assert float(net.energy(update)[0]) > float(net.energy(xs)[0]) + 0.1
    sol = ham.relax(net, xs)
    assert bool(jnp.all(sol.converged)), sol.reason
    ham.lyapunov.check(sol)
    attempted = np.asarray(sol.num_evaluations) - 1.0  # one layer: start + one evaluation an attempted step
    assert attempted[0] > sol.num_steps[0]  # the rising update was refused ...
    assert float(sol.times[0, 1]) < 100.0  # ... and the step kept was smaller than dtmax = 100 tau
    np.testing.assert_allclose(sol.times[1, 1], 100.0)  # the second query's update lowers E: kept whole
    # the step-size controller tolerances given: the PID controller on the ETD2 estimate
    # (what relax uses on other nets); here it refuses the same steps
    pid = ham.relax(net, xs, rtol=1.0, atol=1.0)
    np.testing.assert_allclose(sol.states["v"], pid.states["v"], rtol=1e-6, atol=1e-8)


def test_energy_guard_keeps_finite_error_steps_growing_and_retries_refused_ones_smaller():
    guard = ham.integrator.EnergyGuard(factormax=4.0, dtmax=10.0)
    t0, t1 = jnp.asarray(1.0), jnp.asarray(3.0)
    keep, n0, n1, jump, _, res = guard.adapt_step_size(t0, t1, None, None, None, {"v": jnp.zeros(3)}, 1, None)
    assert bool(keep) and float(n0) == 3.0 and float(n1) == 3.0 + 8.0 and not jump
    keep, n0, n1, *_ = guard.adapt_step_size(t0, t1, None, None, None, {"v": jnp.asarray(jnp.inf)}, 1, None)
    assert not bool(keep) and float(n0) == 1.0 and float(n1) == 1.5
    keep, n0, n1, *_ = guard.adapt_step_size(jnp.asarray(0.0), jnp.asarray(8.0), None, None, None, {"v": 0.0}, 1, None)
    assert bool(keep) and float(n1) == 18.0  # capped at dtmax
    for bad, msg in ((dict(factormax=0.5), "factormax"), (dict(factormin=1.0), "factormin"), (dict(dtmax=0.0), "dtmax")):
        with pytest.raises(ValueError, match=msg):
            ham.integrator.EnergyGuard(**bad)


def test_residual_is_read_from_the_monitor_and_evaluations_are_counted_once(x64):
    # the final residual |dx/dt| is the monitor's (no extra evaluation), equal to the field's
    # norm at the final state; one start evaluation + one per attempted step (one layer)
    net, xs = _classical_net(batch=4)
    sol = ham.relax(net, xs)
    assert bool(jnp.all(sol.converged)), sol.reason
    field = net.vector_field(0.0, sol.states)["v"]
    np.testing.assert_allclose(sol.residual, jnp.linalg.norm(field, axis=-1), rtol=1e-9, atol=1e-14)
    assert np.all(np.asarray(sol.num_evaluations) >= 1.0 + np.asarray(sol.num_steps))  # rejected steps count too
    np.testing.assert_allclose(ham.relax(net, xs, max_steps=1).num_evaluations, 2.0)  # start + one step
    rk = ham.relax(net, xs, solver=diffrax.Tsit5())
    np.testing.assert_allclose(rk.residual, jnp.linalg.norm(net.vector_field(0.0, rk.states)["v"], axis=-1),
                               rtol=1e-9, atol=1e-14)


@pytest.mark.slow  # the fidelity study's script (~25 s); test_bench_relax_smoke keeps bench_relax in the default suite
def test_bench_relax_fidelity_smoke(tmp_path):
    from experiments import bench_relax

    argv = ["--smoke", "--fidelity", "--cases", "modern_1000x64", "--dtypes", "float32", "--out", str(tmp_path)]
    (row,) = bench_relax.main(argv)
    methods = {m["method"]: m for m in row["methods"]}
    assert set(methods) == {f"euler dt={f:g} min tau" for f in bench_relax.EULER_FRACTIONS} | {
        f"ham.relax rtol={r:g}" for r, _ in bench_relax.RELAX_TOLERANCES}
    assert row["reference_self_same_fixed_point"] == 1.0
    # tighter tolerances cost more evaluations; the modern net's fixed points are well separated
    evals = [methods[f"ham.relax rtol={r:g}"]["evals"] for r, _ in bench_relax.RELAX_TOLERANCES]
    assert evals == sorted(evals) and methods["ham.relax rtol=1"]["same_fixed_point"] == 1.0
    assert row["cheapest_99"] is not None
    assert (tmp_path / "bench_relax_fidelity_smoke.json").exists()


def _clamped_loss(w, x_in, adjoint):
    net = ham.HAM(
        layers={"x": ham.Layer(L.identity, (3,), tau=jnp.inf, check_convexity=False),
                "h": ham.Layer(L.relu, (4,), tau=0.2, check_convexity=False),
                "y": ham.Layer(ft.partial(L.softmax, beta=1.0), (2,), check_convexity=False)},
        synapses={"a": ham.synapses.Dense(w["a"]), "b": ham.synapses.Dense(w["b"])},
        connections={"a": ("x", "h"), "b": ("h", "y")},
    )
    xs = {"x": x_in, "h": jnp.zeros(4), "y": jnp.zeros(2)}
    sol = ham.relax(net, xs, adjoint=adjoint, event_rtol=1e-10, event_atol=1e-10, max_steps=2000)
    sol = eqx.error_if(sol, ~sol.converged, "clamped gradient test: relax did not converge")
    return jnp.sum(sol.states["y"] ** 2) + jnp.sum(sol.states["x"] ** 2)


def test_implicit_gradient_with_a_clamped_input_layer(x64):
    # a clamped layer has dx/dt = 0 identically: its rows of the Jacobian vanish, and the
    # implicit solve must pin it to its initial state instead of failing as singular
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(7), 3)
    w = {"a": 0.5 * jax.random.normal(k1, (3, 4)), "b": 0.5 * jax.random.normal(k2, (4, 2))}
    x_in = jax.random.normal(k3, (3,))
    f = jax.jit(_clamped_loss, static_argnums=2)
    g_imp = jax.grad(f, argnums=(0, 1))(w, x_in, diffrax.ImplicitAdjoint())
    g_unr = jax.grad(f, argnums=(0, 1))(w, x_in, diffrax.RecursiveCheckpointAdjoint())
    for a, b in zip(jax.tree_util.tree_leaves(g_imp), jax.tree_util.tree_leaves(g_unr)):
        assert bool(jnp.all(jnp.isfinite(a)))
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)


def test_discrete_update_stopped_by_relax_rule_takes_relax_steps(x64):
    # bench_relax's control for the per-step overhead: on a single-time-scale net relax's
    # steps are the synchronous update (h = 100 tau: 1 - e^-100 = 1 in float64), so the
    # update stopped by relax's own rule (residual and distance estimate) stops at the
    # slowest query's step count, and at the same states
    from experiments import bench_relax

    net, xs = _classical_net(batch=6)
    tol = ham.default_tolerances(jnp.float64)
    sol = ham.relax(net, xs, trace=False)
    got, n, ok = bench_relax.euler_relax_stop(net, xs, 1.0, tol["event_rtol"], tol["event_atol"])
    assert bool(jnp.all(ok)) and int(n) == int(jnp.max(sol.num_steps)) >= 2
    slowest = int(jnp.argmax(sol.num_steps))
    np.testing.assert_allclose(np.asarray(got["v"][slowest]), np.asarray(sol.states["v"][slowest]), rtol=1e-12, atol=1e-12)
    # the residual-only stop ends earlier: the distance estimate is what adds the steps
    _, n_res, _ = bench_relax.euler(net, xs, 1.0, tol["event_rtol"], tol["event_atol"])
    assert int(n_res) <= int(n)
