"""The unit layout of a weight-space symmetry: unit features and the unit density matrix.

Permuting factor f of a ``symmetry.WeightSymmetry`` (others fixed) moves whole *units*: unit j is
the vector u_j of every slice at index j of the factor's member axes (for a Dense chain, the
incoming column, the bias and the outgoing row of hidden unit j). :func:`unit_features` stacks
them as rows of a ``(d, C)`` matrix.

A leaf is *single* when exactly one member of one factor touches it; its units move with that
factor alone, so for a mean-field q

    log q(sigma.w) - log q(w) = sum_f sum_i (A_f[i, sigma_f(i)] - A_f[i, i]) + (leaves touched by several factors),

with A_f[i, j] = log f_i(u_j) the density of slot i's factor at unit j (:func:`log_density_matrix`,
one matrix product). With sign flips the unit enters negated, A^-_f[i, j] = log f_i(-u_j).
Leaves touched by several factors (a Dense kernel between two hidden layers) are gathered per
element instead.

A is built with one matrix product: for diagonal Gaussian factors with means m_i and scales s_i,

    A[i, j] = sum_c [ -x_jc^2 / (2 s_ic^2) + x_jc m_ic / s_ic^2 ] + const_i
            = ([x^2, x] @ [-1 / (2 s^2), m / s^2]^T)[j, i] + const_i.

Precision: the expansion cancels large terms when |x - c| >> s, with c the mean slot that both
sides are centred on first; the error of an off-diagonal entry is about
eps * sum_c ((x_jc - c_c) / s_ic)^2. The diagonal (the identity's term) is always formed directly.
``method="pairwise"`` forms the differences x_jc - m_ic directly instead, exact to rounding at
O(d^2 C) memory. Use float64 for ground truth.
"""

from __future__ import annotations

import math
from typing import Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp

from symvi_jax import meanfield
from symvi_jax.meanfield import MeanFieldState
from symvi_jax.symmetry import Member, WeightSymmetry, _decode, _moved_axis, _split_wrapper, leaf_paths
from symvi_jax.types import Array, ArrayTree

__all__ = ["Layout", "unwrap", "layout", "unit_features", "log_density_matrix", "unit_log_density_matrices"]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def unwrap(tree: ArrayTree) -> ArrayTree:
    """Accept both flax ``variables`` (``{"params": ...}``) and the bare params."""
    if isinstance(tree, Mapping) and set(tree.keys()) == {"params"}:
        return tree["params"]
    return tree


class Layout(NamedTuple):
    """Which present leaves move how (see the module docstring).

    Fields:
      single: per factor, its members whose leaf no other member touches.
      multi: ``(leaf_path, ((factor_index, member), ...))`` for leaves touched by several members.
    """

    single: tuple[tuple[Member, ...], ...]
    multi: tuple[tuple[str, tuple[tuple[int, Member], ...]], ...]


def layout(group: WeightSymmetry, tree: ArrayTree) -> Layout:
    """The :class:`Layout` of the leaves present in ``tree`` (a params-shaped pytree)."""
    present = leaf_paths(_split_wrapper(group, tree)[0])
    by_leaf = group.members_by_leaf()
    single = [[] for _ in group.factors]
    multi = []
    for path, entries in by_leaf.items():
        if path not in present:
            continue
        if len(entries) == 1:
            index, member = entries[0]
            single[index].append(member)
        else:
            multi.append((path, entries))
    return Layout(tuple(tuple(s) for s in single), tuple(multi))


def _features_of(x: Array, member: Member, size: int) -> Array:
    """The leaf's slices along the member's unit sub-axis as rows: ``(d, rest)``."""
    shape = x.shape
    outer = shape[member.axis] // (size * member.inner)
    view = x.reshape(shape[: member.axis] + (outer, size, member.inner) + shape[member.axis + 1 :])
    return jnp.moveaxis(view, member.axis + 1, 0).reshape(size, -1)


def unit_features(
    tree: ArrayTree,
    group: WeightSymmetry,
    factor: int,
    members: Optional[tuple[Member, ...]] = None,
    *,
    others: Optional[Mapping[int, Array]] = None,
) -> Array:
    """Factor ``factor``'s units in ``tree`` as rows of a ``(d, C)`` matrix.

    Args:
      tree: any params-shaped pytree (a weight sample, ``q.loc``, ``meanfield.scale(q)``).
      group: the symmetry.
      factor: the factor's index.
      members: which of its members to use (default: every member whose leaf is in ``tree``).
      others: ``{factor_index: element}`` of other factors applied to each leaf first (the
        assignment already drawn for them); factors not named stay at the identity.

    Raises:
      ValueError: if a member's leaf is touched by this factor on two axes (its units do not
        factorise), or if no member is present.
    """
    f = group.factors[factor]
    leaves = leaf_paths(_split_wrapper(group, tree)[0])
    by_leaf = group.members_by_leaf()
    chosen = tuple(m for m in f.members if m.path in leaves) if members is None else tuple(members)
    if not chosen:
        raise ValueError(f"factor {f.name!r} has no leaves in the tree to build unit features from")
    parts = []
    for member in chosen:
        entries = by_leaf[member.path]
        if sum(1 for index, _ in entries if index == factor) > 1:
            raise ValueError(
                f"factor {f.name!r} touches leaf {member.path!r} on more than one axis (a tied layer); its units do "
                "not factorise, so it has no unit features"
            )
        x = leaves[member.path]
        for index, other in entries:
            if index != factor and others is not None and index in others:
                p, s = _decode(others[index]) if group.factors[index].sign_flips else (others[index], None)
                x = _moved_axis(x, other, group.factors[index].size, p, s)
        parts.append(_features_of(x, member, f.size))
    return jnp.concatenate(parts, axis=1)


def log_density_matrix(x: Array, loc: Array, sigma: Array, method: str = "matmul") -> Array:
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


def unit_log_density_matrices(
    q: MeanFieldState,
    params: ArrayTree,
    group: WeightSymmetry,
    factor: int,
    members: Optional[tuple[Member, ...]] = None,
    *,
    others: Optional[Mapping[int, Array]] = None,
    method: str = "matmul",
) -> tuple[Array, Optional[Array]]:
    """(A, A^-): slot i's factor of q at unit j of ``params``, and at its negation (None without flips).

    The slots always use q's own, unmoved leaves; ``members`` and ``others`` select and pre-move
    the units of ``params`` as in :func:`unit_features`.
    """
    x = unit_features(params, group, factor, members, others=others)
    loc = unit_features(q.loc, group, factor, members)
    sigma = unit_features(meanfield.scale(q), group, factor, members)
    log_a = log_density_matrix(x, loc, sigma, method)
    if not group.factors[factor].sign_flips:
        return log_a, None
    return log_a, log_density_matrix(-x, loc, sigma, method)
