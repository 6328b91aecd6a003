"""The synapse interface: an energy of the activations of the layers it joins."""

from __future__ import annotations

import abc

import equinox as eqx
from jaxtyping import Array, Scalar


class Synapse(eqx.Module):
    r"""A synapse $S$ joins one or more layers and contributes $E_S(g_A, g_B, \dots)$,
    a differentiable scalar of their (unbatched) activations, to the total energy.

    Subclasses implement ``energy(*gs)`` and ``check_shapes(name, shapes)``; the
    latter is called by [`ham.HAM`][] at construction with the shapes of the joined
    layers, in the order given in ``connections``, and must raise ``ValueError``
    naming the synapse and the shapes when they do not fit.
    """

    @abc.abstractmethod
    def energy(self, *gs: Array) -> Scalar:
        r"""$E_S(g_A, g_B, \dots)$ of the unbatched activations of the joined layers, in
        the order of ``connections``."""

    def check_shapes(self, name: str, shapes: tuple[tuple[int, ...], ...]) -> None:
        """Validate the joined layers' shapes; default accepts anything."""
        del name, shapes


def shape_error(name: str, kind: str, expected: str, shapes) -> ValueError:
    pretty = ", ".join(str(tuple(s)) for s in shapes)
    return ValueError(f"synapse {name!r} ({kind}): {expected}; the layers it joins have shapes {pretty}.")
