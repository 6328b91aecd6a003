"""Dense and bias synapses."""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float, Scalar

from .. import _checks as checks
from ._base import Synapse, shape_error


class Dense(Synapse):
    r"""All-to-all weights between two layers, $E = -g_a^\top W g_b$, with ``W`` of
    shape ``(*shape_a, *shape_b)`` (Krotov & Hopfield 2021, eq. 1).

    Joined to a single layer (``connections={"w": ("v",)}``) it is a recurrent
    synapse with $E = -\tfrac12 g^\top W g$ and ``W`` of shape ``(*shape, *shape)``:
    the classical Hopfield energy (Hopfield 1982, 1984). Only the symmetric part of
    ``W`` enters that energy (and hence the dynamics).
    """

    weight: Float[Array, "..."]

    def __init__(self, weight):
        self.weight = checks.finite("Dense", "weight", checks.real_array("Dense", "weight", weight))

    def energy(self, *gs: Array) -> Scalar:
        r"""$-g_a^\top W g_b$ for two layers, $-\tfrac12 g^\top W g$ for one (recurrent)."""
        if len(gs) == 1:
            (g,) = gs
            wg = jnp.tensordot(self.weight, g, axes=g.ndim)
            return -0.5 * jnp.vdot(g, wg)
        ga, gb = gs
        wg = jnp.tensordot(self.weight, gb, axes=gb.ndim)
        return -jnp.vdot(ga, wg)

    def check_shapes(self, name, shapes):
        """Raise unless ``weight`` has shape ``(*shape_a, *shape_b)`` (one or two layers)."""
        shapes = tuple(tuple(s) for s in shapes)
        if len(shapes) not in (1, 2):
            raise shape_error(name, "Dense", f"joins one or two layers, not {len(shapes)}", shapes)
        if len(shapes) == 1:
            shapes = shapes * 2
        want = shapes[0] + shapes[1]
        if tuple(self.weight.shape) != want:
            raise shape_error(
                name, "Dense", f"weight of shape {tuple(self.weight.shape)} must have shape {want}", shapes
            )


class Bias(Synapse):
    r"""A bias on one layer, $E = -b\cdot g$, ``b`` of the layer's shape."""

    bias: Float[Array, "..."]

    def __init__(self, bias):
        self.bias = checks.finite("Bias", "bias", checks.real_array("Bias", "bias", bias))

    def energy(self, g: Array) -> Scalar:
        r"""$-b\cdot g$."""
        return -jnp.vdot(self.bias, g)

    def check_shapes(self, name, shapes):
        """Raise unless the synapse joins one layer of the bias's shape."""
        shapes = tuple(tuple(s) for s in shapes)
        if len(shapes) != 1 or tuple(self.bias.shape) != shapes[0]:
            raise shape_error(
                name, "Bias", f"bias of shape {tuple(self.bias.shape)} must match its one layer", shapes
            )
