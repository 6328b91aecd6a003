r"""Associative memory models, each an instance of the core (layers, synapses, HAM,
``relax``) where it has continuous dynamics.

- [`classical`][]: Hopfield 1982/84, Hebbian weights, sign or tanh neurons.
- [`dense`][], [`exponential`][]: Dense Associative Memory (Krotov & Hopfield 2016;
  Demircigil et al. 2017).
- [`modern`][]: the modern continuous Hopfield network = attention (Ramsauer et al. 2020).
- [`universal`][]: Universal Hopfield Networks (Millidge et al. 2022).
- [`sdm`][]: Kanerva's Sparse Distributed Memory in UHN form.
- [`krotov_hopfield_2021`][]: the visible + hidden model and its limits A, B, C.
- [`convolutional`][]: an image memory with convolutional and pooling synapses
  (Krotov 2021, 2023).
- [`random_features`][]: DenseAM through random features, one fixed-size tensor for any
  number of patterns (Hoover et al. 2024); [`log_sum_exp`][] the exact energy it approximates.
- [`epanechnikov`][]: the log-sum-ReLU energy with emergent memories (Hoover et al. 2025).

[`sharded_retrieve`][ham.memories.sharded_retrieve] retrieves in one step with the
patterns of a modern or universal memory split over devices ([`shard_memory`][ham.memories.shard_memory]).

Every model has ``retrieve(queries)`` (batched over a leading axis, jit-compiled),
``energy(state)`` and ``network`` (the [`ham.HAM`][] it is, or ``None``).
"""

from ._binary import (
    ClassicalHopfield,
    DenseAssociativeMemory,
    ExponentialAssociativeMemory,
    classical,
    dense,
    exponential,
)
from ._convolutional import ConvolutionalMemory, convolutional
from ._krotov_hopfield import LargeAssociativeMemory, krotov_hopfield_2021
from ._modern import ModernHopfield, modern
from ._one_layer import EnergySynapse, LogSumExpMemory, OneLayerMemory, log_sum_exp
from ._random_features import FEATURE_KINDS, RandomFeatureMemory, random_features
from ._epanechnikov import EpanechnikovMemory, epanechnikov
from ._sdm import SparseDistributedMemory, sdm
from ._sharded import shard_memory, sharded_energy, sharded_retrieve
from ._universal import SEPARATIONS, SIMILARITIES, UniversalHopfield, universal

__all__ = [
    "classical",
    "dense",
    "exponential",
    "modern",
    "universal",
    "sdm",
    "krotov_hopfield_2021",
    "convolutional",
    "random_features",
    "epanechnikov",
    "log_sum_exp",
    "ClassicalHopfield",
    "DenseAssociativeMemory",
    "ExponentialAssociativeMemory",
    "ModernHopfield",
    "UniversalHopfield",
    "SparseDistributedMemory",
    "LargeAssociativeMemory",
    "ConvolutionalMemory",
    "RandomFeatureMemory",
    "EpanechnikovMemory",
    "LogSumExpMemory",
    "OneLayerMemory",
    "EnergySynapse",
    "FEATURE_KINDS",
    "SIMILARITIES",
    "SEPARATIONS",
    "shard_memory",
    "sharded_retrieve",
    "sharded_energy",
]
