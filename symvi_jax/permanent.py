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
from typing import Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from symvi_jax import meanfield
from symvi_jax.meanfield import MeanFieldState
from symvi_jax.symmetry import PermutationGroup
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


def _unwrap(tree):
    if isinstance(tree, Mapping) and set(tree.keys()) == {"params"}:
        return tree["params"]
    return tree


def _check_layer(group: PermutationGroup, layer: int) -> None:
    if not isinstance(layer, (int, np.integer)) or not 0 <= layer < group.num_hidden_layers:
        raise ValueError(f"layer must be a hidden-layer index in [0, {group.num_hidden_layers}), got {layer!r}")


def unit_features(
    tree: ArrayTree,
    group: PermutationGroup,
    layer: int = 0,
    *,
    incoming: bool = True,
    outgoing: bool = True,
    incoming_perm: Optional[Array] = None,
) -> Array:
    """The units of hidden layer ``layer`` as rows: ``(d_l, C)`` with C the per-unit size.

    Row j is the concatenation of the leaves present in ``tree`` among ``W_l[:, j]`` (incoming
    column, if ``incoming``), ``b_l[j]`` and ``W_{l+1}[j, :]`` (outgoing row, if ``outgoing``);
    leaves held out of the tree (``nets.partition``) are skipped. ``incoming_perm`` gathers the
    rows of W_l first (the permutation already applied to the layer below).

    Works on any tree shaped like the params: a weight sample, ``q.loc`` or ``scale(q)``.
    """
    _check_layer(group, layer)
    inner = _unwrap(tree)
    lower, upper = group.layer_names[layer], group.layer_names[layer + 1]
    parts = []
    if incoming and lower in inner and "kernel" in inner[lower]:
        kernel = inner[lower]["kernel"]
        if incoming_perm is not None:
            kernel = jnp.take(kernel, incoming_perm, axis=0)
        parts.append(kernel.T)
    if lower in inner and "bias" in inner[lower]:
        parts.append(inner[lower]["bias"][:, None])
    if outgoing and upper in inner and "kernel" in inner[upper]:
        parts.append(inner[upper]["kernel"])
    if not parts:
        raise ValueError(f"hidden layer {layer} has no leaves in the tree to build unit features from")
    return jnp.concatenate(parts, axis=1)


def _density_matrix(x: Array, loc: Array, sigma: Array, method: str = "matmul") -> Array:
    """A[i, j] = sum_c log N(x[j, c]; loc[i, c], sigma[i, c]^2), by one matrix product or pairwise.

    ``x`` and ``loc`` index the same units, so the diagonal A[i, i] (which carries log q(w)
    itself) is always formed from the differences directly. Off the diagonal, ``"matmul"``
    expands the square into one matrix product after centring x and loc on the mean slot, which
    leaves every difference unchanged and keeps the cancellation error small relative to them.
    """
    const = jnp.sum(-jnp.log(sigma) - _HALF_LOG_2PI, axis=1)
    if method == "pairwise":
        z = (x[None, :, :] - loc[:, None, :]) / sigma[:, None, :]  # (slots, units, C)
        return -0.5 * jnp.sum(jnp.square(z), axis=2) + const[:, None]
    if method != "matmul":
        raise ValueError(f"method must be 'matmul' or 'pairwise', got {method!r}")
    precision = 1.0 / jnp.square(sigma)
    centre = jax.lax.stop_gradient(jnp.mean(loc, axis=0))
    u, m = x - centre, loc - centre
    left = jnp.concatenate([jnp.square(u), u], axis=1)  # (d, 2C) units
    right = jnp.concatenate([-0.5 * precision, m * precision], axis=1)  # (d, 2C) slots
    off = right @ left.T + (const - 0.5 * jnp.sum(jnp.square(m) * precision, axis=1))[:, None]
    diag = -0.5 * jnp.sum(jnp.square(x - loc) * precision, axis=1) + const
    return jnp.where(jnp.eye(x.shape[0], dtype=bool), diag[:, None], off)


def unit_log_density_matrix(
    q: MeanFieldState,
    params: ArrayTree,
    group: PermutationGroup,
    layer: int = 0,
    *,
    incoming: bool = True,
    outgoing: bool = True,
    incoming_perm: Optional[Array] = None,
    method: str = "matmul",
) -> Array:
    """A[i, j] = log f_i(u_j): slot i's factor of q evaluated at unit j of ``params``.

    The flags select which blocks of each unit enter (see :func:`unit_features`); the slot
    factors always use q's own, unpermuted incoming rows. ``method``: ``"matmul"`` (one matrix
    product, O(d C + d^2) memory) or ``"pairwise"`` (direct differences, O(d^2 C) memory, no
    cancellation; see the module docstring).
    """
    x = unit_features(params, group, layer, incoming=incoming, outgoing=outgoing, incoming_perm=incoming_perm)
    loc = unit_features(q.loc, group, layer, incoming=incoming, outgoing=outgoing)
    sigma = unit_features(meanfield.scale(q), group, layer, incoming=incoming, outgoing=outgoing)
    return _density_matrix(x, loc, sigma, method)


def static_log_prob(q: MeanFieldState, params: ArrayTree, group: PermutationGroup, layer: int = 0) -> Array:
    """log q of every weight that permuting hidden layer ``layer`` leaves in place.

    ``static_log_prob + trace(A) == meanfield.log_prob(q, params)`` for A from
    :func:`unit_log_density_matrix` with all blocks.
    """
    _check_layer(group, layer)
    moving = {group.layer_names[layer]: ("kernel", "bias"), group.layer_names[layer + 1]: ("kernel",)}
    inner_w, inner_m, inner_s = _unwrap(params), _unwrap(q.loc), _unwrap(meanfield.scale(q))
    total = jnp.zeros((), dtype=jnp.result_type(*jax.tree.leaves(inner_w)))
    for name, layer_params in inner_w.items():
        for leaf, x in layer_params.items():
            if leaf in moving.get(name, ()):
                continue
            m, s = inner_m[name][leaf], inner_s[name][leaf]
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


def symmetrized_log_prob(q: MeanFieldState, params: ArrayTree, group: PermutationGroup) -> Array:
    """Exact log q^G(w) for a network with one hidden layer, via the permanent (module docstring).

    Raises:
      ValueError: if the network has more than one hidden layer (then q(g^{-1}.w) does not
        factorise over units; enumerate with ``orbits.symmetrized_log_prob`` instead) or the
        width exceeds ``MAX_WIDTH``.
    """
    if group.num_hidden_layers != 1:
        raise ValueError(
            f"the permanent gives q^G only for one hidden layer, got {group.num_hidden_layers} hidden layers; "
            "use orbits.symmetrized_log_prob (enumeration) for small deeper nets"
        )
    if group.widths[0] > MAX_WIDTH:
        raise ValueError(f"the permanent handles widths up to MAX_WIDTH = {MAX_WIDTH}, got {group.widths[0]}")
    log_a = unit_log_density_matrix(q, params, group, 0, method="pairwise")
    return static_log_prob(q, params, group, 0) + log_permanent(log_a) - group.log_order()
