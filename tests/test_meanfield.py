import math

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from symvi_jax import meanfield, prng
from fixtures import make_mlp


@pytest.fixture
def q(next_key):
    _, params = make_mlp(next_key(), 3, (4, 2))
    q = meanfield.init(params, init_scale=0.3)
    # give every weight its own scale so the checks are not degenerate
    raw = jax.tree.map(lambda r: r + 0.5 * jax.random.normal(next_key(), r.shape), q.raw_scale)
    return meanfield.MeanFieldState(q.loc, raw)


def test_init_shapes_and_scale(next_key):
    _, params = make_mlp(next_key(), 3, (4, 2))
    q = meanfield.init(params, init_scale=0.3)
    assert jax.tree.structure(q.loc) == jax.tree.structure(params)
    assert jax.tree.all(jax.tree.map(lambda s: bool(jnp.allclose(s, 0.3)), meanfield.scale(q)))


@pytest.mark.parametrize("init_scale", [1e-6, 1e-3, 1.0, 10.0])
def test_positivity_map_round_trips(next_key, init_scale):
    _, params = make_mlp(next_key(), 2, (3, 1))
    q = meanfield.init(params, init_scale=init_scale)
    scales = jax.tree.leaves(meanfield.scale(q))
    assert all(np.allclose(s, init_scale, rtol=1e-3) for s in scales)


def test_scale_never_reaches_zero_or_overflows():
    q = meanfield.MeanFieldState(loc=jnp.zeros(3), raw_scale=jnp.array([-1e4, 0.0, 1e30], dtype=jnp.float32))
    s = meanfield.scale(q)
    assert np.all(np.isfinite(s)) and s[0] >= meanfield.SCALE_FLOOR


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), 1e-9])
def test_init_rejects_bad_scale(next_key, bad):
    _, params = make_mlp(next_key(), 2, (3, 1))
    with pytest.raises(ValueError, match="init_scale"):
        meanfield.init(params, init_scale=bad)


def test_sample_is_reparameterised(q, next_key):
    w = meanfield.sample(next_key(), q, 11)
    assert jax.tree.all(jax.tree.map(lambda a, b: a.shape == (11, *b.shape), w, q.loc))
    one = meanfield.sample(next_key(), q)
    assert jax.tree.structure(one) == jax.tree.structure(q.loc)
    grads = jax.grad(lambda q: sum(jnp.sum(x) for x in jax.tree.leaves(meanfield.sample(jax.random.key(0), q, 3))))(q)
    # d/dmu of sum(w) = number of samples
    assert jax.tree.all(jax.tree.map(lambda g: bool(jnp.allclose(g, 3.0)), grads.loc))


def test_sample_moments(q, next_key):
    n = 20000
    w = meanfield.sample(next_key(), q, n)
    for x, m, s in zip(jax.tree.leaves(w), jax.tree.leaves(q.loc), jax.tree.leaves(meanfield.scale(q))):
        se = s / math.sqrt(n)
        assert np.all(np.abs(x.mean(0) - m) < 5 * se)
        assert np.all(np.abs(x.std(0) / s - 1) < 5 * math.sqrt(1 / (2 * n)))


def test_log_prob_and_entropy_match_distrax(q, next_key):
    w = meanfield.sample(next_key(), q, 4)
    dists = meanfield.to_distrax(q)
    is_dist = lambda x: isinstance(x, distrax.Distribution)  # noqa: E731
    expected = sum(
        d.log_prob(x) for d, x in zip(jax.tree.leaves(dists, is_leaf=is_dist), jax.tree.leaves(w))
    )
    np.testing.assert_allclose(meanfield.log_prob(q, w), expected, rtol=1e-5)
    expected_entropy = sum(d.entropy() for d in jax.tree.leaves(dists, is_leaf=is_dist))
    np.testing.assert_allclose(meanfield.entropy(q), expected_entropy, rtol=1e-5)
    # unbatched params give a scalar
    assert meanfield.log_prob(q, q.loc).shape == ()


def test_kl_to_normal_matches_distrax_and_monte_carlo(q, next_key):
    prior_scale = 0.7
    dists = jax.tree.leaves(meanfield.to_distrax(q), is_leaf=lambda x: isinstance(x, distrax.Distribution))
    expected = sum(
        d.kl_divergence(distrax.Independent(distrax.Normal(jnp.zeros_like(d.mean()), prior_scale), d.event_shape.__len__()))
        for d in dists
    )
    kl = meanfield.kl_to_normal(q, prior_scale)
    np.testing.assert_allclose(kl, expected, rtol=1e-5)
    # Monte Carlo: E_q[log q - log p], tolerance from the standard error
    n = 40000
    w = meanfield.sample(next_key(), q, n)
    prior = meanfield.normal(jax.tree.map(jnp.zeros_like, q.loc), prior_scale)
    diffs = meanfield.log_prob(q, w) - meanfield.log_prob(prior, w)
    se = float(jnp.std(diffs)) / math.sqrt(n)
    assert abs(float(jnp.mean(diffs)) - float(kl)) < 5 * se


def test_kl_accepts_a_tree_of_prior_scales(q):
    tree = jax.tree.map(lambda _: 0.7, q.loc)
    np.testing.assert_allclose(meanfield.kl_to_normal(q, tree), meanfield.kl_to_normal(q, 0.7), rtol=1e-6)


@pytest.mark.parametrize("bad", [0.0, -2.0, float("nan")])
def test_kl_rejects_bad_prior_scale(q, bad):
    with pytest.raises(ValueError, match="prior_scale"):
        meanfield.kl_to_normal(q, bad)


def test_functions_jit(q, next_key):
    w = jax.jit(meanfield.sample, static_argnums=2)(next_key(), q, 2)
    assert np.isfinite(jax.jit(meanfield.log_prob)(q, w)).all()
    assert np.isfinite(jax.jit(meanfield.kl_to_normal)(q, 1.0))


SHAPES = [(3, 4), (4,), (4, 2), (2,), (1,), (784, 30), (7, 3, 5)]


@pytest.mark.default_emitters  # different programs, bit for bit (tests/conftest.py)
@pytest.mark.parametrize("make_key", [jax.random.key, jax.random.PRNGKey], ids=["typed", "raw"])
def test_one_op_normals_are_jax_random_normal_bit_for_bit(make_key):
    # the single-draw path of ``sample`` draws every leaf with one threefry op; its numbers must be
    # exactly those of one jax.random.normal call per leaf, jitted, eager and under vmap over keys
    def per_leaf(key):
        return [jax.random.normal(k, s) for k, s in zip(jax.random.split(key, len(SHAPES)), SHAPES)]

    def one_op(key):
        data = prng.key_data(jax.random.split(key, len(SHAPES)))
        return meanfield._one_op_normals(data, SHAPES)

    def leaf_normals(key):  # the small leaves together, (784, 30) on its own
        return meanfield._leaf_normals(jax.random.split(key, len(SHAPES)), SHAPES, [jnp.float32] * len(SHAPES), True)

    for seed in (0, 1, 12345):
        key = make_key(seed)
        for a, b, c, d in zip(jax.jit(one_op)(key), jax.jit(per_leaf)(key), per_leaf(key), jax.jit(leaf_normals)(key)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
            np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
            np.testing.assert_array_equal(np.asarray(a), np.asarray(d))
    keys = jax.vmap(make_key)(jnp.arange(3))
    for a, b in zip(jax.jit(jax.vmap(one_op))(keys), jax.jit(jax.vmap(per_leaf))(keys)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_sample_draws_leaf_i_from_the_ith_split_key(q, next_key):
    # w = mu + sigma * eps with eps_i = normal(split(key)[i]), on the one-op path (one draw) and the
    # per-leaf path (several draws, and a generator other than threefry)
    key = next_key()
    leaves = jax.tree.leaves(q.loc)
    keys = jax.random.split(key, len(leaves))
    sigma = jax.tree.leaves(meanfield.scale(q))
    for num_samples in (None, 1, 3):
        lead = () if num_samples is None else (num_samples,)
        w = jax.tree.leaves(jax.jit(lambda k, q: meanfield.sample(k, q, num_samples))(key, q))
        for x, m, s, k in zip(w, leaves, sigma, keys):
            np.testing.assert_allclose(x, m + s * jax.random.normal(k, lead + m.shape), rtol=1e-6, atol=1e-7)
    rbg = jax.random.key(3, impl="rbg")
    assert prng.key_data(jax.random.split(rbg, 2)) is None
    w = jax.tree.leaves(meanfield.sample(rbg, q))
    for x, m, s, k in zip(w, leaves, sigma, jax.random.split(rbg, len(leaves))):
        np.testing.assert_allclose(x, m + s * jax.random.normal(k, m.shape), rtol=1e-6, atol=1e-7)


def test_a_single_draws_noise_passes_one_kept_conditional_under_nested_vmap(q, next_key):
    # meanfield._computed_once: a training step's eps is read from memory, not re-derived in every
    # consumer, through a conditional that stays one under vmap of vmap (Table 1's seeds of methods);
    # several draws keep no conditional, and the draws are those of the unbatched calls
    def float_conds(jaxpr):  # conditionals that return floats (prng's own conditionals return uint32)
        return [line for line in str(jaxpr).splitlines() if "= cond[" in line and "f32[" in line]

    keys = jax.random.split(next_key(), 6).reshape(2, 3)
    one = jax.vmap(jax.vmap(lambda k: meanfield.sample(k, q)))
    (line,) = float_conds(jax.make_jaxpr(one)(keys))
    assert line.count("f32[2,3,") == len(jax.tree.leaves(q.loc))  # every leaf's eps, batched
    assert not float_conds(jax.make_jaxpr(lambda k: meanfield.sample(k, q, 3))(keys[0, 0]))
    batched = jax.jit(one)(keys)
    for i in range(2):
        for j in range(3):
            for x, y in zip(jax.tree.leaves(batched), jax.tree.leaves(jax.jit(meanfield.sample)(keys[i, j], q))):
                np.testing.assert_allclose(x[i, j], y, rtol=1e-6, atol=1e-7)


def test_sample_without_partitionable_threefry_keeps_one_call_per_leaf(q, next_key):
    # the one op reproduces the partitionable layout only; with the older layout every leaf keeps
    # its own jax.random.normal call, whose numbers differ from the partitionable ones
    key = next_key()
    leaves = jax.tree.leaves(q.loc)
    with jax.threefry_partitionable(False):
        w = jax.tree.leaves(jax.jit(meanfield.sample)(key, q))
        for x, m, s, k in zip(w, leaves, jax.tree.leaves(meanfield.scale(q)), jax.random.split(key, len(leaves))):
            np.testing.assert_allclose(x, m + s * jax.random.normal(k, m.shape), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("make_key", [jax.random.key, jax.random.PRNGKey], ids=["typed", "raw"])
def test_standard_normal_is_jax_random_normal_bit_for_bit(make_key):
    # the flat counter's bits, reshaped before the float map: jax.random.normal's numbers exactly,
    # also as mu + sigma eps for several draws (where mapping the floats flat rounded differently)
    for shape in [(3,), (784, 30), (50, 30, 10), (64, 30)]:
        mu = jax.random.normal(jax.random.key(5), shape[1:]) if len(shape) > 1 else 0.3  # one mean per draw's entry
        sigma = 0.7
        for seed in (0, 12345):
            key = make_key(seed)
            ours = jax.jit(lambda k: meanfield.standard_normal(k, shape))(key)
            np.testing.assert_array_equal(np.asarray(ours), np.asarray(jax.random.normal(key, shape)))
            affine = lambda normal: jax.jit(lambda k, m: m + sigma * normal(k, shape))(key, mu)  # noqa: E731
            np.testing.assert_array_equal(np.asarray(affine(meanfield.standard_normal)),
                                          np.asarray(affine(jax.random.normal)))
    keys = jax.vmap(make_key)(jnp.arange(3))
    np.testing.assert_array_equal(np.asarray(jax.jit(jax.vmap(lambda k: meanfield.standard_normal(k, (4, 5))))(keys)),
                                  np.asarray(jax.vmap(lambda k: jax.random.normal(k, (4, 5)))(keys)))


def test_standard_normal_falls_back_to_jax_random_normal():
    # other generators, dtypes and the non-partitionable layout: jax.random.normal itself
    rbg = jax.random.key(3, impl="rbg")
    np.testing.assert_array_equal(np.asarray(meanfield.standard_normal(rbg, (4, 3))),
                                  np.asarray(jax.random.normal(rbg, (4, 3))))
    key = jax.random.key(4)
    half = meanfield.standard_normal(key, (5,), jnp.float16)
    assert half.dtype == jnp.float16
    np.testing.assert_array_equal(np.asarray(half), np.asarray(jax.random.normal(key, (5,), jnp.float16)))
    with jax.threefry_partitionable(False):
        np.testing.assert_array_equal(np.asarray(jax.jit(lambda k: meanfield.standard_normal(k, (6, 7)))(key)),
                                      np.asarray(jax.random.normal(key, (6, 7))))
    assert meanfield.standard_normal(key, (0, 3)).shape == (0, 3)
    with pytest.raises(ValueError, match="single key"):  # a batch of keys is refused, as by jax
        meanfield.standard_normal(jax.random.split(key, 2), (2,))
