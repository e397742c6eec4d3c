"""Weight-space symmetry groups of a network and their action on a params pytree.

A :class:`WeightSymmetry` is a product of *factors* G = G_1 x ... x G_F. Factor f has d_f units and
a list of *members*, ``(leaf_path, axis, inner)``: the axis of that leaf carries the units, viewed
as ``(outer, d_f, inner)`` (``inner = outer = 1`` for a plain unit axis; the channel of a flattened
``[H, W, C]`` feature map is the sub-axis with ``outer = H * W``, ``inner = 1``). Paths are the
"/"-joined keys or indices of the pytree (``"Dense_0/kernel"``, ``"layers/2/w"``), so the pytree
may be nested dicts, lists, tuples or registered NamedTuple/dataclass nodes.

An element of a factor is a *signed index* array ``v`` of shape ``(d,)``: unit ``i`` of g.w is unit
``p[i]`` of w times ``s[i]``, where ``p[i] = v[i]`` and ``s[i] = +1`` for ``v[i] >= 0``, and
``p[i] = ~v[i] = -v[i] - 1``, ``s[i] = -1`` for ``v[i] < 0``. A factor without sign flips only ever
has ``v = p``, so its elements are plain permutations. An element of G is the tuple of its
factors' arrays. The action is a gather (Gelberg et al., 2024, Section 2): for every member,

    (g.w)[..., (o, i, c), ...] = s[i] * w[..., (o, p[i], c), ...],

applied for every factor that touches the leaf. With this convention
``act(compose(g, h), w) == act(g, act(h, w))``; ``compose(g, h)`` has ``p = p_h[p_g]`` and
``s = s_g * s_h[p_g]``. Sign flips are a symmetry of odd activations (tanh): flipping a hidden
unit's incoming weights, bias and outgoing weights leaves f unchanged.

Ways to build one:

* :meth:`WeightSymmetry.from_axes` -- an explicit spec ``{factor: [(leaf_path, axis[, inner]), ...]}``
  (after git re-basin's ``PermutationSpec``), validated against the params' shapes.
* ``symvi_jax.infer_symmetry`` -- read off the network's jaxpr.
* :meth:`PermutationGroup.from_params` -- the hidden units of a Dense chain named ``Dense_0`` ..
  ``Dense_{L-1}`` (the special case this library started with).

Every group is a frozen, hashable value (a static argument under jit). :meth:`WeightSymmetry.check`
tests f(g.w) == f(w) numerically; nothing else can tell a wrong spec from a right one.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from symvi_jax import _checks
from symvi_jax import nets, prng
from symvi_jax.types import Array, ArrayTree, Permutation, PRNGKey

__all__ = ["Member", "Factor", "WeightSymmetry", "PermutationGroup", "MAX_ELEMENTS", "leaf_paths", "as_symmetry",
           "check_held_out", "decode_signed", "move_units", "split_variables"]

#: ``elements()`` refuses groups larger than this (8! = 40320 fits, 9! does not).
MAX_ELEMENTS = 50_000


class Member(NamedTuple):
    """One place a factor's units live: ``leaf_path``'s ``axis``, viewed as ``(outer, d, inner)``."""

    path: str
    axis: int
    inner: int = 1


@dataclasses.dataclass(frozen=True)
class Factor:
    """d units permuted (and, with ``sign_flips``, negated) together along every member axis."""

    name: str
    size: int
    members: tuple[Member, ...]
    sign_flips: bool = False

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"factor name must be a non-empty string, got {self.name!r}")
        _checks.positive_int(self.size, f"factor {self.name!r}: size")
        members = tuple(Member(*m) for m in self.members)
        for m in members:
            if not isinstance(m.path, str) or not _checks.is_int(m.axis) or not _checks.is_int(m.inner) or m.inner < 1:
                raise ValueError(f"factor {self.name!r}: a member must be (leaf_path: str, axis: int, inner: int >= 1), got {m!r}")
        if len(set(members)) != len(members):
            raise ValueError(f"factor {self.name!r} lists a member twice: {members}")
        if not members:
            raise ValueError(f"factor {self.name!r} has no members")
        object.__setattr__(self, "size", int(self.size))
        object.__setattr__(self, "members", tuple(Member(m.path, int(m.axis), int(m.inner)) for m in members))
        object.__setattr__(self, "sign_flips", bool(self.sign_flips))

    def order(self) -> int:
        """d! (times 2^d with sign flips)."""
        return math.factorial(self.size) * (2**self.size if self.sign_flips else 1)

    def log_order(self) -> float:
        return math.lgamma(self.size + 1) + (self.size * math.log(2.0) if self.sign_flips else 0.0)


def _key_name(entry) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def leaf_paths(tree: ArrayTree) -> dict[str, Any]:
    """``{"a/b/0": leaf}`` for every leaf of a pytree, in flattening order."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {"/".join(_key_name(k) for k in path): leaf for path, leaf in flat}


def decode_signed(v: Array) -> tuple[Array, Array]:
    """A signed index array -> (unit indices p, signs s in {+1, -1} as int32)."""
    negative = v < 0
    return jnp.where(negative, ~v, v), jnp.where(negative, -1, 1).astype(jnp.int32)


def _encode(p: Array, s: Array) -> Array:
    return jnp.where(s < 0, ~p, p).astype(jnp.int32)


def move_units(x: Array, member: Member, size: int, index: Array, signs: Optional[Array]) -> Array:
    """Gather ``x`` along the member's unit sub-axis by ``index`` and multiply by ``signs``."""
    shape = x.shape
    outer = shape[member.axis] // (size * member.inner)
    view = x.reshape(shape[: member.axis] + (outer, size, member.inner) + shape[member.axis + 1 :])
    view = jnp.take(view, index, axis=member.axis + 1)
    if signs is not None:
        bshape = [1] * view.ndim
        bshape[member.axis + 1] = size
        view = view * signs.reshape(bshape).astype(view.dtype)
    return view.reshape(shape)


@dataclasses.dataclass(frozen=True)
class WeightSymmetry:
    """A product of unit-permutation factors acting on a params pytree (module docstring).

    Hashable, so it can be a static argument under jit.

    Attributes:
      factors: the factors, in order; an element of G is one signed index array per factor.
    """

    factors: tuple[Factor, ...]

    def __post_init__(self):
        factors = self.factors
        if not isinstance(factors, (tuple, list)) or not all(isinstance(f, Factor) for f in factors):
            raise ValueError(f"factors must be a tuple of Factor, got {factors!r:.200}")
        names = [f.name for f in factors]
        if len(set(names)) != len(names):
            raise ValueError(f"factor names must be distinct, got {names}")
        seen: dict = {}
        for f in factors:
            for m in f.members:
                where = (m.path, m.axis, m.inner)
                if where in seen:
                    raise ValueError(
                        f"leaf {m.path!r} axis {m.axis} (inner {m.inner}) belongs to factor {seen[where]!r} and to "
                        f"factor {f.name!r}; one sub-axis can carry one factor only"
                    )
                seen[where] = f.name
        object.__setattr__(self, "factors", tuple(factors))

    # ---- construction ----------------------------------------------------------------------------
    @classmethod
    def from_axes(
        cls,
        params: ArrayTree,
        axes: Mapping[str, Sequence[tuple]],
        *,
        sign_flips: Iterable[str] = (),
        sizes: Optional[Mapping[str, int]] = None,
    ) -> "WeightSymmetry":
        """A group from an explicit spec, validated against the shapes of ``params``.

        Args:
          params: the network's params pytree (only shapes are read).
          axes: ``{factor_name: [(leaf_path, axis), (leaf_path, axis, inner), ...]}``. A 2-tuple
            says the whole axis is the factor's d units; a 3-tuple says the axis is viewed as
            ``(outer, d, inner)``.
          sign_flips: names of factors whose units may also flip sign (odd activations only;
            :meth:`check` catches a wrong claim).
          sizes: d per factor, needed only for a factor all of whose members are 3-tuples.

        Raises:
          ValueError: naming the factor, leaf and axis of a path that is not in ``params``, an axis
            out of range, or an axis whose size disagrees between members.
        """
        if not isinstance(axes, Mapping) or not axes:
            raise ValueError(f"axes must be a non-empty dict {{factor_name: [(leaf_path, axis), ...]}}, got {axes!r:.200}")
        sign_flips = tuple(sign_flips) if not isinstance(sign_flips, str) else (sign_flips,)
        unknown = [n for n in sign_flips if n not in axes]
        if unknown:
            raise ValueError(f"sign_flips names factors {unknown} that are not in axes (factors: {list(axes)})")
        sizes = dict(sizes or {})
        factors = []
        for name, spec in axes.items():
            if isinstance(spec, (str, tuple)) and spec and isinstance(spec[0], str):
                spec = [spec]  # a single member
            if not isinstance(spec, Sequence) or not spec:
                raise ValueError(f"axes[{name!r}] must be a non-empty list of (leaf_path, axis[, inner]), got {spec!r}")
            members = []
            for entry in spec:
                if not isinstance(entry, (tuple, list)) or len(entry) not in (2, 3):
                    raise ValueError(f"axes[{name!r}]: each member must be (leaf_path, axis) or (leaf_path, axis, inner), got {entry!r}")
                members.append(entry)
            size = sizes.get(name)
            if size is None:
                full = [(p, a) for p, a, *rest in members if not rest]
                if not full:
                    raise ValueError(f"factor {name!r} has only sub-axis members (3-tuples); give its unit count in sizes={{{name!r}: d}}")
                path, axis = full[0]
                shape = _leaf_shape(params, path, name)
                size = shape[_normalise_axis(axis, len(shape), name, path)]
            normalised = []
            for p, a, *rest in members:
                shape = _leaf_shape(params, p, name)
                a = _normalise_axis(a, len(shape), name, p)
                if not rest and shape[a] != size:
                    raise ValueError(
                        f"factor {name!r}: leaf {p!r} axis {a} has size {shape[a]}, but the factor has d = {size} units "
                        f"(set by its first whole-axis member); sizes must agree, or give (leaf_path, axis, inner) "
                        f"for a sub-axis"
                    )
                normalised.append(Member(p, a, int(rest[0]) if rest else 1))
            factors.append(Factor(str(name), int(size), tuple(normalised), sign_flips=name in sign_flips))
        group = WeightSymmetry(tuple(factors))
        group.check_shapes(params)
        return group

    # ---- size ----------------------------------------------------------------------------------
    @property
    def sizes(self) -> tuple[int, ...]:
        """d_f for every factor."""
        return tuple(f.size for f in self.factors)

    @property
    def num_factors(self) -> int:
        return len(self.factors)

    @property
    def has_sign_flips(self) -> bool:
        return any(f.sign_flips for f in self.factors)

    def order(self) -> int:
        """|G| = prod_f d_f! (times 2^{d_f} for factors with sign flips), an exact Python int."""
        return math.prod(f.order() for f in self.factors)

    def log_order(self) -> float:
        """log |G|."""
        return float(sum(f.log_order() for f in self.factors))

    # ---- layout --------------------------------------------------------------------------------
    def members_by_leaf(self) -> dict[str, tuple[tuple[int, Member], ...]]:
        """``{leaf_path: ((factor_index, member), ...)}`` for every leaf some factor touches."""
        out: dict = {}
        for index, f in enumerate(self.factors):
            for m in f.members:
                out.setdefault(m.path, []).append((index, m))
        return {k: tuple(v) for k, v in out.items()}

    def check_shapes(self, params: ArrayTree, *, allow_missing: bool = False) -> None:
        """Raise ``ValueError`` unless every member's leaf exists and its axis holds the factor's units.

        ``allow_missing=True`` accepts leaves absent from ``params`` (a tree split with
        ``nets.partition``).
        """
        leaves = leaf_paths(_unwrap_for(self, params))
        for f in self.factors:
            for m in f.members:
                if m.path not in leaves:
                    if allow_missing:
                        continue
                    raise ValueError(
                        f"factor {f.name!r}: leaf {m.path!r} is not in params; the leaves are {sorted(leaves)[:20]}"
                    )
                shape = np.shape(leaves[m.path])
                if not 0 <= m.axis < len(shape):
                    raise ValueError(f"factor {f.name!r}: leaf {m.path!r} has shape {shape}, no axis {m.axis}")
                n = shape[m.axis]
                if n % (f.size * m.inner) != 0 or n == 0:
                    raise ValueError(
                        f"factor {f.name!r}: leaf {m.path!r} axis {m.axis} has size {n}, which must be a multiple of "
                        f"d * inner = {f.size} * {m.inner} (the factor's units), but is not"
                    )

    # ---- elements ------------------------------------------------------------------------------
    def identity(self) -> Permutation:
        return tuple(jnp.arange(d, dtype=jnp.int32) for d in self.sizes)

    def sample(self, rng_key: PRNGKey, num: Optional[int] = None) -> Permutation:
        """A uniform element, or ``num`` i.i.d. uniform elements stacked on a leading axis."""
        if num is not None and (not _checks.is_int(num) or num < 1):
            raise ValueError(f"num must be None or a positive int, got {num!r}")
        # one key per factor, split as PermutationGroup always split it, so a Dense chain's draws
        # (and every result computed from them) are the same as before WeightSymmetry existed
        keys = prng.split(rng_key, max(len(self.factors), 1))
        out = []
        for key, f in zip(keys, self.factors):
            def one(k, f=f):
                p = prng.permutation(k, f.size).astype(jnp.int32)
                if not f.sign_flips:
                    return p
                flips = jax.random.bernoulli(jax.random.fold_in(k, 1), 0.5, (f.size,))
                return _encode(p, jnp.where(flips, -1, 1))

            out.append(one(key) if num is None else jax.vmap(one)(prng.split(key, num)))
        return tuple(out)

    def elements(self, max_elements: int = MAX_ELEMENTS) -> Permutation:
        """Every element, stacked on a leading axis of size |G| (identity first).

        Raises:
          ValueError: if |G| > ``max_elements``; sample elements with :meth:`sample` instead.
        """
        n = self.order()
        if n > max_elements:
            raise ValueError(
                f"the group has |G| = {n} elements (factor sizes {self.sizes}), more than max_elements = "
                f"{max_elements}; enumerate only small groups, and use group.sample(rng_key, num) "
                "(or an orbit estimator) for large ones"
            )
        per_factor = []
        for f in self.factors:
            perms = np.array(list(itertools.permutations(range(f.size))), dtype=np.int32)
            if f.sign_flips:
                signs = np.array(list(itertools.product((1, -1), repeat=f.size)), dtype=np.int32)
                perms = np.where(signs[None, :, :] < 0, ~perms[:, None, :], perms[:, None, :]).reshape(-1, f.size)
            per_factor.append(perms)
        if not per_factor:
            return ()
        grids = np.meshgrid(*[np.arange(len(p)) for p in per_factor], indexing="ij")
        return tuple(jnp.asarray(p[idx.reshape(-1)]) for p, idx in zip(per_factor, grids))

    # ---- group operations ----------------------------------------------------------------------
    def compose(self, g: Permutation, h: Permutation) -> Permutation:
        """The element with ``act(compose(g, h), w) == act(g, act(h, w))``."""
        out = []
        for f, gf, hf in zip(self.factors, g, h):
            if not f.sign_flips:
                out.append(jnp.take_along_axis(hf, gf, axis=-1))
                continue
            pg, sg = decode_signed(gf)
            ph, sh = decode_signed(hf)
            out.append(_encode(jnp.take_along_axis(ph, pg, axis=-1), sg * jnp.take_along_axis(sh, pg, axis=-1)))
        return tuple(out)

    def inverse(self, g: Permutation) -> Permutation:
        out = []
        for f, gf in zip(self.factors, g):
            if not f.sign_flips:
                out.append(jnp.argsort(gf, axis=-1).astype(jnp.int32))
                continue
            p, s = decode_signed(gf)
            p_inv = jnp.argsort(p, axis=-1).astype(jnp.int32)
            out.append(_encode(p_inv, jnp.take_along_axis(s, p_inv, axis=-1)))
        return tuple(out)

    # ---- action --------------------------------------------------------------------------------
    def _check_element(self, g: Permutation) -> None:
        if not isinstance(g, (tuple, list)) or len(g) != len(self.factors):
            raise ValueError(f"g must have one index array per factor ({len(self.factors)}), got {type(g).__name__} of length "
                             f"{len(g) if hasattr(g, '__len__') else '?'}")
        for f, index in zip(self.factors, g):
            if jnp.shape(index) != (f.size,):
                raise ValueError(
                    f"g for factor {f.name!r} must be one index array of shape ({f.size},) (vmap act for batches of "
                    f"elements), got shape {jnp.shape(index)}"
                )
            if not isinstance(index, jax.core.Tracer):
                values = np.asarray(index)
                if not np.issubdtype(values.dtype, np.integer):
                    raise ValueError(f"g for factor {f.name!r} must be integer, got {values.dtype}")
                units = np.where(values < 0, ~values, values) if f.sign_flips else values
                if not np.array_equal(np.sort(units), np.arange(f.size)):
                    raise ValueError(f"g for factor {f.name!r} must be a permutation of 0..{f.size - 1}"
                                     f"{' (signed: ~i flips unit i)' if f.sign_flips else ''}, got {values.tolist()}")

    def act(self, g: Permutation, params: ArrayTree) -> ArrayTree:
        """g.w for one element ``g`` and one (unbatched) params pytree; vmap for batches.

        Leaves no factor touches are returned unchanged; member leaves absent from ``params``
        (held out with ``nets.partition``) are skipped.
        """
        self._check_element(g)
        decoded = [(decode_signed(v) if f.sign_flips else (v, None)) for f, v in zip(self.factors, g)]
        by_leaf = self.members_by_leaf()
        inner, wrap = split_variables(self, params)

        def move(path, x):
            name = "/".join(_key_name(k) for k in path)
            for index, member in by_leaf.get(name, ()):
                p, s = decoded[index]
                x = move_units(x, member, self.factors[index].size, p, s)
            return x

        return wrap(jax.tree_util.tree_map_with_path(move, inner))

    def is_invariant(self, tree: ArrayTree, *, atol: float = 0.0) -> bool:
        """Whether ``act(g, tree) == tree`` for every g in G (checked eagerly, on concrete values).

        S_d is generated by the transposition (0 1) and the cycle (0 1 ... d-1), and with sign
        flips by those and the flip of unit 0, so checking the generators of each factor decides
        invariance under the whole group without enumerating it. Leaves that are scalars (a
        per-leaf prior scale given as one number) are invariant.
        """
        leaves = jax.tree.leaves(tree)
        if any(isinstance(x, jax.core.Tracer) for x in leaves):
            raise ValueError("is_invariant needs concrete values; call it outside jit")
        if not leaves:
            return True
        full = _broadcast_scalars(self, tree)
        with jax.ensure_compile_time_eval():  # stay eager even when called while tracing
            for g in self._generators():
                moved = self.act(g, full)
                same = jax.tree.map(
                    lambda a, b: bool(np.allclose(np.asarray(a), np.asarray(b), rtol=0, atol=atol)), moved, full
                )
                if not all(jax.tree.leaves(same)):
                    return False
        return True

    def _generators(self):
        for i, f in enumerate(self.factors):
            d = f.size
            gens = []
            if d > 1:
                swap = np.arange(d, dtype=np.int32)
                swap[[0, 1]] = [1, 0]
                gens += [swap, np.roll(np.arange(d, dtype=np.int32), 1)]
            if f.sign_flips:
                flip = np.arange(d, dtype=np.int32)
                flip[0] = ~flip[0]
                gens.append(flip)
            for gen in gens:
                yield tuple(jnp.asarray(gen) if j == i else jnp.arange(h.size, dtype=jnp.int32)
                            for j, h in enumerate(self.factors))

    # ---- numerical check -----------------------------------------------------------------------
    def check(
        self,
        apply_fn: Callable[[ArrayTree, Any], Any],
        params: ArrayTree,
        inputs: Any,
        *,
        rng_key: Optional[PRNGKey] = None,
        num_elements: int = 3,
        tolerance: Optional[float] = None,
    ) -> float:
        """Raise ``ValueError`` unless f(g.w) == f(w) for sampled non-identity g of every factor.

        Each factor is tested alone (other factors at the identity), with ``num_elements`` random
        elements that move at least one unit, at ``params`` and at a perturbed copy of it (biases
        at zero and normalisation scales at one, as flax initialises them, hide many a broken
        symmetry). The tolerance defaults to sqrt(eps) * (1 + max |f(w)|) in the output's dtype.

        Returns:
          The largest |f(g.w) - f(w)| seen (for reporting).

        Raises:
          ValueError: naming the factor and the largest deviation found.
        """
        if not callable(apply_fn):
            raise ValueError(f"apply_fn must be callable (params, inputs) -> outputs, got {type(apply_fn).__name__}")
        _checks.positive_int(num_elements, "num_elements")
        self.check_shapes(params, allow_missing=True)  # a trainable subset leaves held-out leaves in place
        rng_key = jax.random.key(0) if rng_key is None else rng_key
        rng = np.random.default_rng(np.asarray(jax.random.randint(rng_key, (), 0, 2**31 - 1)).item())
        perturbed = _perturb(rng, params)
        outputs = jax.jit(lambda p: apply_fn(p, inputs))
        moved_outputs = jax.jit(lambda g, p: apply_fn(self.act(g, p), inputs))
        worst = 0.0
        for index, f in enumerate(self.factors):
            elements = _moving_elements(rng, self, index, num_elements)
            for point in (params, perturbed):
                reference = jax.tree.leaves(outputs(point))
                scale = max([float(np.nanmax(np.abs(np.asarray(r)))) for r in reference if np.size(r)] + [0.0])
                dtype = jnp.result_type(*reference) if reference else jnp.float32
                eps = float(jnp.finfo(dtype).eps) if jnp.issubdtype(dtype, jnp.floating) else 0.0
                tol = tolerance if tolerance is not None else math.sqrt(eps) * (1.0 + scale)
                for g in elements:
                    moved = jax.tree.leaves(moved_outputs(g, point))
                    deviation = max([_max_deviation(a, b) for a, b in zip(moved, reference) if np.size(a)] + [0.0])
                    worst = max(worst, deviation)
                    if not deviation <= tol:
                        raise ValueError(
                            f"factor {f.name!r} (d = {f.size}{', with sign flips' if f.sign_flips else ''}) is not a "
                            f"symmetry of apply_fn: max |f(g.w) - f(w)| = {deviation:.3g} > tolerance {tol:.3g} for a "
                            f"sampled g; members: {[tuple(m) for m in f.members]}"
                        )
        return worst


def _leaf_shape(params, path: str, factor: str) -> tuple:
    leaves = leaf_paths(_strip_params(params, path))
    if path not in leaves:
        raise ValueError(f"factor {factor!r}: leaf {path!r} is not in params; the leaves are {sorted(leaves)[:20]}")
    return tuple(np.shape(leaves[path]))


def _normalise_axis(axis, ndim: int, factor: str, path: str) -> int:
    if not _checks.is_int(axis) or not -ndim <= axis < ndim:
        raise ValueError(f"factor {factor!r}: leaf {path!r} has {ndim} axes, axis {axis!r} is out of range")
    return int(axis) % ndim


def _strip_params(params, path: str):
    return params["params"] if nets.is_variables(params) and not path.startswith("params/") else params


def split_variables(group: WeightSymmetry, params):
    """Unwrap flax ``{"params": ...}`` variables when the group's paths are relative to the params."""
    wrapped = nets.is_variables(params) and not any(
        m.path.startswith("params/") for f in group.factors for m in f.members)
    if wrapped:
        return params["params"], lambda inner: {"params": inner}
    return params, lambda inner: inner


def _unwrap_for(group: WeightSymmetry, params):
    return split_variables(group, params)[0]


def _broadcast_scalars(group: WeightSymmetry, tree):
    """Scalar leaves on member paths are invariant; give them no axis to gather."""
    by_leaf = group.members_by_leaf()
    inner, wrap = split_variables(group, tree)

    def fix(path, x):
        name = "/".join(_key_name(k) for k in path)
        if name in by_leaf and np.ndim(x) <= max(m.axis for _, m in by_leaf[name]):
            if np.ndim(x) == 0:
                return None
            raise ValueError(f"leaf {name!r} has shape {np.shape(x)}, too few axes for the group's members "
                             f"{[tuple(m) for _, m in by_leaf[name]]}; give a scalar or the leaf's full shape")
        return x

    fixed = jax.tree_util.tree_map_with_path(fix, inner)
    return wrap(fixed)


def _max_deviation(a, b) -> float:
    """max |a - b|, with NaN in the same places on both sides counted as equal (inf if they differ)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    same_nan = np.isnan(a) & np.isnan(b)
    diff = np.where(same_nan, 0.0, np.abs(a - b))
    return float(np.max(np.where(np.isnan(diff), np.inf, diff)))


def _perturb(rng: np.random.Generator, params):
    """Move every leaf off its initial value, so zero biases and unit scales hide nothing.

    A leaf with negative entries gets noise of half its RMS plus 0.1; a leaf of positive entries
    (a variance, a scale) is multiplied by exp(0.3 z), so it stays positive. NumPy draws the noise:
    eager JAX would compile one program per leaf shape.
    """

    def move(x):
        if not jnp.issubdtype(jnp.result_type(x), jnp.floating) or not np.size(x):
            return x
        values = np.asarray(x)
        noise = rng.standard_normal(values.shape)
        if np.all(values > 0):
            moved = values * np.exp(0.3 * noise)
        else:
            moved = values + (0.5 * np.sqrt(np.mean(np.square(values, dtype=np.float64))) + 0.1) * noise
        return jnp.asarray(moved.astype(values.dtype))

    return jax.tree.map(move, params)


def _moving_elements(rng: np.random.Generator, group: WeightSymmetry, index: int, num: int) -> list:
    """``num`` elements that are the identity except on factor ``index``, where they move a unit."""
    f = group.factors[index]
    out = []
    for _ in range(num):
        p = rng.permutation(f.size).astype(np.int32)
        if f.size > 1 and np.array_equal(p, np.arange(f.size)):
            p = np.roll(p, 1)
        v = p
        if f.sign_flips:
            flips = rng.random(f.size) < 0.5
            if not flips.any():
                flips[rng.integers(f.size)] = True
            v = np.where(flips, ~p, p).astype(np.int32)
        out.append(tuple(jnp.asarray(v) if j == index else jnp.arange(h.size, dtype=jnp.int32)
                         for j, h in enumerate(group.factors)))
    return out


@dataclasses.dataclass(frozen=True)
class PermutationGroup(WeightSymmetry):
    """Hidden-unit permutations of a Dense chain ``Dense_0 .. Dense_{L-1}``: a :class:`WeightSymmetry`.

    Factor l permutes the outputs of layer l: the columns of ``Dense_l/kernel``, ``Dense_l/bias``
    and the rows of ``Dense_{l+1}/kernel``, so |G| = prod_l d_l!. Prefer ``infer_symmetry`` for a
    network written any other way; this class keeps code written against it working.

    Attributes:
      widths: hidden widths (d_1, ..., d_{L-1}).
      layer_names: the L Dense layers, in order.
    """

    widths: tuple[int, ...] = ()
    layer_names: tuple[str, ...] = ()
    factors: tuple[Factor, ...] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        widths, names = self.widths, self.layer_names
        if not isinstance(widths, (tuple, list)) or not all(_checks.is_int(d) for d in widths):
            raise ValueError(f"widths must be a tuple of positive ints, got {widths!r}")
        if any(d < 1 for d in widths):
            raise ValueError(f"widths must be positive, got {tuple(widths)}")
        if not isinstance(names, (tuple, list)) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"layer_names must be a tuple of strings, got {names!r}")
        if len(set(names)) != len(names):
            raise ValueError(f"layer_names must be distinct, got {tuple(names)}")
        if len(names) != len(widths) + 1:
            raise ValueError(
                f"layer_names must have one more entry than widths, got {len(names)} names "
                f"for {len(widths)} hidden widths"
            )
        # tuples of plain ints keep the group hashable (it is a static argument under jit)
        object.__setattr__(self, "widths", tuple(int(d) for d in widths))
        object.__setattr__(self, "layer_names", tuple(names))
        factors = tuple(
            Factor(names[l], int(d), (Member(f"{names[l]}/kernel", 1), Member(f"{names[l]}/bias", 0),
                                      Member(f"{names[l + 1]}/kernel", 0)))
            for l, d in enumerate(widths)
        )
        object.__setattr__(self, "factors", factors)
        super().__post_init__()

    @classmethod
    def from_params(cls, params: ArrayTree) -> "PermutationGroup":
        """The group of a Dense-chain params dict (validated by ``nets.dense_chain``)."""
        names, widths = nets.dense_chain(params)
        return cls(widths=tuple(widths[1:-1]), layer_names=tuple(names))

    @property
    def num_hidden_layers(self) -> int:
        return len(self.widths)

    def check_shapes(self, params: ArrayTree, *, allow_missing: bool = True) -> None:
        """See :meth:`WeightSymmetry.check_shapes`; a Dense chain's leaves may be held out (biases)."""
        super().check_shapes(params, allow_missing=allow_missing)


def check_held_out(group: WeightSymmetry, params: ArrayTree, frozen: Optional[ArrayTree] = None) -> None:
    """Check a group against the (trainable) ``params`` that q is built on, before the first step.

    Present member leaves must have the factor's units on their axes. A member leaf absent from
    ``params`` must be in ``frozen`` and invariant under the group there (a fixed leaf that the
    group moves breaks f(g.w) = f(w) for the trainable part); a Dense chain's absent biases
    (``use_bias=False``) are the one exception.

    Raises:
      ValueError: naming the leaf.
    """
    as_symmetry(group)
    group.check_shapes(params, allow_missing=True)
    present = leaf_paths(split_variables(group, params)[0])
    held = leaf_paths(split_variables(group, frozen)[0]) if frozen is not None else {}
    missing = sorted({m.path for f in group.factors for m in f.members if m.path not in present})
    for path in missing:
        if path in held:
            continue
        if isinstance(group, PermutationGroup) and path.endswith("/bias"):
            continue
        raise ValueError(
            f"the group moves leaf {path!r}, which is not in params; if it is held fixed (nets.partition), pass "
            "frozen=<the held-out leaves> so that its invariance can be checked, and take the group from the full "
            "params"
        )
    if held:
        by_leaf = group.members_by_leaf()
        for path in missing:
            if path not in held:
                continue
            one = {path: held[path]}  # a one-leaf tree whose key is the whole path
            moved = [m for _, m in by_leaf[path]]
            factors = tuple(f for f in group.factors if any(m in moved for m in f.members))
            only = WeightSymmetry(tuple(Factor(f.name, f.size, tuple(m for m in f.members if m.path == path),
                                               f.sign_flips) for f in factors))
            if not only.is_invariant(one):
                raise ValueError(
                    f"frozen leaf {path!r} is moved by the group (factors {[f.name for f in factors]}) but is not "
                    "invariant under it, so permuting the trainable leaves alone changes the function; unfreeze it or "
                    "give a group that does not move it"
                )


def as_symmetry(group, name: str = "group") -> WeightSymmetry:
    """Validate that ``group`` is a :class:`WeightSymmetry` (a ``PermutationGroup`` is one)."""
    if not isinstance(group, WeightSymmetry):
        raise ValueError(
            f"{name} must be a WeightSymmetry (from WeightSymmetry.from_axes, infer_symmetry or "
            f"PermutationGroup.from_params), got {type(group).__name__}"
        )
    return group
