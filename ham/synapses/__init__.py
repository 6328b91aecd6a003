"""Synapses: energies of the activations of the layers they join."""

from ._base import Synapse
from ._dense import Bias, Dense

__all__ = ["Synapse", "Dense", "Bias"]
