r"""Training a HAM through its fixed point, with implicit gradients.

A HAM used as a model is read out at the fixed point of its dynamics: the data are
written into *clamped* layers (built with ``tau=jnp.inf``, so $\dot x_A = 0$), the other
layers relax ([`ham.relax`][]) to $x^*(\theta)$ with

$$f(x^*, \theta) = 0, \qquad f_A(x, \theta) = -\tau_A^{-1}\,\partial E/\partial g_A,$$

and a loss $\ell(x^*)$ is taken on the readout layer (e.g. cross-entropy on the label
activations). $\theta$ holds every parameter of the energy (weights, biases, Lagrangian
gains) *and* the clamped data. By the implicit function theorem, wherever
$\partial f/\partial x$ is invertible at $x^*$,

$$\frac{dx^*}{d\theta} = -\Big(\frac{\partial f}{\partial x}\Big)^{-1}\frac{\partial f}{\partial\theta},
\qquad
\frac{d\ell}{d\theta} = \lambda^\top\frac{\partial f}{\partial\theta},\quad
\Big(\frac{\partial f}{\partial x}\Big)^{\!\top}\lambda = -\frac{\partial\ell}{\partial x^*},$$

so the gradient needs only the fixed point, never the trajectory: memory and time of the
backward pass do not grow with the number of solver steps. This is the rule of
recurrent backpropagation (Almeida 1987, "A learning rule for asynchronous perceptrons
with feedback in a combinatorial environment"; Pineda 1987, "Generalization of
back-propagation to recurrent neural networks"), of deep equilibrium models (Bai, Kolter
& Koltun 2019, "Deep equilibrium models") and of diffrax's ``ImplicitAdjoint`` (Kidger
2021, "On neural differential equations"), which [`ham.relax`][] applies by default. For
a HAM, $\partial f_A/\partial x_B = -\tau_A^{-1}\big(\delta_{AB} + \partial^2
E_S/\partial g_A\partial g_B\;\nabla^2 L_B\big)$ (summed over synapses); at a stable,
non-degenerate fixed point (every eigenvalue with negative real part, the generic case
at a minimum of the energy) it is invertible. Near a bifurcation — where two valleys of
the energy merge — it is nearly singular and the implicit gradient is large: a
property of the model, not of the method.

**Why conditioning.** A clamped layer has $f_A \equiv 0$, so the Jacobian of the full
network has zero rows and the linear solve of the implicit function theorem is singular
(``ham.relax(net, ...)`` with a $\tau = \infty$ layer and ``ImplicitAdjoint`` raises "A
linear solver returned non-finite output"). [`ham.training.condition`][] therefore
relaxes the network *conditioned* on the clamped states: the clamped layers are removed
and their activations are bound into the synapses that join them, which leaves the free
layers' dynamics (and the fixed point) unchanged and makes $\partial f/\partial x$ the
free layers' Jacobian; the clamped states become part of $\theta$, as the theorem has it.

The recipe, a few functions rather than a framework:

```python
net = ham.HAM(layers={"v": ham.Layer(ham.lagrangians.identity, (64,), tau=jnp.inf),   # data
                      "h": ham.Layer(ham.lagrangians.relu, (100,)),
                      "y": ham.Layer(ham.lagrangians.softmax, (10,))}, ...)

def loss(net, images, labels):
    sol = ham.training.fixed_point(net, {"v": images})          # implicit gradients
    return optax.softmax_cross_entropy_with_integer_labels(sol.states["y"], labels).mean()

optimizer = optax.adam(1e-2)
opt_state = ham.training.init(net, optimizer)
step = ham.training.make_step(loss, optimizer)
for images, labels in batches:
    net, opt_state, value = step(net, opt_state, images, labels)
```
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, PyTree, Scalar

from .network import HAM
from .solve import Solution, relax
from .synapses import Synapse

__all__ = ["condition", "fixed_point", "trainable", "init", "make_step"]


class _PartlyClamped(Synapse):
    """A synapse with the activations of some of the layers it joins held fixed: its
    energy as a function of the remaining (free) layers' activations only."""

    synapse: Synapse
    clamped: tuple[Array, ...]  # activations of the clamped layers, in the order of ``positions``
    positions: tuple[int, ...] = eqx.field(static=True)  # their places in the synapse's argument list
    arity: int = eqx.field(static=True)

    def energy(self, *gs: Array) -> Scalar:
        free, fixed = iter(gs), iter(self.clamped)
        return self.synapse.energy(*(next(fixed) if i in self.positions else next(free) for i in range(self.arity)))

    def check_shapes(self, name: str, shapes) -> None:
        free = iter(shapes)
        fixed = iter(self.clamped)
        full = tuple(tuple(next(fixed).shape) if i in self.positions else tuple(next(free)) for i in range(self.arity))
        self.synapse.check_shapes(name, full)


def _check_inputs(net: HAM, inputs: Mapping[str, Array], caller: str) -> dict[str, Array]:
    if not isinstance(net, HAM):
        raise TypeError(f"{caller}: net must be a ham.HAM, got {type(net).__name__}.")
    if not isinstance(inputs, Mapping) or not inputs:
        raise TypeError(f"{caller}: inputs must be a non-empty dict mapping clamped layer names to their states.")
    unknown = sorted(set(inputs) - set(net.layers))
    if unknown:
        raise ValueError(f"{caller}: inputs name unknown layer(s) {unknown}; the network's layers are {sorted(net.layers)}.")
    if set(inputs) == set(net.layers):
        raise ValueError(f"{caller}: every layer {sorted(net.layers)} is given as an input: nothing is left to relax.")
    return {k: jnp.asarray(v) for k, v in inputs.items()}


def condition(net: HAM, inputs: Mapping[str, Array]) -> HAM:
    r"""The network of the free layers given the states of the clamped ones.

    **Arguments:**

    - ``net``: a [`ham.HAM`][].
    - ``inputs``: ``{layer name: state}`` for the clamped layers, *unbatched* (each of the
      layer's shape).

    **Returns:**

    A [`ham.HAM`][] over the layers not in ``inputs``, whose energy is
    $E(x_{\rm free}) = E_{\rm net}(x_{\rm free}, x_{\rm clamped}) - C$ with
    $C = \sum_{A\ \rm clamped} E_A + \sum_{S \subseteq \rm clamped} E_S$ constant: a
    synapse that joins clamped and free layers keeps its energy with the clamped
    activations $g_A = \partial L_A/\partial x_A$ bound in; one that joins only clamped
    layers is dropped. The free layers' dynamics, and hence fixed points and trajectories,
    are those of ``net`` with the clamped layers held at ``inputs`` (a layer with
    $\tau = \infty$). Parameters (weights, the clamped states) stay differentiable leaves.
    """
    inputs = _check_inputs(net, inputs, "ham.training.condition")
    for k, x in inputs.items():
        if tuple(x.shape) != net.layers[k].shape:
            raise ValueError(
                f"ham.training.condition: the input for layer {k!r} has shape {tuple(x.shape)}; "
                f"expected the layer's shape {net.layers[k].shape} (condition one example; vmap for a batch)."
            )
    gs = {k: net.layers[k].activation(x) for k, x in inputs.items()}
    synapses, connections = {}, {}
    for name, syn in net.synapses.items():
        joined = net.connections[name]
        positions = tuple(i for i, ln in enumerate(joined) if ln in inputs)
        if not positions:
            synapses[name], connections[name] = syn, joined
        elif len(positions) < len(joined):
            synapses[name] = _PartlyClamped(syn, tuple(gs[joined[i]] for i in positions), positions, len(joined))
            connections[name] = tuple(ln for ln in joined if ln not in inputs)
    layers = {k: layer for k, layer in net.layers.items() if k not in inputs}
    return HAM(layers=layers, synapses=synapses, connections=connections)


def _clamped_energy(net: HAM, inputs: Mapping[str, Array]) -> Scalar:
    """$C$ of [`condition`][]: the energy terms that involve clamped layers only (unbatched)."""
    total = jnp.zeros(())
    for k, x in inputs.items():
        if net.layers[k].legendre:
            total = total + net.layers[k].energy(x)
    for name, syn in net.synapses.items():
        joined = net.connections[name]
        if all(ln in inputs for ln in joined):
            total = total + syn.energy(*(net.layers[ln].activation(inputs[ln]) for ln in joined))
    return total


def fixed_point(
    net: HAM,
    inputs: Mapping[str, Array],
    *,
    init: Mapping[str, Array] | None = None,
    **relax_kwargs,
) -> Solution:
    r"""Relax the free layers of ``net`` to their fixed point with the layers in ``inputs``
    clamped, for a batch of inputs; differentiable by the implicit function theorem.

    Each example is relaxed by [`ham.relax`][] on [`ham.training.condition`][]``(net,
    example)`` (``jax.vmap`` over the batch). With the default
    ``adjoint=diffrax.ImplicitAdjoint()`` the gradient of anything computed from the
    returned ``states`` is $dx^*/d\theta = -(\partial f/\partial x)^{-1}\partial
    f/\partial\theta$ (module docstring), with $\theta$ every parameter of ``net`` and the
    inputs; ``adjoint=diffrax.RecursiveCheckpointAdjoint()`` backpropagates through the
    solver steps instead.

    **Arguments:**

    - ``net``: a [`ham.HAM`][]. The layers named in ``inputs`` are held fixed; build them
      with ``tau=jnp.inf`` so that relaxing ``net`` itself gives the same fixed point.
    - ``inputs``: ``{layer name: states}``, each of shape ``(*batch, *layer.shape)`` with the
      same leading ``batch`` shape (which may be ``()``).
    - ``init``: initial states of the free layers (same leading batch shape); zeros by
      default.
    - ``relax_kwargs``: passed to [`ham.relax`][] (``solver``, tolerances, ``max_steps``,
      ``adjoint``, ...).

    **Returns:**

    A [`ham.Solution`][] with the batch shape leading every field. ``states`` holds every
    layer (the clamped ones equal to ``inputs``); ``energies`` are the energies of the full
    network along each trajectory (the conditioned energy plus the constant $C$); check
    ``converged``: the implicit gradient is the gradient at a fixed point only where one
    was reached.
    """
    inputs = _check_inputs(net, inputs, "ham.training.fixed_point")
    batch = None
    for k, x in inputs.items():
        shape = net.layers[k].shape
        nd = len(shape)
        if x.ndim < nd or tuple(x.shape[x.ndim - nd :]) != shape:
            raise ValueError(
                f"ham.training.fixed_point: the input for layer {k!r} has shape {tuple(x.shape)}; "
                f"expected (*batch, *{shape})."
            )
        b = tuple(x.shape[: x.ndim - nd])
        if batch is not None and b != batch:
            raise ValueError(f"ham.training.fixed_point: inputs have different batch shapes {batch} and {b} (layer {k!r}).")
        batch = b
    free = [k for k in net.layers if k not in inputs]
    dtype = jnp.result_type(*inputs.values())
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.zeros(()).dtype
        inputs = {k: v.astype(dtype) for k, v in inputs.items()}
    if init is None:
        x0 = {k: jnp.zeros(batch + net.layers[k].shape, dtype) for k in free}
    else:
        if set(init) != set(free):
            raise ValueError(
                f"ham.training.fixed_point: init must give the free layers {sorted(free)}, got {sorted(init)}."
            )
        x0 = {k: jnp.asarray(init[k]) for k in free}
        for k, v in x0.items():
            if tuple(v.shape) != batch + net.layers[k].shape:
                raise ValueError(
                    f"ham.training.fixed_point: init for layer {k!r} has shape {tuple(v.shape)}; "
                    f"expected {batch + net.layers[k].shape}."
                )

    def one(clamped, start):
        sol = relax(condition(net, clamped), start, **relax_kwargs)
        constant = jax.lax.stop_gradient(_clamped_energy(net, clamped))
        states = {**clamped, **sol.states}
        return eqx.tree_at(lambda s: (s.states, s.energies), sol, ({k: states[k] for k in net.layers}, sol.energies + constant))

    fn = one
    for _ in batch:
        fn = jax.vmap(fn)
    return fn(inputs, x0)


# ----------------------------------------------------------------------------- optax
def trainable(net: HAM) -> PyTree[bool]:
    """The default filter of trainable parameters: every floating-point array of ``net``
    except the layers' time constants $\\tau_A$ (they set how fast the dynamics run, not
    where they stop, so the loss at the fixed point does not depend on them, and a
    clamped layer's is infinite). Use it with ``eqx.partition`` / ``eqx.filter``, or edit
    it with ``eqx.tree_at`` to freeze more (for example a Lagrangian's gain)."""
    spec = jax.tree_util.tree_map(eqx.is_inexact_array, net)
    for k in net.layers:
        spec = eqx.tree_at(lambda n, k=k: n.layers[k].tau, spec, replace_fn=lambda _: False)
    return spec


def init(net: HAM, optimizer: optax.GradientTransformation, filter_spec: PyTree[bool] | None = None) -> optax.OptState:
    """``optimizer.init`` on the trainable parameters of ``net`` ([`trainable`][] by default)."""
    spec = trainable(net) if filter_spec is None else filter_spec
    return optimizer.init(eqx.filter(net, spec))


def make_step(
    loss: Callable[..., Scalar],
    optimizer: optax.GradientTransformation,
    filter_spec: PyTree[bool] | None = None,
    *,
    has_aux: bool = False,
) -> Callable:
    r"""A jit-compiled optimisation step ``step(net, opt_state, *batch) -> (net, opt_state,
    value)`` for ``loss(net, *batch)``.

    It differentiates ``loss`` with respect to the trainable parameters
    ([`trainable`][] by default, or ``filter_spec``), applies ``optimizer``'s update and
    returns the updated network. The gradient is whatever ``loss`` makes it: with
    [`ham.training.fixed_point`][] and its default adjoint, implicit differentiation at the
    fixed point. With ``has_aux=True``, ``loss`` returns ``(value, aux)`` and ``value``
    above is that pair.
    """

    @eqx.filter_jit
    def step(net: HAM, opt_state, *batch):
        spec = trainable(net) if filter_spec is None else filter_spec
        params, static = eqx.partition(net, spec)

        def objective(p):
            return loss(eqx.combine(p, static), *batch)

        value, grads = jax.value_and_grad(objective, has_aux=has_aux)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return eqx.combine(params, static), opt_state, value

    return step
