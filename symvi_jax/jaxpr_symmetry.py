"""Read the weight-space permutation symmetry of a network off its jaxpr.

A hidden unit is a position along some axis of the intermediate arrays. The group found here is
the largest one this analysis can *prove*: a permutation ``tau`` of ``d`` units acts on every
array axis in one equivalence class ``K`` (the same ``tau`` on all of them), and the network is
invariant,

    f(g.w, x) = f(w, x)   for all g in G = prod_K S_{d_K}  (times {+-1}^{d_K} with sign flips),

because every operation either commutes with ``tau`` on the axes it maps to each other
(elementwise ops, matmul free dimensions, transposes), or is invariant under it (sums and
maxima over the axis, matmul contractions where both operands carry ``tau``).

The classes come from a union-find over labels ``(array, axis)`` built by one walk of
``jax.make_jaxpr(apply_fn)(params, inputs)``, recursing into ``jit``, ``custom_jvp_call``,
``custom_vjp_call`` and ``checkpoint``. A special DATA label is joined to the axes of the data
inputs, of the outputs and of closed-over constants, and to every axis of an operation that is
not known to commute with a permutation (gather, scatter, concatenate, scan, ...). A class
joined to DATA is broken: its units are never permuted. When unsure, the walk joins DATA: it
claims a smaller group that is true, never a larger one that is false.

A factor is an unbroken class with at least one parameter axis and at least one axis of an
intermediate array (a leaf that the computation never touches is left alone). Its members are
``(leaf_path, axis, inner)``: the leaf axis has size ``outer * d * inner``, viewed as
``(outer, d, inner)``, and the middle sub-axis is permuted. ``inner`` differs from 1 after a
reshape that merges axes, e.g. the flatten ``[B, H, W, C] -> [B, H*W*C]`` before a Dense layer
makes the channel class a factor with member ``("Dense_0/kernel", 0, 1)`` and outer ``H*W``.

Sign flips ``s in {+-1}^d`` multiply each array axis of the class by ``s``. They survive only
where every operation on the class is odd in it (tanh, linear maps, products with values that
do not carry the class, sums over other axes); relu, softplus, exp, squares, same-class
products, LayerNorm and max-reductions break them. The group object, and the direction of its
action, is ``symvi_jax.symmetry.WeightSymmetry``.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Any, Callable, Optional, Sequence

import jax
import jax.extend.core as jcore
import numpy as np

from symvi_jax import symmetry
from symvi_jax.types import ArrayTree

__all__ = [
    "BrokenAxis",
    "InferredFactor",
    "SymmetryReport",
    "explain_symmetry",
    "infer_symmetry",
]

Member = symmetry.Member  # (path, axis, inner): the leaf axis viewed as (outer, d, inner)


# ---- the report ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class InferredFactor:
    """One factor S_d (optionally times {+-1}^d) of the inferred group.

    Attributes:
      name: ``"<first leaf path>:<axis>"`` of a member, preferring leaves of rank >= 2.
      size: d, the number of units permuted.
      members: ``(leaf_path, axis, inner)`` triples, in leaf order.
      sign_flips: whether every operation on the class is odd in it.
      flip_reason: the first operation that is not odd in the class (None when ``sign_flips``).
      outers: for each member, the ``outer`` of its ``(outer, d, inner)`` view (1 for a whole
        axis; H*W for the channel of a flattened [H, W, C] map). Empty when not known.
    """

    name: str
    size: int
    members: tuple[Member, ...]
    sign_flips: bool
    flip_reason: Optional[str]
    outers: tuple[int, ...] = ()

    def log_order(self, *, sign_flips: bool = False) -> float:
        """log d! (+ d log 2 when ``sign_flips`` and the factor keeps its flips)."""
        extra = self.size * math.log(2.0) if sign_flips and self.sign_flips else 0.0
        return math.lgamma(self.size + 1) + extra


@dataclasses.dataclass(frozen=True)
class BrokenAxis:
    """A parameter axis (of size > 1) that no factor permutes, and why."""

    path: str
    axis: int
    size: int
    reason: str


@dataclasses.dataclass(frozen=True)
class SymmetryReport:
    """What ``explain_symmetry`` found: the factors, and the parameter axes left alone."""

    factors: tuple[InferredFactor, ...]
    broken: tuple[BrokenAxis, ...]

    def axes(self) -> dict[str, list[Member]]:
        """``{factor name: members}`` in the form ``WeightSymmetry.from_axes`` takes."""
        return {factor.name: list(factor.members) for factor in self.factors}

    def flip_names(self) -> tuple[str, ...]:
        """Names of the factors that keep their sign flips."""
        return tuple(factor.name for factor in self.factors if factor.sign_flips)

    def log_order(self, *, sign_flips: bool = False) -> float:
        """log |G| = sum_K log d_K! (+ d_K log 2 for the factors that keep flips)."""
        return sum(factor.log_order(sign_flips=sign_flips) for factor in self.factors)

    def __str__(self) -> str:
        lines = [f"{len(self.factors)} factor(s), log|G| = {self.log_order():.4g}"]
        for factor in self.factors:
            flips = "sign flips" if factor.sign_flips else f"no sign flips ({factor.flip_reason})"
            lines.append(f"  {factor.name}: S_{factor.size}, {flips}")
            outers = factor.outers or (1,) * len(factor.members)
            for (path, axis, inner), outer in zip(factor.members, outers):
                view = f" viewed as (outer {outer}, d, inner {inner})" if (outer, inner) != (1, 1) else ""
                lines.append(f"    {path} axis {axis}{view}")
        if self.broken:
            lines.append("parameter axes left alone:")
            lines.extend(f"  {b.path} axis {b.axis} (size {b.size}): {b.reason}" for b in self.broken)
        return "\n".join(lines)


# ---- public entry points ---------------------------------------------------------------------
def infer_symmetry(
    apply_fn: Callable[[ArrayTree, Any], Any],
    params: ArrayTree,
    inputs: Any,
    *,
    sign_flips: bool = False,
    check: bool = True,
    return_report: bool = False,
):
    """The permutation (and optionally sign-flip) group of ``apply_fn`` in ``params``.

    Finds the classes of array axes that one permutation must act on together (see the module
    docstring) and returns ``WeightSymmetry.from_axes(params, axes, sign_flips=...)`` with

        G = prod_K S_{d_K}            (sign_flips=False)
        G = prod_K S_{d_K} x {+-1}^{d_K}   (sign_flips=True),   log|G| = sum_K log d_K! + d_K log 2.

    Args:
      apply_fn: ``apply_fn(params, inputs)``, e.g. ``lambda p, x: model.apply({"params": p}, x)``.
        Everything it closes over is treated as fixed data.
      params: the weights (any pytree of arrays); the group acts on these leaves.
      inputs: an example batch; only shapes and dtypes matter for the analysis.
      sign_flips: also claim the unit sign flips; raises ValueError naming the first operation
        that is not odd when a factor cannot keep them (e.g. relu).
      check: verify ``f(g.w) == f(w)`` numerically with ``group.check`` before returning.
      return_report: return ``(group, SymmetryReport)`` instead of the group.

    Raises:
      ValueError: bad arguments, an untraceable ``apply_fn``, sign flips that do not hold, or a
        failed numerical check.
    """
    for name, flag in (("sign_flips", sign_flips), ("check", check), ("return_report", return_report)):
        if not isinstance(flag, bool):
            raise ValueError(f"{name} must be True or False, got {flag!r}")
    report = explain_symmetry(apply_fn, params, inputs)
    if sign_flips:
        lost = [f for f in report.factors if not f.sign_flips]
        if lost:
            details = "; ".join(f"factor {f.name} (d={f.size}): sign flips through {f.flip_reason}" for f in lost)
            raise ValueError(
                f"sign_flips=True but {len(lost)} factor(s) cannot flip signs: {details}. "
                "Pass sign_flips=False for the permutation group alone."
            )
    if not report.factors:  # nothing provable: the trivial group (from_axes needs a factor)
        group = symmetry.WeightSymmetry(factors=())
        return (group, report) if return_report else group
    group = symmetry.WeightSymmetry.from_axes(
        params,
        report.axes(),
        sign_flips=report.flip_names() if sign_flips else (),
        sizes={factor.name: factor.size for factor in report.factors},
    )
    if check:  # jitted once here: make_jaxpr already traced it, and check calls it many times
        group.check(jax.jit(apply_fn), params, inputs)
    return (group, report) if return_report else group


def explain_symmetry(apply_fn: Callable[[ArrayTree, Any], Any], params: ArrayTree, inputs: Any) -> SymmetryReport:
    """Trace ``apply_fn(params, inputs)`` and report the factors and the parameter axes left alone.

    The analysis behind ``infer_symmetry``, without building or checking a group. It never raises
    for a missing symmetry: a relu net reports each factor with ``sign_flips=False`` and
    ``flip_reason="relu (custom_jvp_call max)"``; ``str(report)`` prints a table.

    Raises:
      ValueError: ``apply_fn`` is not callable, ``params`` has no leaves, or the trace fails.
    """
    if not callable(apply_fn):
        raise ValueError(f"apply_fn must be callable as apply_fn(params, inputs), got {type(apply_fn).__name__}")
    paths = list(symmetry.leaf_paths(params))
    if not paths:
        raise ValueError("params must be a pytree with at least one array leaf, found none")
    try:
        closed = jax.make_jaxpr(apply_fn)(params, inputs)
    except Exception as error:  # the user's function: report it with the call we made
        raise ValueError(f"apply_fn(params, inputs) could not be traced: {type(error).__name__}: {error}") from error

    state = _State()
    jaxpr = closed.jaxpr
    num_params = len(paths)
    in_labels = []
    for index, var in enumerate(jaxpr.invars):
        labels = state.fresh(var.aval.shape)
        if index < num_params:
            path = paths[index]
            for axis, node in enumerate(labels):
                state.param_axes[node] = (index, path, axis)
        else:
            for node in labels:
                state.break_node(node, "reaches the input")
        in_labels.append(labels)
    const_labels = [state.constant(var.aval.shape) for var in jaxpr.constvars]
    out_labels = _walk(state, jaxpr, const_labels, in_labels, ())
    for labels in out_labels:
        for node in labels:
            state.break_node(node, "reaches the output")
    return _resolve(state)


# ---- union-find state ------------------------------------------------------------------------
_DATA = 0


class _State:
    """Union-find over axis labels, plus what the walk recorded for the resolution step.

    Private and mutable; it lives for one ``explain_symmetry`` call only.
    """

    def __init__(self):
        self.parent = [_DATA]
        self.size: list[Optional[int]] = [None]
        self.neighbours: list[list[int]] = [[]]
        self.data_reason: dict[int, str] = {}  # nodes joined to DATA directly, and why
        self.flip_reason: dict[int, str] = {}  # nodes whose class loses sign flips, and why
        self.composites: list[tuple[int, tuple[int, ...], str]] = []  # axis = product of segment axes
        self.param_axes: dict[int, tuple[int, str, int]] = {}  # node -> (leaf index, path, axis)

    def fresh(self, shape: Sequence[int]) -> tuple[int, ...]:
        nodes = []
        for size in shape:
            self.parent.append(len(self.parent))
            self.size.append(int(size))
            self.neighbours.append([])
            nodes.append(len(self.parent) - 1)
        return tuple(nodes)

    def constant(self, shape: Sequence[int]) -> tuple[int, ...]:
        labels = self.fresh(shape)
        for node in labels:
            self.break_node(node, "closed-over constant (not a parameter)")
        return labels

    def find(self, node: int) -> int:
        root = node
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[node] != root:
            self.parent[node], node = root, self.parent[node]
        return root

    def union(self, a: int, b: int) -> None:
        self.neighbours[a].append(b)
        self.neighbours[b].append(a)
        root_a, root_b = self.find(a), self.find(b)
        if root_a == root_b:
            return
        if root_b == _DATA:
            root_a, root_b = root_b, root_a
        self.parent[root_b] = root_a  # DATA stays the root of its class

    def merge(self, a: int, b: int, where: str) -> None:
        """One permutation acts on both axes (they must have the same size)."""
        if self.size[a] != self.size[b]:
            self.break_node(a, f"{where}: axes of sizes {self.size[a]} and {self.size[b]} meet")
            self.break_node(b, f"{where}: axes of sizes {self.size[a]} and {self.size[b]} meet")
        self.union(a, b)

    def break_node(self, node: int, reason: str) -> None:
        """The units of this axis are never permuted."""
        self.data_reason.setdefault(node, reason)
        self.union(node, _DATA)

    def break_flips(self, node: int, reason: str) -> None:
        """The class of this axis cannot flip signs."""
        if self.size[node] is not None and self.size[node] > 1:
            self.flip_reason.setdefault(node, reason)

    def is_broken(self, node: int) -> bool:
        return self.find(node) == _DATA

    def break_reasons(self) -> dict[int, str]:
        """For every broken node, the reason recorded nearest to it along the merges.

        One breadth-first search from all nodes that were joined to DATA directly (the DATA
        node itself is not crossed: it would make every reason equally near).
        """
        nearest = dict(self.data_reason)
        queue = collections.deque(self.data_reason)
        while queue:
            current = queue.popleft()
            for neighbour in self.neighbours[current]:
                if neighbour != _DATA and neighbour not in nearest:
                    nearest[neighbour] = nearest[current]
                    queue.append(neighbour)
        return nearest


# ---- the walk --------------------------------------------------------------------------------
_CALLS = ("jit", "pjit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call",
          "custom_vjp_call_jaxpr", "remat", "remat2", "checkpoint")
_SUBJAXPR_KEYS = ("jaxpr", "call_jaxpr", "fun_jaxpr")


def _walk(state: _State, jaxpr, const_labels, in_labels, context: tuple[tuple[str, str], ...]):
    """Label every array of ``jaxpr``; returns the labels of its outputs."""
    env: dict[Any, tuple[int, ...]] = {}

    def read(atom):
        if isinstance(atom, jcore.Literal):
            shape = getattr(atom.aval, "shape", ())
            return state.constant(shape) if shape else ()
        return env[atom]

    for var, labels in zip(jaxpr.constvars, const_labels):
        env[var] = labels
    for var, labels in zip(jaxpr.invars, in_labels):
        env[var] = labels
    for eqn in jaxpr.eqns:
        ins = [read(atom) for atom in eqn.invars]
        name = eqn.primitive.name
        if name in _CALLS and _subjaxpr(eqn) is not None:
            outs = _call_rule(state, eqn, ins, context)
        else:
            rule = _RULES.get(name, _unknown_rule)
            outs = [state.fresh(var.aval.shape) if hasattr(var.aval, "shape") else () for var in eqn.outvars]
            rule(state, eqn, ins, outs, _describe(name, context))
        for var, labels in zip(eqn.outvars, outs):
            if not isinstance(var, jcore.DropVar):
                env[var] = labels
    return [read(atom) for atom in jaxpr.outvars]


def _subjaxpr(eqn):
    for key in _SUBJAXPR_KEYS:
        sub = eqn.params.get(key)
        if isinstance(sub, jcore.ClosedJaxpr):
            sub_jaxpr, consts = sub.jaxpr, sub.consts
        elif isinstance(sub, jcore.Jaxpr):
            sub_jaxpr, consts = sub, ()
        else:
            continue
        if len(sub_jaxpr.invars) == len(eqn.invars) and len(sub_jaxpr.outvars) == len(eqn.outvars):
            return sub_jaxpr, consts
    return None


def _call_rule(state, eqn, ins, context):
    sub_jaxpr, consts = _subjaxpr(eqn)
    const_labels = [state.constant(getattr(c, "shape", ())) for c in consts]
    if len(const_labels) != len(sub_jaxpr.constvars):
        const_labels = [state.constant(v.aval.shape) for v in sub_jaxpr.constvars]
    name = eqn.params.get("name")
    if name is None:  # custom_jvp_call keeps the function's name in the debug info only
        info = getattr(getattr(sub_jaxpr, "debug_info", None), "func_src_info", None)
        name = info.split(" ")[0] if info else None
    inner_context = context + ((str(name), eqn.primitive.name),) if name is not None else context
    return _walk(state, sub_jaxpr, const_labels, ins, inner_context)


def _describe(primitive: str, context) -> str:
    """``"relu (custom_jvp_call max)"`` inside a named custom derivative, else ``"tanh"``."""
    for name, call in reversed(context):
        if call.startswith("custom"):
            return f"{name} ({call} {primitive})"
    if context:
        name, call = context[-1]
        return f"{name} ({call} {primitive})"
    return primitive


# ---- rules: each gets (state, eqn, input labels, fresh output labels, op description) ---------
def _unknown_rule(state, eqn, ins, outs, where):
    reason = f"unknown primitive {eqn.primitive.name}"
    for labels in (*ins, *outs):
        for node in labels:
            state.break_node(node, reason)


def _constant_rule(state, eqn, ins, outs, where):
    for labels in outs:
        for node in labels:
            state.break_node(node, f"{where}: a constant that varies along the axis")


def _elementwise(kind: str):
    """n-ary elementwise op. ``kind``: "odd", "even" (not odd), "add", "mul", "select"."""

    def rule(state, eqn, ins, outs, where):
        if kind == "odd" and not _is_odd(eqn):
            return _elementwise("even")(state, eqn, ins, outs, where)
        (out,) = outs
        carriers = [0] * len(out)
        operands = list(enumerate(ins))
        for position, labels in operands:
            if len(labels) == 0:
                continue
            if len(labels) != len(out):
                return _unknown_rule(state, eqn, ins, outs, where)
            for axis, node in enumerate(labels):
                if state.size[node] == state.size[out[axis]]:
                    state.merge(node, out[axis], where)
                    if not (kind == "select" and position == 0):
                        carriers[axis] += 1
                    elif state.size[node] > 1:  # a predicate that varies along the units
                        state.break_flips(out[axis], where)
        num_values = len(ins) - (1 if kind == "select" else 0)
        for axis, node in enumerate(out):
            if kind == "even":
                state.break_flips(node, where)
            elif kind in ("add", "select") and carriers[axis] < num_values:
                state.break_flips(node, f"{where} with a value that does not carry the units")
            elif kind == "mul" and carriers[axis] > 1:
                state.break_flips(node, f"{where} of two values that carry the same units")

    return rule


def _is_odd(eqn) -> bool:
    """integer_pow with an even power, and casts to bool or unsigned ints, are not odd."""
    if eqn.primitive.name == "integer_pow":
        return eqn.params["y"] % 2 != 0
    if eqn.primitive.name == "convert_element_type":
        dtype = np.dtype(eqn.params["new_dtype"])
        return np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.complexfloating) or (
            np.issubdtype(dtype, np.signedinteger))
    return True


def _slice(state, eqn, ins, outs, where):
    """Axes taken whole map; an axis that is cut (or strided) is broken."""
    strides = eqn.params.get("strides") or (1,) * len(ins[0])
    for axis, (node, target) in enumerate(zip(ins[0], outs[0])):
        whole = (eqn.params["start_indices"][axis] == 0 and strides[axis] == 1
                 and eqn.params["limit_indices"][axis] == state.size[node])
        if whole:
            state.merge(node, target, where)
        else:
            state.break_node(node, f"{where} cuts the axis")
            state.break_node(target, f"{where} cuts the axis")


def _broadcast_in_dim(state, eqn, ins, outs, where):
    (operand,), (out,) = ins, outs
    mapped = set()
    for axis, node in enumerate(operand):
        target = eqn.params["broadcast_dimensions"][axis]
        if state.size[node] == state.size[out[target]]:
            state.merge(node, out[target], where)
            mapped.add(target)
    for axis, node in enumerate(out):
        if axis not in mapped:
            state.break_flips(node, f"{where} (constant along the units)")


def _reshape_groups(in_shape, out_shape):
    """Pair runs of input axes with runs of output axes of equal product (size-1 axes dropped)."""
    ins = [i for i, s in enumerate(in_shape) if s != 1]
    outs = [j for j, s in enumerate(out_shape) if s != 1]
    groups, i, j = [], 0, 0
    while i < len(ins) and j < len(outs):
        group_in, group_out = [ins[i]], [outs[j]]
        size_in, size_out = in_shape[ins[i]], out_shape[outs[j]]
        i, j = i + 1, j + 1
        while size_in != size_out:
            if size_in < size_out:
                group_in.append(ins[i])
                size_in *= in_shape[ins[i]]
                i += 1
            else:
                group_out.append(outs[j])
                size_out *= out_shape[outs[j]]
                j += 1
        groups.append((group_in, group_out))
    return groups


def _reshape(state, eqn, ins, outs, where):
    operand, out = ins[0], outs[0]
    in_shape = [state.size[n] for n in operand]
    out_shape = [state.size[n] for n in out]
    if eqn.params.get("dimensions") is not None or 0 in in_shape or len(ins) != 1:
        return _unknown_rule(state, eqn, ins, outs, where)
    for group_in, group_out in _reshape_groups(in_shape, out_shape):
        if len(group_in) == 1 and len(group_out) == 1:
            state.merge(operand[group_in[0]], out[group_out[0]], where)
        elif len(group_out) == 1:  # a merge: the output axis is the product of the input axes
            state.composites.append((out[group_out[0]], tuple(operand[a] for a in group_in), where))
        elif len(group_in) == 1:  # a split: the input axis is the product of the output axes
            state.composites.append((operand[group_in[0]], tuple(out[a] for a in group_out), where))
        else:
            for node in [operand[a] for a in group_in] + [out[a] for a in group_out]:
                state.break_node(node, f"{where} that regroups axes {tuple(in_shape)} -> {tuple(out_shape)}")


def _transpose(state, eqn, ins, outs, where):
    for axis, source in enumerate(eqn.params["permutation"]):
        state.merge(ins[0][source], outs[0][axis], where)


def _squeeze(state, eqn, ins, outs, where):
    dropped = {d % len(ins[0]) for d in eqn.params["dimensions"]}
    kept = [node for axis, node in enumerate(ins[0]) if axis not in dropped]
    for node, target in zip(kept, outs[0]):
        state.merge(node, target, where)


def _reduce(kind: str):
    """Reductions over ``axes``: kept axes map in order; a reduced axis stays unbroken (the
    result is invariant under permuting it) but loses flips; max/min lose flips everywhere."""

    def rule(state, eqn, ins, outs, where):
        reduced = set(eqn.params["axes"])
        kept = [node for axis, node in enumerate(ins[0]) if axis not in reduced]
        for node, target in zip(kept, outs[0]):
            state.merge(node, target, where)
            if kind != "sum":
                state.break_flips(target, f"{where} over other axes")
        for axis in reduced:
            if kind == "arg":
                state.break_node(ins[0][axis], f"{where} over the axis (an index depends on the order)")
            else:
                state.break_flips(ins[0][axis], f"{where} over the units")

    return rule


def _cumulative(kind: str):
    def rule(state, eqn, ins, outs, where):
        scanned = eqn.params["axis"] % len(ins[0])
        for axis, (node, target) in enumerate(zip(ins[0], outs[0])):
            if axis == scanned:
                state.break_node(node, f"{where} along the axis (depends on the order)")
                state.break_node(target, f"{where} along the axis (depends on the order)")
            else:
                state.merge(node, target, where)
                if kind != "sum":
                    state.break_flips(target, where)

    return rule


def _dot_general(state, eqn, ins, outs, where):
    (lhs, rhs), (out,) = ins, outs
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = eqn.params["dimension_numbers"]
    for a, b in zip(lhs_contract, rhs_contract):
        state.merge(lhs[a], rhs[b], where)
    lhs_free = [a for a in range(len(lhs)) if a not in lhs_contract and a not in lhs_batch]
    rhs_free = [b for b in range(len(rhs)) if b not in rhs_contract and b not in rhs_batch]
    position = 0
    for a, b in zip(lhs_batch, rhs_batch):
        state.merge(lhs[a], out[position], where)
        state.merge(rhs[b], out[position], where)
        state.break_flips(out[position], f"{where} batch axis (both operands carry the units)")
        position += 1
    for source in [lhs[a] for a in lhs_free] + [rhs[b] for b in rhs_free]:
        state.merge(source, out[position], where)
        position += 1


def _conv(state, eqn, ins, outs, where):
    (lhs, rhs), (out,) = ins, outs
    numbers = eqn.params.get("dimension_numbers")
    if not hasattr(numbers, "lhs_spec"):
        return _unknown_rule(state, eqn, ins, outs, where)
    lhs_spec, rhs_spec, out_spec = numbers.lhs_spec, numbers.rhs_spec, numbers.out_spec
    for spec, labels in ((lhs_spec, lhs), (rhs_spec, rhs), (out_spec, out)):
        for axis in spec[2:]:
            state.break_node(labels[axis], "spatial axis of a convolution")
    groups = eqn.params.get("feature_group_count", 1)
    batch_groups = eqn.params.get("batch_group_count", 1)
    if batch_groups == 1:
        state.merge(lhs[lhs_spec[0]], out[out_spec[0]], where)
    else:
        for node in (lhs[lhs_spec[0]], out[out_spec[0]], rhs[rhs_spec[0]]):
            state.break_node(node, f"grouped convolution (batch_group_count={batch_groups})")
    if groups == 1 and batch_groups == 1:
        state.merge(lhs[lhs_spec[1]], rhs[rhs_spec[1]], where)
        state.merge(rhs[rhs_spec[0]], out[out_spec[1]], where)
    else:
        reason = f"grouped convolution (feature_group_count={groups}) is not analysed"
        for node in (lhs[lhs_spec[1]], rhs[rhs_spec[1]], rhs[rhs_spec[0]], out[out_spec[1]]):
            state.break_node(node, reason)


def _reduce_window(kind: str):
    def rule(state, eqn, ins, outs, where):
        params = eqn.params
        for axis, (node, target) in enumerate(zip(ins[0], outs[0])):
            untouched = (
                params["window_dimensions"][axis] == 1
                and params["window_strides"][axis] == 1
                and tuple(params["padding"][axis]) == (0, 0)
                and params["base_dilation"][axis] == 1
                and params["window_dilation"][axis] == 1
            )
            if untouched:
                state.merge(node, target, where)
                if kind != "sum":
                    state.break_flips(target, where)
            else:
                state.break_node(node, f"{where} window along the axis")
                state.break_node(target, f"{where} window along the axis")

    return rule


_ODD_UNARY = ("neg", "sign", "tanh", "sin", "tan", "asin", "atan", "sinh", "asinh", "atanh", "erf",
              "erf_inv", "cbrt", "copy", "copy_p", "convert_element_type", "reduce_precision",
              "stop_gradient", "round", "integer_pow", "real")
_EVEN_UNARY = ("exp", "exp2", "log", "log1p", "expm1", "logistic", "abs", "sqrt", "rsqrt", "cos",
               "cosh", "acos", "acosh", "floor", "ceil", "is_finite", "not", "square", "erfc",
               "lgamma", "digamma", "imag", "population_count", "clz")
_NOT_ODD_NARY = ("max", "min", "pow", "atan2", "rem", "nextafter", "eq", "ne", "lt", "le", "gt",
                 "ge", "and", "or", "xor", "clamp", "shift_left", "shift_right_logical",
                 "shift_right_arithmetic", "complex")

_RULES: dict[str, Callable] = {
    **{name: _elementwise("odd") for name in _ODD_UNARY},
    **{name: _elementwise("even") for name in _EVEN_UNARY + _NOT_ODD_NARY},
    **{name: _elementwise("add") for name in ("add", "sub", "add_any")},
    **{name: _elementwise("mul") for name in ("mul", "div")},
    "select_n": _elementwise("select"),
    "iota": _constant_rule,
    "broadcast_in_dim": _broadcast_in_dim,
    "reshape": _reshape,
    "transpose": _transpose,
    "slice": _slice,
    "squeeze": _squeeze,
    "reduce_sum": _reduce("sum"),
    "reduce_max": _reduce("max"),
    "reduce_min": _reduce("max"),
    "reduce_prod": _reduce("max"),
    "reduce_and": _reduce("max"),
    "reduce_or": _reduce("max"),
    "argmax": _reduce("arg"),
    "argmin": _reduce("arg"),
    "cumsum": _cumulative("sum"),
    "cumprod": _cumulative("max"),
    "cummax": _cumulative("max"),
    "cummin": _cumulative("max"),
    "cumlogsumexp": _cumulative("max"),
    "dot_general": _dot_general,
    "conv_general_dilated": _conv,
    "reduce_window_sum": _reduce_window("sum"),
    "reduce_window_max": _reduce_window("max"),
    "reduce_window_min": _reduce_window("max"),
}


# ---- resolution ------------------------------------------------------------------------------
def _settle_composites(state: _State) -> dict[int, tuple[int, ...]]:
    """Reconcile the reshapes; returns {composite root: segment nodes}.

    A composite class (an axis that is a product of other axes) is never a factor by itself: it
    is permuted only through its segments. Two factorisations of one class with the same segment
    sizes name the same sub-positions, so their segments are merged pairwise (one permutation must
    act on both, e.g. GroupNorm's statistics broadcast back over the channels of a group). The
    class is broken, with all its segments, when its factorisations differ in sizes, when it
    contains one of its own segments, or when a segment is itself a composite; a broken composite
    breaks its segments. Repeated until nothing changes.
    """
    while True:
        changed = False
        by_root: dict[int, list[tuple[int, tuple[int, ...], str]]] = collections.defaultdict(list)
        for node, segments, where in state.composites:
            by_root[state.find(node)].append((node, segments, where))
        composite_roots = set(by_root)
        settled = {}
        for root, definitions in by_root.items():
            _, first, where = definitions[0]
            sizes = {tuple(state.size[s] for s in segments) for _, segments, _ in definitions}
            reason = None
            if root == _DATA:
                reason = f"{where} merges it into an axis that is not permutable"
            elif len(sizes) > 1:
                reason = f"{where}: the axis is split in two different ways {sorted(sizes)}"
            else:
                for _, segments, _ in definitions[1:]:
                    for a, b in zip(first, segments):
                        if state.find(a) != state.find(b):
                            state.union(a, b)
                            changed = True
                roots = [state.find(s) for s in first]
                if any(r == state.find(root) or (r in composite_roots and r != _DATA) for r in roots):
                    reason = f"{where}: nested reshapes are not analysed"
            if reason is None:
                settled[root] = first
                continue
            nodes = [s for _, segments, _ in definitions for s in segments] + [definitions[0][0]]
            for node in nodes:
                if not state.is_broken(node):
                    state.break_node(node, reason)
                    changed = True
        if not changed:
            return settled


def _resolve(state: _State) -> SymmetryReport:
    composites = _settle_composites(state)
    flip_reason: dict[int, str] = {}
    for node, reason in state.flip_reason.items():
        flip_reason.setdefault(state.find(node), reason)
    for root, segments in composites.items():  # flips of a segment act on the composite axis too
        if root in flip_reason:
            for segment in segments:
                flip_reason.setdefault(state.find(segment), flip_reason[root])

    classes: dict[int, list[int]] = collections.defaultdict(list)
    for node in range(1, len(state.parent)):
        classes[state.find(node)].append(node)

    members: dict[int, set[Member]] = collections.defaultdict(set)
    for root, nodes in classes.items():
        params_here = [n for n in nodes if n in state.param_axes]
        if (root == _DATA or root in composites or not params_here or len(params_here) == len(nodes)
                or state.size[root] <= 1):
            continue
        for node in params_here:
            _, path, axis = state.param_axes[node]
            members[root].add(Member(path, axis, 1))
    for root, segments in composites.items():
        params_here = [n for n in classes[root] if n in state.param_axes]
        for position, segment in enumerate(segments):
            factor = state.find(segment)
            if factor == _DATA or state.size[segment] <= 1:
                continue
            if not any(n not in state.param_axes for n in classes[factor]) and factor not in members:
                continue
            inner = math.prod(state.size[s] for s in segments[position + 1:])
            for node in params_here:
                _, path, axis = state.param_axes[node]
                members[factor].add(Member(path, axis, int(inner)))

    leaf_order = {path: index for index, path, _ in state.param_axes.values()}
    leaf_rank = collections.Counter(path for _, path, _ in state.param_axes.values())
    leaf_sizes = {(path, axis): state.size[node] for node, (_, path, axis) in state.param_axes.items()}
    factors, used_names, covered = [], set(), set()
    for root in sorted(members, key=lambda r: min((leaf_order[p], a, -i) for p, a, i in members[r])):
        ordered = tuple(sorted(members[root], key=lambda m: (leaf_order[m[0]], m[1], -m[2])))
        name = _factor_name(ordered, leaf_rank, used_names)
        reason = flip_reason.get(root)
        size = int(state.size[root])
        outers = tuple(leaf_sizes[(path, axis)] // (size * inner) for path, axis, inner in ordered)
        factors.append(InferredFactor(name, size, ordered, reason is None, reason, outers))
        covered.update((path, axis) for path, axis, _ in ordered)

    broken, break_reasons = [], state.break_reasons()
    for node, (index, path, axis) in sorted(state.param_axes.items(), key=lambda item: item[1]):
        if (path, axis) in covered or state.size[node] <= 1:
            continue
        root = state.find(node)
        if root == _DATA:
            reason = break_reasons.get(node, "not permutable")
        elif root in composites:
            reason = "a reshape of it has no permutable segment"
        elif len(classes[root]) == sum(1 for n in classes[root] if n in state.param_axes):
            reason = "touches no intermediate array (unused, or only summed over)"
        else:
            reason = "not permutable"
        broken.append(BrokenAxis(path, axis, int(state.size[node]), reason))
    return SymmetryReport(tuple(factors), tuple(broken))


def _factor_name(members: tuple[Member, ...], leaf_rank, used: set) -> str:
    """``"Dense_0/kernel:1"``: the first member that is the last axis of a leaf of rank >= 2 (a
    layer's output units, whatever its name), else the first on a leaf of rank >= 2, else the first."""
    path, axis, inner = next(
        (m for m in members if leaf_rank[m[0]] >= 2 and m[1] == leaf_rank[m[0]] - 1),
        next((m for m in members if leaf_rank[m[0]] >= 2), members[0]),
    )
    name = f"{path}:{axis}" if inner == 1 else f"{path}:{axis}/{inner}"
    base, suffix = name, 2
    while name in used:
        name, suffix = f"{base}#{suffix}", suffix + 1
    used.add(name)
    return name
