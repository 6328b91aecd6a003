# %% [markdown]
# # Learning memories: from features to prototypes, and a HAM trained through its fixed point
#
# **Dense Associative Memory classifier** (Krotov & Hopfield 2016, *Dense associative memory for pattern
# recognition*). Visible neurons hold an image's pixels $v\in[-1,1]^D$ and ten label neurons $x\in\{\pm1\}^{10}$;
# $K$ learned memories $\xi_\mu$ define the energy $E = -\sum_\mu F(\xi_\mu\cdot(v, x))$ with the rectified
# polynomial $F(z) = \max(z,0)^n$. An image is classified by one update of the label neurons from "all off",
# $$c_\alpha = \tanh\Big[\beta\sum_\mu F(\xi_{\mu\alpha} + s_{\mu\alpha}) - F(-\xi_{\mu\alpha} + s_{\mu\alpha})\Big],
# \qquad \beta = T^{-n},$$
# and the memories are trained by gradient descent on $\sum_\alpha (c_\alpha - t_\alpha)^{2m}$. The paper's
# observation: for small $n$ each decision is a vote of many memories that look like **features** (strokes,
# blobs); for large $n$ the steep $F$ lets only the closest memories vote, and the memories become
# **prototypes** — recognisable digits.
#
# **A HAM trained through its fixed point** (Krotov 2021, *Hierarchical associative memory*). A clamped image
# layer $v$ ($\tau=\infty$), a ReLU hidden layer $h$ and a softmax label layer $y$ with energy
# $E = \tfrac12\|g_h\|^2 - \mathrm{entropy}(g_y) - g_v^\top W_1 g_h - g_h^\top W_2 g_y - b_h\cdot g_h - b_y\cdot g_y$ (plus
# the image's constant term) relax to a fixed point $x^*(\theta)$ with $f(x^*,\theta) = 0$, and the loss is the
# cross-entropy of $g_y$ there. `ham.training` differentiates through the fixed point with the implicit function
# theorem, $dx^*/d\theta = -(\partial f/\partial x)^{-1}\,\partial f/\partial\theta$ (Almeida 1987; Pineda 1987;
# Bai et al. 2019), never through the solver's steps. We train one for a few seconds and look at its energy
# landscape around test images: each image's fixed point is the bottom of a valley of $E(\,\cdot\,|\,v)$, and
# moving the image moves the valley.

# %%
import json
import os
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import ham
from experiments import dam_classifier as dc

FIGURES = Path(os.environ.get("HAM_FIGURES_DIR", "figures"))
FIGURES.mkdir(parents=True, exist_ok=True)
RESULTS = Path("..") / "experiments" / "results"

# %% [markdown]
# ## 1. Dense Associative Memory: memories for small and large $n$
# Forty memories trained for 30 epochs on scikit-learn digits (stratified 75/25 split) with the training
# function of `experiments/dam_classifier.py` (its tuned temperatures, loss power $m$ and learning rates), once
# with $n = 2$ (the ReLU network of the paper's duality) and once with $n = 20$. A memory is a **prototype** when
# its pixel part correlates with its nearest training image at $r \ge 0.8$; "used" memories dominate the vote for
# at least one training image.

# %%
x_tr, y_tr, x_te, y_te, image_shape = dc.load_split("digits", None, 0)
dam = {}
for n in (2, 20):
    s = dc.settings_for(n)
    cfg = dc.TrainConfig(n=n, m=s["m"], num_memories=40, epochs=30, batch_size=100,
                         temperature_start=s["temperature_start"], temperature_end=s["temperature_end"],
                         ramp_epochs=15, learning_rate=s["learning_rate"])
    start = time.perf_counter()
    xi, train_err, test_err, temps = dc.train(jax.random.PRNGKey(0), x_tr, y_tr, x_te, y_te, cfg)
    measures = dc.prototype_measures(xi, x_tr, x_te, n, temps[-1], True)
    dam[n] = dict(xi=np.asarray(xi), test_error=float(test_err[-1]), **measures)
    print(f"n = {n:>2}: test error {100 * float(test_err[-1]):.1f} %, used memories {measures['memories_used']}, "
          f"prototypes among them {measures['prototype_fraction']:.0%}, median nearest-image r "
          f"{measures['nearest_correlation_median']:.2f}, memories making 90 % of a decision "
          f"{measures['memories_per_decision']:.0f}  ({time.perf_counter() - start:.1f} s)")
assert dam[20]["nearest_correlation_median"] > dam[2]["nearest_correlation_median"] + 0.2
assert dam[20]["prototype_fraction"] > 0.8 > dam[2]["prototype_fraction"]
assert dam[20]["memories_per_decision"] < dam[2]["memories_per_decision"]
assert max(dam[2]["test_error"], dam[20]["test_error"]) < 0.1

# %% [markdown]
# The full study (`python -m experiments.dam_classifier`: $K = 200$, 100 epochs, ten seeds, $n$ from 2 to 30)
# gives the whole transition; its committed results are read here when present.

# %%
study = RESULTS / "dam_classifier.json"
per_degree = json.loads(study.read_text())["per_degree"] if study.exists() else None
if per_degree:
    for r in per_degree:
        print(f"n = {r['n']:>2}: test error {100 * r['test_error']:.2f} %, prototypes {r['prototype_fraction']:.0%}, "
              f"median r {r['nearest_correlation_median']:.2f}, memories per decision {r['memories_per_decision']:.0f}")
else:
    print(f"{study} not found: run python -m experiments.dam_classifier to add the full curve")

# %% [markdown]
# ## 2. A HAM classifier trained through its fixed point
# 64 clamped pixels (identity Lagrangian, $\tau = \infty$), 32 ReLU hidden neurons and 10 softmax label neurons
# ($\tau = 1$), trained with Adam for 8 epochs. `ham.training.fixed_point` relaxes every image of a batch with
# `ham.relax` (on the network conditioned on the image) and its default `ImplicitAdjoint` gives the implicit
# gradient; `ham.training.make_step` is one jit-compiled optax step.

# %%
images = np.asarray(x_tr + 1.0) / 2.0  # dam_classifier's split, back to pixels in [0, 1]
test_images, train_labels, test_labels = np.asarray(x_te + 1.0) / 2.0, np.asarray(y_tr), np.asarray(y_te)
HIDDEN = 32
k1, k2 = jax.random.split(jax.random.PRNGKey(0))
net = ham.HAM(
    layers={"v": ham.Layer(ham.lagrangians.identity, (64,), tau=jnp.inf),
            "h": ham.Layer(ham.lagrangians.relu, (HIDDEN,), tau=1.0),
            "y": ham.Layer(ham.lagrangians.softmax, (10,), tau=1.0)},
    synapses={"w1": ham.synapses.Dense(jax.random.normal(k1, (64, HIDDEN)) / 8.0),
              "w2": ham.synapses.Dense(jax.random.normal(k2, (HIDDEN, 10)) / np.sqrt(HIDDEN)),
              "bh": ham.synapses.Bias(jnp.zeros(HIDDEN)), "by": ham.synapses.Bias(jnp.zeros(10))},
    connections={"w1": ("v", "h"), "w2": ("h", "y"), "bh": ("h",), "by": ("y",)},
)


def loss(net, x, labels):
    sol = ham.training.fixed_point(net, {"v": x})
    return optax.softmax_cross_entropy_with_integer_labels(sol.states["y"], labels).mean()


fixed_point = eqx.filter_jit(lambda net, x: ham.training.fixed_point(net, {"v": x}))
optimizer = optax.adam(1e-2)
opt_state = ham.training.init(net, optimizer)
step = ham.training.make_step(loss, optimizer)
rng = np.random.default_rng(0)
start = time.perf_counter()
for epoch in range(8):
    order = rng.permutation(len(images))
    for i in range(len(images) // 64):
        idx = order[64 * i: 64 * (i + 1)]
        net, opt_state, value = step(net, opt_state, images[idx], train_labels[idx])
sol_test = fixed_point(net, test_images)
accuracy = float(np.mean(np.argmax(np.asarray(sol_test.states["y"]), axis=1) == test_labels))
ham.lyapunov.check(sol_test)  # the energy never rose along any test image's inference trajectory
print(f"trained in {time.perf_counter() - start:.1f} s: last batch loss {float(value):.3f}, test accuracy "
      f"{100 * accuracy:.1f} %, all converged: {bool(jnp.all(sol_test.converged))}, "
      f"median solver steps {int(np.median(np.asarray(sol_test.num_steps)))}")
assert accuracy > 0.9 and bool(jnp.all(sol_test.converged))

# %% [markdown]
# ## 3. The energy landscape around test images
# For a clamped image $v$ the free state is $x = (x_h, x_y)$ and $E(x\,|\,v)$ is a landscape over it. Take three
# correctly classified test images $a$, $b$, $c$ of different classes and their fixed points $x^*_a, x^*_b, x^*_c$.
#
# - **Line**: $E\big((1-s)\,x^*_a + s\,x^*_b \,\big|\, v\big)$ for $v = v_a$ and $v = v_b$: each image's energy is
#   lowest at its own fixed point, and the other's fixed point sits up a slope.
# - **Plane**: $E(\,\cdot\,|\,v_a)$ on the plane through the three fixed points.
# - **Moving the image**: relax with $v = (1-s)\,v_a + s\,v_b$ from rest ($x = 0$), and again starting in image
#   $a$'s valley ($x^*_a$) and in image $b$'s ($x^*_b$). The top-down feedback $W_2$ from the labels to the hidden
#   layer makes the landscape **bistable** near the decision boundary: for a window of $s$ both valleys exist, the
#   state stays in the one it starts in (hysteresis), and the lower of the two changes at one $s$ — a first-order
#   switch of the decision rather than a smooth one.

# %%
pred = np.argmax(np.asarray(sol_test.states["y"]), axis=1)
right = np.flatnonzero(pred == test_labels)
picked = []
for i in right:
    if test_labels[i] not in [test_labels[j] for j in picked]:
        picked.append(int(i))
    if len(picked) == 3:
        break
a, b, c = picked
free = {k: np.asarray(sol_test.states[k]) for k in ("h", "y")}
star = {i: {k: free[k][i] for k in free} for i in picked}


energy = eqx.filter_jit(lambda net, states: net.energy(states))  # compiled once per batch size


def energy_of(v, states):
    """E(x | v) of a batch of free states (dict of (B, ...) arrays) with the image v clamped."""
    batch = next(iter(states.values())).shape[0]
    return np.asarray(energy(net, {"v": jnp.broadcast_to(v, (batch, 64)), **states}))


s_line = np.linspace(-0.5, 1.5, 201)
line = {k: (1 - s_line[:, None]) * star[a][k] + s_line[:, None] * star[b][k] for k in free}
E_line = {i: energy_of(test_images[i], line) for i in (a, b)}
s_min = {i: s_line[np.argmin(E_line[i])] for i in (a, b)}
print(f"images {a} (label {test_labels[a]}) and {b} (label {test_labels[b]}): along the line the energy is lowest "
      f"at s = {s_min[a]:.2f} with image a clamped and at s = {s_min[b]:.2f} with image b clamped")
assert abs(s_min[a]) < 0.05 and abs(s_min[b] - 1) < 0.05
for i, s0 in ((a, 0.0), (b, 1.0)):
    assert E_line[i][np.argmin(np.abs(s_line - s0))] < E_line[i][np.argmin(np.abs(s_line - (1 - s0)))] - 1.0

# the plane through the three fixed points, with image a clamped (orthonormal axes by Gram-Schmidt)
flat = {i: np.concatenate([star[i]["h"], star[i]["y"]]) for i in picked}
e1 = flat[b] - flat[a]
e2 = flat[c] - flat[a]
e2 = e2 - (e2 @ e1) / (e1 @ e1) * e1
u1, u2 = e1 / np.linalg.norm(e1), e2 / np.linalg.norm(e2)
coords = {i: ((flat[i] - flat[a]) @ u1, (flat[i] - flat[a]) @ u2) for i in picked}
g1 = np.linspace(-0.4, 1.4, 90) * np.linalg.norm(e1)
g2 = np.linspace(-0.6, 1.4, 90) * np.linalg.norm(e2)
P1, P2 = np.meshgrid(g1, g2)
pts = flat[a] + P1.reshape(-1, 1) * u1 + P2.reshape(-1, 1) * u2
E_plane = energy_of(test_images[a], {"h": pts[:, :HIDDEN], "y": pts[:, HIDDEN:]}).reshape(P1.shape)
lowest = (P1.ravel()[np.argmin(E_plane)], P2.ravel()[np.argmin(E_plane)])
print(f"plane with image a clamped: lowest grid point at {lowest[0]:.2f}, {lowest[1]:.2f} "
      f"(x*_a at 0, 0; grid spacing {g1[1] - g1[0]:.2f} x {g2[1] - g2[0]:.2f})")
assert abs(lowest[0]) <= 1.5 * (g1[1] - g1[0]) and abs(lowest[1]) <= 1.5 * (g2[1] - g2[0])

# moving the image from a to b: from rest, and from each image's valley
s_move = np.linspace(0.0, 1.0, 41)
morphs = jnp.asarray((1 - s_move[:, None]) * test_images[a] + s_move[:, None] * test_images[b], jnp.float32)
from_state = eqx.filter_jit(lambda net, x, init: ham.training.fixed_point(net, {"v": x}, init=init))
rest = {k: jnp.zeros((len(s_move),) + v.shape[1:], v.dtype) for k, v in free.items()}  # x = 0
sol_move = from_state(net, morphs, rest)
ham.lyapunov.check(sol_move)
g_move = np.asarray(jax.nn.softmax(sol_move.states["y"], axis=1))
switch = s_move[np.argmax(np.argmax(g_move, axis=1) == test_labels[b])]
print(f"morphing image a into image b (relaxing from rest), the decision switches from {test_labels[a]} to "
      f"{test_labels[b]} at s = {switch:.3f}")
assert np.argmax(g_move[0]) == test_labels[a] and np.argmax(g_move[-1]) == test_labels[b]

branch = {}
for i in (a, b):
    init = {k: jnp.broadcast_to(star[i][k], (len(s_move),) + star[i][k].shape) for k in ("h", "y")}
    sol = ham.lyapunov.check(from_state(net, morphs, init))
    branch[i] = dict(label=np.argmax(np.asarray(sol.states["y"]), axis=1), energy=np.asarray(energy(net, sol.states)))
both = branch[a]["label"] != branch[b]["label"]
print(f"starting in image a's valley the decision stays {test_labels[a]} up to s = "
      f"{s_move[branch[a]['label'] == test_labels[a]].max():.3f}; starting in image b's valley it is "
      f"{test_labels[b]} from s = {s_move[branch[b]['label'] == test_labels[b]].min():.3f}: two fixed points for "
      f"{both.sum()} of the {len(s_move)} images")
if both.any():
    window = s_move[both]
    lower_b = window[branch[b]["energy"][both] < branch[a]["energy"][both]]
    print(f"bistable window s in [{window.min():.3f}, {window.max():.3f}]; the valley of b is the lower one from "
          f"s = {lower_b.min() if lower_b.size else float('nan'):.3f}")

# %% [markdown]
# ## The figure

# %%
fig = plt.figure(figsize=(19, 10))
rows = fig.add_gridspec(2, 1, height_ratios=[1, 1.05], hspace=0.3)
top = rows[0].subgridspec(1, 3, width_ratios=[1, 1, 0.8], wspace=0.15)
grid = rows[1].subgridspec(1, 4, wspace=0.35)


def show_memories(cell, n):
    sub = cell.subgridspec(2, 4, wspace=0.05, hspace=0.05)
    order = np.argsort(-dam[n]["usage"], kind="stable")[:8]
    for j, mu in enumerate(order):
        ax = fig.add_subplot(sub[j // 4, j % 4])
        ax.imshow(dam[n]["xi"][mu, :-10].reshape(image_shape), cmap="bwr", vmin=-1, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        if j == 0:
            ax.set_title(f"n = {n}: the 8 most used memories (prototypes {dam[n]['prototype_fraction']:.0%}, "
                         f"median r {dam[n]['nearest_correlation_median']:.2f})", fontsize=9, loc="left")


show_memories(top[0], 2)
show_memories(top[1], 20)
ax = fig.add_subplot(top[2])
if per_degree:
    ns = [r["n"] for r in per_degree]
    ax.plot(ns, [r["prototype_fraction"] for r in per_degree], "o-", label="used memories that are prototypes")
    ax.plot(ns, [r["nearest_correlation_median"] for r in per_degree], "s-", label="median nearest-image r")
    ax.set_xscale("log")
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.minorticks_off()
    ax.set(xlabel="interaction degree n", ylim=(0, 1.05), title="full study (K = 200, 10 seeds)")
    ax.legend(fontsize=8)
else:
    ax.axis("off")

ax = fig.add_subplot(grid[0])
for i, name, color in ((a, "a", "C0"), (b, "b", "C1")):
    ax.plot(s_line, E_line[i], color=color, label=f"image {name} (label {test_labels[i]}) clamped")
ax.axvline(0, color="k", lw=0.6, ls=":")
ax.axvline(1, color="k", lw=0.6, ls=":")
ax.set(xlabel="s  (x = (1−s) x*_a + s x*_b)", ylabel="E(x | v)", title="energy along the line between fixed points")
ax.legend(fontsize=8)

ax = fig.add_subplot(grid[1])
levels = np.unique(np.quantile(E_plane, np.linspace(0, 1, 25)))
ax.contourf(P1, P2, E_plane, levels=levels, cmap="viridis")
ax.contour(P1, P2, E_plane, levels=levels[::3], colors="w", linewidths=0.4)
for i, name in ((a, "a"), (b, "b"), (c, "c")):
    ax.plot(*coords[i], "w*" if i == a else "wo", ms=10 if i == a else 6)
    ax.annotate(f"x*_{name}", coords[i], color="w", xytext=(5, 5), textcoords="offset points")
ax.set(xlabel="along x*_b − x*_a", ylabel="orthogonal, towards x*_c",
       title="E(x | v_a) on the plane of three fixed points")

ax = fig.add_subplot(grid[2])
for k in range(10):
    emphasis = k in (test_labels[a], test_labels[b])
    ax.plot(s_move, g_move[:, k], lw=2 if emphasis else 0.7, label=f"label {k}" if emphasis else None)
ax.axvline(switch, color="k", lw=0.6, ls=":")
ax.set(xlabel="s  (v = (1−s) v_a + s v_b)", ylabel="g_y at the fixed point (from rest)",
       title="moving the image: the decision jumps")
ax.legend(fontsize=8)

ax = fig.add_subplot(grid[3])
for i, name, color in ((a, "a", "C0"), (b, "b", "C1")):
    ax.plot(s_move, branch[i]["energy"], "o-", ms=3, color=color,
            label=f"relaxed from x*_{name}: label {test_labels[i]} while in its valley")
ax.set(xlabel="s", ylabel="E at the fixed point", title="two valleys: hysteresis near the boundary",
       ylim=(None, max(branch[a]["energy"].max(), branch[b]["energy"].max()) + 4))
ax.legend(fontsize=8, loc="lower center")
for j, s0 in enumerate((0.0, 0.25, 0.5, 0.75, 1.0)):
    k = int(np.argmin(np.abs(s_move - s0)))
    inset = ax.inset_axes([0.02 + j * 0.196, 0.72, 0.17, 0.26])
    inset.imshow(np.asarray(morphs[k]).reshape(8, 8), cmap="gray_r")
    inset.set_xticks([])
    inset.set_yticks([])
    inset.set_xlabel(f"s={s0:g}", fontsize=7, labelpad=1)
fig.suptitle(f"Learning memories: DAM features → prototypes (top); a HAM classifier trained through its fixed point, "
             f"{100 * accuracy:.1f} % test accuracy, and its energy landscape (bottom)")
fig.savefig(FIGURES / "05_learning_memories.png", dpi=110, bbox_inches="tight")
plt.show()
