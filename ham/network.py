"""HAM: a hierarchical associative memory — a graph of layers and synapses."""

from __future__ import annotations

from collections.abc import Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from . import _checks as checks
from .layer import Layer
from .synapses import Synapse

__all__ = ["HAM"]

States = dict[str, Array]


def _freeze_connections(c: Mapping[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    if not isinstance(c, Mapping):
        raise TypeError(
            f"HAM: connections must be a dict mapping each synapse name to the layer names it joins, "
            f"got {type(c).__name__}."
        )
    out = {}
    for k, v in dict(c).items():
        if isinstance(v, str):
            v = (v,)
        if not isinstance(v, (tuple, list)):
            raise TypeError(f"HAM: connections[{k!r}] must be a tuple of layer names, got {v!r}.")
        out[k] = tuple(v)
    return out


_OVERFLOW = "the energy or its gradient overflows the dtype for these states; rescale them or the weights"


@eqx.filter_jit
def _batched(net: "HAM", method: str, xs):
    """``net._vmap(getattr(net, method), xs)`` as one compiled program per network structure,
    method and state shapes (run op by op, every operation was compiled on its own for each
    new shape: ~5 s for one eager energy of a small network)."""
    return net._vmap(getattr(net, method), xs)


class HAM(eqx.Module):
    r"""A network of layers and synapses with energy (Krotov 2021, "Hierarchical
    associative memory"; Hoover et al. 2022, "A universal abstraction for hierarchical
    Hopfield networks")

    $E = \sum_A \big(x_A\cdot g_A - L_A(x_A)\big) + \sum_S E_S(g_{A}, g_{B}, \dots)$

    and dynamics $\tau_A \dot x_A = -\partial E/\partial g_A = -x_A - \sum_{S\ni A}
    \partial E_S/\partial g_A$, for which $dE/dt = -\sum_A \tau_A \dot x_A^\top
    \nabla^2 L_A\, \dot x_A \le 0$.

    ``connections`` maps each synapse name to the tuple of layer names it joins, in
    the order its ``energy`` takes their activations. States are dicts of arrays keyed
    by layer name, each of shape ``(*batch_shape, *layer.shape)``; all methods accept
    any leading batch shape (the same for every layer).
    """

    layers: dict[str, Layer]
    synapses: dict[str, Synapse]
    connections: dict[str, tuple[str, ...]] = eqx.field(static=True, converter=_freeze_connections)

    def __check_init__(self):
        for what, d in (("layers", self.layers), ("synapses", self.synapses)):
            if not isinstance(d, Mapping):
                raise TypeError(f"HAM: {what} must be a dict keyed by name, got {type(d).__name__}.")
        if not self.layers:
            raise ValueError("HAM: needs at least one layer.")
        for name, layer in self.layers.items():
            if not isinstance(layer, Layer):
                raise TypeError(f"HAM: layer {name!r} must be a ham.Layer, got {type(layer).__name__}.")
        for name, syn in self.synapses.items():
            if not isinstance(syn, Synapse):
                raise TypeError(f"HAM: synapse {name!r} must be a ham.synapses.Synapse, got {type(syn).__name__}.")
        missing = set(self.synapses) - set(self.connections)
        if missing:
            raise ValueError(f"HAM: synapse(s) {sorted(missing)} have no entry in connections.")
        extra = set(self.connections) - set(self.synapses)
        if extra:
            raise ValueError(f"HAM: connections name unknown synapse(s) {sorted(extra)}; synapses are {sorted(self.synapses)}.")
        for sname, lnames in self.connections.items():
            if not lnames:
                raise ValueError(f"HAM: synapse {sname!r} joins no layer.")
            for ln in lnames:
                if ln not in self.layers:
                    raise ValueError(
                        f"HAM: synapse {sname!r} joins unknown layer {ln!r}; layers are {sorted(self.layers)}."
                    )
            self.synapses[sname].check_shapes(sname, tuple(self.layers[ln].shape for ln in lnames))

    # ------------------------------------------------------------------ batching
    def batch_shape(self, xs: Mapping[str, Array]) -> tuple[int, ...]:
        """The leading batch shape shared by all layers of ``xs`` (validated)."""
        if not isinstance(xs, Mapping):
            raise TypeError(f"HAM: states must be a dict keyed by layer name, got {type(xs).__name__}.")
        if set(xs) != set(self.layers):
            raise ValueError(f"HAM: states have layers {sorted(xs)}, the network has {sorted(self.layers)}.")
        batch = None
        for name, layer in self.layers.items():
            x = xs[name]
            if not hasattr(x, "ndim"):
                x = jnp.asarray(x)
            nd = len(layer.shape)
            if x.ndim < nd or tuple(x.shape[x.ndim - nd :]) != layer.shape:
                raise ValueError(
                    f"HAM: state of layer {name!r} has shape {tuple(x.shape)}; expected (*batch, *{layer.shape})."
                )
            b = tuple(x.shape[: x.ndim - nd])
            if batch is None:
                batch = b
            elif b != batch:
                raise ValueError(f"HAM: layers have different batch shapes {batch} and {b} (layer {name!r}).")
        return batch

    def _vmap(self, fn, xs):
        batch = self.batch_shape(xs)
        for _ in batch:
            fn = jax.vmap(fn)
        return fn(xs)

    # ------------------------------------------------------------------ unbatched maths
    def _activations(self, xs: States) -> States:
        return {k: layer.activation(xs[k]) for k, layer in self.layers.items()}

    def _synapse_energy(self, gs: States):
        e = 0.0
        for sname, syn in self.synapses.items():
            e = e + syn.energy(*(gs[ln] for ln in self.connections[sname]))
        return e

    def _energy_terms(self, xs: States) -> dict[str, Array]:
        gs = self._activations(xs)
        terms = {f"layer:{k}": layer.energy(xs[k], gs[k]) for k, layer in self.layers.items() if layer.legendre}
        for sname, syn in self.synapses.items():
            terms[f"synapse:{sname}"] = syn.energy(*(gs[ln] for ln in self.connections[sname]))
        return terms

    def _energy(self, xs: States):
        gs = self._activations(xs)
        e = sum(layer.energy(xs[k], gs[k]) for k, layer in self.layers.items() if layer.legendre)
        return e + self._synapse_energy(gs)

    def _energy_and_dEdg(self, xs: States, with_scale: bool = False):
        """Energy and $\\partial E/\\partial g_A$ of one unbatched state in one pass
        (``value_and_grad`` of every Lagrangian and of the synapse energy). With
        ``with_scale`` also the sum of the magnitudes of the energy's terms (the size of its
        round-off: the terms may cancel to a much smaller total)."""
        lg = {k: jax.value_and_grad(layer.lagrangian)(xs[k]) for k, layer in self.layers.items()}
        gs = {k: v[1] for k, v in lg.items()}
        if self.synapses:
            e_syn, dsyn = jax.value_and_grad(self._synapse_energy)(gs)
        else:
            e_syn, dsyn = 0.0, {k: jnp.zeros_like(v) for k, v in gs.items()}
        e = e_syn
        scale = jnp.abs(e_syn)
        d = {}
        for k, layer in self.layers.items():
            if layer.legendre:
                xg = jnp.vdot(xs[k], gs[k])
                e = e + xg - lg[k][0]
                scale = scale + jnp.abs(xg) + jnp.abs(lg[k][0])
                d[k] = xs[k] + dsyn[k]
            else:
                d[k] = dsyn[k]
        return (e, d, scale) if with_scale else (e, d)

    def _dEdg_layer(self, xs: States, name: str) -> Array:
        """$\\partial E/\\partial g_A$ for the one layer ``name`` (only the synapses that
        join it are differentiated)."""
        gs = self._activations(xs)
        layer = self.layers[name]

        joined = [s for s, lns in self.connections.items() if name in lns]

        def e_syn(g):
            g_all = {**gs, name: g}
            return sum(self.synapses[s].energy(*(g_all[ln] for ln in self.connections[s])) for s in joined)

        d = jax.grad(e_syn)(gs[name]) if joined else jnp.zeros_like(xs[name])
        return xs[name] + d if layer.legendre else d

    def _dEdg(self, xs: States) -> States:
        gs = self._activations(xs)
        dsyn = jax.grad(self._synapse_energy)(gs)
        return {k: xs[k] + dsyn[k] if layer.legendre else dsyn[k] for k, layer in self.layers.items()}

    # ------------------------------------------------------------------ public API
    def init_states(
        self, batch_shape: tuple[int, ...] = (), key: PRNGKeyArray | None = None, scale: float = 1.0,
        dtype=None,
    ) -> States:
        """States of shape ``(*batch_shape, *layer.shape)``: zeros, or ``scale`` times
        standard normal noise when a PRNG ``key`` is given (deterministic per key)."""
        if isinstance(batch_shape, (int, np.integer)) and not isinstance(batch_shape, bool):
            batch_shape = (batch_shape,)
        batch_shape = tuple(checks.integer("HAM.init_states", "batch_shape", d, minimum=0) for d in batch_shape)
        dtype = dtype or jnp.zeros(()).dtype
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"HAM.init_states: dtype must be a floating dtype, got {dtype}.")
        if key is not None:
            checks.prng_key("HAM.init_states", "key", key)
            scale = checks.param("HAM.init_states", "scale", scale, low=0.0, inclusive=True)
        if key is None:
            return {k: jnp.zeros(batch_shape + l.shape, dtype) for k, l in self.layers.items()}
        names = sorted(self.layers)
        keys = jax.random.split(key, len(names))
        return {
            k: scale * jax.random.normal(kk, batch_shape + self.layers[k].shape, dtype)
            for k, kk in zip(names, keys)
        }

    def _checked(self, method: str, fn, xs):
        """``fn`` of finite states (batched), refusing NaN/inf states and an overflowing result."""
        if not isinstance(xs, Mapping):
            raise TypeError(f"HAM.{method}: states must be a dict keyed by layer name, got {type(xs).__name__}.")
        xs = {k: checks.real_array(f"HAM.{method}", f"states[{k!r}]", v) for k, v in xs.items()}
        self.batch_shape(xs)
        xs = checks.finite_tree(f"HAM.{method}", "states", xs, runtime=True)
        return checks.finite_result(f"HAM.{method}", _batched(self, fn.__name__, xs), _OVERFLOW)

    def activations(self, xs: Mapping[str, Array]) -> States:
        r"""$g_A = \partial L_A/\partial x_A$ for every layer."""
        return self._checked("activations", self._activations, xs)

    def energy(self, xs: Mapping[str, Array]) -> Float[Array, "*batch"]:
        """Total energy, one scalar per batch element."""
        return self._checked("energy", self._energy, xs)

    def energy_terms(self, xs: Mapping[str, Array]) -> dict[str, Array]:
        """The energy split into ``layer:<name>`` and ``synapse:<name>`` terms."""
        return self._checked("energy_terms", self._energy_terms, xs)

    def dEdg(self, xs: Mapping[str, Array]) -> States:
        r"""$\partial E/\partial g_A$ with the $x$'s held fixed: $x_A + \sum_S \partial E_S/\partial g_A$
        (without $x_A$ for a layer with ``legendre=False``)."""
        return self._checked("dEdg", self._dEdg, xs)

    def vector_field(self, t, xs: Mapping[str, Array], args=None) -> States:
        r"""The ODE right-hand side $\dot x_A = -(\partial E/\partial g_A)/\tau_A$
        (``t`` and ``args`` are accepted for diffrax and unused). Not data-checked: the
        solvers call it and report a non-finite state through ``Solution.reason``."""
        del t, args
        d = self._vmap(self._dEdg, dict(xs))
        return {k: -d[k] / self.layers[k].tau for k in self.layers}
