"""Shared pieces of the classifier studies on MNIST (``dam_classifier``/``ham_classifier``
``--dataset mnist5k``): the fold/validation protocol, the baselines (1-nearest-neighbour,
logistic regression, a one-hidden-layer ReLU network) and the statistics (exact McNemar test
on paired predictions, Wilson and Student-t intervals).

Protocol: the images are dealt into stratified folds (``experiments.data.stratified_folds``);
fold k is the test set of split k, and a stratified fifth of the rest is carved out as that
split's validation set. Every model of a split is trained on the same remaining images and
every choice (hyperparameters, the epoch count is fixed) is made on the validation set, so no
test image is ever used to tune anything; each image is tested exactly once over the folds,
which is what makes the paired tests on all images possible.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

VALIDATION_FOLDS = 5  # the validation set is one of this many stratified parts of the training side


def fold_split(labels: np.ndarray, folds: int, fold: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices ``(train, validation, test)`` of split ``fold``: the test set is stratified fold
    ``fold`` of ``folds``; the validation set a stratified fifth of the rest (its own seed)."""
    from .data import stratified_folds

    if not 0 <= fold < folds:
        raise ValueError(f"fold must be in [0, {folds}), got {fold}")
    outer = stratified_folds(labels, folds, seed)
    rest = np.flatnonzero(outer != fold)
    inner = stratified_folds(labels[rest], VALIDATION_FOLDS, seed + 1000 + fold)
    return rest[inner != 0], rest[inner == 0], np.flatnonzero(outer == fold)


# ----------------------------------------------------------------------------- baselines
def nearest_neighbour_predict(x_train, y_train, x_test, chunk: int = 1000) -> np.ndarray:
    """1-nearest-neighbour (Euclidean, pixels) predictions."""
    x_train, y_train, x_test = (np.asarray(a, np.float32) for a in (x_train, y_train, x_test))
    sq = (x_train**2).sum(1)[None, :]
    nearest = np.concatenate([np.argmin(sq - 2 * x_test[i:i + chunk] @ x_train.T, axis=1)
                              for i in range(0, len(x_test), chunk)])
    return np.asarray(y_train)[nearest].astype(np.int64)


def logistic_regression(x_train, y_train, x_val, y_val, x_test, grid) -> dict:
    """Multinomial logistic regression (scikit-learn, L2), C chosen on the validation set."""
    from sklearn.linear_model import LogisticRegression

    val_err, models = {}, {}
    for c in grid:
        m = LogisticRegression(C=c, max_iter=300, tol=1e-3)
        m.fit(x_train, y_train)
        val_err[c] = float(np.mean(m.predict(x_val) != y_val))
        models[c] = m
    best = min(grid, key=lambda c: (val_err[c], c))
    n_params = int(models[best].coef_.size + models[best].intercept_.size)
    return {"chosen_C": best, "validation_error": {str(c): v for c, v in val_err.items()},
            "test_predictions": models[best].predict(x_test).astype(np.int64), "parameters": n_params}


def mlp_parameters(dim: int, hidden: int, classes: int = 10) -> int:
    """Parameters of a dim → hidden (ReLU) → classes network with biases."""
    return dim * hidden + hidden + hidden * classes + classes


def mlp_init(key, dim: int, hidden: int, classes: int = 10) -> dict:
    """He-initialised weights (W₁ ~ N(0, 2/dim), W₂ ~ N(0, 1/hidden)), zero biases."""
    k1, k2 = jax.random.split(key)
    return {"w1": jax.random.normal(k1, (dim, hidden)) * math.sqrt(2.0 / dim), "b1": jnp.zeros(hidden),
            "w2": jax.random.normal(k2, (hidden, classes)) / math.sqrt(hidden), "b2": jnp.zeros(classes)}


def mlp_logits(params: dict, x):
    return jax.nn.relu(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


@functools.partial(jax.jit, static_argnames=("hidden", "epochs", "batch_size"))
def train_mlp(key, x_train, y_train, x_val, y_val, learning_rate, hidden: int, epochs: int, batch_size: int):
    """A ReLU network trained with Adam (cosine-decayed learning rate) on the mean cross-entropy,
    one ``lax.scan`` over epochs and minibatches; returns the parameters and the validation
    error after every epoch."""
    steps = x_train.shape[0] // batch_size
    k_init, k_perm = jax.random.split(key)
    params = mlp_init(k_init, x_train.shape[1], hidden)
    opt = optax.adam(optax.cosine_decay_schedule(1.0, epochs * steps))
    opt = optax.chain(opt, optax.scale(learning_rate))

    def objective(p, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(mlp_logits(p, x), y).mean()

    def step(carry, batch):
        p, s = carry
        g = jax.grad(objective)(p, *batch)
        u, s = opt.update(g, s, p)
        return (optax.apply_updates(p, u), s), None

    def epoch(carry, k):
        perm = jax.random.permutation(k, x_train.shape[0])[: steps * batch_size].reshape(steps, batch_size)
        carry, _ = jax.lax.scan(step, carry, (x_train[perm], y_train[perm]))
        return carry, jnp.mean(jnp.argmax(mlp_logits(carry[0], x_val), -1) != y_val)

    (params, _), val_err = jax.lax.scan(epoch, (params, opt.init(params)), jax.random.split(k_perm, epochs))
    return params, val_err


# ----------------------------------------------------------------------------- statistics
def mcnemar(correct_a, correct_b) -> dict:
    """Exact (binomial) McNemar test of two classifiers on the same test images: b = images only
    A gets right, c = images only B gets right; two-sided p of b under Binomial(b + c, ½)."""
    from scipy import stats

    a, b_ = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    if a.shape != b_.shape:
        raise ValueError(f"paired predictions must cover the same images, got shapes {a.shape} and {b_.shape}")
    only_a, only_b = int(np.sum(a & ~b_)), int(np.sum(~a & b_))
    p = 1.0 if only_a + only_b == 0 else float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)
    return {"only_first_right": only_a, "only_second_right": only_b, "p_value": p,
            "error_difference": float(np.mean(~a) - np.mean(~b_))}


def wilson(errors: int, total: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (test-sampling error of a pooled rate)."""
    from scipy import stats

    z = float(stats.norm.ppf(0.5 + level / 2))
    p = errors / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)


def t_interval(values, level: float = 0.95) -> float:
    """Half-width of the Student-t interval of the mean (nan for fewer than two values)."""
    from scipy import stats

    v = np.asarray(values, float)
    if v.size < 2:
        return float("nan")
    return float(stats.t.ppf(0.5 + level / 2, v.size - 1) * np.std(v, ddof=1) / math.sqrt(v.size))


def error_summary(correct_by_fold: list) -> dict:
    """Pooled test error over every fold's test images, the Wilson interval of that pooled rate
    (test sampling) and the Student-t interval over the per-fold errors (test sampling and
    training variation together: each fold has its own test images and its own training set)."""
    errs = [float(np.mean(~np.asarray(c, bool))) for c in correct_by_fold]
    allc = np.concatenate([np.asarray(c, bool) for c in correct_by_fold])
    wrong = int(np.sum(~allc))
    lo, hi = wilson(wrong, allc.size)
    return {"test_error": wrong / allc.size, "test_error_ci95": t_interval(errs), "test_error_wilson95": [lo, hi],
            "test_error_by_fold": errs, "test_images": int(allc.size)}


def encode(pred) -> str:
    """Predicted digits as one string (compact in JSON)."""
    return "".join(str(int(p)) for p in np.asarray(pred))


def decode(s: str) -> np.ndarray:
    return np.frombuffer(s.encode(), dtype=np.uint8).astype(np.int64) - ord("0")
