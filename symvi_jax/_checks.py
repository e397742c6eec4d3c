"""Eager argument checks shared by the modules: positive ints and numbers, PRNG keys, finite data.

Every check runs before tracing and raises a ``ValueError`` whose message starts with the
argument's name (the tests match on it). Traced values are skipped where noted, so the checks are
safe inside a function the user jits.
"""

from __future__ import annotations

import hashlib
import warnings
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["all_finite", "data_digest", "deprecated_alias", "deprecated_name", "finite_data", "is_int", "key_to_data",
           "mean_field_state", "positive", "positive_float", "positive_int", "prior_scale", "rng_key"]


def is_int(value) -> bool:
    """A Python or NumPy integer, and not a bool (``True`` is an int to Python, never a count here)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def positive_int(value, name: str) -> int:
    """``value`` as an int if it is an integer >= 1 (bools rejected), else ValueError naming ``name``."""
    if not is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def positive_float(value, name: str) -> float:
    """A real scalar (a Python or NumPy number, or a 0-d array) in (0, inf), returned as a float."""
    dtype = np.asarray(value).dtype if not isinstance(value, jax.core.Tracer) else None
    if (
        isinstance(value, (bool, np.bool_)) or dtype is None or np.ndim(value) != 0
        or not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating))
    ):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def positive(value, name: str) -> None:
    """A positive finite scalar or tree of them (e.g. a per-leaf prior scale); traced leaves are skipped."""
    for leaf in jax.tree.leaves(value):
        if isinstance(leaf, jax.core.Tracer):
            continue
        try:
            arr = np.asarray(leaf, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a positive number (or a tree of them), got {value!r}") from None
        if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
            raise ValueError(f"{name} must be finite and > 0, got {value!r}")


def prior_scale(value, params, name: str = "prior_scale") -> None:
    """One positive scale, or a tree of them (scalars or arrays broadcastable to the leaf) shaped like ``params``."""
    positive(value, name)
    if jax.tree_util.treedef_is_leaf(jax.tree.structure(value)):
        return
    found, expected = jax.tree.structure(value), jax.tree.structure(params)
    if found != expected:
        raise ValueError(
            f"{name}: the tree's leaves {_leaf_names(value)} do not match the params' leaves {_leaf_names(params)}; "
            "give one number, or one scale (a number or an array) per params leaf"
        )
    for path, scale, leaf in zip(_leaf_names(value), jax.tree.leaves(value), jax.tree.leaves(params)):
        try:
            np.broadcast_shapes(np.shape(scale), np.shape(leaf))
        except ValueError:
            raise ValueError(f"{name}: leaf {path} has shape {np.shape(scale)}, which does not broadcast to the "
                             f"params leaf's shape {np.shape(leaf)}") from None


def _leaf_names(tree) -> list:
    return [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def mean_field_state(value, name: str = "q") -> None:
    """A ``MeanFieldState`` (anything with ``loc`` and ``raw_scale``); a ``vi.VIState`` is refused by name."""
    if hasattr(value, "loc") and hasattr(value, "raw_scale"):
        return
    if hasattr(value, "opt_state"):
        raise ValueError(f"{name} must be a meanfield.MeanFieldState, got a vi.VIState: pass state.q "
                         "(the variational parameters it holds), not the training state")
    raise ValueError(f"{name} must be a meanfield.MeanFieldState (meanfield.init, or vi's state.q), "
                     f"got {type(value).__name__}")


def rng_key(value, name: str = "rng_key") -> None:
    """A single key: a typed ``jax.random.key``, or a legacy ``uint32[2]`` one."""
    dtype = getattr(value, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key) and jnp.ndim(value) == 0:
        return
    if dtype == jnp.uint32 and jnp.shape(value) == (2,):
        return
    raise ValueError(
        f"{name} must be a single key from jax.random.key (or a legacy uint32[2] key), got "
        f"{type(value).__name__} with shape {jnp.shape(value) if dtype is not None else '?'} and dtype {dtype}"
    )


def key_to_data(value) -> tuple[np.ndarray, Optional[str]]:
    """The raw ``uint32`` data of a key and its implementation's name (None for a legacy key)."""
    value = jnp.asarray(value)
    if jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
        return np.asarray(jax.random.key_data(value)), str(jax.random.key_impl(value))
    if value.dtype != jnp.uint32:
        raise ValueError(f"rng_key must be a typed key (jax.random.key) or a legacy uint32 key, got dtype {value.dtype}")
    return np.asarray(value), None


def all_finite(tree) -> jax.Array:
    """True if every inexact leaf of ``tree`` is finite (a scalar bool; traceable)."""
    checks = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    return jnp.all(jnp.stack(checks)) if checks else jnp.asarray(True)


_all_finite = jax.jit(all_finite)


def finite_data(data) -> int:
    """Validate a data tree at the boundary (numeric, one leading example axis, finite); returns N."""
    leaves = jax.tree.leaves(data)
    if not leaves:
        raise ValueError("data must hold (inputs, targets) arrays")
    for x in leaves:
        dtype = np.result_type(x) if not hasattr(x, "dtype") else x.dtype
        if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key) or np.dtype(dtype).kind not in "biuf":
            raise ValueError(f"data arrays must be numeric (bool, int or float), got dtype {dtype}")
        if np.ndim(x) < 1:
            raise ValueError(f"data arrays need a leading example axis, got a scalar of shape {np.shape(x)}")
    sizes = [int(np.shape(x)[0]) for x in leaves]
    if any(n != sizes[0] for n in sizes):
        raise ValueError(f"data arrays disagree on the number of examples: {sizes}")
    if sizes[0] == 0:
        raise ValueError("data is empty")
    for x in leaves:
        if np.dtype(x.dtype if hasattr(x, "dtype") else np.result_type(x)).kind == "f" and not bool(_all_finite(x)):
            raise ValueError(f"data holds NaN or inf values (an array of shape {np.shape(x)}); clean it first")
    return sizes[0]


def data_digest(data) -> str:
    """sha256 over the shapes, dtypes and bytes of every array of a tree (to refuse resuming on other data)."""
    digest = hashlib.sha256()
    for x in jax.tree.leaves(data):
        x = np.ascontiguousarray(jax.device_get(x))
        digest.update(f"{x.shape}{x.dtype}".encode())
        digest.update(x.tobytes())
    return digest.hexdigest()


def deprecated_alias(value, alias_value, name: str, alias: str, hint: str = "", stacklevel: int = 2):
    """``value``, or ``alias_value`` with a ``DeprecationWarning`` when only the old keyword ``alias`` was given.

    Both given is a ValueError naming them. ``stacklevel`` counts frames from the caller (1: the caller, 2:
    its caller, the default), as for ``warnings.warn``.
    """
    if alias_value is None:
        return value
    if value is not None:
        raise ValueError(f"pass {name} only; {alias} is its deprecated alias, got both "
                         f"({name}={value!r}, {alias}={alias_value!r})")
    warnings.warn(f"{alias}= is deprecated: use {name}=" + (f" ({hint})" if hint else ""), DeprecationWarning,
                  stacklevel=stacklevel + 1)
    return alias_value


def deprecated_name(module: str, name: str, value, hint: str = "", stacklevel: int = 2):
    """``value`` with a ``DeprecationWarning`` that ``module.name`` is deprecated (for a module ``__getattr__``).

    ``stacklevel`` counts frames from the caller, as in :func:`deprecated_alias`.
    """
    warnings.warn(f"{module}.{name} is deprecated" + (f": {hint}" if hint else ""), DeprecationWarning,
                  stacklevel=stacklevel + 1)
    return value
