r"""Validation shared by every public entry point: parameters and data.

Every check names its owner (``"modern"``, ``"Layer"``, …) and the argument, and
shows the offending value. A value that is *concrete* (a Python number, a NumPy
array, a JAX array outside ``jit``) is checked eagerly and raises ``ValueError`` or
``TypeError`` at once; a *traced* value (inside ``jax.jit``, ``vmap``, ``grad``) cannot be
inspected, so it is wrapped with ``eqx.error_if`` and the error is raised when the
compiled program runs (``equinox.EquinoxRuntimeError`` under ``eqx.filter_jit``,
``jax.errors.JaxRuntimeError`` under ``jax.jit``; both are ``RuntimeError`` and carry
the same message). Shapes and dtypes are static, so they are always checked eagerly.

Data checks (stored patterns, queries and states must be finite; results must not
overflow) run on every call. Setting the environment variable ``HAM_DATA_CHECKS=0``
before ``ham`` is imported turns off the *runtime* part of them (the ``eqx.error_if``
checks inside compiled retrievals and the eager finiteness scans of queries); the
checks of parameters and of the data given to constructors stay on.

Per-call data on the hot path are checked on the device: ``modern(...).retrieve`` given a
device array checks the queries inside its compiled kernel together with the result
(one conditional, no host synchronisation; a ``RuntimeError`` when the program runs),
while host data (NumPy arrays, lists) are checked eagerly, naming the first bad entry.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

#: Whether runtime data checks run (``HAM_DATA_CHECKS=0`` turns them off).
DATA_CHECKS: bool = os.environ.get("HAM_DATA_CHECKS", "1").strip().lower() not in ("0", "false", "off", "no")


def is_traced(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def _fmt(v) -> str:
    """A short text for a scalar value (``nan``, ``-inf``, ``0.5``)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return repr(v)
    if float(f).is_integer() and abs(f) < 1e16 and not isinstance(v, (float, np.floating)):
        return str(int(f))
    return repr(f)


def _as_numeric(owner: str, name: str, value):
    """``value`` as an array-like with a real numeric dtype (bool excluded), or a TypeError."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{owner}: {name} must be a number, got the bool {value!r}.")
    if is_traced(value) or isinstance(value, jax.Array):
        dtype = value.dtype
    else:
        try:
            arr = np.asarray(value)
        except Exception:  # noqa: BLE001 — anything that is not array-like
            raise TypeError(f"{owner}: {name} must be a number or an array, got {type(value).__name__}.") from None
        dtype = arr.dtype
    if not (jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)):
        raise TypeError(
            f"{owner}: {name} must be real (integer or floating), got dtype {dtype}"
            + (f" ({value!r})" if np.ndim(value) == 0 and not is_traced(value) else "") + "."
        )
    return value


def _first_nonfinite(values: np.ndarray | None) -> str:
    return _first_bad(None if values is None else ~np.isfinite(values), values)


def _first_bad(bad: np.ndarray, values: np.ndarray | None) -> str:
    if values is None:  # held in part by other processes
        return "some entry on another process's devices"
    idx = tuple(int(i) for i in np.argwhere(bad)[0])
    if values.ndim == 0:
        return _fmt(values[()])
    return f"entry {idx} = {_fmt(values[idx])}"


def param(
    owner: str,
    name: str,
    value,
    *,
    low: float = 0.0,
    inclusive: bool = False,
    allow_inf: bool = False,
    shapes: tuple[tuple[int, ...], ...] | None = ((),),
    shape_text: str | None = None,
):
    r"""Validate a real parameter: finite (``+inf`` allowed when ``allow_inf``), above ``low``
    (or equal when ``inclusive``), of one of ``shapes`` (``None``: any shape). Returns the
    value (wrapped with ``eqx.error_if`` when traced; unchanged otherwise)."""
    if type(value) in (int, float) and (shapes is None or () in shapes):  # the common case, cheaply
        above = value >= low if inclusive else value > low
        if above and (math.isfinite(value) or (allow_inf and value == math.inf)):
            return value
    value = _as_numeric(owner, name, value)
    shape = tuple(np.shape(value)) if not is_traced(value) else tuple(value.shape)
    if shapes is not None and shape not in shapes:
        want = shape_text or " or ".join("a scalar" if s == () else f"shape {s}" for s in shapes)
        raise ValueError(f"{owner}: {name} must be {want}, got an array of shape {shape}.")
    cmp = ">=" if inclusive else ">"
    desc = f"{cmp} {low:g}" + (" (or inf)" if allow_inf else " and finite")
    if is_traced(value):
        v = value
        ok = (v >= low) if inclusive else (v > low)
        ok = ok & (jnp.isfinite(v) | (allow_inf & (v == jnp.inf)))
        return error_if(value, ~jnp.all(ok), f"{owner}: {name} must be {desc} (checked at run time).")
    v = np.asarray(value, dtype=np.float64) if not isinstance(value, jax.Array) else np.asarray(value).astype(np.float64)
    ok = (v >= low) if inclusive else (v > low)
    ok &= np.isfinite(v) | (allow_inf & (v == np.inf))
    if not np.all(ok):
        raise ValueError(f"{owner}: {name} must be {desc}, got {_first_bad(~ok, v)}.")
    return value


def positive_converter(owner: str, name: str, **kw) -> Callable:
    """An ``eqx.field`` converter running [`param`][] (a scalar > 0 and finite by default)."""
    return lambda value: param(owner, name, value, **kw)


def integer(owner: str, name: str, value, minimum: int = 1) -> int:
    """A Python int >= ``minimum`` from an int (or integer-valued real); bools refused."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name} must be an integer >= {minimum}, got {value!r} ({type(value).__name__}).")
    if not float(value).is_integer() or value < minimum:
        raise ValueError(f"{owner}: {name} must be an integer >= {minimum}, got {_fmt(value)}.")
    return int(value)


def prng_key(owner: str, name: str, key):
    """A PRNG key: a typed key scalar (``jax.random.key``) or a raw ``uint32[2]`` key."""
    if key is None:
        raise TypeError(f"{owner}: {name} must be a PRNG key (jax.random.key(seed)), got None.")
    shape, dtype = getattr(key, "shape", None), getattr(key, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if shape != ():
            raise ValueError(f"{owner}: {name} must be a single PRNG key, got a key array of shape {shape}.")
        return key
    if shape != (2,) or dtype != jnp.uint32:
        raise TypeError(
            f"{owner}: {name} must be a PRNG key (jax.random.key(seed) or jax.random.PRNGKey(seed)), "
            f"got {type(key).__name__}" + (f" of shape {shape} and dtype {dtype}" if shape is not None else "") + "."
        )
    return key


def real_array(owner: str, name: str, x, dtype=None):
    """``x`` as a JAX array with a real dtype (integers and bools become ``dtype``, default
    the float default), or a TypeError naming the argument."""
    if is_traced(x) or isinstance(x, jax.Array):
        arr = x
    else:
        try:
            arr = jnp.asarray(x)
        except Exception:  # noqa: BLE001
            raise TypeError(f"{owner}: {name} must be a numeric array, got {type(x).__name__}.") from None
    if jnp.issubdtype(arr.dtype, jnp.complexfloating) or not (
        jnp.issubdtype(arr.dtype, jnp.floating) or jnp.issubdtype(arr.dtype, jnp.integer)
        or arr.dtype == jnp.bool_
    ):
        raise TypeError(f"{owner}: {name} must be a real array, got dtype {arr.dtype}.")
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        arr = arr.astype(dtype or jnp.zeros(()).dtype)
    return arr


#: A one-device CPU array with more entries than this is checked in blocks by a compiled
#: loop (no full-size temporary); a smaller one on the host (no compilation per shape).
_DEVICE_CHECK_SIZE = 1 << 20
_CHECK_BLOCK = 1 << 16


@jax.jit
def _all_finite_blocked(x):
    """``all(isfinite(x))`` over blocks of ``_CHECK_BLOCK`` entries: XLA:CPU reduces with a
    library kernel that does not fuse ``isfinite`` into it, so the one-shot reduction
    materialises a boolean of every entry (0.25x the bytes of float32 data, 0.5x bfloat16)."""
    flat = x.reshape(-1)
    n = min(flat.size, _CHECK_BLOCK)

    def body(i, ok):  # the last block overlaps the one before (harmless for "all")
        part, start = jax.lax.optimization_barrier((flat, jnp.minimum(i * n, flat.size - n)))
        return ok & jnp.all(jnp.isfinite(jax.lax.dynamic_slice_in_dim(part, start, n)))

    return jax.lax.fori_loop(0, -(-flat.size // n), body, jnp.bool_(True))


def _host_all_finite(x) -> tuple[bool, np.ndarray | None]:
    if isinstance(x, jax.Array):
        try:
            on_cpu = all(d.platform == "cpu" for d in x.devices())
        except Exception:  # noqa: BLE001
            on_cpu = False
        sharded = len(x.sharding.device_set) > 1 or not x.is_fully_addressable
        if on_cpu and x.is_fully_addressable and x.size > _DEVICE_CHECK_SIZE:  # each shard in blocks
            if all(bool(_all_finite_blocked(s.data)) for s in x.addressable_shards):
                return True, None
        elif not on_cpu or sharded:  # reduce on the device(s); copy only when something is wrong
            if bool(jnp.all(jnp.isfinite(x))):  # a sharded array is never gathered onto the host
                return True, None
            if not x.is_fully_addressable:  # other processes hold parts of it
                return False, None
    a = np.asarray(x)
    fin = np.isfinite(a)
    return bool(fin.all()), (a if not fin.all() else None)


def error_if(x, bad, msg: str):
    r"""``eqx.error_if(x, bad, msg)`` that leaves a sharded ``x`` where it is.

    ``eqx.error_if`` routes its value through a conditional whose raising branch runs
    a host callback on one device, so an ``x`` sharded over a mesh would be gathered
    whole onto that device. Here the check guards a scalar zero, which is then added
    to every floating leaf of ``x`` (keeping it in the program): only the boolean
    ``bad`` crosses devices. (Where XLA cannot fuse the addition into its consumer, e.g.
    a matrix product, it costs one copy of ``x``; ``eqx.error_if`` costs two there.)"""
    leaves = [leaf for leaf in jax.tree_util.tree_leaves(x) if jnp.issubdtype(leaf.dtype, jnp.inexact)]
    if not leaves:
        return eqx.error_if(x, bad, msg)
    token = eqx.error_if(jnp.zeros((), jnp.float32), jnp.any(bad), msg)
    return jax.tree_util.tree_map(
        lambda leaf: leaf + token.astype(leaf.dtype) if jnp.issubdtype(leaf.dtype, jnp.inexact) else leaf, x
    )


def finite(owner: str, name: str, x, *, runtime: bool = False):
    r"""Raise (eagerly, or with ``eqx.error_if`` when traced) unless every entry of the
    floating array ``x`` is finite. ``runtime=True`` marks a per-call check that
    ``HAM_DATA_CHECKS=0`` turns off. Returns ``x`` (wrapped when traced)."""
    if runtime and not DATA_CHECKS:
        return x
    dtype = getattr(x, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.inexact):
        return x
    msg = f"{owner}: {name} must be finite (no NaN or inf)"
    if is_traced(x):
        return error_if(x, ~jnp.all(jnp.isfinite(x)), msg + " (checked at run time).")
    ok, a = _host_all_finite(x)
    if not ok:
        raise ValueError(f"{msg}; {_first_nonfinite(a)}.")
    return x


def finite_tree(owner: str, name: str, tree: dict, *, runtime: bool = False) -> dict:
    """[`finite`][] on every entry of a dict of arrays (``name['key']``)."""
    return {k: finite(owner, f"{name}[{k!r}]", v, runtime=runtime) for k, v in tree.items()}


def finite_input_and_result(owner: str, name: str, x, out, hint: str):
    r"""Inside a compiled program: the input ``x`` (called ``name``) must be finite and the
    result ``out`` must not overflow; one conditional checks both, so a retrieval on a
    device array needs no host synchronisation (the error is raised when the program
    runs, naming ``name`` if the input was not finite, else the overflow and ``hint``).
    A runtime data check. Returns ``out`` (wrapped)."""
    if not DATA_CHECKS:
        return out
    bad_x = ~jnp.all(jnp.isfinite(x))
    bad = bad_x | ~jnp.all(jnp.isfinite(out))
    msgs = [f"{owner.split('.')[0]}: {name} must be finite (no NaN or inf) (checked at run time).",
            f"{owner}: the result is not finite (NaN or inf) although the inputs are: {hint}."]
    token = eqx.branched_error_if(jnp.zeros((), jnp.float32), bad, jnp.where(bad_x, 0, 1), msgs)
    return out + token.astype(out.dtype)


def finite_result(owner: str, x, hint: str):
    r"""The result of a computation on finite inputs must be finite; otherwise something
    overflowed: raise naming what to change (``hint``). A runtime data check."""
    if not DATA_CHECKS:
        return x
    msg = f"{owner}: the result is not finite (NaN or inf) although the inputs are: {hint}"
    leaves = [leaf for leaf in jax.tree_util.tree_leaves(x) if jnp.issubdtype(leaf.dtype, jnp.inexact)]
    if not leaves:
        return x
    if any(is_traced(leaf) for leaf in leaves):
        bad = jnp.logical_not(jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves])))
        return error_if(x, bad, msg + ".")
    for leaf in leaves:
        ok, a = _host_all_finite(leaf)
        if not ok:
            raise ValueError(f"{msg} ({_first_nonfinite(a)}).")
    return x
