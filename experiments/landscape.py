"""Energy landscapes measured with ``ham.landscape``: spurious minima against load, the
Amit–Gutfreund–Sompolinsky mixture states, the continuous modern Hopfield network's
minima over β, and attention spread over β.

Parts (each states the published claim beside the measured number, intervals over seeds):

- ``spurious``: classical (Hopfield 1982), dense n = 3, 4 (Krotov & Hopfield 2016) and
  exponential (Demircigil et al. 2017) binary memories over a grid of loads. From S random
  ±1 starts (asynchronous sign dynamics, ``census``): the fraction of starts ending in a
  non-memory fixed point (not a stored pattern, nor its reverse for even energies: labels
  by ``label``, retrieval overlap ≥ 0.9), the number of distinct spurious fixed points (a
  lower bound, at most S), their labels (symmetric mixture / other mixture / spin-glass),
  and the fraction of stored patterns that are 1-flip-stable (``classify`` index 0).
  Claim (Krotov 2023, Fig. 1; Krotov & Hopfield 2016): the classical landscape fills with
  spurious minima as the load grows, while dense memories keep their patterns as minima
  (and few spurious ones) up to K ~ N^(n-1)/(2(2n-3)!! ln N).
- ``ags``: the symmetric 3-mixtures sign(ξa+ξb+ξc) of the classical network at low load:
  the fraction that are 1-flip-stable, the overlaps (claim 1/2) and energy per neuron
  (claim −3/8 against −1/2 for a stored pattern, α → 0) of the fixed points they relax to
  (Amit, Gutfreund & Sompolinsky 1985).
- ``continuous``: census + classify of the modern Hopfield HAM (visible identity, hidden
  softmax; Ramsauer et al. 2020) with equal-norm patterns over β: the number of minima and
  how many patterns each averages (``attention_spread``), from one global-average minimum
  (small β) through metastable subset averages to one minimum per pattern (large β),
  beside Ramsauer et al.'s sufficient separation condition for a fixed point near every
  pattern (Theorem 3: Δ ≥ 2/(βK) + β⁻¹ ln(2(K−1)KβM²)).
- ``spread``: the attention spread (patterns holding 90 % of the softmax mass) of a modern
  memory over β for queries near a stored pattern and for random queries.
- ``et_spread``: the same measure on a trained Energy Transformer (Hoover et al. 2023): a
  digits ET (``experiments.energy_transformer``'s digits settings: 16 tokens of 2×2 patches,
  global attention, width 64, 4 heads; trained here with a *softmax* Hopfield energy, so
  that its spread over the memories is measurable too, and in the full run also with the
  paper's relu Hopfield; each model saved under ``<results>/checkpoints/`` so a rerun resumes). On held-out images with half the patches
  masked: per head, the keys (of the 15 allowed) holding 90 % / 50 % of each query's
  attention (``Attention.scores``), and the memories holding them of each token's Hopfield
  softmax (``Hopfield.scores``), at the start state and at the state the ET's inference
  reaches; beside the same ET at its initialisation and uniform logits (global average).
  Claim (Ramsauer et al. 2020): first layers average globally, higher layers work in
  metastable states; learning starts from averaging heads, most of which switch to
  metastable states.

    python -m experiments.landscape [--quick | --smoke] [--results-dir DIR] [--seed S]
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import ham
from ham import landscape as L

from . import _capacity as cap
from . import energy_transformer as ET
from ._io import save_figure, write_json

NAME = "landscape"
PATTERN_SAMPLE = 256  # stored patterns classified per grid point (all of them when K is smaller)
MODEL_IDS = {"classical": 1, "dense3": 2, "dense4": 3, "exponential": 4}

ET_MASSES = (0.9, 0.5)

GRIDS = {
    "full": dict(
        seeds=5, starts=300,
        classical=dict(N=[100, 200, 400], alpha=[0.02, 0.05, 0.08, 0.11, 0.14, 0.2]),
        dense3=dict(N=[100, 200], frac=[0.5, 1.0, 2.0]),
        dense4=dict(N=[100], frac=[0.25, 1.0]),
        exponential=dict(N=[100], K=[50, 200, 1000]),
        ags=dict(N=[200, 400], K=[10, 20], triples=100),
        continuous=dict(K=6, D=16, starts=48, betas=[0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 1.0, 2.0, 4.0]),
        spread=dict(K=128, D=64, queries=256, betas=[0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0]),
        basins=dict(classical=[100, 200, 400], dense3=[100, 200, 400], exponential=[50, 100, 150],
                    patterns=8, trials=16),
        barriers=dict(betas=[1.0, 2.0, 4.0]),
        large=dict(D=2000, K=8000, points=4),
        # the digits ET of experiments.energy_transformer with a softmax Hopfield (its spread over the
        # memories) and with the paper's relu Hopfield (attention heads only); 40 epochs each took ~8 min
        # on a 2-core CPU shared ~3x (its 80-epoch default took 476 s of ET training on a quiet machine)
        et=dict(kinds=["softmax", "relu"], overrides=dict(epochs=40, history_test=128), bootstrap=1000),
    ),
    "quick": dict(
        seeds=3, starts=100,
        classical=dict(N=[100], alpha=[0.02, 0.05, 0.1, 0.14, 0.2]),
        dense3=dict(N=[100], frac=[0.5, 1.0, 2.0]),
        dense4=dict(N=[100], frac=[0.25, 1.0]),
        exponential=dict(N=[100], K=[100]),
        ags=dict(N=[200], K=[10, 20], triples=40),
        continuous=dict(K=4, D=12, starts=24, betas=[0.05, 0.2, 0.5, 1.0, 2.0, 4.0]),
        spread=dict(K=64, D=32, queries=64, betas=[0.01, 0.1, 1.0, 10.0]),
        basins=dict(classical=[100, 200], dense3=[100, 200], exponential=[50, 100], patterns=4, trials=12),
        barriers=dict(betas=[1.0, 4.0]),
        large=dict(D=500, K=3000, points=4),
        # experiments.energy_transformer's --quick model, 2 epochs on 256 images
        et=dict(kinds=["softmax"], overrides=dict(ET.QUICK, epochs=2, max_train=256, max_test=128), bootstrap=200),
    ),
    "smoke": dict(
        seeds=2, starts=24,
        classical=dict(N=[32], alpha=[0.05, 0.2]),
        dense3=dict(N=[32], frac=[1.0]),
        dense4=dict(N=[], frac=[]),
        exponential=dict(N=[32], K=[20]),
        ags=dict(N=[64], K=[3], triples=8),
        continuous=dict(K=3, D=8, starts=12, betas=[0.1, 3.0]),
        spread=dict(K=16, D=8, queries=8, betas=[0.01, 10.0]),
        basins=dict(classical=[32], dense3=[], exponential=[], patterns=2, trials=4),
        barriers=dict(betas=[3.0]),
        large=None,  # (the compile alone takes ~30 s)
        et=dict(kinds=["softmax"], overrides=dict(ET.SMOKE), bootstrap=50),  # its --smoke model: 1 epoch, 32 images
    ),
}


def dense_capacity(n_interaction: int, n: int) -> float:
    """Krotov & Hopfield 2016: K_max ≈ N^(n−1) / (2 (2n−3)!! ln N)."""
    dfact = math.prod(range(2 * n_interaction - 3, 0, -2))
    return n ** (n_interaction - 1) / (2 * dfact * math.log(n))


def _ci(values) -> list[float]:
    """Mean and the half-width of a 95 % t interval over seeds."""
    v = np.asarray(values, float)
    if v.size < 2:
        return [float(v.mean()), float("nan")]
    t = {2: 12.71, 3: 4.30, 4: 3.18, 5: 2.78, 6: 2.57}.get(v.size, 2.0)
    return [float(v.mean()), float(t * v.std(ddof=1) / math.sqrt(v.size))]


def _memory(model: str, patterns):
    p = jnp.asarray(patterns, jnp.float32)
    if model == "classical":
        return ham.memories.classical(p)
    if model == "dense3":
        return ham.memories.dense(p, n=3)
    if model == "dense4":
        return ham.memories.dense(p, n=4)
    return ham.memories.exponential(p, beta=1.0)  # F(z) = e^z, Demircigil et al.


# ------------------------------------------------------------------------- spurious
def spurious_point(model: str, n: int, k: int, seed: int, starts: int) -> dict:
    rng = np.random.default_rng([seed, n, k, MODEL_IDS[model]])
    xi = rng.choice([-1.0, 1.0], size=(k, n))
    mem = _memory(model, xi)
    t0 = time.perf_counter()
    c = L.census(mem, starts, key=jax.random.PRNGKey(seed))
    t_census = time.perf_counter() - t0
    lab = L.label(c.points, xi)
    even = model in ("classical", "dense4")
    code = np.asarray(lab.code)
    memory = (code == 0) | ((code == 1) & even)
    counts = np.asarray(c.counts)
    conv = int(np.asarray(c.converged).sum())
    spur = ~memory
    t0 = time.perf_counter()
    sample = xi[: min(k, PATTERN_SAMPLE)]  # patterns are i.i.d.: the first ones are a random sample
    stable = np.asarray(L.classify(mem, sample).index) == 0
    t_classify = time.perf_counter() - t0
    by_label = {name: int(counts[spur & (code == i)].sum()) for i, name in enumerate(L.LABELS)}
    distinct = {name: int((spur & (code == i)).sum()) for i, name in enumerate(L.LABELS)}
    return dict(
        spurious_fraction=float(counts[spur].sum() / max(conv, 1)),
        distinct_spurious=int(spur.sum()),
        patterns_stable=float(stable.mean()),
        converged=conv / starts,
        starts_by_label=by_label, distinct_by_label=distinct,
        census_s=t_census, classify_s=t_classify,
    )


def _spurious_grid(grid) -> list[tuple[str, int, int]]:
    out = []
    for n in grid["classical"]["N"]:
        out += [("classical", n, max(2, round(a * n))) for a in grid["classical"]["alpha"]]
    for name, power in (("dense3", 3), ("dense4", 4)):
        for n in grid[name]["N"]:
            cap_k = dense_capacity(power, n)
            out += [(name, n, max(2, round(f * cap_k))) for f in grid[name]["frac"]]
    for n in grid["exponential"]["N"]:
        out += [("exponential", n, k) for k in grid["exponential"]["K"]]
    return out


# ------------------------------------------------------------------------- AGS
def ags_point(n: int, k: int, seed: int, triples: int) -> dict:
    rng = np.random.default_rng([seed, n, k, 7])
    xi = rng.choice([-1.0, 1.0], size=(k, n))
    mem = ham.memories.classical(jnp.asarray(xi, jnp.float32))
    idx = np.stack([rng.choice(k, size=3, replace=False) for _ in range(triples)])
    signs = rng.choice([-1.0, 1.0], size=(triples, 3))
    mix = np.sign(np.einsum("tj,tjn->tn", signs, xi[idx]))
    stable = np.asarray(L.classify(mem, mix).index) == 0
    fixed, _, conv = mem.run(jnp.asarray(mix, jnp.float32))
    fixed = np.asarray(fixed)
    lab = L.label(fixed, xi)
    m = np.asarray(lab.overlaps)
    comp = np.abs(np.take_along_axis(m, idx, axis=1))  # overlaps with the three components
    # a symmetric mixture of exactly the three patterns it started from
    top3 = np.sort(np.argsort(-np.abs(m), axis=1)[:, :3], axis=1)
    sym = (np.asarray(lab.code) == 2) & np.all(top3 == np.sort(idx, axis=1), axis=1)
    e = np.asarray(mem.energy(jnp.asarray(fixed, jnp.float32))) / n
    e_pat = np.asarray(mem.energy(jnp.asarray(xi, jnp.float32))) / n
    alpha = k / n
    return dict(
        stable_fraction=float(stable.mean()),
        symmetric_fraction=float(sym.mean()),
        overlap=float(comp[sym].mean()) if sym.any() else float("nan"),
        # zero-diagonal Hebbian weights shift every energy per neuron by +K/(2N); the
        # published values are for the energy -1/2 sum_mu m_mu^2 (alpha -> 0)
        energy=float(e[sym].mean() - alpha / 2) if sym.any() else float("nan"),
        energy_pattern=float(e_pat.mean() - alpha / 2),
    )


# ------------------------------------------------------------------------- continuous
def _equal_norm_patterns(rng, k, d, norm):
    p = rng.standard_normal((k, d))
    return norm * p / np.linalg.norm(p, axis=1, keepdims=True)


def ramsauer_beta(patterns) -> float:
    """The smallest β meeting Ramsauer et al.'s Theorem 3 sufficient condition
    Δ_i ≥ 2/(βK) + β⁻¹ ln(2(K−1)KβM²) for every pattern (Δ_i = ξ_i·ξ_i − max_{j≠i} ξ_i·ξ_j)."""
    g = patterns @ patterns.T
    k = g.shape[0]
    delta = np.min(np.diag(g) - np.max(g - np.diag(np.full(k, np.inf)), axis=1))
    m2 = np.max(np.diag(g))
    if delta <= 0:
        return float("inf")
    f = lambda b: delta - 2 / (b * k) - math.log(2 * (k - 1) * k * b * m2) / b  # noqa: E731
    # at tiny beta the logarithm is negative and the condition holds vacuously; the claim is
    # about large beta: the threshold is the largest root (the condition holds for every beta above)
    grid = np.logspace(-6, 6, 1201)
    neg = [b for b in grid if f(b) < 0]
    if not neg:
        return float(grid[0])
    lo = max(neg)
    hi = lo * 10 ** 0.01
    if f(hi) < 0:
        return float("inf")
    for _ in range(100):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if f(mid) < 0 else (lo, mid)
    return hi


def continuous_patterns(seed: int, grid: dict) -> np.ndarray:
    """K equal-norm (sqrt D) random patterns in D dimensions."""
    return _equal_norm_patterns(np.random.default_rng([seed, 11]), grid["K"], grid["D"], math.sqrt(grid["D"]))


def _timed_census(net, starts):
    """``census`` of ``net`` from ``starts``, then ``classify`` of the points found, and the
    seconds each took: ``(census, classification, census_s, classify_s)``."""
    t0 = time.perf_counter()
    c = L.census(net, starts)
    t_census = time.perf_counter() - t0
    t0 = time.perf_counter()
    cl = L.classify(net, c.points)
    return c, cl, t_census, time.perf_counter() - t0


def continuous_point(beta: float, seed: int, grid: dict) -> dict:
    rng = np.random.default_rng([seed, 11])
    k, d = grid["K"], grid["D"]
    norm = math.sqrt(d)
    p = _equal_norm_patterns(rng, k, d, norm)  # = continuous_patterns(seed, grid); rng goes on to the starts
    mem = ham.memories.modern(jnp.asarray(p), beta=beta)
    net = mem.network
    q = rng.standard_normal((grid["starts"], d)) * norm / math.sqrt(d) * 1.5
    starts = mem.init_states(jnp.asarray(q))
    c, cl, t_census, t_classify = _timed_census(net, starts)
    minima = np.asarray(cl.index) == 0
    spread = np.asarray(L.attention_spread(mem, c.points["v"]))
    near = np.max(np.asarray(c.points["v"]) @ p.T / norm**2, axis=1)
    per_pattern = int(np.sum(minima & (spread == 1)))
    return dict(
        minima=int(minima.sum()), points=int(c.num_points), saddles_found=int((~minima).sum()),
        single_pattern_minima=per_pattern, spreads=sorted(spread[minima].tolist()),
        max_overlap=sorted(near[minima].tolist()), converged=float(np.asarray(c.converged).mean()),
        census_s=t_census, classify_s=t_classify,
    )


# ------------------------------------------------------------------------- spread
def spread_point(beta: float, seed: int, grid: dict) -> dict:
    rng = np.random.default_rng([seed, 13])
    k, d = grid["K"], grid["D"]
    p = _equal_norm_patterns(rng, k, d, math.sqrt(d))
    mem = ham.memories.modern(jnp.asarray(p), beta=beta)
    nq = grid["queries"]
    near = p[rng.integers(0, k, nq)] + 0.3 * rng.standard_normal((nq, d))
    rand = rng.standard_normal((nq, d))
    return dict(near=float(np.mean(np.asarray(L.attention_spread(mem, near)))),
                random=float(np.mean(np.asarray(L.attention_spread(mem, rand)))))


# ------------------------------------------------------------------------- ET attention spread
def et_config(kind: str, seed: int, grid: dict) -> ET.Config:
    """``experiments.energy_transformer``'s digits configuration (16 tokens of 2×2 patches,
    global attention) with a ``kind`` Hopfield energy and the grid's overrides."""
    return ET.Config(**{**ET.DATASET_DEFAULTS["digits"], **grid["overrides"], "dataset": "digits",
                        "hopfield": kind, "seed": seed})


def et_key(kind: str, seed: int, grid: dict) -> str:
    """The grid key of an ET spread point: it names the ET's configuration (a short hash), so a
    changed configuration is a new point, never a stale one."""
    cfg = dataclasses.asdict(et_config(kind, seed, grid))
    return f"et_spread/{kind}/{hashlib.sha1(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:8]}"


def _distribution(v: np.ndarray, rng, bootstrap: int, top: int | None = None) -> dict:
    """Median, 5–95 % quantiles, mean, fraction equal to 1 and bootstrap 95 % intervals (images
    resampled) of spreads ``v`` of shape (images, queries); the histogram of values 0..``top``."""
    flat = v.reshape(-1)
    idx = rng.integers(0, v.shape[0], size=(bootstrap, v.shape[0]))
    boot = v[idx].reshape(bootstrap, -1)
    out = dict(median=float(np.median(flat)), q05=float(np.quantile(flat, 0.05)), q95=float(np.quantile(flat, 0.95)),
               mean=float(flat.mean()), single=float(np.mean(flat == 1)),
               median_ci=np.quantile(np.median(boot, axis=1), [0.025, 0.975]).tolist(),
               mean_ci=np.quantile(boot.mean(axis=1), [0.025, 0.975]).tolist())
    if top is not None:
        out["hist"] = np.bincount(flat, minlength=top + 1)[: top + 1].tolist()
    return out


@eqx.filter_jit
def _start_and_final(model: ET.MaskedET, patches, masks):
    """The activations g of the start state (embedded, masked tokens) and of the state the
    ET's inference reaches (``model.solve``)."""
    x0 = ET._masked_tokens(model.encoder, model.mask_token, model.positions, patches, masks)
    return model.et.activations(x0), model.et.activations(model.solve(patches, masks).states["tokens"])


def et_spreads(model: ET.MaskedET, patches: np.ndarray, masks, batch: int = 512) -> dict:
    """Attention spreads ``(images, heads, tokens)`` and softmax-Hopfield spreads ``(images, tokens)``
    (None for a relu Hopfield) per mass in ``ET_MASSES``, at the start state (the embedded, masked
    tokens) and at the state the ET's inference reaches (``model.solve``)."""
    syn = model.et.network.synapses
    softmax = syn["hopfield"].kind == "softmax"
    out = {(part, state, m): [] for part in ("attention", "hopfield") for state in ("start", "final") for m in ET_MASSES}
    for i in range(0, len(patches), batch):
        p, mk = jnp.asarray(patches[i : i + batch]), masks[i : i + batch]
        for state, g in zip(("start", "final"), _start_and_final(model, p, mk)):
            for m in ET_MASSES:
                out["attention", state, m].append(np.asarray(L.attention_spread(syn["attention"].scores(g), mass=m)))
                if softmax:
                    out["hopfield", state, m].append(np.asarray(L.attention_spread(syn["hopfield"].scores(g), mass=m)))
    return {k: (np.concatenate(v) if v else None) for k, v in out.items()}


def et_spread_point(kind: str, seed: int, grid: dict, folder: str, progress: bool) -> dict:
    """Train (or resume) a digits ET with a ``kind`` Hopfield energy, then measure the spreads of
    ``et_spreads`` on the held-out images (half the patches masked, the training script's fixed
    held-out masks) for the trained ET, the same ET at its initialisation, and uniform logits."""
    cfg = et_config(kind, seed, grid)
    cfg.validate()
    config = dataclasses.asdict(cfg)
    split = ET.load_split(cfg)
    ckpt = Path(folder) / "checkpoints" / f"{NAME}_{et_key(kind, seed, grid).replace('/', '_')}.eqx"
    t0 = time.perf_counter()
    trained = ET.train_models(cfg, split, ckpt, config, resume=True, progress=progress,
                              history_test=cfg.history_test, desc=f"ET ({kind} Hopfield)")
    t_train = time.perf_counter() - t0
    masks = trained.eval_masks
    tokens, patch_dim = split.train.shape[1:]
    untrained = ET.MaskedET(cfg, tokens, patch_dim, key=jax.random.split(jax.random.PRNGKey(cfg.seed), 4)[0])
    rng = np.random.default_rng([seed, 23])
    t0 = time.perf_counter()
    allowed = tokens - 1  # global attention: every token but the query itself
    models = {}
    for name, model in (("trained", trained.et), ("untrained", untrained)):
        sp = et_spreads(model, split.test, masks)
        m_query = np.asarray(masks, bool)
        rec = {"attention": {}, "hopfield": {} if kind == "softmax" else None}
        for (part, state, mass), v in sp.items():
            if v is None:
                continue
            key = f"{state}/{mass}"
            if part == "attention":  # one distribution per head; masked and visible queries apart
                rec[part][key] = [dict(_distribution(v[:, h], rng, grid["bootstrap"], allowed if mass == 0.9 else None),
                                       mean_masked_queries=float(v[:, h][m_query].mean()),
                                       mean_visible_queries=float(v[:, h][~m_query].mean()))
                                  for h in range(v.shape[1])]
            else:
                rec[part][key] = dict(_distribution(v, rng, grid["bootstrap"], cfg.memories if mass == 0.9 else None),
                                      mean_masked_queries=float(v[m_query].mean()),
                                      mean_visible_queries=float(v[~m_query].mean()))
        models[name] = dict(rec, mse=ET.evaluate_mse(model, split.test, masks))
    uniform = {str(m): dict(attention=int(L.attention_spread(
        jnp.where(jnp.eye(tokens, dtype=bool), -jnp.inf, jnp.zeros((tokens, tokens))), mass=m)[0]),
        hopfield=int(L.attention_spread(jnp.zeros((cfg.memories,)), mass=m))) for m in ET_MASSES}
    return dict(kind=kind, config=config, epochs=trained.epoch, train_images=len(split.train),
                test_images=len(split.test), tokens=tokens, masked_tokens=int(np.asarray(masks[0]).sum()),
                allowed_keys=allowed, memories=cfg.memories, heads=cfg.heads,
                mse_et=models["trained"]["mse"], mse_untrained=models["untrained"]["mse"],
                mse_mean_fill=ET.mean_fill_mse(split.train, split.test, masks),
                mse_baseline=ET.evaluate_mse(trained.base, split.test, masks),
                history_et_test=trained.history["et_test"], history_test_images=cfg.history_test,
                et_train_s=trained.timing["et_train_s"], baseline_train_s=trained.timing["baseline_train_s"],
                train_wall_s=t_train, measure_s=time.perf_counter() - t0, models=models, uniform=uniform,
                checkpoint=ckpt.name)


# ------------------------------------------------------------------------- basins
BASIN_LOADS = dict(classical=0.05, dense3=0.5, exponential=0.05)
BASIN_RADII = [0.0, 0.1, 0.2, 0.3, 0.4, 0.45, 0.5]  # Hamming distance / N


def basin_load(model: str, n: int) -> int:
    """K at the load scaling of each claim: classical alpha = K/N = 0.05 (< 1/(2 ln N) for
    N <= 2e4), dense n = 3 at K ln N / N^2 fixed (half the capacity formula), exponential at
    ln K / N = 0.05."""
    if model == "classical":
        return max(2, round(BASIN_LOADS["classical"] * n))
    if model == "dense3":
        return max(2, round(BASIN_LOADS["dense3"] * dense_capacity(3, n)))
    return max(2, round(math.exp(BASIN_LOADS["exponential"] * n)))


def basin_point(model: str, n: int, seed: int, grid: dict) -> dict:
    k = basin_load(model, n)
    rng = np.random.default_rng([seed, n, k, MODEL_IDS[model], 17])
    xi = rng.choice([-1.0, 1.0], size=(k, n))
    mem = _memory(model, xi)
    radii = sorted({int(round(f * n)) for f in BASIN_RADII})
    t0 = time.perf_counter()
    b = L.basins(mem, xi[: grid["patterns"]], radii, trials=grid["trials"], key=jax.random.PRNGKey(seed))
    return dict(K=k, radius_90=float(b.pooled_radius_90) / n, radius_50=float(b.pooled_radius_50) / n,
                fraction=np.asarray(b.pooled_fraction).tolist(), radii=[r / n for r in radii],
                seconds=time.perf_counter() - t0)


# ------------------------------------------------------------------------- barriers
def barrier_point(beta: float, seed: int, grid: dict) -> dict:
    """The minimum-energy path between the minima of the two closest stored patterns of the
    continuous modern Hopfield HAM (the ``continuous`` part's patterns)."""
    p = continuous_patterns(seed, grid)
    mem = ham.memories.modern(jnp.asarray(p), beta=beta)
    net = mem.network
    g = p @ p.T - np.diag(np.full(len(p), np.inf))
    i, j = np.unravel_index(np.argmax(g), g.shape)
    sol = mem.relax(jnp.asarray(p[[i, j]]), event_rtol=1e-6, event_atol=1e-6)
    a = {k: v[0] for k, v in sol.states.items()}
    b = {k: v[1] for k, v in sol.states.items()}
    dist = float(np.linalg.norm(np.asarray(a["v"] - b["v"])))
    if dist < 1e-3 * math.sqrt(grid["D"]):  # both patterns relax to one (merged) minimum: no barrier
        return dict(merged=True, barrier=0.0, saddle_index=-1, converged=True, seconds=0.0)
    t0 = time.perf_counter()
    path = L.minimum_energy_path(net, a, b, images=11, max_iterations=4000)
    return dict(merged=False, barrier=float(path.barrier), barrier_back=float(path.barrier_back),
                saddle_index=int(path.saddle_index), converged=bool(path.converged),
                refined=bool(path.refined), cosine=float(p[i] @ p[j] / grid["D"]),
                seconds=time.perf_counter() - t0)


# ------------------------------------------------------------------------- cost on a large state
def large_point(seed: int, grid: dict) -> dict:
    """census + classify (Lanczos, softmax factor) of a modern Hopfield HAM with D + K free neurons."""
    rng = np.random.default_rng([seed, 19])
    d, k = grid["D"], grid["K"]
    p = _equal_norm_patterns(rng, k, d, math.sqrt(d))
    mem = ham.memories.modern(jnp.asarray(p, jnp.float32), beta=20.0 / d)  # beta x separation ~ 18 > ln K
    net = mem.network
    q = p[: grid["points"]] + 0.2 * rng.standard_normal((grid["points"], d))
    starts = mem.init_states(jnp.asarray(q, jnp.float32))
    c, cl, t_census, t_classify = _timed_census(net, starts)
    return dict(state_size=d + k, points=int(c.num_points), minima=int(np.sum(np.asarray(cl.index) == 0)),
                census_s=t_census, classify_s=t_classify)


# ------------------------------------------------------------------------- summary
def _first(xs, ys, pred):
    for x, y in zip(xs, ys):
        if pred(y):
            return x
    return None


def summarise(grid, results, seed_values) -> dict:
    """Tables over seeds; a grid point some of whose seeds are missing (a run stopped by
    ``--max-minutes``) uses the seeds done (``seeds`` in its row), one with none is left out."""
    seeds = range(grid["seeds"])

    def got(prefix):
        return [results[f"{prefix}/{s}"] for s in seeds if f"{prefix}/{s}" in results]

    theorem = [ramsauer_beta(continuous_patterns(s, grid["continuous"])) for s in seed_values]
    spurious = []
    for model, n, k in _spurious_grid(grid):
        recs = got(f"spurious/{model}/{n}/{k}")
        if not recs:
            continue
        row = dict(model=model, N=n, K=k, seeds=len(recs), load=k / n if model == "classical" else k,
                   capacity_theory=(0.138 * n if model == "classical" else
                                    dense_capacity(3 if model == "dense3" else 4, n) if model.startswith("dense")
                                    else None))
        for f in ("spurious_fraction", "distinct_spurious", "patterns_stable", "converged"):
            row[f] = _ci([r[f] for r in recs])
        tot = {name: sum(r["starts_by_label"][name] for r in recs) for name in L.LABELS}
        dist = {name: sum(r["distinct_by_label"][name] for r in recs) for name in L.LABELS}
        row["spurious_labels_starts"] = tot
        row["spurious_labels_distinct"] = dist
        row["census_s"] = float(np.mean([r["census_s"] for r in recs]))
        row["classify_s"] = float(np.mean([r["classify_s"] for r in recs]))
        spurious.append(row)
    # the load at which stored patterns stop being minima (fraction 1-flip-stable < 0.9, < 0.5)
    loss = []
    for model in ("classical", "dense3", "dense4", "exponential"):
        for n in sorted({r["N"] for r in spurious if r["model"] == model}):
            rows = [r for r in spurious if r["model"] == model and r["N"] == n]
            ks = [r["K"] for r in rows]
            st = [r["patterns_stable"][0] for r in rows]
            loss.append(dict(model=model, N=n, K_run=max(ks),
                             K_below_90=_first(ks, st, lambda v: v < 0.9),
                             K_below_50=_first(ks, st, lambda v: v < 0.5),
                             capacity_theory=rows[0]["capacity_theory"]))
    ags = []
    for n in grid["ags"]["N"]:
        for k in grid["ags"]["K"]:
            recs = got(f"ags/{n}/{k}")
            if not recs:
                continue
            ags.append(dict(N=n, K=k, alpha=k / n, seeds=len(recs),
                            **{f: _ci([r[f] for r in recs]) for f in
                               ("stable_fraction", "symmetric_fraction", "overlap", "energy", "energy_pattern")}))
    cont = []
    betas = grid["continuous"]["betas"]
    betas = [b for b in betas if got(f"continuous/{b}")]
    for b in betas:
        recs = got(f"continuous/{b}")
        cont.append(dict(beta=b, seeds=len(recs), **{f: _ci([r[f] for r in recs]) for f in
                                    ("minima", "single_pattern_minima", "saddles_found", "converged")},
                         spreads=[r["spreads"] for r in recs],
                         census_s=float(np.mean([r["census_s"] for r in recs])),
                         classify_s=float(np.mean([r["classify_s"] for r in recs]))))
    kk = grid["continuous"]["K"]
    trans = dict(
        beta_first_several_minima=_first(betas, [c["minima"][0] for c in cont], lambda v: v > 1.0),
        beta_one_minimum_per_pattern=_first(
            betas, [min(r["single_pattern_minima"] for r in got(f"continuous/{b}")) for b in betas],
            lambda v: v >= kk),
        beta_theorem=_ci(theorem),
    )
    spread = []
    for b in grid["spread"]["betas"]:
        recs = got(f"spread/{b}")
        if not recs:
            continue
        spread.append(dict(beta=b, near=_ci([r["near"] for r in recs]), random=_ci([r["random"] for r in recs])))
    basin_rows = []
    for model in ("classical", "dense3", "exponential"):
        for n in grid["basins"][model]:
            recs = got(f"basins/{model}/{n}")
            if not recs:
                continue
            basin_rows.append(dict(model=model, N=n, K=recs[0]["K"], seeds=len(recs), radius_90=_ci([r["radius_90"] for r in recs]),
                                   radius_50=_ci([r["radius_50"] for r in recs]),
                                   seconds=float(np.mean([r["seconds"] for r in recs]))))
    barrier_rows = []
    for b in grid["barriers"]["betas"]:
        recs = got(f"barriers/{b}")
        if not recs:
            continue
        real = [r for r in recs if not r["merged"]]
        barrier_rows.append(dict(
            beta=b, merged=sum(r["merged"] for r in recs), barrier=_ci([r["barrier"] for r in real]) if real else None,
            index_one=sum(r["saddle_index"] == 1 for r in real), paths=len(real),
            converged=sum(r["converged"] for r in real), seconds=float(np.mean([r["seconds"] for r in recs]))))
    large = got("large") if grid["large"] else []
    # one ET per Hopfield kind (the first seed: training is the cost); intervals are over held-out images
    et_rows = [results[f"{et_key(kind, seed_values[0], grid['et'])}/0"] for kind in grid["et"]["kinds"]
               if f"{et_key(kind, seed_values[0], grid['et'])}/0" in results]
    return dict(spurious=spurious, pattern_loss=loss, ags=ags, continuous=cont, transitions=trans, spread=spread,
                et_spread=et_rows, basins=basin_rows, barriers=barrier_rows,
                large=None if not large else dict(
                    state_size=large[0]["state_size"], points=large[0]["points"], minima=[r["minima"] for r in large],
                    census_s=[r["census_s"] for r in large], classify_s=[r["classify_s"] for r in large]))


def figure(summary, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    for model in ("classical", "dense3", "dense4", "exponential"):
        for n in sorted({r["N"] for r in summary["spurious"] if r["model"] == model}):
            rows = [r for r in summary["spurious"] if r["model"] == model and r["N"] == n]
            x = [r["K"] / (r["capacity_theory"] or r["K"]) for r in rows]
            y = [r["spurious_fraction"][0] for r in rows]
            e = [0 if math.isnan(r["spurious_fraction"][1]) else r["spurious_fraction"][1] for r in rows]
            ax[0].errorbar(x, y, yerr=e, marker="o", label=f"{model} N={n}", capsize=3)
    ax[0].set(xlabel="K / theoretical capacity (exponential: K / K)", ylabel="starts ending in a spurious fixed point",
              title="Spurious fixed points vs load")
    ax[0].legend(fontsize=7)
    c = summary["continuous"]
    b = [r["beta"] for r in c]
    ax[1].errorbar(b, [r["minima"][0] for r in c], yerr=[np.nan_to_num(r["minima"][1]) for r in c], marker="o",
                   label="minima found")
    ax[1].errorbar(b, [r["single_pattern_minima"][0] for r in c],
                   yerr=[np.nan_to_num(r["single_pattern_minima"][1]) for r in c], marker="s",
                   label="single-pattern minima")
    ax[1].axvline(summary["transitions"]["beta_theorem"][0], color="k", ls="--", label="Ramsauer Thm 3 (sufficient)")
    ax[1].set(xscale="log", xlabel="β", ylabel="count", title="Modern Hopfield HAM minima")
    ax[1].legend(fontsize=7)
    s = summary["spread"]
    ax[2].plot([r["beta"] for r in s], [r["near"][0] for r in s], "o-", label="queries near a pattern")
    ax[2].plot([r["beta"] for r in s], [r["random"][0] for r in s], "s-", label="random queries")
    ax[2].set(xscale="log", yscale="log" if s else "linear", xlabel="β", ylabel="patterns holding 90 % of the softmax",
              title="Attention spread")
    ax[2].legend(fontsize=7)
    save_figure(fig, path)


def figure_et(summary, path):
    """Distributions of the ET's attention spread per head (start and final state) and of its
    softmax Hopfield spread, trained beside untrained, with the uniform (global average) value;
    one row per trained ET."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["et_spread"]
    fig, axes = plt.subplots(len(rows), 3, figsize=(15, 4.8 * len(rows)), squeeze=False)
    fig.subplots_adjust(hspace=0.5)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, r in zip(axes, rows):
        k = np.arange(r["allowed_keys"] + 1)
        tag = f"{r['kind']}-Hopfield ET, {r['epochs']} epochs, MSE {r['mse_et']:.4f} (mean fill {r['mse_mean_fill']:.4f})"
        for a, state in zip(ax[:2], ("start", "final")):
            for name, ls in (("trained", "-"), ("untrained", ":")):
                for h, d in enumerate(r["models"][name]["attention"][f"{state}/0.9"]):
                    hist = np.asarray(d["hist"], float)
                    a.plot(k[1:], hist[1:] / hist.sum(), ls, color=colours[h % len(colours)], marker=".",
                           label=f"{name} head {h}")
            a.axvline(r["uniform"]["0.9"]["attention"], color="k", ls="--", label="uniform logits (global average)")
            a.set(xlabel=f"keys holding 90 % of a query's attention (of {r['allowed_keys']})",
                  ylabel="fraction of queries", title=f"attention spread, {state} state\n{tag}")
            a.title.set_fontsize(8)
            a.legend(fontsize=6, ncol=2)
        if r["models"]["trained"]["hopfield"]:
            m = np.arange(r["memories"] + 1)
            for name, ls in (("trained", "-"), ("untrained", ":")):
                for state, c in (("start", colours[0]), ("final", colours[1])):
                    hist = np.asarray(r["models"][name]["hopfield"][f"{state}/0.9"]["hist"], float)
                    ax[2].plot(m, np.cumsum(hist) / hist.sum(), ls, color=c, label=f"{name}, {state} state")
            ax[2].axvline(r["uniform"]["0.9"]["hopfield"], color="k", ls="--", label="uniform logits")
            ax[2].set(xscale="log", xlabel=f"memories holding 90 % of a token's Hopfield softmax (of {r['memories']})",
                      ylabel="cumulative fraction of tokens", title=f"softmax Hopfield spread\n{tag}")
            ax[2].title.set_fontsize(8)
            ax[2].legend(fontsize=7)
        else:
            ax[2].axis("off")
            ax[2].text(0.5, 0.5, "relu Hopfield energy: no softmax over the memories", ha="center", va="center")
    fig.suptitle("Energy Transformer on held-out digits, half the patches masked", fontsize=10)
    save_figure(fig, path)


def main(argv=None):
    p = cap.make_parser(NAME, __doc__.splitlines()[0])
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop starting new grid points after this many minutes; the results then list what is "
                        "missing (rerun to resume)")
    args = p.parse_args(argv)
    mode = cap.mode_of(args)
    grid = GRIDS[mode]
    out = cap.Outputs(NAME, mode, args.results_dir)
    # the keys name model, N, K, beta and seed index; the config holds what they do not
    config = {"seed": args.seed, "starts": grid["starts"], "ags_triples": grid["ags"]["triples"],
              "continuous": {k: v for k, v in grid["continuous"].items() if k != "betas"},
              "spread": {k: v for k, v in grid["spread"].items() if k != "betas"},
              "basins": {k: grid["basins"][k] for k in ("patterns", "trials")}, "version": 1}
    # (the large-state case is keyed by seed only: its size lives in the summary, not in the config)
    ck = out.checkpoint(config, fresh=args.fresh)
    seeds = [args.seed + s for s in range(grid["seeds"])]
    tasks = {}
    for model, n, k in _spurious_grid(grid):
        for i, s in enumerate(seeds):
            tasks[f"spurious/{model}/{n}/{k}/{i}"] = (spurious_point, (model, n, k, s, grid["starts"]))
    for n in grid["ags"]["N"]:
        for k in grid["ags"]["K"]:
            for i, s in enumerate(seeds):
                tasks[f"ags/{n}/{k}/{i}"] = (ags_point, (n, k, s, grid["ags"]["triples"]))
    for b in grid["continuous"]["betas"]:
        for i, s in enumerate(seeds):
            tasks[f"continuous/{b}/{i}"] = (continuous_point, (b, s, grid["continuous"]))
    for b in grid["spread"]["betas"]:
        for i, s in enumerate(seeds):
            tasks[f"spread/{b}/{i}"] = (spread_point, (b, s, grid["spread"]))
    for model in ("classical", "dense3", "exponential"):
        for n in grid["basins"][model]:
            for i, s in enumerate(seeds):
                tasks[f"basins/{model}/{n}/{i}"] = (basin_point, (model, n, s, grid["basins"]))
    for b in grid["barriers"]["betas"]:
        for i, s in enumerate(seeds):
            tasks[f"barriers/{b}/{i}"] = (barrier_point, (b, s, grid["continuous"]))
    for i, s in enumerate(seeds if grid["large"] else []):
        tasks[f"large/{i}"] = (large_point, (s, grid["large"]))
    for kind in grid["et"]["kinds"]:  # one trained ET per kind (its training is the cost)
        tasks[f"{et_key(kind, seeds[0], grid['et'])}/0"] = (
            et_spread_point, (kind, seeds[0], grid["et"], str(out.folder()), not args.no_progress))
    # the costliest parts last, so that a run stopped by --max-minutes has every other part
    last = ("spurious/exponential/", "spurious/dense4/", "et_spread/", "large/")
    order = sorted(tasks, key=lambda key: next((i + 1 for i, p in enumerate(last) if key.startswith(p)), 0))
    t0 = time.perf_counter()
    from tqdm import tqdm

    todo = [key for key in order if key not in ck]
    with tqdm(total=len(order), initial=len(order) - len(todo), desc=NAME, disable=args.no_progress) as bar:
        for key in todo:
            if args.max_minutes is not None and time.perf_counter() - t0 > 60 * args.max_minutes:
                break
            bar.set_postfix_str(key)
            ck.put(key, tasks[key][0](*tasks[key][1]))
            bar.update(1)
    results = {key: ck[key] for key in order if key in ck}
    missing = [key for key in order if key not in ck]
    summary = summarise(grid, results, seeds)
    summary.update(complete=not missing, missing=missing)
    summary.update(
        mode=mode, seeds=len(seeds), starts=grid["starts"], grid=grid, wall_s_last_invocation=time.perf_counter() - t0,
        command=f"python -m experiments.landscape{'' if mode == 'full' else ' --' + mode}",
        claims=dict(
            spurious="Krotov 2023 Fig. 1 / Krotov & Hopfield 2016: the classical landscape fills with spurious "
                     "minima with load; dense memories keep patterns as minima up to K ~ N^(n-1)/(2(2n-3)!! ln N)",
            classical_capacity="Amit, Gutfreund & Sompolinsky 1985: alpha_c = 0.138",
            ags="symmetric 3-mixtures: overlaps 1/2 each, energy per neuron -3/8 vs -1/2 (alpha -> 0)",
            continuous="Ramsauer et al. 2020: global averaging at small beta, metastable subset averages, "
                       "one fixed point per pattern at large beta (Theorem 3 sufficient condition)",
            spread="Ramsauer et al. 2020: the number of patterns holding 90 % of the softmax mass",
            et_spread="Ramsauer et al. 2020 (abstract, their BERT/transformer analysis with k = the patterns holding "
                      "90 % of the softmax): transformer and BERT models operate in their first layers preferably "
                      "in the global averaging regime, in higher layers in metastable states; learning starts with "
                      "heads that average, most of which then switch to metastable states (the ET here is one "
                      "block, i.e. a first layer, iterated)",
            basins="Demircigil et al. 2017; Krotov 2023: basins of size O(N) (r*/N roughly constant in N at the "
                   "claim's load scaling; an O(1/ln N) drift is expected)",
            barriers="a saddle of index 1 on the minimum-energy path between neighbouring memories",
        ),
    )
    write_json(out.path("json"), summary)
    figure(summary, out.path("png"))
    if summary["et_spread"]:
        figure_et(summary, out.folder() / f"{NAME}{cap.suffix_of(mode)}_et_spread.png")
    return summary


if __name__ == "__main__":
    main()
