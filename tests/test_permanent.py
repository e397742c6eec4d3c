"""The unit factorisation of q(sigma.w) and the log-permanent (float32; float64 identities live in
test_permanent_float64.py)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from symvi_jax import PermutationGroup, meanfield, nets, orbits, permanent


def random_q(seed, in_features, features, *, loc_scale=0.5, scale=0.3, jitter=0.3, use_bias=True, dtype=np.float32):
    """A mean-field q over a Dense chain with random means and per-weight scales, and its group.

    Built with numpy so that no JAX kernel is compiled for it (eager JAX on tiny shapes is slow).
    """
    rng = np.random.default_rng(seed)
    sizes = (in_features, *features)
    loc, raw = {}, {}
    for layer, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        shapes = {"kernel": (fan_in, fan_out), **({"bias": (fan_out,)} if use_bias else {})}
        name = f"Dense_{layer}"
        loc[name] = {k: jnp.asarray(loc_scale * rng.normal(size=shape), dtype) for k, shape in shapes.items()}
        sigma = {k: scale * np.exp(jitter * rng.normal(size=shape)) for k, shape in shapes.items()}
        raw[name] = {k: jnp.asarray(np.log(np.expm1(v - meanfield.SCALE_FLOOR)), dtype) for k, v in sigma.items()}
    return meanfield.MeanFieldState(loc, raw), PermutationGroup.from_params(loc)


def sample(seed, q, num_samples=None):
    """Draws w = mu + sigma * eps from q, with numpy noise (no JAX kernel to compile)."""
    rng = np.random.default_rng(seed)
    lead = () if num_samples is None else (num_samples,)

    def draw(m, r):
        m, r = np.asarray(m), np.asarray(r)
        sigma = meanfield.SCALE_FLOOR + np.logaddexp(0.0, r)
        return jnp.asarray(m + sigma * rng.normal(size=lead + m.shape), m.dtype)

    return jax.tree.map(draw, q.loc, q.raw_scale)


def permutations(seed, widths, num=None):
    """Uniform group elements drawn with numpy: one index array per layer (stacked if ``num``)."""
    rng = np.random.default_rng(seed)
    if num is None:
        return tuple(jnp.asarray(rng.permutation(d), jnp.int32) for d in widths)
    return tuple(jnp.asarray(np.stack([rng.permutation(d) for _ in range(num)]), jnp.int32) for d in widths)


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("method", ["matmul", "pairwise"])
def test_log_q_of_assigned_weights_is_static_plus_a_sum_of_entries(method, use_bias):
    """Convention check: slot i of sigma.w holds unit sigma[i] of w (PermutationGroup.act gathers)."""
    q, group = random_q(0, 3, (5, 2), use_bias=use_bias)
    w = sample(0, q)
    sigmas = permutations(0, group.widths, 6)

    @jax.jit
    def both(q, w, sigmas):
        log_a = permanent.unit_log_density_matrix(q, w, group, method=method)
        static = permanent.static_log_prob(q, w, group)
        direct = orbits.orbit_log_probs(q, w, group.inverse(sigmas), group)  # log q(sigma.w)
        via_a = static + jax.vmap(lambda s: jnp.sum(log_a[jnp.arange(5), s[0]]))(sigmas)
        return direct, via_a, static + jnp.trace(log_a), meanfield.log_prob(q, w)

    direct, via_a, identity_via_a, identity = both(q, w, sigmas)
    np.testing.assert_allclose(via_a, direct, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(identity_via_a, identity, rtol=1e-5, atol=1e-3)


def test_matmul_and_pairwise_agree():
    q, group = random_q(1, 4, (6, 3))
    w = sample(1, q)
    a, b = jax.jit(lambda q, w: [permanent.unit_log_density_matrix(q, w, group, method=m)
                                 for m in ("matmul", "pairwise")])(q, w)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)


def test_unit_features_of_a_partitioned_tree():
    """Held-out leaves are skipped: the demo's frozen output kernel leaves only incoming weights."""
    params = random_q(2, 1, (2, 1), use_bias=False)[0].loc
    trainable, _ = nets.partition(params, ["Dense_1"])
    group = PermutationGroup(widths=(2,), layer_names=("Dense_0", "Dense_1"))
    features = permanent.unit_features(trainable, group)
    np.testing.assert_array_equal(features, params["Dense_0"]["kernel"].T)
    assert permanent.unit_features(params, group).shape == (2, 2)


def test_log_permanent_matches_a_brute_force_sum():
    rng = np.random.default_rng(0)
    for d in (1, 2, 3, 4, 5):
        log_a = rng.normal(size=(d, d))
        terms = [sum(log_a[i, p[i]] for i in range(d)) for p in itertools.permutations(range(d))]
        brute = np.log(np.sum(np.exp(terms)))
        np.testing.assert_allclose(jax.jit(permanent.log_permanent)(jnp.asarray(log_a, jnp.float32)), brute,
                                   rtol=1e-5, atol=1e-5)


def test_log_permanent_is_invariant_to_row_and_column_permutations_and_differentiable():
    rng = np.random.default_rng(1)
    log_a = jnp.asarray(rng.normal(size=(6, 6)), jnp.float32)
    rows, cols = rng.permutation(6), rng.permutation(6)
    f = jax.jit(permanent.log_permanent)
    np.testing.assert_allclose(f(log_a[rows][:, cols]), f(log_a), rtol=1e-5)
    # d log perm / d log_a[i, j] = P(sigma[i] = j) under sigma ~ prod_i exp(log_a[i, sigma_i]):
    # a doubly stochastic matrix
    grad = jax.jit(jax.grad(permanent.log_permanent))(log_a)
    np.testing.assert_allclose(grad.sum(0), 1.0, rtol=1e-4)
    np.testing.assert_allclose(grad.sum(1), 1.0, rtol=1e-4)
    assert jnp.all(grad >= 0)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="square"):
        permanent.log_permanent(jnp.zeros((3, 4)))
    with pytest.raises(ValueError, match="MAX_WIDTH"):
        permanent.log_permanent(jnp.zeros((permanent.MAX_WIDTH + 1,) * 2))
    q, group = random_q(3, 2, (3, 2, 2))
    w = sample(1, q)
    with pytest.raises(ValueError, match="one hidden layer"):
        permanent.symmetrized_log_prob(q, w, group)
    with pytest.raises(ValueError, match="layer must be"):
        permanent.unit_features(w, group, 2)
    with pytest.raises(ValueError, match="method"):
        permanent.unit_log_density_matrix(q, w, group, method="loop")


def test_exact_estimator_reaches_widths_past_enumeration(next_key):
    """Width 10 (|G| = 3.6M, beyond PermutationGroup.elements) through the permanent."""
    q, group = random_q(4, 2, (10, 2), loc_scale=0.3, scale=0.5)
    assert orbits.uses_permanent(group)
    with pytest.raises(ValueError, match="more than max_elements"):
        group.elements()
    mi = jax.jit(lambda key: orbits.mutual_information(key, q, group, num_samples=4, estimator="exact"))
    value = float(mi(next_key()))
    assert 0.0 < value < group.log_order()
