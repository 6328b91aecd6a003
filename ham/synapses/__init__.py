"""Synapses: energies of the activations of the layers they join."""

from ._base import Synapse
from ._dense import Bias, Dense
from ._conv import Conv, Pool
from ._attention import Attention
from ._hopfield import Hopfield

__all__ = ["Synapse", "Dense", "Bias", "Conv", "Pool", "Attention", "Hopfield"]
