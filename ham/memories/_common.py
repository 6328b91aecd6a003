"""Shared validation and batching helpers for the memory models."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array


def as_patterns(model: str, patterns, name: str = "patterns") -> Array:
    """``patterns`` as a floating array of shape ``(num_patterns, dim)``, or a ValueError."""
    p = jnp.asarray(patterns)
    if p.ndim != 2:
        raise ValueError(
            f"{model}: {name} must have shape (num_patterns, dim), got an array of rank {p.ndim} "
            f"with shape {tuple(p.shape)}."
        )
    if p.shape[0] < 1 or p.shape[1] < 1:
        raise ValueError(f"{model}: {name} must be non-empty, got shape {tuple(p.shape)}.")
    if not jnp.issubdtype(p.dtype, jnp.floating):
        p = p.astype(jnp.zeros(()).dtype)
    return p


def check_positive(model: str, name: str, value) -> None:
    """Raise when a concrete ``value`` is not > 0 (traced values pass through)."""
    if isinstance(value, jax.core.Tracer):
        return
    v = np.asarray(value)
    if v.ndim == 0 and not float(v) > 0:
        raise ValueError(f"{model}: {name} must be > 0, got {float(v)!r}.")


def is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_pm1(model: str, patterns, name: str = "patterns") -> None:
    """Raise unless every entry of a concrete ``patterns`` is +1 or -1."""
    if not is_concrete(patterns):
        return
    p = np.asarray(patterns)
    bad = ~((p == 1) | (p == -1))
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{model}: {name} must be ±1 (bipolar); entry {idx} is {p[idx]!r}. "
            "Pass binarize=True to map them to sign(x) (0 -> +1)."
        )


def binarize(x: Array) -> Array:
    """sign(x) with 0 mapped to +1, in x's floating dtype."""
    return jnp.where(x >= 0, 1.0, -1.0).astype(x.dtype)


def as_queries(model: str, queries, dim: int, dtype) -> tuple[Array, bool]:
    """Queries as ``(batch, dim)`` plus whether the input was a single ``(dim,)`` query."""
    q = queries if isinstance(queries, jax.Array) else jnp.asarray(queries)
    if q.ndim not in (1, 2) or q.shape[-1] != dim:
        raise ValueError(
            f"{model}: queries must have shape (dim,) or (batch, dim) with dim={dim} "
            f"(the patterns' dimension), got shape {tuple(q.shape)}."
        )
    # One dtype (the patterns'), never weakly typed: a jitted retrieval compiles once.
    if q.dtype != dtype or q.weak_type:
        q = q.astype(dtype)
    single = q.ndim == 1
    return (q[None] if single else q), single


def per_state(model: str, fn, state, dim: int):
    """Apply ``fn`` (one state ``(dim,)`` -> scalar) to a state or a batch of states."""
    s = jnp.asarray(state)
    if s.ndim < 1 or s.shape[-1] != dim:
        raise ValueError(
            f"{model}: state must have shape (..., {dim}), got shape {tuple(s.shape)}."
        )
    if not jnp.issubdtype(s.dtype, jnp.floating):
        s = s.astype(jnp.zeros(()).dtype)
    f = fn
    for _ in range(s.ndim - 1):
        f = jax.vmap(f)
    return f(s)


class fast_method:
    """A method decorator binding with ``functools.partial`` instead of Equinox's bound
    method module (whose construction costs tens of microseconds per attribute access,
    noticeable next to a millisecond-scale jitted retrieval)."""

    def __init__(self, fn):
        self.fn = fn
        functools.update_wrapper(self, fn)

    def __get__(self, obj, cls=None):
        return self.fn if obj is None else functools.partial(self.fn, obj)
