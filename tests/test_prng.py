"""prng: jax.random's threefry numbers, bit for bit, with the CPU hash unrolled behind a kept conditional."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.random import threefry2x32_p

from symvi_jax import MLP, PermutationGroup, prng


def _data(keys):
    return np.asarray(jax.random.key_data(keys) if jnp.issubdtype(keys.dtype, jax.dtypes.prng_key) else keys)


@pytest.mark.parametrize("make_key", [jax.random.key, jax.random.PRNGKey], ids=["typed", "raw"])
def test_split_bits_and_permutation_are_jax_random_bit_for_bit(make_key):
    for seed in (0, 7, 2**31 - 1):
        key = make_key(seed)
        for num in (1, 2, 3, 19, 1000):
            ours = jax.jit(prng.split, static_argnums=1)(key, num)
            assert ours.dtype == jax.random.split(key, num).dtype
            np.testing.assert_array_equal(_data(ours), _data(jax.random.split(key, num)))
        for shape in ((), (1,), (30,), (19, 30), (7, 3, 5)):
            np.testing.assert_array_equal(jax.jit(prng.bits, static_argnums=1)(key, shape),
                                          jax.random.bits(key, shape, jnp.uint32))
        # one sort round up to 1625 entries, two from 1626 on; packed sorts (stable_argsort) up to 1024
        for n in (1, 2, 30, 1024, 1025, 2047, 3000):
            np.testing.assert_array_equal(jax.jit(prng.permutation, static_argnums=1)(key, n),
                                          jax.random.permutation(key, n))


@pytest.mark.parametrize("n", [1, 2, 3, 30, 1000, 1024])
def test_stable_argsort_orders_ties_by_index_as_a_key_value_sort(n):
    # prng.stable_argsort packs keys and indices into two single-operand sorts; ties in the high
    # bits, in the low bits and in the whole key must all come out in lax.sort_key_val's order
    keys = jax.random.bits(jax.random.key(n), (40, n), jnp.uint32)
    variants = [keys, keys >> 29, keys << 29, (keys >> 29) << 5, jnp.zeros_like(keys), keys | 1023]
    sort = jax.jit(jax.vmap(prng.stable_argsort))
    for k in variants:
        expected = jax.vmap(lambda row: jax.lax.sort_key_val(row, jnp.arange(n, dtype=jnp.int32))[1])(k)
        np.testing.assert_array_equal(sort(k), expected)
    with pytest.raises(ValueError, match="n = 1025 needs 33"):
        prng.stable_argsort(jnp.zeros(1025, jnp.uint32))
    with pytest.raises(ValueError, match="keys must be a"):
        prng.stable_argsort(jnp.zeros(10, jnp.int32))


def test_nested_vmap_keeps_jax_random_numbers():
    keys = jax.random.split(jax.random.key(3), 6).reshape(2, 3)
    ours = jax.jit(jax.vmap(jax.vmap(lambda k: prng.permutation(prng.split(k, 4)[2], 30))))(keys)
    theirs = jax.vmap(jax.vmap(lambda k: jax.random.permutation(jax.random.split(k, 4)[2], 30)))(keys)
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("batched", ["key", "counter"])
def test_hash_broadcasts_and_batches_any_argument(batched):
    # the vmap rule lifts batched and unbatched arguments of different ranks onto one shape
    # (jax's own primitive, batched in some arguments only, fails to lower on the CPU)
    x2 = jnp.arange(12, dtype=jnp.uint32)
    if batched == "key":
        k1s = jnp.arange(5, dtype=jnp.uint32) * 77
        ours = jax.jit(jax.vmap(lambda a: prng.threefry2x32(a, jnp.uint32(3), jnp.zeros_like(x2), x2)))(k1s)
        theirs = [threefry2x32_p.bind(a, jnp.uint32(3), jnp.zeros_like(x2), x2) for a in k1s]
    else:
        x1s = jnp.arange(48, dtype=jnp.uint32).reshape(12, 4)
        ours = jax.jit(jax.vmap(lambda x: prng.threefry2x32(jnp.uint32(9), jnp.uint32(3), x, x2), in_axes=1))(x1s)
        theirs = [threefry2x32_p.bind(jnp.uint32(9), jnp.uint32(3), x, x2) for x in x1s.T]
    for y, expected in zip(ours, zip(*theirs)):
        np.testing.assert_array_equal(y, np.stack(expected))


def test_cpu_program_has_the_conditional_unbatched_and_jax_loop_batched():
    # the point of the module: one kept conditional instead of jax's five-iteration loop for an
    # unbatched draw; a batched one (vmapped seeds or lanes) keeps jax's primitive, whose loop the
    # batch shares
    key = jax.random.key(0)
    one = jax.jit(lambda k: prng.bits(k, (30,))).lower(key).compile().as_text()
    assert " conditional(" in one and " while(" not in one
    many = jax.jit(jax.vmap(lambda k: prng.bits(k, (30,)))).lower(jax.random.split(key, 3)).compile().as_text()
    assert " while(" in many and " conditional(" not in many
    assert " while(" in jax.jit(lambda k: jax.random.bits(k, (30,))).lower(key).compile().as_text()


def test_other_generators_and_the_unpartitionable_layout_go_to_jax_random():
    rbg = jax.random.key(3, impl="rbg")
    assert prng.key_data(rbg) is None
    np.testing.assert_array_equal(_data(prng.split(rbg, 3)), _data(jax.random.split(rbg, 3)))
    np.testing.assert_array_equal(prng.permutation(rbg, 10), jax.random.permutation(rbg, 10))
    key = jax.random.key(5)
    with jax.threefry_partitionable(False):
        assert prng.key_data(key) is None
        np.testing.assert_array_equal(_data(prng.split(key, 3)), _data(jax.random.split(key, 3)))
        np.testing.assert_array_equal(prng.bits(key, (7,)), jax.random.bits(key, (7,), jnp.uint32))


def test_group_sample_draws_jax_random_permutations():
    # the permutations of a training step, through prng, are the ones jax.random gives for the same keys
    model = MLP(features=(30, 10))
    params = model.init(jax.random.key(0), jnp.zeros((1, 784)))["params"]
    group = PermutationGroup.from_params(params)
    key = jax.random.key(11)
    (p,) = jax.jit(lambda k: group.sample(k, 19))(key)
    (k0,) = jax.random.split(key, 1)
    expected = jax.vmap(lambda k: jax.random.permutation(k, 30))(jax.random.split(k0, 19))
    np.testing.assert_array_equal(p, expected)


def test_nested_vmap_batching_keys_and_counters_at_different_levels():
    # the outer vmap batches the key, the inner one the counters: each level lifts its own arguments
    k1s = jnp.arange(3, dtype=jnp.uint32) * 91
    x2s = jnp.arange(20, dtype=jnp.uint32).reshape(4, 5)
    f = jax.vmap(jax.vmap(lambda a, x: prng.threefry2x32(a, jnp.uint32(3), jnp.zeros_like(x), x), (None, 0)), (0, None))
    ours = jax.jit(f)(k1s, x2s)
    for y, which in zip(ours, range(2)):
        expected = np.stack([np.stack([threefry2x32_p.bind(a, jnp.uint32(3), jnp.zeros_like(x), x)[which] for x in x2s])
                             for a in k1s])
        np.testing.assert_array_equal(y, expected)
