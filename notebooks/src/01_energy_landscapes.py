# %% [markdown]
# # Energy landscapes: classical vs dense associative memory
#
# A network of $N$ binary neurons $\sigma\in\{\pm1\}^N$ storing $K$ patterns $\xi_\mu$ has the energy
# $$E(\sigma) = -\sum_{\mu=1}^{K} F(\xi_\mu\cdot\sigma),$$
# and asynchronous updates $\sigma_i \leftarrow \operatorname{sign}\big[\sum_\mu F(\xi_\mu\cdot\sigma^{(i+)}) -
# F(\xi_\mu\cdot\sigma^{(i-)})\big]$ never raise it. $F(z) = z^2$ is the classical Hopfield network (Hopfield 1982;
# Hebbian $W = \tfrac1N\sum_\mu\xi_\mu\xi_\mu^\top$, $E = -\tfrac12\sigma^\top W\sigma$), whose capacity is
# $\approx 0.14N$ and whose landscape is littered with spurious minima (mixtures such as
# $\operatorname{sign}(\xi_1+\xi_2+\xi_3)$). The Dense Associative Memory $F(z) = z^n$ (Krotov & Hopfield 2016) stores
# $\propto N^{n-1}$ patterns and $F(z) = e^{\beta z}$ (Demircigil et al. 2017) exponentially many: the crosstalk
# between memories is suppressed by the steep $F$, so the minima around the stored patterns become sharp and the
# spurious minima disappear (Krotov 2023, *A new frontier for Hopfield networks*, Fig. 1). Below we store the same
# patterns in each model, find the minima by relaxation from random starts, and plot the energy on 1-D and 2-D
# slices through the state space that pass through two stored patterns and a spurious minimum of the classical
# network.

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
# ## The same ten patterns in four memories
# $N = 64$ neurons, $K = 10$ random patterns (load $K/N \approx 0.16$, just above the classical capacity).

# %%
N, K, STARTS = 64, 10, 300
key_patterns, key_starts, key_order = jax.random.split(jax.random.PRNGKey(1), 3)
patterns = jnp.sign(jax.random.normal(key_patterns, (K, N)))
models = {
    "classical (F = z²)": ham.memories.classical(patterns),
    "dense, F = z³": ham.memories.dense(patterns, n=3),
    "dense, F = z⁶": ham.memories.dense(patterns, n=6),
    "exponential, F = exp(0.2 z)": ham.memories.exponential(patterns, beta=0.2),
}

# %% [markdown]
# ## Minima found by relaxation from random starts
# `ham.landscape.census` runs each model's asynchronous sign updates (random neuron order) from the same 300 random
# states and counts the distinct fixed points reached; `ham.landscape.classify` checks that the stored patterns
# themselves are fixed points (index 0: no single flip lowers the energy) and `ham.landscape.label` sorts the fixed
# points by their overlaps $m_\mu = \xi_\mu\cdot\sigma/N$ with the patterns: a stored pattern (or, for even $F$, its
# negative) has $|m_\mu| = 1$; anything else is a spurious minimum — a mixture of a few patterns
# (Amit, Gutfreund & Sompolinsky 1985) or a spin-glass state with no large overlap.

# %%
random_starts = jnp.sign(jax.random.normal(key_starts, (STARTS, N)))
minima = {}
print(f"{'model':<30} {'patterns stable':>15} {'starts -> stored':>17} {'-> spurious':>11} {'distinct spurious':>18} "
      f"{'mixture / spin-glass':>21}")
for name, model in models.items():
    census = ham.landscape.census(model, random_starts, key=key_order)
    assert bool(jnp.all(census.converged)), f"{name}: some runs did not reach a fixed point"
    stable = np.asarray(ham.landscape.classify(model, patterns).index) == 0
    labels = ham.landscape.label(census.points, patterns)
    point_overlap = np.abs(np.asarray(labels.overlaps)).max(axis=1)  # per distinct fixed point
    spurious_point = point_overlap < 1
    reached = np.asarray(census.assignment)  # the fixed point each start reached
    found, max_overlap = np.asarray(census.points)[reached], point_overlap[reached]
    spurious = max_overlap < 1
    minima[name] = {"states": found, "max_overlap": max_overlap, "spurious": spurious}
    kinds = np.asarray(labels.code)[spurious_point]
    mixtures = int(np.sum((kinds == 2) | (kinds == 3)))
    glass = int(np.sum(kinds == 4))
    print(f"{name:<30} {stable.mean():>15.0%} {1 - spurious.mean():>17.0%} {spurious.mean():>11.0%} "
          f"{int(spurious_point.sum()):>18} {f'{mixtures} / {glass}':>21}")
fractions = [minima[name]["spurious"].mean() for name in models]
assert fractions[0] > 0.3 and fractions[-1] == 0 and fractions[2] <= fractions[1] <= fractions[0]

# %% [markdown]
# ## A slice through two patterns and a spurious minimum
# The classical network's most frequent spurious minimum $s^*$ overlaps most with two stored patterns $\xi_a,\xi_b$
# (signs chosen so the overlaps are positive). The states $\sigma(u, v) = \operatorname{clip}\big(\xi_a + u(\xi_b -
# \xi_a) + v(s^* - \xi_a), -1, 1\big)$ form a plane through the three (clipped to the hypercube $[-1,1]^N$ where the
# plane leaves it); $u$ runs from $\xi_a$ to $\xi_b$ and $v$ towards $s^*$. The 1-D slice is the path
# $\xi_a \to s^* \to \xi_b$ along two edges of that triangle. Energies are evaluated with each model's `energy`
# (defined for any real state) and rescaled to $[0, 1]$ on each slice, so the shapes can be compared.

# %%
classical_minima = minima["classical (F = z²)"]
spurious_states, counts = np.unique(classical_minima["states"][classical_minima["spurious"]], axis=0, return_counts=True)
s_star = spurious_states[np.argmax(counts)]
# the classical energy is even, so -s* is a minimum too: take the sign whose two largest overlaps are positive
# (for odd F, such as z³ or exp, a negated pattern is a maximum, not a memory)
if np.sort(np.asarray(patterns) @ -s_star)[-2:].sum() > np.sort(np.asarray(patterns) @ s_star)[-2:].sum():
    s_star = -s_star
overlaps = np.asarray(patterns) @ s_star / N
a, b = np.argsort(-overlaps)[:2]
xi_a, xi_b = np.asarray(patterns[a]), np.asarray(patterns[b])
print(f"s*: reached from {counts.max()} of {STARTS} starts; overlaps with its two nearest patterns "
      f"{overlaps[a]:.2f}, {overlaps[b]:.2f}")


# a local minimum of a binary network: no single-neuron flip lowers the energy (classify's index 0)
is_minimum = {name: int(ham.landscape.classify(model, s_star[None]).index[0]) == 0 for name, model in models.items()}
print("s* is a local minimum of:", [name for name, ok in is_minimum.items() if ok])

grid = np.linspace(-0.15, 1.15, 105)
U, V = np.meshgrid(grid, grid)
plane = np.clip(xi_a + U[..., None] * (xi_b - xi_a) + V[..., None] * (s_star - xi_a), -1.0, 1.0)  # (105, 105, N)
t = np.linspace(0.0, 1.0, 101)
path = np.concatenate([xi_a + t[:, None] * (s_star - xi_a), s_star + t[1:, None] * (xi_b - s_star)])  # a -> s* -> b


def rescaled(energy):
    """Energy mapped to [0, 1] over the slice (a monotone rescaling: the minima stay where they are)."""
    energy = np.asarray(energy, dtype=np.float64)
    return (energy - energy.min()) / (energy.max() - energy.min())


landscapes = {name: rescaled(model.energy(jnp.asarray(plane, jnp.float32))) for name, model in models.items()}
profiles = {name: rescaled(model.energy(jnp.asarray(path, jnp.float32))) for name, model in models.items()}
for name, profile in profiles.items():
    print(f"{name:<30} rescaled energy on the path at xi_a {profile[0]:.2f}, s* {profile[100]:.2f}, xi_b {profile[-1]:.2f}")
assert is_minimum["classical (F = z²)"] and not is_minimum["exponential, F = exp(0.2 z)"]

# %% [markdown]
# ## The figure
# Top: the 2-D slice (stars: stored patterns; cross: $s^*$, red where it is a minimum of that model, white where it
# is not). Middle: the 1-D path $\xi_a\to s^*\to\xi_b$ (where $s^*$ is not a minimum it may still sit in a shallow
# dip *along this path*, but some single-neuron flip off the path lowers its energy). Bottom: where the 300 random starts ended, by their largest
# overlap with a stored pattern (1 = a stored pattern was retrieved).

# %%
fig, axes = plt.subplots(3, len(models), figsize=(4.2 * len(models), 11.5), gridspec_kw={"height_ratios": [1.25, 0.8, 0.8]})
for col, name in enumerate(models):
    ax = axes[0, col]
    im = ax.contourf(U, V, landscapes[name], levels=30, cmap="viridis")
    ax.plot([0, 1, 0, 0], [0, 0, 1, 0], color="w", lw=0.6, alpha=0.6)
    ax.plot([0, 1], [0, 0], "*", ms=15, color="gold", mec="k", label="stored patterns $\\xi_a, \\xi_b$")
    ax.plot([0], [1], "X", ms=12, color="red" if is_minimum[name] else "white", mec="k",
            label="$s^*$ (" + ("a spurious minimum" if is_minimum[name] else "not a minimum") + ")")
    ax.set(title=name, xlabel="u  ($\\xi_a \\to \\xi_b$)", ylabel="v  ($\\xi_a \\to s^*$)", aspect="equal")
    ax.legend(loc="upper right", fontsize=7.5, framealpha=0.8)
    fig.colorbar(im, ax=ax, shrink=0.8, label="rescaled energy")

    ax = axes[1, col]
    x = np.concatenate([t, 1 + t[1:]])
    ax.plot(x, profiles[name], color="C0")
    ax.plot([0, 2], [profiles[name][0], profiles[name][-1]], "*", ms=13, color="gold", mec="k")
    ax.plot([1], [profiles[name][100]], "X", ms=11, color="red" if is_minimum[name] else "white", mec="k")
    ax.set(xticks=[0, 1, 2], xticklabels=["$\\xi_a$", "$s^*$", "$\\xi_b$"], ylabel="rescaled energy",
           title="1-D slice $\\xi_a \\to s^* \\to \\xi_b$")

    ax = axes[2, col]
    m = minima[name]
    ax.hist(m["max_overlap"], bins=np.linspace(0, 1.0001, 34), color="C3")
    ax.set(xlabel="largest overlap of the fixed point with a stored pattern", ylabel="random starts",
           title=f"spurious minima reached: {m['spurious'].mean():.0%}", xlim=(0, 1.03))
fig.suptitle(f"Energy landscapes of {K} patterns in {N} neurons: steeper F sharpens the minima and removes spurious ones",
             fontsize=13)
fig.tight_layout()
fig.savefig(FIGURES / "01_energy_landscapes.png", dpi=100)
plt.show()
