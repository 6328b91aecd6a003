# %% [markdown]
# # Energy Transformer: masked-image reconstruction by energy descent
#
# The Energy Transformer (Hoover et al. 2023, *Energy Transformer*, NeurIPS) is a one-layer HAM on a set of tokens
# $x_B\in\mathbb R^D$ (here image patches). The layer-norm Lagrangian
# $L(x) = \sum_B D\gamma\sqrt{\tfrac1D\sum_i (x_{Bi}-\bar x_B)^2+\epsilon} + \delta\cdot x_B$ gives the activations
# $g_B = \gamma\,(x_B-\bar x_B)/\sqrt{\operatorname{var}(x_B)+\epsilon}+\delta$ (layer norm), and the energy is the
# paper's attention + Hopfield energy of these activations,
# $$E = \underbrace{-\;\sum_h\frac1\beta\sum_C\log\sum_{B\neq C}
# e^{\beta\,K_{hB}\cdot Q_{hC}}}_{E^{\mathrm{ATT}},\ K = W^K g,\ Q = W^Q g}
# \;\underbrace{-\;\tfrac12\sum_B\sum_\mu \max(\xi_\mu\cdot g_B, 0)^2}_{E^{\mathrm{HN}}}.$$
# Inference is gradient descent on this energy, $x^{t+1} = x^t - \alpha\,\partial E/\partial g$ (explicit Euler on
# $\tau\dot x = -\partial E/\partial g$). `EnergyTransformer` builds this by default (`legendre=False`: the token
# layer's Legendre term $\sum_B x_B\cdot g_B - L$ is left out, so there is no leak $-x$ in the dynamics; pass
# `legendre=True` for the generic HAM form). Since $\partial E/\partial x = \nabla^2 L\,\partial E/\partial g$ with
# $\nabla^2 L\succeq 0$, the energy falls at every small enough step, and it is bounded below because layer norm
# bounds $g$: masked patches are
# "attracted" to completions consistent with the visible ones. We train a tiny ET for a few seconds on the
# scikit-learn digits ($8\times8$ images, $2\times2$ patches, half of them masked) and watch a reconstruction emerge
# step by step while the energy decreases.

# %%
import os
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from sklearn.datasets import load_digits

import ham
from ham.energy_transformer import EnergyTransformer, patchify, unpatchify

FIGURES = Path(os.environ.get("HAM_FIGURES_DIR", "figures"))
FIGURES.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## Data: digits as sequences of patches

# %%
PATCH, MASKED = 2, 8  # 2x2 patches -> 16 tokens of 4 pixels; 8 of the 16 are masked
rng = np.random.default_rng(0)
images = load_digits().images.astype(np.float32) / 16.0
images = images[rng.permutation(len(images))]
train_images, test_images = images[:1500], images[1500:]
train_patches, test_patches = patchify(train_images, PATCH), patchify(test_images, PATCH)
TOKENS, PATCH_DIM = train_patches.shape[1:]
print(f"{len(train_images)} training and {len(test_images)} test images -> {TOKENS} tokens of {PATCH_DIM} pixels")


def random_masks(key, n):
    """(n, TOKENS) booleans, MASKED True entries per row."""
    scores = jax.random.uniform(key, (n, TOKENS))
    return scores < jnp.sort(scores, axis=1)[:, MASKED : MASKED + 1]


# %% [markdown]
# ## The model: embed, descend the energy, decode
# Patches are embedded linearly, masked tokens replaced by a learned mask token, position embeddings added; the
# Energy Transformer descends its energy for $T$ steps, and the masked patches are decoded linearly from the final
# activations $g$. Everything — embeddings, the ET's weights and layer norm, the decoder — is trained end to end by
# backpropagating through the $T$ descent steps.

# %%
DIM, STEPS, STEP_SIZE = 32, 8, 0.5


class MaskedImageModel(eqx.Module):
    et: EnergyTransformer
    embed: jax.Array
    positions: jax.Array
    mask_token: jax.Array
    decode: jax.Array
    decode_bias: jax.Array

    def __init__(self, key):
        k_et, k_embed, k_pos, k_dec = jax.random.split(key, 4)
        self.et = EnergyTransformer(TOKENS, DIM, heads=2, head_dim=8, memories=64, legendre=False, key=k_et)
        self.embed = jax.random.normal(k_embed, (PATCH_DIM, DIM)) / np.sqrt(PATCH_DIM)
        self.positions = 0.1 * jax.random.normal(k_pos, (TOKENS, DIM))
        self.mask_token = jnp.zeros(DIM)
        self.decode = jax.random.normal(k_dec, (DIM, PATCH_DIM)) / np.sqrt(DIM)
        self.decode_bias = jnp.zeros(PATCH_DIM)

    def initial_tokens(self, patches, mask):
        x = jnp.where(mask[..., None], self.mask_token, patches @ self.embed)
        return x + self.positions

    def reconstruct(self, tokens):
        """Patches decoded from the activations g of token states."""
        return self.et.activations(tokens) @ self.decode + self.decode_bias

    def __call__(self, patches, mask):
        sol = self.et.descend(self.initial_tokens(patches, mask), step_size=STEP_SIZE, steps=STEPS)
        return self.reconstruct(sol.states["tokens"]), sol


def masked_error(out, patches, mask):
    """Mean squared pixel error over the masked patches."""
    err = jnp.sum((out - patches) ** 2, axis=-1)
    return jnp.sum(jnp.where(mask, err, 0.0)) / jnp.sum(mask) / PATCH_DIM


def masked_mse(model, patches, mask):
    return masked_error(model(patches, mask)[0], patches, mask)


# %% [markdown]
# ## Training (a few seconds)

# %%
TRAIN_STEPS, BATCH = 400, 32
model = MaskedImageModel(jax.random.PRNGKey(0))
optimizer = optax.adamw(optax.cosine_decay_schedule(5e-3, TRAIN_STEPS), weight_decay=1e-4)
opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))


@eqx.filter_jit
def train_step(model, opt_state, key):
    k_batch, k_mask = jax.random.split(key)
    idx = jax.random.choice(k_batch, len(train_patches), (BATCH,), replace=False)
    patches = train_patches[idx]
    loss, grads = eqx.filter_value_and_grad(masked_mse)(model, patches, random_masks(k_mask, BATCH))
    updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_inexact_array))
    return eqx.apply_updates(model, updates), opt_state, loss


test_masks = random_masks(jax.random.PRNGKey(123), len(test_patches))
mean_patch = jnp.mean(train_patches, axis=(0, 1))
mean_fill_mse = float(jnp.sum(jnp.where(test_masks, jnp.sum((mean_patch - test_patches) ** 2, -1), 0.0))
                      / jnp.sum(test_masks) / PATCH_DIM)
start = time.perf_counter()
losses = []
for i, key in enumerate(jax.random.split(jax.random.PRNGKey(1), TRAIN_STEPS)):
    model, opt_state, loss = train_step(model, opt_state, key)
    losses.append(float(loss))
test_out, test_sol = eqx.filter_jit(lambda model, p, m: model(p, m))(model, test_patches, test_masks)
test_mse = float(masked_error(test_out, test_patches, test_masks))
print(f"trained {TRAIN_STEPS} steps in {time.perf_counter() - start:.1f} s; masked-patch MSE on {len(test_patches)} "
      f"test images: {test_mse:.4f} (mean-patch fill: {mean_fill_mse:.4f})")
assert test_mse < 0.8 * mean_fill_mse

# %% [markdown]
# ## Reconstruction step by step
# `ham.descend` returns the final state and the energy after every step. To see the intermediate images we repeat
# the same update by hand with the network's public vector field, $x \leftarrow x + \alpha\,\dot x$,
# $\dot x = -\partial E/\partial g$ (for $\tau = 1$), decode each step, and check it matches `ham.descend`.

# %%
SHOW = 8
patches, mask = test_patches[:SHOW], test_masks[:SHOW]
net = model.et.network
x = {"tokens": model.initial_tokens(patches, mask)}
step = eqx.filter_jit(lambda net, x: jax.tree_util.tree_map(lambda a, v: a + STEP_SIZE * v, x, net.vector_field(0.0, x)))
states = [x["tokens"]]
for _ in range(STEPS):
    x = step(net, x)
    states.append(x["tokens"])
frames = [np.asarray(jnp.where(mask[..., None], model.reconstruct(s), patches)) for s in states]
assert np.allclose(states[-1], test_sol.states["tokens"][:SHOW], atol=1e-4)  # the same as ham.descend
energies = np.asarray(test_sol.energies[:SHOW])  # (SHOW, STEPS + 1)
ham.lyapunov.check(test_sol, rtol=1e-4)  # raises if the energy rose at any step, for any test image
print("energy of image 0 along the descent:", np.round(energies[0], 2))

# %% [markdown]
# ## The figure

# %%
fig = plt.figure(figsize=(15, 8.5))
grid = fig.add_gridspec(2, 2, width_ratios=[2.1, 1], hspace=0.3, wspace=0.18)
shown_steps = [0, 1, 2, 4, STEPS]
columns = ["original", "masked input"] + [f"step {t}" for t in shown_steps]
cells = grid[:, 0].subgridspec(SHOW, len(columns), wspace=0.05, hspace=0.08)
masked_images = np.asarray(unpatchify(jnp.where(mask[..., None], 0.5, patches), (8, 8), PATCH))
step_images = {t: np.asarray(unpatchify(frames[t], (8, 8), PATCH)) for t in shown_steps}
for r in range(SHOW):
    row = [test_images[r], masked_images[r]] + [step_images[t][r] for t in shown_steps]
    for c, img in enumerate(row):
        ax = fig.add_subplot(cells[r, c])
        ax.imshow(np.clip(img, 0, 1), cmap="gray_r", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        if r == 0:
            ax.set_title(columns[c], fontsize=9)
ax = fig.add_subplot(grid[0, 1])
for r in range(SHOW):
    ax.plot(np.arange(STEPS + 1), energies[r], marker="o", ms=3, lw=1)
ax.set(xlabel="descent step t", ylabel="energy $E(x^t)$", title=f"energy of each image along the descent (α = {STEP_SIZE})")
ax = fig.add_subplot(grid[1, 1])
ax.plot(np.convolve(losses, np.ones(20) / 20, mode="valid"), label="training loss (running mean)")
ax.axhline(mean_fill_mse, color="k", ls="--", lw=1, label="mean-patch fill (test)")
ax.axhline(test_mse, color="C3", ls=":", lw=1.5, label="Energy Transformer (test)")
ax.set(xlabel="training step", ylabel="masked-patch MSE", yscale="log", title="training")
ax.legend(fontsize=8)
fig.suptitle("Energy Transformer: masked digits reconstructed by descending the energy (masked patches shown grey)",
             fontsize=12)
fig.savefig(FIGURES / "04_energy_transformer.png", dpi=100, bbox_inches="tight")
plt.show()
