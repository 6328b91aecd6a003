# %% [markdown]
# # Basins and barriers
#
# A memory is only useful if it *attracts*: the set of states from which the dynamics end at the stored pattern
# $\xi$ — its **basin of attraction** — must be large. For the classical Hopfield network the basins stay a finite
# fraction of $N$ up to the load $\alpha_c \approx 0.138$ and shrink as it is approached (Amit, Gutfreund &
# Sompolinsky 1985, 1987); Dense Associative Memories keep basins of size $O(N)$ far beyond it (Krotov & Hopfield
# 2016; Demircigil et al. 2017). Between two memories lies a **barrier**: the lowest mountain pass, an index-1
# saddle, which any transition from one memory to the other must climb.
#
# This notebook measures both with `ham.landscape`:
#
# 1. `basins`: the fraction of starts at Hamming distance $r$ from each pattern that return to it (overlap
#    $\ge 0.99$, or the pattern's own fixed point), with Wilson 95 % intervals, and the radius where it falls below
#    0.9 and 0.5;
# 2. `minimum_energy_path`: a climbing-image string (E, Ren & Vanden-Eijnden 2002; Henkelman et al. 2000) between
#    two memories of a modern Hopfield network (Ramsauer et al. 2020) run as a two-layer HAM, driven by each layer's
#    force $-\partial E/\partial g_A$, with the saddle polished by Newton's method;
# 3. `census` + `classify`: the minima found from random starts and the saddle from the path, each with its
#    Morse index (the number of unstable directions of the dynamics).

# %%
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import ham

FIGURES = Path(os.environ.get("HAM_FIGURES_DIR", "figures"))
FIGURES.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## 1. Basin curves: classical vs dense at the same load
# $N = 100$ neurons, $K = 12$ random patterns (load $\alpha = 0.12$, just below the classical capacity). For 10 of
# the patterns, 40 starts at each distance $r$ (exactly $r$ neurons flipped), asynchronous sign dynamics in a random
# neuron order. The shaded bands are the Wilson 95 % intervals of the fraction pooled over patterns.

# %%
N, K = 100, 12
patterns = jnp.sign(jax.random.normal(jax.random.PRNGKey(0), (K, N)))
radii = np.arange(0, 51, 5)
basin_models = {
    "classical (F = z²)": ham.memories.classical(patterns),
    "dense, F = z³": ham.memories.dense(patterns, n=3),
}
curves = {}
for name, model in basin_models.items():
    curves[name] = ham.landscape.basins(model, patterns[:10], radii, trials=40, key=jax.random.PRNGKey(1))
    b = curves[name]
    print(f"{name:<20} fraction at r = 0: {float(b.pooled_fraction[0]):.2f}, r/N where it falls below 0.9: "
          f"{float(b.pooled_radius_90) / N:.3f}, below 0.5: {float(b.pooled_radius_50) / N:.3f}")
classical_b, dense_b = curves["classical (F = z²)"], curves["dense, F = z³"]
assert all(float(b.pooled_fraction[0]) == 1.0 for b in curves.values())  # r = 0 is the pattern itself
assert float(dense_b.pooled_radius_50) > float(classical_b.pooled_radius_50)

# %% [markdown]
# ## 2. A minimum-energy path in a modern Hopfield network
# Three patterns in the plane stored in a modern Hopfield network with $\beta = 6$: $\xi_0$ and $\xi_1$ of unit norm
# at 0° and 150°, and a weaker $\xi_2$ of norm 0.75 at 75°, on their mirror axis. The network is a visible layer
# $v\in\mathbb R^2$ (identity Lagrangian) and a hidden softmax layer $h\in\mathbb R^3$ joined by $\Xi$; with the
# hidden layer at its equilibrium $h = \Xi v$ its energy is
# $$E(v) = -\beta^{-1}\log\sum_\mu e^{\beta\,\xi_\mu\cdot v} + \tfrac12\|v\|^2,$$
# whose landscape we can draw. The band of the string method lives in the full $(v, h)$ space; the softmax
# Lagrangian is flat along $h \to h + c\mathbf 1$, which is why the band is driven by the layers' forces
# $-\partial E/\partial g_A$ (which keep the leak $-h$ along that direction) rather than by $-\nabla E$ in $x$.

# %%
angles = np.deg2rad([0.0, 150.0, 75.0])
xi = jnp.asarray(np.stack([np.cos(angles), np.sin(angles)], axis=1) * np.array([1.0, 1.0, 0.75])[:, None])
memory = ham.memories.modern(xi, beta=6.0)
net = memory.network


def plane_energy(v):
    """The HAM energy with the hidden layer at its equilibrium h = Xi v."""
    return net.energy({"v": v, "h": v @ xi.T})


ends = memory.relax(xi)  # the fixed points reached from the three patterns themselves
assert bool(jnp.all(ends.converged))
kinds = ham.landscape.classify(net, ends.states)
for mu in range(3):
    print(f"relaxed from xi_{mu}: v = {np.asarray(ends.states['v'][mu]).round(3)}, {kinds.kind[mu]}")
a = {k: v[0] for k, v in ends.states.items()}
b = {k: v[1] for k, v in ends.states.items()}
path = ham.landscape.minimum_energy_path(net, a, b, images=15)
line = jnp.linspace(0.0, 1.0, 41)[:, None] * (b["v"] - a["v"]) + a["v"]
line_energy = np.asarray(plane_energy(line))
print(f"converged: {bool(path.converged)} after {int(path.iterations)} band updates; saddle refined: {path.refined}, "
      f"index {path.saddle_index}, |dx/dt| = {float(path.residual):.1e}, v = {np.asarray(path.saddle['v']).round(3)}")
print(f"barrier from xi_0: {float(path.barrier):.4f} (from xi_1: {float(path.barrier_back):.4f}); "
      f"the straight line between them peaks {float(line_energy.max() - path.energies[0]):.4f} above xi_0")
assert bool(path.converged) and path.refined and path.saddle_index == 1 and float(path.residual) < 1e-3
assert list(np.asarray(kinds.index)) == [0, 0, 1]
# the pass between the two memories is the fixed point the weak pattern relaxes to
assert np.allclose(np.asarray(path.saddle["v"]), np.asarray(ends.states["v"][2]), atol=1e-2)
assert float(path.barrier) < float(line_energy.max() - path.energies[0]) - 0.02

# %% [markdown]
# The weak pattern $\xi_2$ is **not a memory** at this $\beta$: relaxing from it ends at a fixed point that
# `classify` finds to be a saddle of index 1 (one growth rate $> 0$). Only the mirror symmetry keeps the relaxation
# on the axis; any perturbation slides off to $\xi_0$ or $\xi_1$. That saddle is exactly the mountain pass between
# the two memories: the minimum-energy path bends through it, well below the straight line.
#
# ## 3. A classified census
# 200 random visible states (hidden at equilibrium) are relaxed and deduplicated by `census`; `classify` computes
# the Morse index of every fixed point from the Jacobian of the dynamics (not the Hessian of $E$, which is exactly
# zero along the softmax's flat direction). Random starts reach a saddle with probability zero, so the census
# finds the two memories only; the saddle comes from the path.

# %%
starts_v = jax.random.uniform(jax.random.PRNGKey(2), (200, 2), minval=-1.5, maxval=1.5)
found = ham.landscape.census(net, {"v": starts_v, "h": starts_v @ xi.T})
found_kind = ham.landscape.classify(net, found.points)
saddle_kind = ham.landscape.classify(net, {k: v[None] for k, v in path.saddle.items()})
print(f"{'point':<9} {'v':>16} {'energy':>9}  kind, leading eigenvalues of the Jacobian")
for i in range(found.num_points):
    print(f"minimum {i} {np.array2string(np.asarray(found.points['v'][i]), precision=3):>16} "
          f"{float(found.energies[i]):>9.4f}  {found_kind.kind[i]}, {np.asarray(found_kind.eigenvalues[i][:2]).round(2)}"
          f"  (reached from {int(found.counts[i])} of 200 starts)")
print(f"saddle    {np.array2string(np.asarray(path.saddle['v']), precision=3):>16} {float(path.saddle_energy):>9.4f}  "
      f"{saddle_kind.kind[0]}, {np.asarray(saddle_kind.eigenvalues[0][:2]).round(2)}")
assert found.num_points == 2 and np.all(np.asarray(found_kind.index) == 0)
assert int(jnp.sum(found.counts)) == int(jnp.sum(found.converged)) == 200
assert int(saddle_kind.index[0]) == 1

# %% [markdown]
# ## The figure
# Left: the basin curves with their intervals. Middle: the energy landscape of the modern network in the visible
# plane with the two minima, the saddle, the minimum-energy path (the band's visible coordinates) and the straight
# line between the memories. Right: the energy along both.

# %%
fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
ax = axes[0]
for (name, bsn), colour in zip(curves.items(), ["tab:red", "tab:blue"]):
    r = np.asarray(bsn.radii) / N
    ax.plot(r, np.asarray(bsn.pooled_fraction), "o-", color=colour, label=name)
    ax.fill_between(r, np.asarray(bsn.pooled_lower), np.asarray(bsn.pooled_upper), color=colour, alpha=0.25)
ax.axhline(0.5, color="grey", lw=0.8, ls=":")
ax.set(xlabel="distance r/N of the start", ylabel="fraction returned", title=f"basins, N = {N}, K = {K}")
ax.legend()

ax = axes[1]
grid = np.linspace(-1.5, 1.5, 121)
gx, gy = np.meshgrid(grid, grid)
plane = jnp.asarray(np.stack([gx.ravel(), gy.ravel()], axis=1))
landscape = np.asarray(plane_energy(plane)).reshape(gx.shape)
cs = ax.contourf(gx, gy, np.minimum(landscape, 0.4), levels=30, cmap="viridis")
fig.colorbar(cs, ax=ax, label="E(v) (clipped at 0.4)")
band = np.asarray(path.states["v"])
ax.plot(band[:, 0], band[:, 1], ".-", color="white", lw=1.2, ms=5, label="minimum-energy path")
ax.plot(np.asarray(line)[:, 0], np.asarray(line)[:, 1], "--", color="orange", lw=1.2, label="straight line")
minima_v = np.asarray(found.points["v"])
ax.plot(minima_v[:, 0], minima_v[:, 1], "o", color="red", ms=7, label="minima (index 0)")
ax.plot(*np.asarray(path.saddle["v"]), "x", color="white", ms=11, mew=2.5, label="saddle (index 1)")
ax.plot(*np.asarray(xi).T, "+", color="black", ms=9, mew=1.5, label="patterns")
ax.set(xlabel="v₁", ylabel="v₂", title="modern Hopfield, β = 6: the pass", aspect="equal")
ax.legend(loc="lower left", fontsize=8)

ax = axes[2]
arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(np.asarray(path.states["v"]), axis=0), axis=1))])
ax.plot(arc / arc[-1], np.asarray(path.energies), "o-", color="tab:blue", label="minimum-energy path")
ax.plot(np.linspace(0, 1, len(line_energy)), line_energy, "--", color="orange", label="straight line")
ax.axhline(float(path.saddle_energy), color="grey", lw=0.8, ls=":")
ax.annotate(f"barrier {float(path.barrier):.3f}", (0.5, float(path.saddle_energy)), textcoords="offset points",
            xytext=(0, 6), ha="center")
ax.set(xlabel="position along the path (visible arc length, normalised)", ylabel="E", title="energy from ξ₀ to ξ₁")
ax.legend()
fig.tight_layout()
fig.savefig(FIGURES / "06_basins_and_barriers.png", dpi=110)
plt.show()
