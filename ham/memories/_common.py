"""Shared validation and batching helpers for the memory models."""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .. import _checks as checks


def as_patterns(model: str, patterns, name: str = "patterns") -> Array:
    """``patterns`` as a floating array of shape ``(num_patterns, dim)`` with finite
    entries, or a ValueError / TypeError naming ``model`` and ``name``."""
    p = checks.real_array(model, name, patterns)
    if p.ndim != 2:
        raise ValueError(
            f"{model}: {name} must have shape (num_patterns, dim), got an array of rank {p.ndim} "
            f"with shape {tuple(p.shape)}."
        )
    if p.shape[0] < 1 or p.shape[1] < 1:
        raise ValueError(f"{model}: {name} must be non-empty, got shape {tuple(p.shape)}.")
    return checks.finite(model, name, p)


def as_active(model: str, active):
    """The active-pattern mask as a boolean array (``None`` stays ``None``: every pattern
    active), or a TypeError; its shape and values are checked by ``check_active`` in
    the memory's ``__check_init__``."""
    if active is None:
        return None
    a = active if isinstance(active, jax.Array) else jnp.asarray(np.asarray(active))
    if a.dtype != jnp.bool_:
        raise TypeError(f"{model}: active must be a boolean mask over the stored patterns, got dtype {a.dtype}.")
    return a


def active_rows(caller: str, patterns, active):
    """The active rows of ``patterns`` (all of them when ``active`` is ``None``); the mask
    must be concrete (boolean indexing has a data-dependent shape)."""
    if active is None:
        return patterns
    if not is_concrete(active):
        raise ValueError(f"{caller}: the active mask must be concrete (not traced) here.")
    return patterns[np.asarray(active)]


def check_active(model: str, active, num_patterns: int) -> None:
    """``active``: ``None`` or a boolean ``(num_patterns,)`` mask with at least one
    ``True`` (checked when its values are known)."""
    if active is None:
        return
    if getattr(active, "dtype", None) != jnp.bool_ or tuple(active.shape) != (num_patterns,):
        raise ValueError(
            f"{model}: active must be a boolean mask of shape ({num_patterns},) (one entry per stored "
            f"pattern), got {getattr(active, 'dtype', type(active).__name__)} of shape "
            f"{tuple(getattr(active, 'shape', ()))}."
        )
    if is_concrete(active) and getattr(active, "is_fully_addressable", True) and not bool(np.any(np.asarray(active))):
        raise ValueError(f"{model}: active marks no stored pattern as active; at least one must be.")


def check_stored_patterns(model: str, patterns, active) -> None:
    """A memory's stored ``patterns`` have shape ``(num_patterns, dim)`` and its ``active``
    mask (``None`` or boolean) one entry per pattern; a ValueError naming ``model``."""
    if patterns.ndim != 2:
        raise ValueError(f"{model}: patterns must have shape (num_patterns, dim), got {tuple(patterns.shape)}.")
    check_active(model, active, patterns.shape[0])


class StoredPatterns(eqx.Module):
    """A memory storing the rows of ``patterns``: its ``dim`` and ``num_patterns``."""

    patterns: eqx.AbstractVar[Float[Array, "num_patterns dim"]]

    @property
    def dim(self) -> int:
        """The dimension of a pattern (and of a query)."""
        return self.patterns.shape[1]

    @property
    def num_patterns(self) -> int:
        """The number of stored patterns."""
        return self.patterns.shape[0]


def check_positive(model: str, name: str, value, **kw):
    """A parameter that must be a finite scalar > 0 (see ``ham._checks.param``): raises
    eagerly for concrete values (numbers and arrays), wraps traced ones with
    ``eqx.error_if``. Returns the (possibly wrapped) value."""
    return checks.param(model, name, value, **kw)


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


def as_queries(model: str, queries, dim: int, dtype, name: str = "queries", check: bool = True) -> tuple[Array, bool]:
    """Queries as ``(batch, dim)`` plus whether the input was a single ``(dim,)`` query;
    non-finite entries raise (a runtime data check; ``check=False`` where the caller's
    compiled program checks them)."""
    q = queries if isinstance(queries, jax.Array) else checks.real_array(model, name, queries, dtype)
    if q.ndim not in (1, 2) or q.shape[-1] != dim:
        raise ValueError(
            f"{model}: {name} must have shape (dim,) or (batch, dim) with dim={dim} "
            f"(the patterns' dimension), got shape {tuple(q.shape)}."
        )
    if q.ndim == 2 and q.shape[0] < 1:
        raise ValueError(f"{model}: {name} must hold at least one query, got shape {tuple(q.shape)}.")
    if not (jnp.issubdtype(q.dtype, jnp.floating) or jnp.issubdtype(q.dtype, jnp.integer) or q.dtype == jnp.bool_):
        raise TypeError(f"{model}: {name} must be a real array, got dtype {q.dtype}.")
    if check:
        q = checks.finite(model, name, q, runtime=True)
    # One dtype (the patterns'), never weakly typed: a jitted retrieval compiles once.
    if q.dtype != dtype or q.weak_type:
        q = q.astype(dtype)
    single = q.ndim == 1
    return (q[None] if single else q), single


def per_state(model: str, fn, state, dim: int, hint: str = "the energy overflows for this state"):
    """Apply ``fn`` (one state ``(dim,)`` -> scalar) to a state or a batch of states; the
    state must be finite and the result must not overflow."""
    s = checks.real_array(model, "state", state)
    if s.ndim < 1 or s.shape[-1] != dim:
        raise ValueError(
            f"{model}: state must have shape (..., {dim}), got shape {tuple(s.shape)}."
        )
    s = checks.finite(model, "state", s, runtime=True)
    return checks.finite_result(f"{model}.energy", over_states(fn, s), hint)


def over_states(fn, s, grad: bool = False):
    """``fn`` (or its gradient, ``grad=True``) applied to one state ``(dim,)`` or vmapped
    over the leading axes of ``s``. ``fn`` given as an Equinox module (a module's bound method,
    or ``eqx.Partial``) runs as one compiled program per ``fn`` structure and state shape: op
    by op, every operation compiled on its own for each new shape (the energy of one small
    memory: ~20 compiles, 0.3-1 s). Any other callable runs op by op (a closure would be a
    new cache entry, and a compile, on every call)."""
    return (_over_states_jit if isinstance(fn, eqx.Module) else _over_states)(fn, s, grad)


def _over_states(fn, s, grad):
    f = jax.grad(fn) if grad else fn
    for _ in range(s.ndim - 1):
        f = jax.vmap(f)
    return f(s)


_over_states_jit = eqx.filter_jit(_over_states)


class fast_method:
    """A method decorator binding with ``functools.partial`` instead of Equinox's bound
    method module (whose construction costs tens of microseconds per attribute access,
    noticeable next to a millisecond-scale jitted retrieval)."""

    def __init__(self, fn):
        self.fn = fn
        functools.update_wrapper(self, fn)

    def __get__(self, obj, cls=None):
        return self.fn if obj is None else functools.partial(self.fn, obj)
