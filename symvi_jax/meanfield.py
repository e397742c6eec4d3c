"""The mean-field Gaussian variational family q(w) = prod_i N(w_i; mu_i, sigma_i^2).

The state holds ``loc`` (mu) and ``raw_scale`` (rho), both shaped like the params tree. The
positivity map is

    sigma = SCALE_FLOOR + softplus(rho),   SCALE_FLOOR = 1e-7,

which is smooth, cannot reach zero (sigma >= 1e-7 even when softplus underflows in float32) and
cannot overflow (softplus(rho) ~ rho for large rho, unlike exp). Gradients of sigma with respect to
rho are sigmoid(rho) in (0, 1).

Functions (all pure, jit- and vmap-able):
  init(params, *, init_scale)             -> MeanFieldState
  scale(q)                                -> sigma tree
  standard_normal(rng_key, shape)         -> jax.random.normal's numbers, a smaller program
  sample(rng_key, q, num_samples)         -> params tree with a leading num_samples axis
  log_prob(q, params)                     -> log q(w), summed over all leaves
  entropy(q)                              -> H(q) = sum_i 0.5 log(2 pi e sigma_i^2)
  kl_to_normal(q, prior_scale)            -> KL(q || N(0, s^2 I)), closed form
  to_distrax(q)                           -> tree of distrax distributions (outside jit state)
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from symvi_jax import _checks, prng
from symvi_jax._kept import kept
from symvi_jax.types import Array, ArrayLike, ArrayTree, PRNGKey

__all__ = [
    "MeanFieldState",
    "SCALE_FLOOR",
    "init",
    "normal",
    "scale",
    "standard_normal",
    "sample",
    "log_prob",
    "entropy",
    "kl_to_normal",
    "to_distrax",
]

#: Smallest representable standard deviation; see the module docstring.
SCALE_FLOOR = 1e-7

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class MeanFieldState(NamedTuple):
    """Variational parameters: ``loc`` (mu) and ``raw_scale`` (rho), each shaped like params."""

    loc: ArrayTree
    raw_scale: ArrayTree


def _broadcast_like(value, tree: ArrayTree) -> ArrayTree:
    """A scalar becomes a tree shaped like ``tree``; a tree is returned as it is."""
    if isinstance(value, (int, float)) or (hasattr(value, "ndim") and value.ndim == 0):
        return jax.tree.map(lambda _: value, tree)
    return value


def inverse_softplus_scale(sigma: ArrayLike) -> Array:
    """rho such that SCALE_FLOOR + softplus(rho) = sigma (sigma > SCALE_FLOOR)."""
    x = jnp.asarray(sigma) - SCALE_FLOOR
    # log(expm1(x)) written stably: for large x it is x + log1p(-exp(-x)).
    return x + jnp.log(-jnp.expm1(-x))


def init(params: ArrayTree, *, init_scale: Union[float, ArrayTree]) -> MeanFieldState:
    """Centre q at ``params`` with every standard deviation equal to ``init_scale``.

    Args:
      params: the mean, e.g. ``MLP.init(...)["params"]`` (or the trainable part of it).
      init_scale: initial sigma, a positive float (or a tree of them shaped like params), larger
        than ``SCALE_FLOOR``.
    """
    _checks.positive(init_scale, "init_scale")
    for leaf in jax.tree.leaves(init_scale):
        if not isinstance(leaf, jax.core.Tracer) and np.any(np.asarray(leaf) <= SCALE_FLOOR):
            raise ValueError(f"init_scale must exceed SCALE_FLOOR = {SCALE_FLOOR}, got {init_scale!r}")
    loc = jax.tree.map(jnp.asarray, params)
    if not jax.tree.leaves(loc):
        raise ValueError("params has no leaves to put a variational distribution on")
    return normal(loc, init_scale)


def normal(loc: ArrayTree, scale: Union[float, ArrayTree]) -> MeanFieldState:
    """The state of N(loc, scale^2 I), e.g. an isotropic prior ``normal(zeros_like(params), s)``."""
    _checks.positive(scale, "scale")
    return MeanFieldState(
        loc=loc,
        raw_scale=jax.tree.map(
            lambda x, s: jnp.broadcast_to(inverse_softplus_scale(s), jnp.shape(x)).astype(jnp.result_type(x)),
            loc,
            _broadcast_like(scale, loc),
        ),
    )


def scale(q: MeanFieldState) -> ArrayTree:
    """sigma = SCALE_FLOOR + softplus(rho), leafwise."""
    return jax.tree.map(lambda r: SCALE_FLOOR + jax.nn.softplus(r), q.raw_scale)


def _one_op_normals(data: Array, shapes) -> list:
    """``[jax.random.normal(k, s) for k, s in zip(keys, shapes)]`` (float32), bit for bit, as one op.

    jax's partitionable threefry draws entry c (flat index) of ``normal(k, shape)`` from the bits
    b = x1 ^ x2 of (x1, x2) = threefry2x32(k, (0, c)), as u = max(lo, (f - 1)(1 - lo) + lo) with
    f = the float in [1, 2) whose mantissa is b's top 23 bits and lo = nextafter(-1, 0), then
    sqrt(2) erfinv(u). Concatenating every leaf's (key, counter) pairs draws all leaves with one
    elementwise threefry instead of one per leaf: fewer ops per step for the same numbers
    (``tests/test_meanfield.py`` checks them bit for bit against ``jax.random.normal``).
    ``data``: the keys' ``(n, 2)`` uint32 data (:func:`prng.key_data`).
    """
    sizes = [math.prod(s) for s in shapes]
    k1 = jnp.concatenate([jnp.broadcast_to(data[i, 0], (n,)) for i, n in enumerate(sizes)])
    k2 = jnp.concatenate([jnp.broadcast_to(data[i, 1], (n,)) for i, n in enumerate(sizes)])
    counter = jnp.concatenate([jax.lax.iota(jnp.uint32, n) for n in sizes])
    x1, x2 = prng.threefry2x32(k1, k2, jnp.zeros_like(counter), counter)
    z = _normals_from_bits(x1 ^ x2)
    offsets = np.cumsum([0] + sizes)
    return [z[a:b].reshape(s) for a, b, s in zip(offsets[:-1], offsets[1:], shapes)]


def _normals_from_bits(bits: Array) -> Array:
    """jax.random.normal's float32 map of its uint32 bits: sqrt(2) erfinv(max(lo, (f - 1)(1 - lo) + lo))."""
    f32 = np.float32
    mantissa = jax.lax.shift_right_logical(bits, np.uint32(32 - np.finfo(f32).nmant))
    floats = jax.lax.bitcast_convert_type(mantissa | np.array(1.0, f32).view(np.uint32), f32) - f32(1.0)
    lo, hi = np.nextafter(f32(-1.0), f32(0.0), dtype=f32), f32(1.0)
    u = jax.lax.max(lo, floats * (hi - lo) + lo)
    return jax.lax.mul(f32(np.sqrt(2)), jax.lax.erf_inv(u))


def standard_normal(rng_key: PRNGKey, shape, dtype=jnp.float32) -> Array:
    """``jax.random.normal(rng_key, shape, dtype)``, bit for bit, with a smaller compiled program.

    Under partitionable threefry (jax's default) entry c of the draw, c its flat index, comes from
    threefry2x32(key, (0, c)) whatever the shape. This draws the bits with a flat counter and
    reshapes them *before* they become floats, so the float map (and whatever XLA fuses into it)
    is the same program as jax's: the numbers are equal bit for bit, while an N-d shape's counter
    arithmetic is gone. A (50, 30, 10) draw compiled in 0.2 s instead of 1.4 s on the 2-core CPU
    (benchmarks/RESULTS.md, "Flat-counter normals"). Mapping the floats flat and reshaping them
    afterwards would not do: XLA then rounds mu + sigma eps differently for some shapes.
    Other generators, dtypes and layouts call ``jax.random.normal``.
    """
    shape = tuple(int(n) for n in shape)
    size = math.prod(shape)
    typed = jnp.issubdtype(rng_key.dtype, jax.dtypes.prng_key)
    single = jnp.shape(rng_key) == (() if typed else (2,))  # else jax.random.normal raises its own error
    key = rng_key[None] if typed else jnp.reshape(rng_key, (1, -1))
    data = prng.key_data(key) if single else None
    if data is None or jnp.dtype(dtype) != jnp.float32 or not 0 < size < 2**32:
        return jax.random.normal(rng_key, shape, dtype=dtype)
    counter = jax.lax.iota(jnp.uint32, size)
    x1, x2 = prng.threefry2x32(data[0, 0], data[0, 1], jnp.zeros_like(counter), counter)  # the key as scalars
    return _normals_from_bits((x1 ^ x2).reshape(shape))


# leaves of at least this many entries keep their own normal call: one op for them all would carry
# every entry's key through threefry's rounds (benchmarks/RESULTS.md, "One-op normals")
_ONE_OP_MAX_SIZE = 4096


def _leaf_normals(keys: Array, shapes, dtypes, single_draw: bool) -> list:
    """``jax.random.normal(keys[i], shapes[i], dtypes[i])`` for every leaf i, bit for bit.

    For a single draw under partitionable threefry keys, the float32 leaves smaller than
    ``_ONE_OP_MAX_SIZE`` are drawn together by :func:`_one_op_normals`; every other leaf (and
    every leaf of several draws, see :func:`sample`) by its own :func:`standard_normal` call.
    """
    data = prng.key_data(keys) if single_draw else None
    small = [] if data is None else [i for i, (s, d) in enumerate(zip(shapes, dtypes))
                                     if math.prod(s) < _ONE_OP_MAX_SIZE and jnp.dtype(d) == jnp.float32]
    together = {}
    if len(small) > 1:
        together = dict(zip(small, _one_op_normals(data[np.asarray(small)], [shapes[i] for i in small])))
    return [together[i] if i in together else standard_normal(k, s, dtype=d)
            for i, (k, s, d) in enumerate(zip(keys, shapes, dtypes))]


def _computed_once(noise: list, keys: Array) -> list:
    """A training step's eps, computed once into memory (``_kept.kept``), the same bits.

    Otherwise XLA:CPU fuses the normal map (erf_inv's polynomial) into each consumer of eps: the
    sample mu + sigma eps, and the sigma-gradient g eps inside the optimizer's fusions, once per
    lane where lanes share a draw (Table 1's width-30 train program held it in four fusions, three
    of them per method lane). Read from memory instead, a Table 1 seed block trained in 0.80-0.89x
    the time and the MFVI loop of issue 15 (a) in 0.75-0.95x, with the same outputs bit for bit
    (benchmarks/RESULTS.md, "Seventeenth stop"). The predicate, key data | 1 != 0, always holds;
    under nested ``vmap`` the conditional stays one.
    """
    data = prng.key_data(keys)
    if data is None:
        return noise
    return kept(noise, (jnp.ravel(data)[0] | np.uint32(1)) != 0)


def sample(rng_key: PRNGKey, q: MeanFieldState, num_samples: Optional[int] = None) -> ArrayTree:
    """Reparameterised draws w = mu + sigma * eps, eps ~ N(0, I).

    Returns one params tree, or a tree with a leading axis of ``num_samples`` draws. The draws are
    differentiable with respect to ``q``. Leaf i's eps is ``jax.random.normal(split(rng_key)[i])``;
    a single draw (a training step's) computes the small leaves' eps in one op (the same bits:
    :func:`_leaf_normals`), while several draws keep one call per leaf, whose compiled programs
    round mu + sigma eps as the quoted results did (XLA fuses the two layouts differently).
    """
    _checks.mean_field_state(q)
    if num_samples is not None and (not _checks.is_int(num_samples) or num_samples < 1):
        raise ValueError(f"num_samples must be None or a positive int, got {num_samples!r}")
    leaves, treedef = jax.tree.flatten(q.loc)
    keys = prng.split(rng_key, len(leaves))
    lead = () if num_samples is None else (num_samples,)
    shapes = [lead + jnp.shape(x) for x in leaves]
    single_draw = num_samples in (None, 1)
    noise = _leaf_normals(keys, shapes, [x.dtype for x in leaves], single_draw=single_draw)
    if single_draw:
        noise = _computed_once(noise, keys)
    noise = jax.tree.unflatten(treedef, noise)
    return jax.tree.map(lambda m, s, e: m + s * e, q.loc, scale(q), noise)


def log_prob(q: MeanFieldState, params: ArrayTree) -> Array:
    """log q(w) = sum_i log N(w_i; mu_i, sigma_i^2).

    ``params`` may carry leading batch axes (the same on every leaf); they are kept in the output.
    """
    _checks.mean_field_state(q)

    def leaf_log_prob(x, m, s):
        z = (x - m) / s
        terms = -0.5 * jnp.square(z) - jnp.log(s) - _HALF_LOG_2PI
        return jnp.sum(terms, axis=tuple(range(jnp.ndim(x) - jnp.ndim(m), jnp.ndim(x))))

    per_leaf = jax.tree.map(leaf_log_prob, params, q.loc, scale(q))
    return sum(jax.tree.leaves(per_leaf))


def entropy(q: MeanFieldState) -> Array:
    """H(q) = sum_i [0.5 log(2 pi e) + log sigma_i]."""
    _checks.mean_field_state(q)
    per_leaf = jax.tree.map(lambda s: jnp.sum(jnp.log(s) + _HALF_LOG_2PI + 0.5), scale(q))
    return sum(jax.tree.leaves(per_leaf))


def kl_to_normal(q: MeanFieldState, prior_scale: Union[float, ArrayTree] = 1.0) -> Array:
    """KL(q || N(0, s^2 I)) = sum_i [log(s / sigma_i) + (sigma_i^2 + mu_i^2) / (2 s^2) - 1/2].

    Args:
      prior_scale: the prior standard deviation s, a positive float or a tree of them (broadcast
        against each leaf).
    """
    _checks.mean_field_state(q)
    _checks.prior_scale(prior_scale, q.loc)
    prior_scale = _broadcast_like(prior_scale, q.loc)

    def leaf_kl(m, s, p):
        p = jnp.asarray(p, dtype=m.dtype)
        return jnp.sum(jnp.log(p) - jnp.log(s) + (jnp.square(s) + jnp.square(m)) / (2 * jnp.square(p)) - 0.5)

    per_leaf = jax.tree.map(leaf_kl, q.loc, scale(q), prior_scale)
    return sum(jax.tree.leaves(per_leaf))


def to_distrax(q: MeanFieldState):
    """A tree (shaped like params) of ``distrax.Independent(distrax.Normal(mu, sigma))``.

    For users who want distrax objects; keep them out of jitted state (STYLE.md, section 9.3).
    """
    _checks.mean_field_state(q)
    import distrax

    return jax.tree.map(
        lambda m, s: distrax.Independent(distrax.Normal(m, s), reinterpreted_batch_ndims=jnp.ndim(m)),
        q.loc,
        scale(q),
    )
