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

The orbit terms themselves, sum_i (A[i, sigma(i)] - A[i, i]) for K assignments, do not need A:
:func:`assignment_log_ratio_terms` forms them from the units' differences,
-1/2 sum_c (x_jc - x_ic)(x_jc + x_ic - 2 m_ic) / s_ic^2, accurate in float32 for near-identical
units however far they sit from each other (docs/estimators.md, section 2.1), at O(K d C) one
assignment at a time, or O(d^2 C) from the (slot, unit) pair matrices where d is small against K.
"""

from __future__ import annotations

import functools
import math
from typing import Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp

from symvi_jax import meanfield, nets
from symvi_jax._kept import kept as _kept
from symvi_jax.meanfield import MeanFieldState
from symvi_jax.symmetry import Member, WeightSymmetry, decode_signed, move_units, split_variables, leaf_paths
from symvi_jax.types import Array, ArrayTree

__all__ = [
    "Layout",
    "unwrap",
    "layout",
    "unit_features",
    "log_density_matrix",
    "unit_log_density_matrices",
    "assignment_log_ratio_terms",
    "unit_assignment_log_ratios",
]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


unwrap = nets.unwrap  # flax ``variables`` ({"params": ...}) or the bare params -> the params


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
    present = leaf_paths(split_variables(group, tree)[0])
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
    by_leaf = group.members_by_leaf()
    parts = []
    for member, x in _member_leaves(tree, group, factor, members):
        for index, other in by_leaf[member.path]:
            if index != factor and others is not None and index in others:
                p, s = decode_signed(others[index]) if group.factors[index].sign_flips else (others[index], None)
                x = move_units(x, other, group.factors[index].size, p, s)
        parts.append(_features_of(x, member, f.size))
    return jnp.concatenate(parts, axis=1)


def _member_leaves(
    tree: ArrayTree, group: WeightSymmetry, factor: int, members: Optional[tuple[Member, ...]]
) -> list[tuple[Member, Array]]:
    """``(member, leaf)`` of factor ``factor``'s chosen members (default: those in ``tree``), checked.

    Raises:
      ValueError: as :func:`unit_features`.
    """
    f = group.factors[factor]
    leaves = leaf_paths(split_variables(group, tree)[0])
    by_leaf = group.members_by_leaf()
    chosen = tuple(m for m in f.members if m.path in leaves) if members is None else tuple(members)
    if not chosen:
        raise ValueError(f"factor {f.name!r} has no leaves in the tree to build unit features from")
    for member in chosen:
        if sum(1 for index, _ in by_leaf[member.path] if index == factor) > 1:
            raise ValueError(
                f"factor {f.name!r} touches leaf {member.path!r} on more than one axis (a tied layer); its units do "
                "not factorise, so it has no unit features"
            )
    return [(member, leaves[member.path]) for member in chosen]


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


def _inverse_rows(p: Array) -> Array:
    """The inverse of each permutation in the rows of ``p`` ``(K, d)``: one scatter of 0..d-1 per row."""
    d = p.shape[-1]
    return jax.vmap(lambda row: jnp.zeros_like(row).at[row].set(jnp.arange(d, dtype=row.dtype)))(p)


@jax.custom_vjp
def _materialised(tree: ArrayTree, index: Array) -> ArrayTree:
    """``tree`` unchanged, computed once into memory: XLA fuses it into none of its consumers.

    ``unit_features`` transposes leaves such as a first-layer kernel sample, mu + sigma eps; XLA:CPU
    fuses that elementwise expression (the normal draw's erf_inv, softplus) into the transpose and
    recomputes it there with strided reads, and does the same to the cotangents on the way back
    (at width 1024: four fusions, about half of the symmetrized step). ``optimization_barrier``
    does not prevent it (XLA:CPU removes barriers before fusing), but a conditional is a boundary
    XLA keeps: ``tree`` goes through one whose predicate, ``index[0, 0] >= 0``, holds for every
    permutation index and cannot be folded by the compiler; the other branch, never taken, gives
    NaN. The cotangents go through the same conditional on the way back (the custom VJP). Under
    ``jax.vmap`` (Table 1's seed blocks) the predicate is reduced over the batch (``_kept``), so
    the boundary stays where jax's own rule would make a select that XLA fuses through. The
    values are the same bits; the arithmetic around them may fuse, and so round, differently
    (benchmarks/RESULTS.md, "Eighth stop": 0.72x the symmetrized step at width 1024, 0.90x at
    width 30; "Eleventh stop": 0.76x Table 1's width-30 seed block, and 1.02-1.03x an unbatched
    width-30 symmetrized epoch against jax's own differentiation of the conditional). Each factor
    passes whole trees; for nets with several factors that is a copy per leaf and factor; it
    measured 0.96-1.03x the step before at 30x30 and 256x256.
    """
    return _kept(tree, index.ravel()[0] >= 0)


def _materialised_fwd(tree: ArrayTree, index: Array):
    ok = index.ravel()[0] >= 0
    return _kept(tree, ok), ok


def _materialised_bwd(ok: Array, ct: ArrayTree):
    return _kept(ct, ok), None


_materialised.defvjp(_materialised_fwd, _materialised_bwd)


@jax.custom_batching.custom_vmap
def _any_weight(g: Array) -> Array:
    """``any(g != 0)``; batched, reduced over the batch too, so that a conditional on it stays one.

    The batched rule calls ``_any_weight`` again, so that under nested ``vmap`` (Table 1's seeds of
    methods) each level reduces its own axis; a plain ``jnp.any`` there left the predicate batched
    over the outer axis, and the conditional became a select that ran both branches.
    """
    return jnp.any(g != 0)


@_any_weight.def_vmap
def _any_weight_batched(axis_size, in_batched, g):
    return _any_weight(g), False


def _unless_all_zero(backward, residuals, g, like=None):
    """``backward(residuals, g)``, or its exact zeros without running it where every g_k is 0.

    sum_k g_k t_k has gradient exactly 0 when every weight is 0, which is the common case of
    InfoNCE on copies that do not overlap: their softmax weights underflow to 0 in float32 (every
    Table 1 run, docs/mnist.md). The orbit terms' backward loop is then skipped. A NaN weight is
    not 0, so NaNs still propagate. Under ``jax.vmap`` the loop runs for every lane if any lane
    has a weight (:func:`_any_weight`), so the conditional stays one.
    """
    like = residuals[:3] if like is None else like  # what the cotangents are shaped as

    def zeros(residuals, g):
        return jax.tree.map(jnp.zeros_like, like)

    return jax.lax.cond(_any_weight(g), backward, zeros, residuals, g)


def _matvec(a: Array, b: Array) -> Array:
    return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


def _row_sums(a: Array) -> Array:
    """sum_c a[i, c] as a matrix-vector product, which XLA:CPU runs faster than a float reduction."""
    return _matvec(a, jnp.ones(a.shape[-1], a.dtype))


def _backward_weights(p: Array, s: Array, g: Array):
    """The inverse draws, their signs, and the per-draw and per-unit weights of the backward pass.

    Which unit each draw leaves in place (in its slot with its sign), for all k at once, outside
    the loop: such a unit gets no weight from that draw (:func:`_paired_ratios_grads`).
    """
    d = p.shape[1]
    inv = _inverse_rows(p)
    s_back = jnp.take_along_axis(s, inv, axis=1)
    kept = (inv == jnp.arange(d, dtype=p.dtype)) & (s_back == 1)
    back_weight = jnp.where(kept, 0.0, g[:, None])  # (K, d)
    kept_with_weight = jnp.any(kept & (g[:, None] != 0), axis=0)
    weight = jnp.where(kept_with_weight, jnp.sum(back_weight, axis=0), jnp.sum(g))
    return inv, back_weight, s_back, weight


@jax.custom_vjp
def _paired_ratios(x: Array, loc: Array, precision: Array, p: Array, s: Array) -> Array:
    """t_k = -1/2 sum_ic a_ic delta_kic (delta_kic + 2 r_ic), delta_k = s_k x[p_k] - x, r = x - loc.

    One k at a time (``lax.map``; the backward pass a ``lax.scan``), holding O(d C): on the CPU,
    all K at once (a (K, d, C) array reduced over K) was 26-99x slower (benchmarks/RESULTS.md).
    The sum over c is a product with a vector of ones (:func:`_row_sums`): per assignment, 0.5-0.7x
    the time of a float reduction on XLA:CPU (benchmarks/RESULTS.md, "Thirteenth stop").
    """
    return _forward_terms(x, loc, precision, p, s, 2 if _two_per_pass(x.shape[0]) else 1)


def _two_per_pass(num_units: int) -> bool:
    """Two assignments per pass over the units from d = 512 on (:func:`_forward_terms`).

    Measured on XLA:CPU at C = 795 (``orbit_passes.py``, benchmarks/RESULTS.md "Eighteenth
    stop"): 0.66-0.95x the forward loop at d = 512 and 1024, 0.91-0.96x at d = 256, 1.18-1.31x at
    d = 30 and 100.
    """
    return num_units >= 512


def _forward_terms(x: Array, loc: Array, precision: Array, p: Array, s: Array, per_pass: int) -> Array:
    """The terms t_k of :func:`_paired_ratios`, ``per_pass`` (1 or 2) assignments per pass.

    Two per pass read x, loc and a once for both assignments' differences (a ``(d, 2, C)`` product
    summed per assignment): the same terms up to rounding. An odd K repeats its last assignment and
    drops the copy.
    """
    r = x - loc
    if per_pass == 1:
        def one(ps):
            pk, sk = ps
            delta = sk[:, None] * x[pk] - x
            return -0.5 * jnp.sum(_row_sums(precision * delta * (delta + 2.0 * r)))

        return jax.lax.map(one, (p, s))
    if per_pass != 2:
        raise ValueError(f"per_pass must be 1 or 2, got {per_pass!r}")
    k, d = p.shape
    if k % 2:
        p, s = jnp.concatenate([p, p[-1:]]), jnp.concatenate([s, s[-1:]])
    pairs = tuple(v.reshape(-1, 2, d).transpose(0, 2, 1) for v in (p, s))  # (K / 2, d, 2)

    def two(ps):
        pk, sk = ps
        delta = sk[:, :, None] * x[pk] - x[:, None, :]  # (d, 2, C)
        return -0.5 * jnp.sum(_row_sums(precision[:, None, :] * delta * (delta + 2.0 * r[:, None, :])), axis=0)

    return jax.lax.map(two, pairs).reshape(-1)[:k]


def _paired_ratios_fwd(x, loc, precision, p, s):
    return _paired_ratios(x, loc, precision, p, s), (x, loc, precision, p, s)


def _paired_ratios_bwd(residuals, g):
    return (*_unless_all_zero(_paired_ratios_grads, residuals, g), None, None)


def _paired_ratios_grads(residuals, g):
    # dt_k/d delta_k = -a (delta_k + r), dt_k/dr = -a delta_k, dt_k/da = -delta_k (delta_k + 2 r) / 2.
    # The scatter-add of d delta_k back through x[p_k] is a gather by p_k^{-1} (p_k is a permutation):
    # row j receives s_k(i) d delta_k(i) at i = p_k^{-1}(j), where delta_k(i) + r(i) = s_k(i) x_j - loc_i
    # (a difference of nearby values: no cancellation). Accumulated over k in one scan:
    #   D = sum_k g_k delta_k,  Q = sum_k g_k delta_k^2,
    #   B_j = sum_k g_k s_k(i) a_i (s_k(i) x_j - loc_i) at i = p_k^{-1}(j),
    # then d_x = -B + a r G, d_loc = a D, d_a = -Q / 2 - r D, with G = sum_k g_k.
    # A unit that assignment k leaves in its own slot with its sign (delta_k = 0 identically) does not
    # enter t_k: its B and G terms cancel exactly in real arithmetic, but -B + a r G rounds (an FMA),
    # so both are left out for it. Where such a draw has weight g_k != 0 (an identity draw of a small
    # group), G_j is the weight of the draws that move unit j; elsewhere G = sum_k g_k as before.
    x, loc, precision, p, s = residuals
    inv, back_weight, s_back, weight = _backward_weights(p, s, g)
    r = x - loc

    def body(carry, xs):
        d1, q2, b = carry
        pk, sk, ik, gk, wk, sb = xs
        delta = sk[:, None] * x[pk] - x
        back = wk[:, None] * sb[:, None] * precision[ik] * (sb[:, None] * x - loc[ik])
        return (d1 + gk * delta, q2 + gk * jnp.square(delta), b + back), None

    zeros = jnp.zeros_like(x)
    (d1, q2, b), _ = jax.lax.scan(body, (zeros, zeros, zeros), (p, s, inv, g, back_weight, s_back))
    d_x = -b + precision * r * weight[:, None]
    d_loc = precision * d1
    d_precision = -0.5 * q2 - r * d1
    return d_x, d_loc, d_precision


_paired_ratios.defvjp(_paired_ratios_fwd, _paired_ratios_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _pair_matrix_ratios(x: Array, loc: Array, precision: Array, p: Array, s: Array, signed: bool) -> Array:
    """The terms t_k of :func:`_paired_ratios` read off the (slot, unit) pair matrices.

    P[i, j] = -1/2 sum_c a_ic delta_ijc (delta_ijc + 2 r_ic) with delta_ij = x_j - x_i (and
    P^-[i, j] with delta_ij = -x_j - x_i), formed one slot i at a time from the same differences,
    then t_k = sum_i P^{s_k(i)}[i, p_k(i)]. d (or 2d) passes over the (d, C) units instead of one
    per assignment, and no row gathers; P[i, i] = 0 exactly.
    """
    def one(row):
        xi, li, ai = row
        plus = x - xi
        out = _matvec(plus * (plus + 2.0 * (xi - li)), ai)
        if not signed:
            return out, out
        minus = -x - xi
        return out, _matvec(minus * (minus + 2.0 * (xi - li)), ai)

    pair_plus, pair_minus = jax.lax.map(one, (x, loc, precision))
    slots = jnp.arange(x.shape[0])
    picked = pair_plus[slots, p]
    if signed:
        picked = jnp.where(s < 0, pair_minus[slots, p], picked)
    return -0.5 * jnp.sum(picked, axis=1)


def _pair_matrix_ratios_fwd(x, loc, precision, p, s, signed):
    return _pair_matrix_ratios(x, loc, precision, p, s, signed), (x, loc, precision, p, s)


def _pair_matrix_ratios_bwd(signed, residuals, g):
    grads = functools.partial(_pair_matrix_ratios_grads, signed)
    return (*_unless_all_zero(grads, residuals, g), None, None)


def _pair_matrix_ratios_grads(signed, residuals, g):
    # With W^s[i, j] = sum_k g_k [p_k(i) = j, s_k(i) = s], sum_k g_k t_k = sum_ij W^+_ij P_ij + W^-_ij P^-_ij, and
    #   dP^s_ij/dx_j = -s a_i (s x_j - m_i),  dP^s_ij/dx_i = a_i r_i,  dP^s_ij/dm_i = a_i delta_ij,
    #   dP^s_ij/da_i = -delta_ij (delta_ij + 2 r_i) / 2:
    # the gradient of :func:`_paired_ratios_bwd` with the sums over k taken inside W, one slot i at a
    # time. A unit kept in its slot with its sign (P[i, i] = 0) gets no weight: W^+ has a zero diagonal.
    x, loc, precision, p, s = residuals
    d = x.shape[0]
    slots = jnp.broadcast_to(jnp.arange(d, dtype=p.dtype), p.shape)
    weights = jnp.broadcast_to(g[:, None], p.shape)
    w_plus = jnp.zeros((d, d), g.dtype).at[slots, p].add(jnp.where((p == slots) | (s < 0), 0.0, weights))
    w_minus = jnp.zeros((d, d), g.dtype).at[slots, p].add(jnp.where(s < 0, weights, 0.0)) if signed else w_plus

    def body(b, row):
        xi, li, ai, wp, wm = row
        ri = xi - li
        plus = x - xi
        d_loc = _matvec(wp, plus)
        d_a = _matvec(wp, plus * (plus + 2.0 * ri))
        b = b + wp[:, None] * (ai * (x - li))
        if signed:
            minus = -x - xi
            d_loc = d_loc + _matvec(wm, minus)
            d_a = d_a + _matvec(wm, minus * (minus + 2.0 * ri))
            b = b + wm[:, None] * (ai * (x + li))
        return b, (ai * d_loc, -0.5 * d_a)

    b, (d_loc, d_precision) = jax.lax.scan(body, jnp.zeros_like(x), (x, loc, precision, w_plus, w_minus))
    weight = jnp.sum(w_plus, axis=1) + (jnp.sum(w_minus, axis=1) if signed else 0.0)
    d_x = -b + precision * (x - loc) * weight[:, None]
    return d_x, d_loc, d_precision


_pair_matrix_ratios.defvjp(_pair_matrix_ratios_fwd, _pair_matrix_ratios_bwd)


def _unit_view(x: Array, member: Member, size: int) -> Array:
    """The leaf as ``(A, d, B)`` with the member's units on axis 1: a reshape, no copy or transpose."""
    outer = x.shape[member.axis] // (size * member.inner)
    return x.reshape(math.prod(x.shape[: member.axis]) * outer, size, -1)


def _unit_rows(views) -> Array:
    """The ``(d, C)`` unit rows of member views, as :func:`unit_features` lays them out."""
    return jnp.concatenate([jnp.moveaxis(v, 1, 0).reshape(v.shape[1], -1) for v in views], axis=1)


def _as_views(rows: Array, like) -> tuple:
    """:func:`_unit_rows` undone: the ``(d, C)`` columns split back into views shaped as ``like``."""
    out, start = [], 0
    for v in like:
        a, d, b = v.shape
        out.append(jnp.moveaxis(rows[:, start : start + a * b].reshape(d, a, b), 0, 1))
        start += a * b
    return tuple(out)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _view_ratios(xs, locs, precisions, p: Array, s: Array, pairs: bool, signed: bool) -> Array:
    """The orbit terms t_k, with each member's leaf passed as an ``(A, d, B)`` view (:func:`_unit_view`).

    The values and the gradient of :func:`_pair_matrix_ratios` (``pairs``) or :func:`_paired_ratios`
    on the unit rows (:func:`_unit_rows`), bit for bit. The backward pass also transposes the
    cotangents back into the views' layout inside the conditional of :func:`_unless_all_zero`, so
    where every weight is 0 (every Table 1 run) none of it runs; differentiating
    :func:`unit_features` instead transposed the zero cotangents back into the leaves every step.
    """
    return _rows_ratios(_rows_of(xs, locs, precisions, p, s), pairs, signed)


def _rows_of(xs, locs, precisions, p, s):
    return _unit_rows(xs), _unit_rows(locs), _unit_rows(precisions), p, s


def _rows_ratios(rows, pairs: bool, signed: bool) -> Array:
    return _pair_matrix_ratios(*rows, signed) if pairs else _paired_ratios(*rows)


def _view_ratios_fwd(xs, locs, precisions, p, s, pairs, signed):
    rows = _rows_of(xs, locs, precisions, p, s)
    return _rows_ratios(rows, pairs, signed), (rows, (xs, locs, precisions))


def _view_ratios_bwd(pairs, signed, residuals, g):
    rows, views = residuals
    grads = functools.partial(_pair_matrix_ratios_grads, signed) if pairs else _paired_ratios_grads

    def backward(rows, g):
        return tuple(_as_views(grad, like) for grad, like in zip(grads(rows, g), views))

    return (*_unless_all_zero(backward, rows, g, like=views), None, None)


_view_ratios.defvjp(_view_ratios_fwd, _view_ratios_bwd)

FORMULATIONS = ("auto", "assignments", "pairs")


def _uses_pairs(num_units: int, num_assignments: int, signed: bool) -> bool:
    """The ``"auto"`` choice: pairs where d (2d with sign flips) <= 4/3 of the K assignments.

    One pass of the pair form cost 0.77-0.89x one assignment's (value and gradient; 0.53-0.87x
    forward alone) on XLA:CPU at d = 10-30, K = 20, C = 795 (``orbit_formulations.py --passes``,
    benchmarks/RESULTS.md "Fourteenth stop"): the form with fewer passes, with about that margin.
    """
    return 3 * num_units * (2 if signed else 1) <= 4 * num_assignments


def assignment_log_ratio_terms(
    x: Array, loc: Array, sigma: Array, index: Array, signs: Optional[Array] = None, *, formulation: str = "auto"
) -> Array:
    """sum_i [log f_i(s_i u_{p(i)}) - log f_i(u_i)] for each assignment (p_k, s_k), centred per pair.

    With r = x - loc and delta_k = s_k x[p_k] - x (zero for every unit the assignment leaves in
    place),

        log f_i(x_j) - log f_i(x_i) = -1/2 sum_c (x_jc - x_ic)(x_jc + x_ic - 2 m_ic) / s_ic^2
                                    = -1/2 sum_c delta_ic (delta_ic + 2 r_ic) / s_ic^2,

    so each term is formed from the differences it is made of and its float32 error is a few eps
    times sum |delta| (|delta| + 2 |r|) / s^2, however far the units sit from each other or from
    zero (docs/estimators.md, section 2.1). The unit matrix's expansion instead cancels terms of
    size ((x - c) / s)^2. The gradient is hand-written, so it differentiates in reverse mode only
    (``jax.grad``; for forward mode use the unit matrix,
    ``orbits.assignment_log_ratios(..., method="matmul")``).

    Two formulations compute the same terms from the same differences:

    * ``"assignments"``: one pass over the ``(d, C)`` units per assignment, O(K d C), with row
      gathers x[p_k] (the backward pass gathers by the inverse permutations, no scatter-add);
    * ``"pairs"``: the (slot, unit) matrix P[i, j] = -1/2 sum_c a_ic delta_ijc (delta_ijc + 2 r_ic),
      delta_ij = x_j - x_i, one pass per slot i, O(d^2 C) (twice that with sign flips), then
      t_k = sum_i P[i, p_k(i)]; the backward pass weighs P by W[i, j] = sum_k g_k [p_k(i) = j].

    ``"auto"`` (default) takes the pairs where d (2d with sign flips) <= 4/3 K: the form with fewer
    passes, a pair pass having measured 0.53-0.89x an assignment's on XLA:CPU (:func:`_uses_pairs`).

    Args:
      x: the units of w, ``(d, C)``.
      loc, sigma: the slots' means and scales, ``(d, C)``.
      index: assignments p, ``(K, d)`` int (unit p[k, i] goes to slot i).
      signs: ``(K, d)`` +-1 (sign flips), or None.
      formulation: ``"auto"``, ``"assignments"`` or ``"pairs"``; the same values up to rounding.

    Returns:
      ``(K,)``.
    """
    if x.ndim != 2 or loc.shape != x.shape or sigma.shape != x.shape:
        raise ValueError(f"x, loc and sigma must be (d, C) matrices of one shape, got {x.shape}, {loc.shape} and "
                         f"{sigma.shape}")
    if index.ndim != 2 or index.shape[1] != x.shape[0]:
        raise ValueError(f"index must have shape (K, {x.shape[0]}) (K assignments of the d units), got {index.shape}")
    if formulation not in FORMULATIONS:
        raise ValueError(f"formulation must be one of {FORMULATIONS}, got {formulation!r}")
    s = jnp.ones(index.shape, x.dtype) if signs is None else signs.astype(x.dtype)
    precision = 1.0 / jnp.square(sigma)
    if formulation == "auto":
        formulation = "pairs" if _uses_pairs(x.shape[0], index.shape[0], signs is not None) else "assignments"
    if formulation == "pairs":
        return _pair_matrix_ratios(x, loc, precision, index, s, signs is not None)
    return _paired_ratios(x, loc, precision, index, s)


def unit_assignment_log_ratios(
    q: MeanFieldState,
    params: ArrayTree,
    group: WeightSymmetry,
    factor: int,
    assignments: Array,
    members: Optional[tuple[Member, ...]] = None,
    *,
    method: str = "gather",
) -> Array:
    """sum_i (A^{s_i}[i, p(i)] - A[i, i]) of factor ``factor`` for stacked assignments ``(K, d)``.

    ``method="gather"`` (default): per-pair centred differences (:func:`assignment_log_ratio_terms`),
    accurate in float32 where the terms are small. ``"matmul"``: read off the unit matrix A of
    :func:`unit_log_density_matrices` (one matrix product; cancels large terms, see the module
    docstring). Both give the same values in float64.
    """
    if method == "matmul":
        log_a, log_a_neg = unit_log_density_matrices(q, params, group, factor, members)
        diag = jnp.diag(log_a)[:, None]
        slots = jnp.arange(log_a.shape[0])
        if log_a_neg is None:
            return jnp.sum((log_a - diag)[slots, assignments], axis=-1)
        p, s = decode_signed(assignments)
        return jnp.sum(jnp.where(s < 0, (log_a_neg - diag)[slots, p], (log_a - diag)[slots, p]), axis=-1)
    if method != "gather":
        raise ValueError(f"method must be 'gather' or 'matmul', got {method!r}")
    f = group.factors[factor]
    p, s = decode_signed(assignments) if f.sign_flips else (assignments, None)
    trees = _materialised((params, q.loc, meanfield.scale(q)), p)
    xs, locs, sigmas = (tuple(_unit_view(x, m, f.size) for m, x in _member_leaves(t, group, factor, members))
                        for t in trees)
    signs = jnp.ones(p.shape, xs[0].dtype) if s is None else s.astype(xs[0].dtype)
    precisions = tuple(1.0 / jnp.square(sigma) for sigma in sigmas)
    return _view_ratios(xs, locs, precisions, p, signs, _uses_pairs(f.size, p.shape[0], f.sign_flips), f.sign_flips)
