"""jax.random's threefry numbers, bit for bit, from a smaller CPU program.

jax lowers the threefry2x32 hash on the CPU as a loop of five iterations (four rounds each), and
XLA:CPU runs each iteration as its own thunks, with the loop's carries copied every time. A training
step draws its numbers in several small calls (split keys, the permutations' sort keys, the
weights' noise), and at small sizes those loops are a large part of the step. For an unbatched
call this module computes the same hash with its 20 rounds unrolled, behind a conditional XLA keeps
as a boundary, so the rounds run once, as one fused op, into memory. Without the conditional XLA
fuses the cheap integer rounds into every consumer and recomputes them there (a bias draw
recomputed for every row of the batch made a small net's step 1.07-1.52x slower in four runs,
benchmarks/threefry_lowering.py). The predicate, ``(k1 | 1) != 0`` on the key's data, always holds
and cannot be folded; the other branch, never taken, gives zeros. A batched call (under ``jax.vmap``, through a ``custom_vmap`` rule) binds jax's
primitive, whose loop the whole batch shares.

The numbers are integers, so they are jax's exactly, whatever the program around them; the floats
made from them go through the same ops as before (``tests/test_prng.py``). On other platforms
``threefry2x32`` binds jax's own primitive, whose default lowering is unrolled already. Keys of
another generator, or jax's ``jax_threefry_partitionable`` switched off, go to ``jax.random``
itself.

Functions:
  threefry2x32(k1, k2, x1, x2) -> (y1, y2), the hash, elementwise with broadcasting
  key_data(keys)               -> the keys' uint32 (..., 2) data, or None (not threefry)
  split(rng_key, num)          -> jax.random.split(rng_key, num)
  bits(rng_key, shape)         -> jax.random.bits(rng_key, shape), uint32
  permutation(rng_key, n)      -> jax.random.permutation(rng_key, n)
  stable_argsort(keys)         -> lax.sort_key_val(keys, arange(n))[1] for uint32 keys, n <= 1024

Measured in benchmarks/RESULTS.md ("Ninth stop").
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.random import threefry2x32_p

from symvi_jax.types import Array, PRNGKey

__all__ = ["threefry2x32", "key_data", "split", "bits", "permutation", "stable_argsort"]

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def _rounds(k1: Array, k2: Array, x1: Array, x2: Array) -> tuple[Array, Array]:
    """Threefry-2x32 with 20 rounds (Salmon et al., 2011), unrolled; jax's key schedule and rotations."""
    ks = (k1, k2, k1 ^ k2 ^ _PARITY)
    x1, x2 = x1 + ks[0], x2 + ks[1]
    for block in range(5):
        for r in _ROTATIONS[block % 2]:
            x1 = x1 + x2
            x2 = (x2 << np.uint32(r)) | (x2 >> np.uint32(32 - r))
            x2 = x1 ^ x2
        x1 = x1 + ks[(block + 1) % 3]
        x2 = x2 + ks[(block + 2) % 3] + np.uint32(block + 1)
    return x1, x2


@jax.custom_batching.custom_vmap
def _kept_rounds(k1: Array, k2: Array, x1: Array, x2: Array) -> tuple[Array, Array]:
    """:func:`_rounds` through a conditional that always takes it (module docstring); batched: jax's primitive."""
    shape = jnp.broadcast_shapes(*(jnp.shape(a) for a in (k1, k2, x1, x2)))
    if math.prod(shape) == 0:
        return jnp.zeros(shape, jnp.uint32), jnp.zeros(shape, jnp.uint32)

    def taken(args):
        return tuple(jnp.broadcast_to(y, shape) for y in _rounds(*args))

    def never(args):
        return jnp.zeros(shape, jnp.uint32), jnp.zeros(shape, jnp.uint32)

    return jax.lax.cond((jnp.ravel(k1)[0] | np.uint32(1)) != 0, taken, never, (k1, k2, x1, x2))


def _lifted(in_batched, args) -> tuple[Array, Array, Array, Array]:
    """A batched call's arguments for jax's primitive: the batch axis first, each argument's own axes
    right-aligned, the two keys broadcast to one shape and the counters to the output's (jax's CPU
    loop needs both, and fails to lower otherwise; the keys stay as small as they are)."""
    rank = max(jnp.ndim(a) - b for a, b in zip(args, in_batched))
    lifted = []
    for a, batched in zip(args, in_batched):
        own = jnp.shape(a)[1:] if batched else jnp.shape(a)
        lead = jnp.shape(a)[0] if batched else 1
        lifted.append(jnp.reshape(a, (lead,) + (1,) * (rank - len(own)) + own))
    k1, k2, x1, x2 = lifted
    shape = jnp.broadcast_shapes(*(jnp.shape(a) for a in lifted))
    key_shape = jnp.broadcast_shapes(jnp.shape(k1), jnp.shape(k2))
    return (jnp.broadcast_to(k1, key_shape), jnp.broadcast_to(k2, key_shape),
            jnp.broadcast_to(x1, shape), jnp.broadcast_to(x2, shape))


@jax.custom_batching.custom_vmap
def _jax_hash(k1: Array, k2: Array, x1: Array, x2: Array) -> tuple[Array, Array]:
    """jax's primitive, batched through :func:`_lifted` at every level of vmap."""
    return tuple(threefry2x32_p.bind(k1, k2, x1, x2))


@_jax_hash.def_vmap
def _jax_hash_batched(axis_size, in_batched, *args):
    return _jax_hash(*_lifted(in_batched, args)), (True, True)


@_kept_rounds.def_vmap
def _kept_rounds_batched(axis_size, in_batched, *args):
    # a batched call (vmapped seeds or lanes, a vmap over permutations) binds jax's primitive, whose
    # loop the batch shares
    return _jax_hash(*_lifted(in_batched, args)), (True, True)


def threefry2x32(k1: Array, k2: Array, x1: Array, x2: Array) -> tuple[Array, Array]:
    """(y1, y2) = threefry2x32((k1, k2), (x1, x2)) elementwise (uint32, broadcast): jax's hash, bit for bit.

    On the CPU and unbatched, the unrolled rounds behind a kept conditional (module docstring);
    batched or elsewhere, jax's primitive.
    """
    args = tuple(jnp.asarray(a, jnp.uint32) for a in (k1, k2, x1, x2))
    return jax.lax.platform_dependent(*args, cpu=_kept_rounds, default=_jax_hash)


def key_data(keys) -> Optional[Array]:
    """The ``(..., 2)`` uint32 data of threefry keys (typed or raw), or None.

    None when the keys are of another generator or jax's ``jax_threefry_partitionable`` is off: the
    functions below then call ``jax.random``, whose numbers they would not reproduce.
    """
    if not jax.config.jax_threefry_partitionable:
        return None
    if jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(keys) if str(jax.random.key_impl(keys)) == "threefry2x32" else None
    if jnp.dtype(keys.dtype) != jnp.uint32 or jnp.shape(keys)[-1:] != (2,):
        return None
    return keys if jax.config.jax_default_prng_impl == "threefry2x32" else None


def _single(rng_key) -> bool:
    typed = jnp.issubdtype(rng_key.dtype, jax.dtypes.prng_key)
    return jnp.shape(rng_key) == (() if typed else (2,))


def _counter(size: int) -> Array:
    # jax's (hi, lo) counter of a flat index below 2**32: hi = 0
    lo = jax.lax.iota(jnp.uint32, size)
    return jnp.zeros_like(lo), lo


def split(rng_key: PRNGKey, num: int = 2) -> Array:
    """``jax.random.split(rng_key, num)``, bit for bit (typed keys stay typed, raw keys raw)."""
    data = key_data(rng_key) if _single(rng_key) and isinstance(num, (int, np.integer)) else None
    if data is None or not 0 < num < 2**32:
        return jax.random.split(rng_key, num)
    y1, y2 = threefry2x32(data[0], data[1], *_counter(int(num)))
    new = jnp.stack([y1, y2], axis=-1)
    if jnp.issubdtype(rng_key.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(new, impl=jax.random.key_impl(rng_key))
    return new


def bits(rng_key: PRNGKey, shape=()) -> Array:
    """``jax.random.bits(rng_key, shape)`` (uint32), bit for bit."""
    shape = tuple(int(n) for n in shape)
    size = math.prod(shape)
    data = key_data(rng_key) if _single(rng_key) else None
    if data is None or not 0 < size < 2**32:
        return jax.random.bits(rng_key, shape, dtype=jnp.uint32)
    y1, y2 = threefry2x32(data[0], data[1], *_counter(size))
    return (y1 ^ y2).reshape(shape)


def permutation(rng_key: PRNGKey, n: int) -> Array:
    """``jax.random.permutation(rng_key, n)``, bit for bit: sorts by fresh 32-bit keys, as jax does
    (up to n = 1024 with :func:`stable_argsort`, the same order from cheaper sorts).

    jax sorts ``arange(n)`` by random bits ceil(3 log n / log(2^32 - 1)) times, each round with the
    second half of a split key.
    """
    n = int(n)
    if key_data(rng_key) is None or not _single(rng_key):
        return jax.random.permutation(rng_key, n)
    x = jnp.arange(n)
    for _ in range(int(np.ceil(3 * np.log(max(1, n)) / np.log(np.iinfo(np.uint32).max)))):
        rng_key, subkey = split(rng_key)
        keys = bits(subkey, (n,))
        if 3 * _index_bits(n) <= 32:  # one round only (n <= 1024): x is still arange(n)
            x = stable_argsort(keys)
        else:
            _, x = jax.lax.sort_key_val(keys, x)
    return x


def _index_bits(n: int) -> int:
    return max(1, (n - 1).bit_length())


def stable_argsort(keys: Array) -> Array:
    """The stable argsort of ``(n,)`` uint32 keys (ties in index order): ``lax.sort_key_val``'s order.

    Two sorts of one packed uint32 operand, which XLA:CPU sorts by value with ``std::sort``; a
    key-value sort calls the compiled comparator for every comparison instead (3.4x the time for
    64 rows of 1024, benchmarks/RESULTS.md "Eighteenth stop"). With b = bits(n - 1) and 3b <= 32
    (n <= 1024):

      1. sort ``hi(k) | i``, hi(k) = k with its low b bits cleared: the order by (hi(k), i);
      2. number the runs of equal hi(k) in that order (``run``, increasing), and sort
         ``run << 2b | lo(k) << b | i``: each run by (lo(k), i), the runs left in place.

    Together: the order by (k, i).
    """
    if keys.dtype != jnp.uint32 or keys.ndim != 1:
        raise ValueError(f"keys must be a (n,) uint32 array (vmap it for rows), got {keys.dtype} of shape {keys.shape}")
    n = keys.shape[-1]
    b = _index_bits(n)
    if 3 * b > 32:
        raise ValueError(f"stable_argsort packs 3 * bits(n - 1) <= 32 bits; n = {n} needs {3 * b}")
    low = np.uint32((1 << b) - 1)
    index = jnp.arange(n, dtype=jnp.uint32)
    first = jnp.sort((keys & ~low) | index)
    order = first & low
    hi = first & ~low
    starts = jnp.concatenate([jnp.ones(hi.shape[:-1] + (1,), jnp.uint32), (hi[..., 1:] != hi[..., :-1]).astype(jnp.uint32)],
                             axis=-1)
    run = jnp.cumsum(starts, axis=-1, dtype=jnp.uint32) - np.uint32(1)
    lo = jnp.take_along_axis(keys, order.astype(jnp.int32), axis=-1) & low
    second = jnp.sort((run << np.uint32(2 * b)) | (lo << np.uint32(b)) | order)
    return (second & low).astype(jnp.int32)
