"""The permutation symmetry group of an MLP and its action on weight space.

For an MLP with hidden widths d_1..d_{L-1} the group is G = S_{d_1} x ... x S_{d_{L-1}} with
|G| = prod_l d_l!. An element g = (tau_1, ..., tau_{L-1}) is stored as a tuple of int32 index
arrays. The action is a gather (Gelberg et al., 2024, Section 2): unit i of hidden layer l after
the action is unit ``tau_l[i]`` before it,

    (g.w):  W_l[:, i] <- W_l[:, tau_l[i]],  b_l[i] <- b_l[tau_l[i]],  W_{l+1}[i, :] <- W_{l+1}[tau_l[i], :].

It is linear and norm preserving, and f_{g.w} = f_w for any pointwise activation. With this
convention ``act(compose(g, h), w) == act(g, act(h, w))``, i.e. ``compose(g, h)[l] = h[l][g[l]]``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from symvi_jax import nets
from symvi_jax.types import ArrayTree, Permutation, PRNGKey

__all__ = ["PermutationGroup", "MAX_ELEMENTS"]

#: ``elements()`` refuses groups larger than this (8! = 40320 fits, 9! does not).
MAX_ELEMENTS = 50_000


@dataclasses.dataclass(frozen=True)
class PermutationGroup:
    """Hidden-unit permutations of a Dense chain. Hashable, so it can be a static argument.

    Attributes:
      widths: hidden widths (d_1, ..., d_{L-1}).
      layer_names: the L Dense layers, in order.
    """

    widths: tuple[int, ...]
    layer_names: tuple[str, ...]

    def __post_init__(self):
        widths, names = self.widths, self.layer_names
        if not isinstance(widths, (tuple, list)) or not all(
            isinstance(d, (int, np.integer)) and not isinstance(d, (bool, np.bool_)) for d in widths
        ):
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

    @classmethod
    def from_params(cls, params: ArrayTree) -> "PermutationGroup":
        """Infer the group from a Dense-chain params dict (validated by ``nets.dense_chain``)."""
        names, widths = nets.dense_chain(params)
        return cls(widths=tuple(widths[1:-1]), layer_names=tuple(names))

    # ---- size ----------------------------------------------------------------------------------
    @property
    def num_hidden_layers(self) -> int:
        return len(self.widths)

    def order(self) -> int:
        """|G| = prod_l d_l! as an exact Python integer."""
        return math.prod(math.factorial(d) for d in self.widths)

    def log_order(self) -> float:
        """log |G| = sum_l log d_l!."""
        return float(sum(math.lgamma(d + 1) for d in self.widths))

    # ---- elements ------------------------------------------------------------------------------
    def identity(self) -> Permutation:
        return tuple(jnp.arange(d, dtype=jnp.int32) for d in self.widths)

    def sample(self, rng_key: PRNGKey, num: Optional[int] = None) -> Permutation:
        """A uniform element, or ``num`` i.i.d. uniform elements stacked on a leading axis."""
        if num is not None and (not isinstance(num, (int, np.integer)) or isinstance(num, bool) or num < 1):
            raise ValueError(f"num must be None or a positive int, got {num!r}")
        keys = jax.random.split(rng_key, max(len(self.widths), 1))
        if num is None:
            return tuple(jax.random.permutation(k, d).astype(jnp.int32) for k, d in zip(keys, self.widths))
        return tuple(
            jax.vmap(lambda k, d=d: jax.random.permutation(k, d).astype(jnp.int32))(jax.random.split(k, num))
            for k, d in zip(keys, self.widths)
        )

    def elements(self, max_elements: int = MAX_ELEMENTS) -> Permutation:
        """Every element, stacked on a leading axis of size |G| (identity first).

        Raises:
          ValueError: if |G| > ``max_elements``; sample elements with :meth:`sample` instead.
        """
        n = self.order()
        if n > max_elements:
            raise ValueError(
                f"the group has |G| = {n} elements (widths {self.widths}), more than max_elements = "
                f"{max_elements}; enumerate only small groups, and use group.sample(rng_key, num) "
                "(or an orbit estimator) for large ones"
            )
        per_layer = [np.array(list(itertools.permutations(range(d))), dtype=np.int32) for d in self.widths]
        if not per_layer:
            return ()
        grids = np.meshgrid(*[np.arange(len(p)) for p in per_layer], indexing="ij")
        return tuple(jnp.asarray(p[idx.reshape(-1)]) for p, idx in zip(per_layer, grids))

    # ---- group operations ----------------------------------------------------------------------
    def compose(self, g: Permutation, h: Permutation) -> Permutation:
        """The element with ``act(compose(g, h), w) == act(g, act(h, w))``."""
        return tuple(jnp.take_along_axis(hl, gl, axis=-1) for gl, hl in zip(g, h))

    def inverse(self, g: Permutation) -> Permutation:
        return tuple(jnp.argsort(gl, axis=-1).astype(jnp.int32) for gl in g)

    # ---- action --------------------------------------------------------------------------------
    def act(self, g: Permutation, params: ArrayTree) -> ArrayTree:
        """g.w for one element ``g`` and one (unbatched) params dict; vmap for batches.

        Leaves that are absent from ``params`` (held out with ``nets.partition``) are skipped;
        leaves outside the Dense chain are returned unchanged.
        """
        if len(g) != len(self.widths):
            raise ValueError(f"g must have one index array per hidden layer ({len(self.widths)}), got {len(g)}")
        for layer, (index, width) in enumerate(zip(g, self.widths)):
            if jnp.shape(index) != (width,):
                raise ValueError(
                    f"g[{layer}] must be one index array of shape ({width},) (vmap act for batches of "
                    f"elements), got shape {jnp.shape(index)}"
                )
            if not isinstance(index, jax.core.Tracer):
                values = np.asarray(index)
                if not np.issubdtype(values.dtype, np.integer) or not np.array_equal(np.sort(values), np.arange(width)):
                    raise ValueError(f"g[{layer}] must be a permutation of 0..{width - 1}, got {values.tolist()}")
        wrapped = isinstance(params, Mapping) and set(params.keys()) == {"params"}
        inner = params["params"] if wrapped else params
        out = dict(inner)
        last = len(self.layer_names) - 1
        for i, name in enumerate(self.layer_names):
            if name not in inner:
                continue
            rows = g[i - 1] if i > 0 else None
            cols = g[i] if i < last else None
            layer = dict(inner[name])
            if "kernel" in layer:
                kernel = layer["kernel"]
                if rows is not None:
                    kernel = jnp.take(kernel, rows, axis=0)
                if cols is not None:
                    kernel = jnp.take(kernel, cols, axis=1)
                layer["kernel"] = kernel
            if "bias" in layer and cols is not None:
                layer["bias"] = jnp.take(layer["bias"], cols, axis=0)
            out[name] = layer
        return {"params": out} if wrapped else out

    def is_invariant(self, tree: ArrayTree, *, atol: float = 0.0) -> bool:
        """Whether ``act(g, tree) == tree`` for every g in G (checked eagerly, on concrete values).

        S_d is generated by the transposition (0 1) and the cycle (0 1 ... d-1), so checking those
        two per layer decides invariance under the whole group without enumerating it.
        """
        leaves = jax.tree.leaves(tree)
        if any(isinstance(x, jax.core.Tracer) for x in leaves):
            raise ValueError("is_invariant needs concrete values; call it outside jit")
        if not leaves:
            return True
        with jax.ensure_compile_time_eval():  # stay eager even when called while tracing
            for layer, d in enumerate(self.widths):
                if d == 1:
                    continue
                swap = np.arange(d, dtype=np.int32)
                swap[[0, 1]] = [1, 0]
                cycle = np.roll(np.arange(d, dtype=np.int32), 1)
                for generator in (swap, cycle):
                    g = tuple(jnp.asarray(generator) if i == layer else jnp.arange(w, dtype=jnp.int32)
                              for i, w in enumerate(self.widths))
                    moved = self.act(g, tree)
                    same = jax.tree.map(
                        lambda a, b: bool(np.allclose(np.asarray(a), np.asarray(b), rtol=0, atol=atol)), moved, tree
                    )
                    if not all(jax.tree.leaves(same)):
                        return False
        return True
