"""ham — Hopfield networks, Dense Associative Memories and energy-based networks in JAX.

Layers are defined by convex Lagrangians; activations and energies are derived by
autodiff; retrieval is the continuous dynamics integrated by diffrax to a fixed point.
"""

from . import lagrangians, lyapunov, synapses
from . import memories
from . import energy_transformer
from .integrator import ExponentialEuler
from .layer import Layer
from .network import HAM
from .solve import Solution, default_tolerances, descend, relax
from . import training
from . import landscape

__all__ = [
    "lagrangians",
    "lyapunov",
    "synapses",
    "memories",
    "training",
    "landscape",
    "Layer",
    "HAM",
    "Solution",
    "ExponentialEuler",
    "relax",
    "descend",
    "default_tolerances",
]
__version__ = "0.1.0"
