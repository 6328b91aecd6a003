# %% [markdown]
# # Universal Hopfield Networks: similarity × separation
#
# Millidge et al. (2022, *Universal Hopfield networks: a general framework for single-shot associative memory
# models*) write every single-shot associative memory as
# $$z = P^\top\,\operatorname{sep}\big(\operatorname{sim}(M, q)\big),$$
# where the rows of $M\in\mathbb R^{K\times D}$ are the $K$ stored memories, $\operatorname{sim}(M,q)\in\mathbb R^K$
# scores the query $q$ against each of them, the separation function $\operatorname{sep}$ sharpens the scores and
# the projection $P$ ($=M$ for auto-association) maps them back to a memory. The classical Hopfield network is
# (dot, identity); the modern continuous Hopfield network / attention (Ramsauer et al. 2020) is
# (dot, $\operatorname{softmax}_\beta$), with energy $E(q) = \tfrac12\|q\|^2 - \beta^{-1}\log\sum_\mu e^{\beta\, m_\mu\cdot q}$;
# Sparse Distributed Memory is (Hamming, threshold). The paper's finding, reproduced here on the scikit-learn
# digits: distance-based similarities (Euclidean $-\|q-m\|^2$, Manhattan $-\|q-m\|_1$) retrieve far better than the
# dot product (which favours memories with many bright pixels), and a separation that sharpens the scores (softmax
# with large $\beta$, or max) is essential: with the identity the retrieval is a blend of all memories.

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits

import ham

FIGURES = Path(os.environ.get("HAM_FIGURES_DIR", "figures"))
FIGURES.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## Data and queries
# 1797 digits of $8\times8$ pixels scaled to $[0,1]$, in a fixed random order. The memories are the first $K$
# images; the queries are the first 100 of them, either with Gaussian noise ($\sigma = 0.3$, clipped to $[0,1]$) or
# with the bottom half set to zero. A retrieval counts as correct when its summed squared pixel error to the
# original is below 1 (a typical image has $\|m\|^2\approx 20$).

# %%
rng = np.random.default_rng(0)
images = load_digits().data.astype(np.float32) / 16.0
images = images[rng.permutation(len(images))]
NUM_QUERIES = 100
targets = images[:NUM_QUERIES]
noisy = np.clip(targets + 0.3 * rng.standard_normal(targets.shape).astype(np.float32), 0.0, 1.0)
masked = targets.reshape(-1, 8, 8).copy()
masked[:, 4:, :] = 0.0
masked = masked.reshape(-1, 64)
queries = {"noisy": noisy, "half-masked": masked}


def accuracy(retrieved, targets):
    return float(np.mean(np.sum((np.asarray(retrieved) - targets) ** 2, axis=1) < 1.0))


# %% [markdown]
# ## The grid of models
# The softmax inverse temperature is set per similarity so that it is sharp on that similarity's scale
# (cosine scores live in $[0, 1]$, distances in the tens).

# %%
similarities = ["dot", "cosine", "euclidean", "manhattan"]
softmax_beta = {"dot": 5.0, "cosine": 200.0, "euclidean": 5.0, "manhattan": 5.0}
separations = ["identity", "softmax", "max"]


def make(memories, similarity, separation):
    beta = softmax_beta[similarity] if separation == "softmax" else 1.0
    return ham.memories.universal(memories, similarity=similarity, separation=separation, beta=beta)


# dot product + softmax is the modern Hopfield network's one-step update
modern = ham.memories.modern(images[:200], beta=5.0)
uhn = make(images[:200], "dot", "softmax")
print("universal(dot, softmax) == modern.retrieve:", np.allclose(uhn.retrieve(noisy), modern.retrieve(noisy), atol=1e-5))
assert np.allclose(uhn.retrieve(noisy), modern.retrieve(noisy), atol=1e-5)

# %% [markdown]
# ## Accuracy vs number of stored images

# %%
sizes = [100, 300, 800, 1797]
results = {}  # (kind, similarity, separation) -> accuracies over sizes
for kind, q in queries.items():
    for similarity in similarities:
        for separation in separations:
            results[kind, similarity, separation] = [
                accuracy(make(images[:k], similarity, separation).retrieve(q), targets) for k in sizes
            ]
for kind in queries:
    print(f"\n{kind} queries: accuracy at K = {sizes}")
    for similarity in similarities:
        for separation in separations:
            accs = results[kind, similarity, separation]
            print(f"  {similarity:>9} / {separation:<8} " + " ".join(f"{a:5.2f}" for a in accs))
for kind in queries:  # the paper's ordering: a distance beats the dot product; identity separation fails
    assert results[kind, "manhattan", "softmax"][0] > results[kind, "dot", "softmax"][0]
    assert max(results[kind, s, "identity"][0] for s in similarities) < 0.1
assert results["noisy", "euclidean", "softmax"][0] > 0.9

# %% [markdown]
# ## Retrievals as images (K = 400 stored digits)

# %%
shown = ["dot/softmax", "cosine/max", "euclidean/softmax", "manhattan/softmax"]
K_SHOW, N_SHOW = 400, 10
retrievals = {}
for kind, q in queries.items():
    for label in shown:
        similarity, separation = label.split("/")
        retrievals[kind, label] = np.asarray(make(images[:K_SHOW], similarity, separation).retrieve(q[:N_SHOW]))

# %% [markdown]
# ## The figure

# %%
fig = plt.figure(figsize=(16, 10.5))
outer = fig.add_gridspec(2, 2, height_ratios=[1.15, 1], hspace=0.3, wspace=0.3)
for col, (kind, q) in enumerate(queries.items()):
    rows = [("original", targets), ("query", q)] + [(label, retrievals[kind, label]) for label in shown]
    inner = outer[0, col].subgridspec(len(rows), N_SHOW, wspace=0.05, hspace=0.08)
    for r, (label, imgs) in enumerate(rows):
        for c in range(N_SHOW):
            ax = fig.add_subplot(inner[r, c])
            ax.imshow(np.clip(imgs[c].reshape(8, 8), 0, 1), cmap="gray_r", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8.5)
            if r == 0 and c == N_SHOW // 2:
                ax.set_title(f"{kind} queries, K = {K_SHOW} stored digits", fontsize=11)
    ax = fig.add_subplot(outer[1, col])
    for i, similarity in enumerate(similarities):
        for separation, ls in zip(separations, ["dotted", "solid", "dashed"]):
            ax.plot(sizes, results[kind, similarity, separation], color=f"C{i}", ls=ls, marker="o", ms=3,
                    label=f"{similarity} / {separation}")
    ax.set(xscale="log", xlabel="number of stored images K", ylabel="fraction retrieved correctly",
           title=f"{kind} queries", ylim=(-0.03, 1.03), xticks=sizes, xticklabels=[str(k) for k in sizes])
    ax.minorticks_off()
    if col == 1:
        ax.legend(fontsize=8, ncol=2, loc="upper right")
fig.suptitle("Universal Hopfield Networks on sklearn digits: similarity (colour) × separation (line style)", fontsize=13)
fig.savefig(FIGURES / "03_universal_hopfield.png", dpi=100, bbox_inches="tight")
plt.show()
