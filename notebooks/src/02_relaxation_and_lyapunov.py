# %% [markdown]
# # Relaxation and the Lyapunov function
#
# A hierarchical associative memory (Krotov 2021, *Hierarchical associative memory*; Krotov & Hopfield 2021,
# *Large associative memory problem in neurobiology and machine learning*) is a set of layers $A$, each with a state
# $x_A$ and a convex Lagrangian $L_A$, whose activations are $g_A = \partial L_A/\partial x_A$. The energy
# $E = \sum_A \big(x_A\cdot g_A - L_A(x_A)\big) + \sum_S E_S(g)$ (here one dense synapse, $E_S = -g_v^\top W g_h$)
# drives the dynamics $\tau_A\,\dot x_A = -\partial E/\partial g_A$, along which
# $$\frac{dE}{dt} = -\sum_A \tau_A\,\dot x_A^\top\,\nabla^2 L_A(x_A)\,\dot x_A \;\le\; 0,$$
# so $E$ is a Lyapunov function and every trajectory ends at a fixed point $\dot x = 0$.
# This notebook integrates a two-layer network with diffrax (`ham.relax`), checks the formula for $dE/dt$ against
# finite differences of the energy trace, and compares with fixed-step Euler descent (`ham.descend`).

# %%
import os
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)  # float64: tight tolerances make dE/dt comparable to finite differences

import diffrax
import equinox as eqx
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import ham

FIGURES = Path(os.environ.get("HAM_FIGURES_DIR", "figures"))
FIGURES.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## A two-layer memory
# Twelve visible tanh neurons and six hidden softmax neurons (a "model B"-type memory of Krotov & Hopfield 2021):
# the columns of $W$ are six stored $\pm1$ patterns. The hidden layer is five times faster ($\tau_h = 0.2$).
# We start from pattern 0 with a third of its entries flipped.

# %%
N, K = 12, 6
key_patterns, key_flip = jax.random.split(jax.random.PRNGKey(0))
patterns = jnp.sign(jax.random.normal(key_patterns, (K, N)))
net = ham.HAM(
    layers={
        "v": ham.Layer(ham.lagrangians.tanh, shape=(N,), tau=1.0),
        "h": ham.Layer(eqx.Partial(ham.lagrangians.softmax, beta=jnp.array(1.0)), shape=(K,), tau=0.2),
    },
    synapses={"w": ham.synapses.Dense(patterns.T)},
    connections={"w": ("v", "h")},
)
flip = jax.random.permutation(key_flip, N)[: N // 3]
xs0 = {"v": 0.5 * patterns[0].at[flip].multiply(-1.0), "h": jnp.zeros(K)}

# rtol=1e-3: the solver follows the trajectory closely (see "Which fixed point" below for the looser default)
sol = ham.relax(net, xs0, rtol=1e-3, atol=1e-3)
ham.lyapunov.check(sol)  # raises if the energy rose anywhere along the trace
times, energies = sol.trace()
final = sol.states
print(f"relax: converged={bool(sol.converged)} ({sol.reason}) after {int(sol.num_steps)} accepted steps, "
      f"t = {times[-1]:.2f}, E* = {energies[-1]:.6f}, |dx/dt| = {float(sol.residual):.1e}")
g_final = net.activations(final)
print("retrieved pattern:", int(jnp.argmax(g_final["h"])), " sign(g_v) == pattern 0:",
      bool(jnp.all(jnp.sign(g_final["v"]) == patterns[0])))

# %% [markdown]
# ## Which fixed point
# `ham.relax`'s default controller is loose (`rtol = atol = 1`): it keeps every step downhill in energy and lets
# the steps grow towards the network's discrete update, which is what makes it fast. This query starts with a third
# of its bits flipped, close to the boundary between two basins, and there the big steps of the default land in
# the neighbouring basin (a lower fixed point) while the continuous trajectory, followed with `rtol=1e-3` (or
# Tsit5), ends in the other. Both are fixed points and both runs are downhill all the way.

# %%
fast = ham.relax(net, xs0)
ham.lyapunov.check(fast)
print(f"default (loose) relax: {int(fast.num_steps)} steps, {float(fast.num_evaluations):.0f} evaluations, "
      f"E = {float(fast.trace()[1][-1]):.6f}, memory {int(jnp.argmax(net.activations(fast.states)['h']))}")
print(f"rtol=1e-3 relax:       {int(sol.num_steps)} steps, {float(sol.num_evaluations):.0f} evaluations, "
      f"E = {float(energies[-1]):.6f}, memory {int(jnp.argmax(g_final['h']))}")
assert bool(fast.converged) and bool(sol.converged)

# %% [markdown]
# ## The trajectory
# `ham.relax` records only the energy at each accepted step. Its default solver, `ham.ExponentialEuler`, integrates
# each layer's leak exactly and grows its steps up to 100 τ near the fixed point, so its stopping time says little
# about how long the continuous trajectory takes. To draw the states themselves we hand the same vector field,
# `net.vector_field`, to diffrax's Tsit5 and save at log-spaced times up to the time an accurate Tsit5 `relax`
# stops.

# %%
t_end = float(ham.relax(net, xs0, solver=diffrax.Tsit5()).trace()[0][-1])
# log-spaced early (fast transient), evenly spaced late (so finite differences stay accurate)
ts = np.unique(np.concatenate([[0.0], np.geomspace(1e-3, t_end, 400), np.linspace(0.0, t_end, 600)]))
dense = diffrax.diffeqsolve(
    diffrax.ODETerm(net.vector_field), diffrax.Tsit5(), t0=0.0, t1=t_end, dt0=None, y0=xs0,
    saveat=diffrax.SaveAt(ts=ts), stepsize_controller=diffrax.PIDController(rtol=1e-10, atol=1e-12),
    max_steps=10_000,
)
path = dense.ys                       # {"v": (T, N), "h": (T, K)}: a batch of states along time
g_path = net.activations(path)
E_path = np.asarray(net.energy(path))
rate_formula = np.asarray(ham.lyapunov.energy_rate(net, path))  # -Σ τ ẋᵀ ∇²L ẋ
rate_fd = np.gradient(E_path, ts)                                # finite differences of E(t)
inner = slice(2, -2)  # np.gradient is one-sided (first order) at the ends
# compare where the rate is above the round-off floor of differencing an O(1) energy (|dE/dt| > 1e-8)
above = np.abs(rate_formula[inner]) > 1e-8
rel_err = (np.abs(rate_formula - rate_fd)[inner] / np.abs(rate_formula[inner]))[above]
print(f"|dE/dt formula - finite differences| / |dE/dt| at {above.sum()} times: "
      f"median {np.median(rel_err):.1e}, max {rel_err.max():.1e}")
print(f"largest dE/dt along the path: {rate_formula.max():.1e} (never positive)")
assert rel_err.max() < 1e-2 and rate_formula.max() < 0

# %% [markdown]
# ## Fixed-step Euler descent
# `ham.descend` takes $x_A \leftarrow x_A - \alpha\,\tau_A^{-1}\partial E/\partial g_A$. We run it for several step
# sizes $\alpha$ at once (`jax.vmap` over $\alpha$) and count the steps until the energy is within $10^{-6}$ of the
# fixed-point energy. An Euler step costs one vector-field evaluation; `sol.num_evaluations` counts those of `relax`.
# Above $\alpha = 2\tau_h = 0.4$ Euler is unstable for the fast hidden layer.

# %%
alphas = jnp.array([0.01, 0.03, 0.1, 0.2, 0.3, 0.45])
STEPS = 3000
runs = jax.vmap(lambda a: ham.descend(net, xs0, step_size=a, steps=STEPS))(alphas)
# reference fixed-point energy: the lowest energy any converged run reached (relax stops once |dx/dt| < 1e-8 + 1e-6|x|)
E_star = min(float(energies[-1]), float(np.min(np.where(runs.converged, runs.energies[:, -1], np.inf))))
print(f"relax stopped {energies[-1] - E_star:.1e} above the reference energy E* = {E_star:.10f}")
rows = []
for i, a in enumerate(np.asarray(alphas)):
    e = np.asarray(runs.energies[i])
    close = np.abs(e - E_star) < 1e-6
    far = np.flatnonzero(~close)  # steps still farther than 1e-6 from E*
    n_needed = (int(far[-1]) + 1 if far.size else 0) if close[-1] else None  # stays within 1e-6 from here on
    rows.append((float(a), n_needed, float(e[-1]), bool(runs.converged[i])))
print(f"{'alpha':>6} {'Euler steps to |E-E*|<1e-6':>27} {'final E':>14} {'converged':>10}")
for a, n, e, c in rows:
    print(f"{a:>6.2f} {str(n) if n is not None else '-':>27} {e:>14.6f} {c!s:>10}")
print(f"relax (ExponentialEuler, rtol=1e-3): {int(sol.num_steps)} steps ({float(sol.num_evaluations):.0f} "
      f"vector-field evaluations), final E = {energies[-1]:.6f}")
assert all(n is not None for a, n, e, c in rows if a < 0.4) and not rows[-1][3]  # stable below 2*tau_h, not above

# %% [markdown]
# ## The figure

# %%
fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
t_plot = ts[1:]
ax = axes[0, 0]
ax.plot(t_plot, np.asarray(g_path["v"])[1:], lw=1)
ax.set(xscale="log", xlabel="t", ylabel=r"$g_v = \tanh(x_v)$", title="visible activations")
ax = axes[0, 1]
ax.plot(t_plot, np.asarray(g_path["h"])[1:], lw=1.2)
ax.set(xscale="log", xlabel="t", ylabel=r"$g_h = \mathrm{softmax}(x_h)$", title="hidden activations (pattern scores)")
ax = axes[0, 2]
ax.loglog(t_plot, E_path[1:] - E_star, label="diffrax dense output")
ax.loglog(times[1:], energies[1:] - E_star, "o", ms=3, label="ham.relax accepted steps")
ax.set(xlabel="t", ylabel=r"$E(t) - E^*$", title="energy above the fixed point")
ax.legend()
ax = axes[1, 0]
ax.loglog(times[1:], np.diff(times), "o-", ms=3)
ax.set(xlabel="t", ylabel=r"$\Delta t$", title=f"step sizes chosen by ham.relax ({int(sol.num_steps)} steps)")
ax = axes[1, 1]
ax.loglog(ts[inner], -rate_formula[inner], label=r"$-\sum_A\tau_A\dot x_A^\top\nabla^2L_A\dot x_A$")
ax.loglog(ts[inner][::8], -rate_fd[inner][::8], "x", ms=4, label="finite differences of $E(t)$")
ax.set(xlabel="t", ylabel=r"$-dE/dt$", title="energy rate: formula vs finite differences")
ax.legend()
ax = axes[1, 2]
for i, a in enumerate(np.asarray(alphas)):
    e = np.asarray(runs.energies[i])
    k = np.arange(1, STEPS + 1)
    ax.loglog(k, np.abs(e[1:] - E_star), lw=1, label=rf"Euler $\alpha={a:g}$")
ax.axhline(1e-6, color="k", ls=":", lw=0.8)
ax.set(xlabel="step", ylabel=r"$|E_k - E^*|$", title="fixed-step descent (ham.descend)", ylim=(1e-15, None))
ax.legend(fontsize=8)
fig.suptitle("Two-layer HAM relaxing to a stored pattern: the energy is a Lyapunov function")
fig.tight_layout()
fig.savefig(FIGURES / "02_relaxation_and_lyapunov.png", dpi=110)
plt.show()
