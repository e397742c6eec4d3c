"""A value computed once into memory: a conditional that XLA keeps, and that stays one under ``vmap``.

XLA:CPU fuses cheap elementwise producers into every consumer and recomputes them there (a
transposed copy, or a per-lane fusion reading a value shared by the lanes). ``optimization_barrier``
does not stop it (XLA:CPU removes barriers before fusing), but a conditional is a boundary XLA keeps.
:func:`kept` passes a tree through ``lax.cond`` on a predicate that always holds and that the
compiler cannot fold (the caller forms it from run-time data); the other branch, never taken, gives
NaN. The values are the same bits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from symvi_jax.types import Array, ArrayTree

__all__ = ["kept"]


def _nan_like(tree: ArrayTree) -> ArrayTree:
    return jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), tree)


@jax.custom_batching.custom_vmap
def kept(tree: ArrayTree, ok: Array) -> ArrayTree:
    """``tree`` if ``ok`` else NaNs, through a ``lax.cond`` that stays a conditional under ``vmap``.

    Batched, the predicate is reduced to ``all(ok)``, at every level of nested ``vmap``: jax's own
    batching rule would turn the conditional into a select, which XLA fuses through.
    """
    return jax.lax.cond(ok, lambda t: t, _nan_like, tree)


@kept.def_vmap
def _kept_batched(axis_size, in_batched, tree, ok):
    tree_batched, ok_batched = in_batched
    return kept(tree, jnp.all(ok) if ok_batched else ok), tree_batched
