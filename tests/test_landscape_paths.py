"""Basins of attraction and minimum-energy paths (issue 19, parts 4-5), against oracles
derived by hand: a return probability known exactly, barriers and saddles in closed form,
indices from a finite-difference Jacobian."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ham
from ham._landscape_paths import _crossing, basins, minimum_energy_path, wilson_interval


# ---------------------------------------------------------------------------- oracles
def _fd_index(net, state, eps=1e-5):
    """Unstable directions of the dynamics at ``state``: eigenvalues with positive real
    part of the central finite-difference Jacobian of the vector field (float64)."""
    names = [k for k, layer in net.layers.items() if not np.all(np.isinf(np.asarray(layer.tau)))]
    sizes = [int(np.prod(net.layers[k].shape)) for k in names]
    x0 = np.concatenate([np.ravel(np.asarray(state[k], np.float64)) for k in names])

    def field(x):
        xs, i = dict(state), 0
        for k, n in zip(names, sizes):
            xs[k] = jnp.asarray(x[i : i + n].reshape(net.layers[k].shape))
            i += n
        f = net.vector_field(0.0, xs)
        return np.concatenate([np.ravel(np.asarray(f[k], np.float64)) for k in names])

    jac = np.stack([(field(x0 + eps * e) - field(x0 - eps * e)) / (2 * eps) for e in np.eye(x0.size)], axis=1)
    eig = np.linalg.eigvals(jac)
    return int(np.sum(eig.real > 1e-6 * np.max(np.abs(eig)))), eig


def _residual(net, state):
    f = net.vector_field(0.0, state)
    return float(np.sqrt(sum(np.sum(np.asarray(v, np.float64) ** 2) for v in f.values())))


class _Potential(ham.synapses.Synapse):
    r"""E_S(g) = V(g) - |g|^2/2 on one identity layer of two neurons, so that the total
    energy is V(x) = (x^2 - 1)^2 + k (y - c x^2)^2: minima (+-1, c), saddle (0, 0) with
    E = 1, valley floor y = c x^2 (a bent minimum-energy path)."""

    k: float = 2.0
    c: float = 1.0

    def energy(self, g):
        x, y = g[0], g[1]
        return (x * x - 1.0) ** 2 + self.k * (y - self.c * x * x) ** 2 - 0.5 * jnp.vdot(g, g)


def _bent_net():
    layer = ham.Layer(ham.lagrangians.identity, shape=(2,))
    return ham.HAM(layers={"x": layer}, synapses={"v": _Potential()}, connections={"v": ("x",)})


def _two_memories(beta=8.0, c=0.2):
    xi1 = np.array([1.0, 0.0, 0.0])
    xi2 = np.array([c, math.sqrt(1 - c * c), 0.0])
    return ham.memories.modern(jnp.asarray(np.stack([xi1, xi2])), beta=beta), xi1, xi2


# ---------------------------------------------------------------------------- basins
def test_wilson_interval_covers_a_known_return_probability_and_radii_interpolate():
    # One stored pattern, N = 20, r = N/2 flips: the overlap is 0, every field opposes its
    # neuron, and the first neuron of the random order decides: it is a flipped one with
    # probability exactly 1/2, and then the state returns to xi (else it goes to -xi).
    # Fewer flips always return, more never do.
    n, reps, trials = 20, 300, 40
    mem = ham.memories.classical(jnp.ones((1, n)))
    b = basins(mem, jnp.ones((reps, n)), [0, 8, 9, 10, 11, 12], trials=trials, key=jax.random.PRNGKey(3))
    f = np.asarray(b.fraction)
    assert np.all(f[:, :3] == 1.0) and np.all(f[:, 4:] == 0.0)
    counts = np.asarray(b.returned[:, 3])
    assert abs(counts.mean() / trials - 0.5) < 4 * math.sqrt(0.25 / (reps * trials))
    assert 0.6 * trials * 0.25 < counts.var() < 1.5 * trials * 0.25  # binomial variance n p (1 - p) = 10
    # exact coverage of the Wilson interval at (n, p) = (40, 1/2), from the binomial pmf
    k = np.arange(trials + 1)
    z = 1.959963984540054
    ph = k / trials
    centre = (ph + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * np.sqrt(ph * (1 - ph) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    pmf = np.array([math.comb(trials, int(j)) for j in k]) * 0.5**trials
    exact = pmf[(centre - half <= 0.5) & (0.5 <= centre + half)].sum()
    assert 0.92 < exact < 0.98
    covered = (np.asarray(b.lower[:, 3]) <= 0.5) & (0.5 <= np.asarray(b.upper[:, 3]))
    assert abs(covered.mean() - exact) < 3.5 * math.sqrt(exact * (1 - exact) / reps)
    pooled = np.asarray(b.pooled_fraction)
    assert np.all(np.asarray(b.pooled_lower) <= pooled) and np.all(pooled <= np.asarray(b.pooled_upper))
    # the radii where the fraction falls below 0.9 and 0.5: linear between r = 9 and 10 (11)
    for i in range(reps):
        f10 = f[i, 3]
        assert float(b.radius_90[i]) == pytest.approx(9 + 0.1 / (1 - f10), rel=1e-5)
        expect_50 = 9 + 0.5 / (1 - f10) if f10 < 0.5 else 10 + (f10 - 0.5) / f10
        assert float(b.radius_50[i]) == pytest.approx(expect_50, rel=1e-5)


def test_wilson_interval_matches_the_formula_and_stays_in_unit_interval():
    lo, hi = wilson_interval(jnp.array([0, 7, 40]), 40)
    assert float(lo[0]) == 0.0 and float(hi[2]) == pytest.approx(1.0, abs=1e-6)
    assert float(lo[1]) < 7 / 40 < float(hi[1])
    # Wilson at k = 0: upper = z^2 / (n + z^2)
    assert float(hi[0]) == pytest.approx(1.959963984540054**2 / (40 + 1.959963984540054**2), rel=1e-5)
    radii = jnp.array([0.0, 1.0, 2.0])
    assert np.isinf(float(_crossing(radii, jnp.array([1.0, 0.95, 0.92]), 0.9)))  # never below
    assert float(_crossing(radii, jnp.array([0.4, 0.3, 0.1]), 0.5)) == 0.0  # below at the first radius
    assert float(_crossing(radii, jnp.array([1.0, 0.8, 0.2]), 0.5)) == pytest.approx(1.5)


def test_basin_fraction_is_one_at_zero_and_falls_for_classical_at_high_load():
    # alpha = K/N = 0.4, far above the classical capacity 0.138: ten flips are mostly not
    # corrected; the cubic DAM holds the same 40 patterns (capacity ~ N^2 / (2 ln N)) with
    # wide basins. (At low load the classical basins are wide: the test above, K = 1.)
    n, load = 100, 40
    key = jax.random.PRNGKey(1)
    p = jnp.sign(jax.random.normal(jax.random.fold_in(key, load), (load, n)))
    radii = [0, 10, 25]
    high = basins(ham.memories.classical(p), p[:8], radii, trials=24, key=key)
    dense = basins(ham.memories.dense(p, n=3), p[:8], radii, trials=24, key=key)
    for b in (high, dense):
        assert np.all(np.asarray(b.fraction[:, 0]) == 1.0)  # r = 0: the pattern's own fixed point
        assert np.all(np.asarray(b.unconverged) == 0)
    assert float(high.pooled_fraction[1]) < 0.5 and float(high.pooled_upper[1]) < 0.7
    assert float(dense.pooled_fraction[2]) > 0.95 and float(dense.pooled_lower[2]) > 0.9
    assert float(high.pooled_radius_90) < 10 and np.isinf(float(dense.pooled_radius_90))


def test_modern_memory_basins_relax_the_continuous_dynamics():
    key = jax.random.PRNGKey(2)
    p = jax.random.normal(key, (4, 16))
    p = p / jnp.linalg.norm(p, axis=1, keepdims=True) * 4.0
    mem = ham.memories.modern(p, beta=2.0)
    b = basins(mem, p, [0.0, 0.3, 3.0], trials=8, key=key)
    f = np.asarray(b.pooled_fraction)
    assert f[0] == 1.0 and f[1] == 1.0 and f[2] < 0.9
    assert b.dim == 16 and np.all(np.asarray(b.unconverged) == 0)
    # the same through its HAM: noise on the visible layer, hidden at the pattern's h = Xi v
    net = mem.network
    bh = basins(net, {"v": p, "h": p @ p.T}, [0.0, 0.3], trials=8, key=key, layers=("v",))
    assert np.all(np.asarray(bh.pooled_fraction) == 1.0)


def test_basins_refuse_bad_inputs():
    p = jnp.sign(jax.random.normal(jax.random.PRNGKey(0), (3, 10)))
    mem = ham.memories.classical(p)
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match=r"patterns must have shape \(num_patterns, 10\)"):
        basins(mem, p[:, :8], [0, 1], trials=4, key=key)
    with pytest.raises(ValueError, match="±1"):
        basins(mem, 0.5 * p, [0, 1], trials=4, key=key)
    with pytest.raises(ValueError, match="radii must be >= 0"):
        basins(mem, p, [-1, 1], trials=4, key=key)
    with pytest.raises(ValueError, match="radii must be <= dim = 10"):
        basins(mem, p, [0, 11], trials=4, key=key)
    with pytest.raises(ValueError, match="integers"):
        basins(mem, p, [0, 1.5], trials=4, key=key)
    with pytest.raises(ValueError, match="strictly increasing"):
        basins(mem, p, [2, 1], trials=4, key=key)
    with pytest.raises(ValueError, match="radii must be finite"):
        basins(ham.memories.modern(p), p, [0.0, float("nan")], trials=4, key=key)
    with pytest.raises(ValueError, match="trials"):
        basins(mem, p, [0, 1], trials=0, key=key)
    with pytest.raises(TypeError, match="key"):
        basins(mem, p, [0, 1], trials=4, key=None)
    with pytest.raises(TypeError, match="model must be"):
        basins(ham.memories.universal(p), p, [0, 1], trials=4, key=key)
    net = ham.memories.modern(p).network
    with pytest.raises(ValueError, match=r"patterns have layers \['v'\]"):
        basins(net, {"v": p}, [0.0], trials=4, key=key)
    with pytest.raises(ValueError, match=r"patterns\['h'\] must have shape"):
        basins(net, {"v": p, "h": p}, [0.0], trials=4, key=key)


# ---------------------------------------------------------------------------- paths
def test_minimum_energy_path_barrier_between_two_modern_memories_matches_closed_form(x64):
    # Two unit patterns with xi1.xi2 = c: by the swap symmetry the saddle is the fixed
    # point v_s = (xi1 + xi2)/2 (softmax = (1/2, 1/2)), with E(v_s) = -ln2/beta - (1+c)/4
    # (hidden at h = Xi v). The minima are v = p xi1 + (1-p) xi2, p = sigmoid(beta (1-c)(2p-1)).
    beta, c = 8.0, 0.2
    mem, xi1, xi2 = _two_memories(beta, c)
    net = mem.network
    a, b = mem.relax(jnp.asarray(xi1)).states, mem.relax(jnp.asarray(xi2)).states
    path = minimum_energy_path(net, a, b, images=9)
    lo, hi = 0.5, 1.0  # bisection for p (an oracle independent of the library)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid - 1 / (1 + math.exp(-beta * (1 - c) * (2 * mid - 1))) < 0:
            lo = mid
        else:
            hi = mid
    p = 0.5 * (lo + hi)
    v = p * xi1 + (1 - p) * xi2
    e_min = -math.log(math.exp(beta * xi1 @ v) + math.exp(beta * xi2 @ v)) / beta + 0.5 * v @ v
    e_saddle = -math.log(2) / beta - (1 + c) / 4
    assert bool(path.converged) and path.refined
    assert float(path.barrier) == pytest.approx(e_saddle - e_min, rel=1e-6)
    assert float(path.barrier_back) == pytest.approx(e_saddle - e_min, rel=1e-6)
    np.testing.assert_allclose(np.asarray(path.saddle["v"]), (xi1 + xi2) / 2, atol=1e-7)
    assert _residual(net, path.saddle) < 1e-8
    index, _ = _fd_index(net, path.saddle)
    assert index == 1 and path.saddle_index == 1
    # energy rises monotonically to the saddle and falls after it (a minimum-energy path)
    e = np.asarray(path.energies)
    top = int(path.climbing_image)
    assert np.all(np.diff(e[: top + 1]) > 0) and np.all(np.diff(e[top:]) < 0)


def test_minimum_energy_path_bends_through_the_saddle_the_straight_line_misses(x64):
    # V = (x^2 - 1)^2 + 2 (y - x^2)^2: the straight line between the minima (-1, 1) and
    # (1, 1) crosses x = 0 at E = 3; the minimum-energy path follows y = x^2 over the
    # saddle (0, 0) of energy 1 (bending towards, not along, the valley floor y = x^2:
    # the gradient there is horizontal).
    net = _bent_net()
    a, b = {"x": jnp.array([-1.0, 1.0])}, {"x": jnp.array([1.0, 1.0])}
    path = minimum_energy_path(net, a, b, images=15)
    assert bool(path.converged) and path.refined
    assert float(path.barrier) == pytest.approx(1.0, abs=1e-8)
    assert float(path.barrier_back) == pytest.approx(1.0, abs=1e-8)
    np.testing.assert_allclose(np.asarray(path.saddle["x"]), [0.0, 0.0], atol=1e-8)
    assert _residual(net, path.saddle) < 1e-8
    index, eig = _fd_index(net, path.saddle)
    assert index == 1 and path.saddle_index == 1
    np.testing.assert_allclose(np.sort(eig.real), [-4.0, 4.0], atol=1e-5)  # -Hessian diag(-4, 4)
    # a steepest-descent path: the force is along the band at every image but the saddle
    xy = np.asarray(path.states["x"])
    force = np.asarray(net.vector_field(0.0, {"x": jnp.asarray(xy)})["x"])[1:-1]
    tangent = xy[2:] - xy[:-2]
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    across = force - np.sum(force * tangent, axis=1, keepdims=True) * tangent
    moving = np.arange(1, len(xy) - 1) != int(path.climbing_image)
    assert np.all(np.linalg.norm(across, axis=1)[moving] < 1e-3 * np.linalg.norm(force, axis=1)[moving])
    assert np.max(np.asarray(path.energies)) < 1.0 + 1e-8  # the straight line peaks at E = 3


@pytest.mark.slow  # a second compilation; notebook 06 runs the float32 path in the default suite
def test_minimum_energy_path_in_float32_finds_the_same_saddle():
    mem, xi1, xi2 = _two_memories()
    net = mem.network
    a, b = mem.relax(jnp.asarray(xi1, jnp.float32)).states, mem.relax(jnp.asarray(xi2, jnp.float32)).states
    path = minimum_energy_path(net, a, b, images=7)
    assert path.refined and path.saddle_index == 1
    np.testing.assert_allclose(np.asarray(path.saddle["v"]), (xi1 + xi2) / 2, atol=1e-4)


def test_minimum_energy_path_refuses_bad_inputs():
    net = _bent_net()
    a, b = {"x": jnp.array([-1.0, 1.0])}, {"x": jnp.array([1.0, 1.0])}
    with pytest.raises(ValueError, match="images must be >= 3"):
        minimum_energy_path(net, a, b, images=2)
    with pytest.raises(TypeError, match="images must be an integer"):
        minimum_energy_path(net, a, b, images=4.5)
    with pytest.raises(ValueError, match="a is not a fixed point"):
        minimum_energy_path(net, {"x": jnp.array([-0.5, 1.0])}, b)
    with pytest.raises(ValueError, match="b is not a fixed point"):
        minimum_energy_path(net, a, {"x": jnp.array([1.0, 0.5])})
    with pytest.raises(ValueError, match="same fixed point"):
        minimum_energy_path(net, a, a)
    with pytest.raises(ValueError, match=r"b\['x'\] must be one unbatched state of shape \(2,\)"):
        minimum_energy_path(net, a, {"x": jnp.ones((3, 2))})
    with pytest.raises(ValueError, match="must be finite"):
        minimum_energy_path(net, a, {"x": jnp.array([1.0, jnp.nan])})
    mem, _, _ = _two_memories()
    with pytest.raises(TypeError, match="pass model.network"):
        minimum_energy_path(mem, a, b)
