# %% [markdown]
# # The newest Dense Associative Memories: random features and the Epanechnikov energy
#
# Two DenseAMs from 2024–2025, both built on the L2 log-sum-exp energy
# $E(x) = -\beta^{-1}\log\sum_\mu e^{-\frac\beta2\|x-\xi_\mu\|^2}$ ([`ham.memories.log_sum_exp`]):
#
# - **Random features** (Hoover et al., NeurIPS 2024, *Dense Associative Memory Through the Lens of Random
#   Features*): the kernel $e^{-\frac\beta2\|x-\xi\|^2} = \mathbb E[\varphi(x)\cdot\varphi(\xi)]$ for random
#   features $\varphi$, so all memories are written into one tensor $T=\sum_\mu\varphi(\xi_\mu)$ and
#   $\hat E(x) = -\beta^{-1}\log\varphi(x)\cdot T$: a memory whose size does not depend on the number of patterns.
# - **Epanechnikov / log-sum-ReLU** (Hoover et al., NeurIPS 2025, *Dense Associative Memory with Epanechnikov
#   Energy*): $E(x) = -\beta^{-1}\log(\varepsilon + \sum_\mu \mathrm{ReLU}(1-\frac\beta2\|x-\xi_\mu\|^2))$. Every
#   pattern has a compact support (radius $\sqrt{2/\beta}$); where supports overlap, their centroid can be a new,
#   *emergent* local minimum while the stored patterns stay exact minima.
#
# Both are one-layer HAMs (identity Lagrangian without its Legendre term, `legendre=False`, + a synapse with energy $E(g)$), so
# `retrieve` is [`ham.relax`] of $\tau\dot x = -\nabla E(x)$, and the energy never rises along it.

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
M = ham.memories

# %% [markdown]
# ## An emergent memory
# Three patterns in the plane at mutual distance $d$ with $2/\beta \le d^2 < 8/\beta$: no pattern lies in
# another's support, so each is an exact fixed point, but the supports overlap pairwise. The midpoint of each pair
# lies in exactly those two supports, where $S(x) = 2 - \frac\beta2(\|x-\xi_1\|^2 + \|x-\xi_2\|^2)$ is a concave
# quadratic maximal at the midpoint: an emergent minimum with $E = -\beta^{-1}\log(\varepsilon + 2 - \beta d^2/4)$.
# (With $\beta=1$, $d^2=3$ the centroid of all three is at squared distance $1 < 2$ from each, so it is a fourth,
# triple-overlap minimum.) We relax a grid of starts and count where they end.

# %%
beta, d = 1.0, np.sqrt(3.0)
angles = np.pi / 2 + 2 * np.pi * np.arange(3) / 3
patterns = (d / np.sqrt(3)) * np.stack([np.cos(angles), np.sin(angles)], axis=1)  # equilateral, side d
epa = M.epanechnikov(patterns, beta)
lse = M.log_sum_exp(patterns, beta)

g = np.linspace(-2.3, 2.3, 161)
X, Y = np.meshgrid(g, g)
grid = np.stack([X.ravel(), Y.ravel()], axis=1).astype(np.float32)
E_epa = np.asarray(epa.energy(grid)).reshape(X.shape)
E_lse = np.asarray(lse.energy(grid)).reshape(X.shape)

rng = np.random.default_rng(0)
starts = patterns[rng.integers(0, 3, 600)] + np.sqrt(2 / beta) * rng.uniform(size=(600, 1)) ** 0.5 * (
    lambda u: u / np.linalg.norm(u, axis=1, keepdims=True))(rng.normal(size=(600, 2)))
sol = epa.relax(jnp.asarray(starts, jnp.float32))
ham.lyapunov.check(sol)
ends = np.asarray(sol.states["x"])
minima = np.unique(np.round(ends, 3), axis=0)
stored = np.array([np.min(np.linalg.norm(patterns - m, axis=1)) < 1e-3 for m in minima])
print(f"{len(minima)} distinct minima: {stored.sum()} stored, {(~stored).sum()} emergent")
for m in minima[~stored]:
    print("emergent at", m, "in", int(epa.support_counts(m)), "supports, E =", float(epa.energy(m)))
pair_mid = (patterns[0] + patterns[1]) / 2
assert np.isclose(float(epa.energy(pair_mid)), -np.log(epa.eps + 2 - beta * d**2 / 4) / beta, rtol=1e-5)
assert stored.sum() == 3 and (~stored).sum() >= 3
lse_minima = np.unique(np.round(np.asarray(lse.retrieve(jnp.asarray(starts, jnp.float32))), 2), axis=0)
print(f"log-sum-exp at the same beta: {len(lse_minima)} minimum/minima")

# %% [markdown]
# ## Random features: the error falls like $Y^{-1/2}$
# The trigonometric estimate $\varphi(x)\cdot T$ of the kernel sum is unbiased with standard deviation
# $\approx\sqrt{K/2Y}$; the energy inherits $Y^{-1/2}$ while that error is small relative to the sum itself.
# Below: RMS error of the energy near the memories (16 patterns in 16 dimensions, 8 seeds) against the exact
# log-sum-exp, and the fitted slope. The memory's size is $Y(D+2)$ numbers whatever $K$.

# %%
k, dim, beta_rf = 16, 16, 0.3
xi = rng.normal(size=(k, dim)).astype(np.float32)
queries = jnp.asarray(xi + 0.5 * rng.normal(size=(k, dim)) / np.sqrt(beta_rf * dim), jnp.float32)
exact = np.asarray(M.log_sum_exp(xi, beta_rf).energy(queries))
ys = np.array([256, 1024, 4096, 16384])
errs = []
for y in ys:
    est = jax.vmap(lambda key: M.random_features(xi, beta_rf, int(y), key=key).energy(queries))(
        jax.random.split(jax.random.key(0), 8))
    errs.append(float(np.sqrt(np.mean((np.asarray(est) - exact) ** 2))))
slope = np.polyfit(np.log(ys), np.log(errs), 1)[0]
print("RMS energy error:", dict(zip(ys.tolist(), np.round(errs, 4))), f"slope {slope:.2f}")
assert -0.7 < slope < -0.3
rf = M.random_features(xi, beta_rf, 1024, key=jax.random.key(1))
print("bytes:", rf.nbytes, "-> after writing 10,000 more patterns:",
      rf.write(rng.normal(size=(10_000, dim)).astype(np.float32)).nbytes)

# %%
fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
for ax, E, title in ((axes[0], E_epa, "Epanechnikov (log-sum-ReLU)"), (axes[1], E_lse, "log-sum-exp, same β")):
    cs = ax.contourf(X, Y, E, levels=30, cmap="viridis")
    fig.colorbar(cs, ax=ax)
    ax.plot(*patterns.T, "r*", ms=14, label="stored")
    ax.set_title(title)
    ax.set_aspect("equal")
axes[0].plot(*minima[~stored].T, "wo", ms=8, mfc="none", mew=2, label="emergent minima")
axes[0].legend(loc="lower right", fontsize=8)
axes[1].plot(*lse_minima.T, "wo", ms=8, mfc="none", mew=2)
axes[2].loglog(ys, errs, "o-", label=f"measured (slope {slope:.2f})")
axes[2].loglog(ys, errs[0] * (ys / ys[0]) ** -0.5, "k--", label="$Y^{-1/2}$")
axes[2].set_xlabel("random features Y")
axes[2].set_ylabel("RMS energy error")
axes[2].set_title("random-feature DenseAM")
axes[2].legend()
fig.tight_layout()
fig.savefig(FIGURES / "07_frontier_memories.png", dpi=100, bbox_inches="tight")
