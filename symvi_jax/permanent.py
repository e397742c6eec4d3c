"""Exact orbit sums for one permuted layer: unit factors, the matrix A and its log-permanent.

Permuting only hidden layer l moves whole *units*: unit j of layer l is the vector

    u_j = (W_l[:, j], b_l[j], W_{l+1}[j, :])            (incoming column, bias, outgoing row),

and a mean-field q factorises over these blocks plus everything that does not move. With the
gather convention of ``symmetry.PermutationGroup.act`` (unit i of sigma.w is unit sigma[i] of w)

    q(sigma.w) = q_static(w) * prod_i f_i(u_{sigma[i]}(w)) = q_static(w) * prod_i exp(A[i, sigma[i]]),

where f_i is the variational factor of unit *slot* i and A[i, j] = log f_i(u_j) is the density of
slot i's factor at unit j (Gelberg et al., 2024, last section; PAPER.md). Summing over the
subgroup S_{d_l} that permutes layer l only,

    sum_{sigma in S_d} q(sigma.w) = q_static(w) * perm(exp A),

so for a network with one hidden layer (where S_{d_1} is all of G)

    log q^G(w) = log q_static(w) + log perm(exp A) - log d!.

The permanent is computed exactly in log space by a dynamic programme over subsets (rows in order,
f[S] = logsumexp_{j in S} f[S - {j}] + A[|S| - 1, j]), in O(2^d d) time and memory, vectorised one
subset size at a time; this reaches widths of about 20 in a second or so per weight sample on a CPU,
far past enumerating d! elements (``symmetry.MAX_ELEMENTS`` stops at 8).

A is built with one matrix product: for diagonal Gaussian factors with means m_i, scales s_i,

    A[i, j] = sum_c [ -x_jc^2 / (2 s_ic^2) + x_jc m_ic / s_ic^2 ] + const_i
            = ([x^2, x] @ [-1 / (2 s^2), m / s^2]^T)[j, i] + const_i.

Precision: the expansion cancels large terms when |x - c| >> s, with c the mean slot that both
sides are centred on first; the error of an off-diagonal entry is about
eps * sum_c ((x_jc - c_c) / s_ic)^2 (eps = 6e-8 in float32, 1e-16 in float64), small next to the
entry itself unless units j and i nearly coincide far from the mean slot. The diagonal (the
identity's term) is always formed directly. ``method="pairwise"`` forms the differences
x_jc - m_ic directly instead, exact to rounding at O(d^2 C) memory; the exact q^G below uses it
(the permanent only reaches widths where that is small). Use float64 for ground truth.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from symvi_jax import _checks
from symvi_jax import meanfield, units
from symvi_jax.meanfield import MeanFieldState
from symvi_jax.symmetry import PermutationGroup, WeightSymmetry, leaf_paths
from symvi_jax.types import Array, ArrayTree

__all__ = [
    "MAX_WIDTH",
    "unit_features",
    "unit_log_density_matrix",
    "static_log_prob",
    "log_permanent",
    "symmetrized_log_prob",
]

#: ``log_permanent`` refuses matrices wider than this: the DP holds 2^d values and gathers
#: C(d, d/2) * d of them at once (d = 22: 4M values, 15M gathers; about 10 s per matrix on a CPU).
MAX_WIDTH = 22

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _check_layer(group: WeightSymmetry, layer: int) -> None:
    if not _checks.is_int(layer) or not 0 <= layer < len(group.factors):
        raise ValueError(f"layer must be a factor index in [0, {len(group.factors)}), got {layer!r}")


def _dense_members(group: WeightSymmetry, layer: int, incoming: bool, outgoing: bool):
    """The members of factor ``layer`` selected by the Dense-chain flags (None: all of them)."""
    if incoming and outgoing:
        return None
    if not isinstance(group, PermutationGroup):
        raise ValueError("incoming=/outgoing= select the blocks of a Dense chain (PermutationGroup); "
                         "for a general WeightSymmetry pass members= to units.unit_features")
    lower, upper = group.layer_names[layer], group.layer_names[layer + 1]
    skip = set()
    if not incoming:
        skip.add(f"{lower}/kernel")
    if not outgoing:
        skip.add(f"{upper}/kernel")
    return tuple(m for m in group.factors[layer].members if m.path not in skip)


def unit_features(
    tree: ArrayTree,
    group: WeightSymmetry,
    layer: int = 0,
    *,
    incoming: bool = True,
    outgoing: bool = True,
    incoming_perm: Optional[Array] = None,
) -> Array:
    """The units of factor ``layer`` as rows: ``(d, C)`` with C the per-unit size (``units.unit_features``).

    For a Dense chain row j is the concatenation of the leaves present in ``tree`` among
    ``W_l[:, j]`` (incoming column, if ``incoming``), ``b_l[j]`` and ``W_{l+1}[j, :]`` (outgoing
    row, if ``outgoing``); ``incoming_perm`` gathers the rows of W_l first (the permutation already
    applied to the layer below).
    """
    _check_layer(group, layer)
    members = _dense_members(group, layer, incoming, outgoing)
    if members is not None:
        present = leaf_paths(units.unwrap(tree))
        members = tuple(m for m in members if m.path in present)
        if not members:
            raise ValueError(f"hidden layer {layer} has no leaves in the tree to build unit features from")
    others = {layer - 1: incoming_perm} if incoming_perm is not None else None
    return units.unit_features(tree, group, layer, members, others=others)


def _density_matrix(x: Array, loc: Array, sigma: Array, method: str = "matmul") -> Array:
    """Deprecated alias of ``units.log_density_matrix``."""
    return units.log_density_matrix(x, loc, sigma, method)


def unit_log_density_matrix(
    q: MeanFieldState,
    params: ArrayTree,
    group: WeightSymmetry,
    layer: int = 0,
    *,
    incoming: bool = True,
    outgoing: bool = True,
    incoming_perm: Optional[Array] = None,
    method: str = "matmul",
) -> Array:
    """A[i, j] = log f_i(u_j): slot i's factor of q evaluated at unit j of ``params``.

    The flags select which blocks of each unit enter (see :func:`unit_features`); the slot
    factors always use q's own, unpermuted leaves. ``method``: ``"matmul"`` (one matrix
    product, O(d C + d^2) memory) or ``"pairwise"`` (direct differences, O(d^2 C) memory, no
    cancellation; see ``units``).
    """
    x = unit_features(params, group, layer, incoming=incoming, outgoing=outgoing, incoming_perm=incoming_perm)
    loc = unit_features(q.loc, group, layer, incoming=incoming, outgoing=outgoing)
    sigma = unit_features(meanfield.scale(q), group, layer, incoming=incoming, outgoing=outgoing)
    return units.log_density_matrix(x, loc, sigma, method)


def static_log_prob(q: MeanFieldState, params: ArrayTree, group: WeightSymmetry, layer: Optional[int] = 0) -> Array:
    """log q of every weight that permuting factor ``layer`` (None: every factor) leaves in place.

    ``static_log_prob + trace(A) == meanfield.log_prob(q, params)`` for A from
    :func:`unit_log_density_matrix` with all blocks (one factor), or with the trace summed over
    every factor for ``layer=None`` when no leaf is moved by two factors.
    """
    if layer is not None:
        _check_layer(group, layer)
    indices = range(len(group.factors)) if layer is None else (layer,)
    moving = {m.path for i in indices for m in group.factors[i].members}
    inner_w = leaf_paths(units.unwrap(params))
    inner_m = leaf_paths(units.unwrap(q.loc))
    inner_s = leaf_paths(units.unwrap(meanfield.scale(q)))
    total = jnp.zeros((), dtype=jnp.result_type(*inner_w.values()))
    for path, x in inner_w.items():
        if path in moving:
            continue
        m, s = inner_m[path], inner_s[path]
        total = total + jnp.sum(-0.5 * jnp.square((x - m) / s) - jnp.log(s) - _HALF_LOG_2PI)
    return total


@functools.lru_cache(maxsize=None)
def _subsets_by_size(d: int) -> tuple:
    """For k = 1..d, the subsets of {0..d-1} of size k as bit masks, ascending (int32)."""
    masks = np.arange(1 << d, dtype=np.int64)
    sizes = np.zeros_like(masks)
    for bit in range(d):
        sizes += (masks >> bit) & 1
    return tuple(masks[sizes == k].astype(np.int32) for k in range(1, d + 1))


def log_permanent(log_a: Array) -> Array:
    """log perm(exp(log_a)) = log sum_sigma prod_i exp(log_a[i, sigma[i]]), exactly.

    Dynamic programme over subsets S of columns, taking rows in order:

        f[{}] = 0,   f[S] = logsumexp_{j in S} ( f[S - {j}] + log_a[|S| - 1, j] ),   log perm = f[all].

    One vectorised step per subset size (gather the predecessors of every subset of that size,
    logsumexp over the removed column), O(2^d d) work, values in log space throughout; jit-,
    vmap- and grad-able.

    Raises:
      ValueError: if ``log_a`` is not square or wider than ``MAX_WIDTH``.
    """
    shape = jnp.shape(log_a)
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"log_a must be a square matrix, got shape {shape}")
    d = shape[0]
    if d > MAX_WIDTH:
        raise ValueError(f"log_permanent handles widths up to MAX_WIDTH = {MAX_WIDTH}, got {d}")
    if d == 0:
        return jnp.zeros((), dtype=log_a.dtype)
    bits = jnp.left_shift(jnp.int32(1), jnp.arange(d, dtype=jnp.int32))  # (d,)
    table = jnp.full((1 << d,), -jnp.inf, dtype=log_a.dtype).at[0].set(0.0)
    for size, masks in enumerate(_subsets_by_size(d), start=1):
        masks = jnp.asarray(masks)
        member = (masks[:, None] & bits[None, :]) != 0  # (C(d, size), d)
        previous = table[masks[:, None] ^ bits[None, :]] + log_a[size - 1][None, :]
        previous = jnp.where(member, previous, -jnp.inf)
        table = table.at[masks].set(jax.nn.logsumexp(previous, axis=1))
    return table[(1 << d) - 1]


def symmetrized_log_prob(q: MeanFieldState, params: ArrayTree, group: WeightSymmetry) -> Array:
    """Exact log q^G(w) when no leaf is moved by two factors, via one permanent per factor.

    Then q(sigma.w) = q_static(w) prod_f prod_i exp(B_f[i, sigma_f(i)]) and

        log q^G(w) = log q_static(w) + sum_f [log perm(exp B_f) - log|G_f|],

    with B_f = A_f for a permutation factor and B_f = logaddexp(A_f, A^-_f) for a factor with
    sign flips (each unit may enter either way; |G_f| = 2^d d!). For a Dense chain this is the
    network with one hidden layer.

    Raises:
      ValueError: if some leaf of ``params`` is moved by two factors (then q(g^{-1}.w) does not
        factorise over units; enumerate with ``orbits.symmetrized_log_prob`` instead) or a
        factor is wider than ``MAX_WIDTH``.
    """
    lay = units.layout(group, params)
    if lay.multi:
        raise ValueError(
            f"the permanent gives q^G only when no leaf is moved by two factors, but {[p for p, _ in lay.multi]} "
            "are (a Dense chain with more than one hidden layer); use orbits.symmetrized_log_prob (enumeration) "
            "for small deeper nets"
        )
    for f in group.factors:
        if f.size > MAX_WIDTH:
            raise ValueError(f"the permanent handles widths up to MAX_WIDTH = {MAX_WIDTH}, got factor {f.name!r} "
                             f"with {f.size} units")
    total = static_log_prob(q, params, group, None)
    for index, members in enumerate(lay.single):
        if not members:
            continue
        log_a, log_a_neg = units.unit_log_density_matrices(q, params, group, index, members, method="pairwise")
        log_b = log_a if log_a_neg is None else jnp.logaddexp(log_a, log_a_neg)
        total = total + log_permanent(log_b)
    return total - group.log_order()
