"""Symmetry diagnostics: per-layer I / log|G_l|, collapsed units, nearest equivalent mode."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from symvi_jax import PermutationGroup, diagnostics, meanfield, orbits
from test_permanent import random_q


def test_layer_mutual_information_of_one_layer_is_the_exact_i():
    q, group = random_q(0, 2, (4, 2), loc_scale=0.4, scale=0.5)
    key = jax.random.key(0)
    info = diagnostics.layer_mutual_information(key, q, group, num_samples=200)
    # the same weight samples through the library's exact estimator (permanent path)
    exact = jax.jit(lambda key, q: orbits.mutual_information(key, q, group, num_samples=200, estimator="exact"))
    np.testing.assert_allclose(info.mutual_information[0], exact(key, q), rtol=1e-4, atol=1e-4)
    assert bool(info.exact[0])
    np.testing.assert_allclose(info.log_order, [math.lgamma(5)], rtol=1e-6)
    np.testing.assert_allclose(info.fraction, info.mutual_information / info.log_order, rtol=1e-6)
    assert 0.05 < float(info.fraction[0]) < 0.95
    # the importance bound (forced by exact_max_width=0) is below it within Monte Carlo error
    bound = diagnostics.layer_mutual_information(key, q, group, num_samples=200, num_permutations=5, exact_max_width=0)
    assert not bool(bound.exact[0])
    assert float(bound.mutual_information[0]) < float(info.mutual_information[0]) + 4 * float(info.standard_error[0])
    assert float(bound.mutual_information[0]) > 0.8 * float(info.mutual_information[0])


def test_layer_mutual_information_of_a_deep_net_matches_enumerating_each_layer():
    q, group = random_q(1, 2, (3, 2, 1), loc_scale=0.4, scale=0.5)
    key = jax.random.key(1)
    info = diagnostics.layer_mutual_information(key, q, group, num_samples=100)
    subgroups = []
    for layer, d in enumerate(group.widths):
        # the subgroup that permutes this layer only
        perms = np.array(list(itertools.permutations(range(d))), np.int32)
        subgroups.append(tuple(jnp.asarray(perms if i == layer else np.tile(np.arange(w, dtype=np.int32), (len(perms), 1)))
                               for i, w in enumerate(group.widths)))

    @jax.jit
    def enumerated(key, q):
        samples = meanfield.sample(jax.random.split(key)[0], q, 100)
        log_q = meanfield.log_prob(q, samples)
        out = []
        for elements in subgroups:
            orbit = jax.vmap(lambda w: orbits.orbit_log_probs(q, w, elements, group))(samples)
            out.append(jnp.mean(log_q - (jax.nn.logsumexp(orbit, axis=1) - math.log(orbit.shape[1]))))
        return jnp.stack(out)

    np.testing.assert_allclose(info.mutual_information, enumerated(key, q), rtol=1e-4, atol=1e-4)


def test_collapsed_units_are_counted():
    q, group = random_q(2, 3, (5, 2), loc_scale=0.3, scale=0.05)
    prior_scale = 0.7
    # put units 1 and 3 exactly on the prior: loc 0, sigma = prior scale
    loc = jax.tree.map(jnp.array, q.loc)
    raw = jax.tree.map(jnp.array, q.raw_scale)
    rho = float(meanfield.inverse_softplus_scale(prior_scale))
    for unit in (1, 3):
        loc["Dense_0"]["kernel"] = loc["Dense_0"]["kernel"].at[:, unit].set(0.0)
        loc["Dense_0"]["bias"] = loc["Dense_0"]["bias"].at[unit].set(0.0)
        loc["Dense_1"]["kernel"] = loc["Dense_1"]["kernel"].at[unit, :].set(0.0)
        raw["Dense_0"]["kernel"] = raw["Dense_0"]["kernel"].at[:, unit].set(rho)
        raw["Dense_0"]["bias"] = raw["Dense_0"]["bias"].at[unit].set(rho)
        raw["Dense_1"]["kernel"] = raw["Dense_1"]["kernel"].at[unit, :].set(rho)
    q = meanfield.MeanFieldState(loc, raw)
    kl = diagnostics.unit_kl(q, group, prior_scale)
    np.testing.assert_allclose(kl[0][np.array([1, 3])], 0.0, atol=1e-4)
    assert diagnostics.collapsed_units(q, group, prior_scale) == (2,)
    # the per-unit KLs add up to the closed-form KL of the moving weights
    total = meanfield.kl_to_normal(q, prior_scale)
    output_bias = meanfield.kl_to_normal(
        meanfield.MeanFieldState({"b": q.loc["Dense_1"]["bias"]}, {"b": q.raw_scale["Dense_1"]["bias"]}), prior_scale)
    np.testing.assert_allclose(jnp.sum(kl[0]), total - output_bias, rtol=1e-5)
    # the array form jits and vmaps (as symvi-jax cnn runs it over seeds) and counts the same
    counts = jax.jit(lambda q: diagnostics.collapsed_unit_counts(q, group, prior_scale))(q)
    np.testing.assert_array_equal(counts, [2])
    stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), q, random_q(3, 3, (5, 2), loc_scale=0.3, scale=0.05)[0])
    per_q = jax.jit(jax.vmap(lambda q: diagnostics.collapsed_unit_counts(q, group, prior_scale)))(stacked)
    np.testing.assert_array_equal(per_q, [[2], [0]])


def test_layer_mutual_information_jits_and_vmaps_over_posteriors():
    # symvi-jax cnn computes every seed's diagnostics in one jitted, vmapped program
    q0, group = random_q(4, 2, (3, 2, 1), loc_scale=0.4, scale=0.5)
    q1, _ = random_q(5, 2, (3, 2, 1), loc_scale=0.4, scale=0.5)
    qs = jax.tree.map(lambda a, b: jnp.stack([a, b]), q0, q1)
    keys = jax.random.split(jax.random.key(6), 2)
    both = jax.jit(jax.vmap(lambda q, k: diagnostics.layer_mutual_information(k, q, group, num_samples=50)))(qs, keys)
    for i, q in enumerate((q0, q1)):
        one = diagnostics.layer_mutual_information(keys[i], q, group, num_samples=50)
        np.testing.assert_allclose(both.mutual_information[i], one.mutual_information, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(both.exact[i], one.exact)


def test_nearest_equivalent_distance_is_the_minimum_over_the_group():
    q, group = random_q(3, 2, (4, 2), loc_scale=1.0)
    w = q.loc
    norm = math.sqrt(sum(float(jnp.sum(x ** 2)) for x in jax.tree.leaves(w)))
    brute = min(
        math.sqrt(sum(float(jnp.sum((a - b) ** 2)) for a, b in zip(jax.tree.leaves(w), jax.tree.leaves(
            group.act((jnp.asarray(p, jnp.int32),), w))))) / norm
        for p in itertools.permutations(range(4)) if p != (0, 1, 2, 3)
    )
    np.testing.assert_allclose(diagnostics.nearest_equivalent_distance(w, group)[0], brute, rtol=1e-4)
    one_unit = PermutationGroup(widths=(1,), layer_names=("Dense_0", "Dense_1"))
    q1, _ = random_q(4, 2, (1, 2))
    assert jnp.isinf(diagnostics.nearest_equivalent_distance(q1.loc, one_unit)[0])


def test_theorem_3_1_bound():
    assert diagnostics.theorem_3_1_bound(784, 2, 10) == math.inf
    np.testing.assert_allclose(diagnostics.theorem_3_1_bound(784, 1000, 10),
                               2 * (784 + 10 + 1 + 1e-3) / math.log(500), rtol=1e-12)
    with pytest.raises(ValueError, match="width"):
        diagnostics.theorem_3_1_bound(784, 0, 10)


def test_report_and_bad_inputs():
    q, group = random_q(5, 2, (3, 2))
    r = diagnostics.report(jax.random.key(0), q, group, num_samples=8)
    assert r.widths == (3,) and r.layers.fraction.shape == (1,) and r.nearest_mode_distance.shape == (1,)
    with pytest.raises(ValueError, match="num_samples"):
        diagnostics.layer_mutual_information(jax.random.key(0), q, group, num_samples=0)
    with pytest.raises(ValueError, match="exact_max_width"):
        diagnostics.layer_mutual_information(jax.random.key(0), q, group, num_samples=2, exact_max_width=99)
    with pytest.raises(ValueError, match="threshold"):
        diagnostics.collapsed_units(q, group, 1.0, threshold=0.0)
    with pytest.raises(ValueError, match="group"):
        diagnostics.unit_kl(q, "group")


def test_report_gives_a_verdict_in_words():
    import jax
    import jax.numpy as jnp

    from symvi_jax import MLP, PermutationGroup, diagnostics, meanfield

    params = MLP(features=(4, 2)).init(jax.random.key(0), jnp.zeros((1, 3)))["params"]
    group = PermutationGroup.from_params(params)
    narrow = diagnostics.report(jax.random.key(1), meanfield.init(params, init_scale=1e-3), group, num_samples=4)
    assert narrow.verdict.startswith("copies disjoint: symmetrization adds a constant")
    # a q at the prior with a zero mean: every unit is interchangeable, the copies coincide
    zero = jax.tree.map(jnp.zeros_like, params)
    wide = diagnostics.report(jax.random.key(1), meanfield.init(zero, init_scale=1.0), group, num_samples=4)
    assert wide.verdict.startswith("copies overlap: it changes training")
