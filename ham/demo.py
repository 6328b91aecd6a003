"""The README's main job: a two-layer associative memory of handwritten digits.

Visible layer (64 pixels, identity or sigmoid Lagrangian) + hidden softmax layer (one
unit per stored image) joined by a dense synapse holding the images: a modern
Hopfield network (Ramsauer et al. 2020) written as a HAM (Krotov & Hopfield 2021). We
corrupt stored digits (Gaussian noise, masked bottom half), relax the dynamics with
diffrax to their fixed points, and count how many land on the right digit.
"""

from __future__ import annotations

import functools as ft
import json
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import lagrangians
from .layer import Layer
from .lyapunov import max_rise
from .network import HAM
from .solve import relax
from .synapses import Bias, Dense


def load_digit_images() -> np.ndarray:
    """scikit-learn's 8×8 digits (shipped with the package, no download), in [0, 1]."""
    from sklearn.datasets import load_digits

    return (load_digits().data / 16.0).astype(np.float32)


DEFAULT_BETA = {"identity": 8.0, "sigmoid": 2.0}


def build_memory(
    patterns: np.ndarray, beta: float, visible: str = "identity", similarity: str = "euclidean",
    hidden_tau: float = 0.1,
) -> HAM:
    r"""Visible (dim) + hidden softmax (num_patterns) layers; a Dense synapse holds the
    images and a Bias on the hidden layer sets the similarity.

    - identity visible: the fixed point is $v = Ξ^⊤\mathrm{softmax}(β(Ξv + b))$. With
      ``similarity="dot"`` $b = 0$ (Ramsauer et al. 2020); with ``"euclidean"``
      $b_μ = -\tfrac12\|ξ_μ\|^2$, so $Ξv + b = -\tfrac12\|v - ξ_μ\|^2 + \tfrac12\|v\|^2$:
      softmax of negative squared distances, which retrieves far better (Millidge
      et al. 2022).
    - sigmoid visible: the synapse holds the patterns' logits $ℓ_μ$, so $σ(v)$
      reproduces a stored image at a fixed point; ``"euclidean"`` then uses the
      Bernoulli log-likelihood $b_μ = -\sum_i \log(1 + e^{ℓ_{μi}})$ as the matching bias.
    """
    num, dim = patterns.shape
    if visible == "identity":
        vis_lag, W = lagrangians.identity, patterns.T
        bias = -0.5 * np.sum(patterns**2, axis=1)
    elif visible == "sigmoid":
        p = np.clip(patterns, 0.02, 0.98)
        vis_lag, W = lagrangians.sigmoid, np.log(p / (1 - p)).T
        bias = -np.sum(np.logaddexp(0.0, W), axis=0)
    else:
        raise ValueError(f"visible must be 'identity' or 'sigmoid', got {visible!r}.")
    if similarity not in ("dot", "euclidean"):
        raise ValueError(f"similarity must be 'dot' or 'euclidean', got {similarity!r}.")
    synapses = {"xi": Dense(jnp.asarray(W))}
    connections = {"xi": ("v", "h")}
    if similarity == "euclidean":
        synapses["b"] = Bias(jnp.asarray(bias))
        connections["b"] = ("h",)
    return HAM(
        layers={
            "v": Layer(vis_lag, (dim,), tau=1.0),
            "h": Layer(ft.partial(lagrangians.softmax, beta=beta), (num,), tau=hidden_tau),
        },
        synapses=synapses,
        connections=connections,
    )


def corrupt(images: np.ndarray, key, noise: float) -> tuple[np.ndarray, list[str]]:
    """First half of the queries: Gaussian noise (clipped to [0, 1]); second half: the
    bottom half of the image set to 0."""
    n, dim = images.shape
    side = int(round(np.sqrt(dim)))
    q = np.array(images, copy=True)
    half = n // 2
    noisy = q[:half] + noise * np.asarray(jax.random.normal(key, q[:half].shape))
    q[:half] = np.clip(noisy, 0.0, 1.0)
    q[half:].reshape(-1, side, side)[:, side // 2 :, :] = 0.0
    return q, ["noise"] * half + ["mask"] * (n - half)


def run(
    num_patterns: int = 100, num_queries: int = 16, beta: float | None = None, noise: float = 0.3,
    visible: str = "identity", seed: int = 0, similarity: str = "euclidean", out: str | Path = "ham_demo.png", show_trace: bool = True,
) -> dict:
    data = load_digit_images()
    if not 1 <= num_queries <= num_patterns <= len(data):
        raise ValueError(f"need 1 <= num_queries <= num_patterns <= {len(data)}, got {num_queries}, {num_patterns}.")
    key = jax.random.PRNGKey(seed)
    kperm, knoise = jax.random.split(key)
    idx = np.asarray(jax.random.permutation(kperm, len(data)))[:num_patterns]
    patterns = data[idx]
    targets = np.arange(num_queries)
    queries, kinds = corrupt(patterns[targets], knoise, noise)

    beta = DEFAULT_BETA.get(visible, 1.0) if beta is None else beta
    net = build_memory(patterns, beta, visible, similarity)
    if visible == "identity":
        v0 = queries
    else:
        qc = np.clip(queries, 0.02, 0.98)
        v0 = np.log(qc / (1 - qc))
    # hidden units start at their input from the query (the fast-hidden-neuron limit)
    xs0 = {"v": jnp.asarray(v0), "h": jnp.zeros((num_queries, num_patterns))}
    xs0["h"] = -net.dEdg(xs0)["h"] + xs0["h"]
    solve = eqx.filter_jit(relax)
    t0 = time.perf_counter()
    sol = jax.block_until_ready(solve(net, xs0))
    wall = time.perf_counter() - t0
    out_img = np.asarray(net.activations(sol.states)["v"])

    d2 = ((out_img[:, None, :] - patterns[None, :, :]) ** 2).sum(-1)
    nearest = d2.argmin(1)
    err = d2[np.arange(num_queries), targets]
    ok = nearest == targets
    steps = np.asarray(sol.num_steps)
    rise = float(np.max(max_rise(sol)))
    result = {
        "num_patterns": num_patterns, "num_queries": num_queries, "beta": beta, "noise": noise,
        "visible": visible, "similarity": similarity, "seed": seed,
        "retrieved": int(ok.sum()),
        "retrieved_noise": int(ok[np.array(kinds) == "noise"].sum()),
        "retrieved_mask": int(ok[np.array(kinds) == "mask"].sum()),
        "converged": int(np.asarray(sol.converged).sum()),
        "steps_median": float(np.median(steps)), "steps_max": int(steps.max()),
        "mean_squared_error": float(err.mean()),
        "max_energy_rise_over_tolerance": rise,
        "wall_s_including_compile": wall,
    }
    print(f"stored {num_patterns} digits; relaxed {num_queries} corrupted queries "
          f"({kinds.count('noise')} noisy σ={noise}, {kinds.count('mask')} with the bottom half masked)")
    print(f"retrieved {result['retrieved']}/{num_queries} (noise {result['retrieved_noise']}, "
          f"mask {result['retrieved_mask']}); converged {result['converged']}/{num_queries}; "
          f"steps to fixed point: median {result['steps_median']:.0f}, max {result['steps_max']}")
    if show_trace:
        t, e = sol.trace((0,))
        sel = np.unique(np.linspace(0, len(e) - 1, min(len(e), 8)).astype(int))
        print("energy trace of query 0 (t: E): " + ", ".join(f"{t[i]:.3g}: {e[i]:.4f}" for i in sel))
    print(f"largest energy rise along any trajectory: {rise:.3g} × tolerance (must be <= 1)")
    _figure(patterns[targets], queries, out_img, sol, ok, out)
    with open(Path(out).with_suffix(".json"), "w") as f:
        json.dump(result, f, indent=2)
    print(f"figure: {out}  results: {Path(out).with_suffix('.json')}")
    return result


def _figure(originals, queries, outputs, sol, ok, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(originals)
    side = int(round(np.sqrt(originals.shape[1])))
    fig = plt.figure(figsize=(max(8, n * 0.7), 6.5))
    gs = fig.add_gridspec(4, n, height_ratios=[1, 1, 1, 2.2])
    for row, (imgs, label) in enumerate([(originals, "stored"), (queries, "query"), (outputs, "retrieved")]):
        for i in range(n):
            ax = fig.add_subplot(gs[row, i])
            ax.imshow(imgs[i].reshape(side, side), cmap="gray_r", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            if row == 2:
                for s in ax.spines.values():
                    s.set_color("tab:green" if ok[i] else "tab:red"), s.set_linewidth(2)
            if i == 0:
                ax.set_ylabel(label)
    ax = fig.add_subplot(gs[3, :])
    for i in range(n):
        t, e = sol.trace((i,))
        ax.plot(np.maximum(t, 1e-3), np.maximum(e - e.min(), 1e-5), lw=1)
    ax.set_xscale("log"), ax.set_yscale("log")
    ax.set_xlabel("time t (accepted steps of ham.relax: diffrax, ham.ExponentialEuler)")
    ax.set_ylabel("E(t) − E(fixed point)")
    ax.set_ylim(bottom=1e-5)
    ax.set_title("energy descends monotonically to the fixed point (one line per query)")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
