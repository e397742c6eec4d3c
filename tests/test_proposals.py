"""The Sinkhorn proposal r(sigma | w): a normalised, exact, equivariant pmf over assignments."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from symvi_jax import PermutationGroup, meanfield, proposals
from test_permanent import permutations, random_q, sample as sample_q

log_prob = jax.jit(proposals.log_prob, static_argnames=("group", "temperature", "num_iterations"))
sample = jax.jit(proposals.sample, static_argnames=("group", "num_samples", "temperature", "num_iterations"))


def all_log_probs(q, w, group, **config):
    elements = group.elements()
    return jax.jit(jax.vmap(lambda s: proposals.log_prob(q, w, group, s, **config)))(elements)


@pytest.mark.parametrize("features, config", [
    ((4, 2), dict()), ((4, 2), dict(temperature=3.0)), ((4, 2), dict(num_iterations=0)), ((3, 2, 2), dict()),
])
def test_pmf_is_normalised_and_equivariant(features, config):
    q, group = random_q(10, 2, features)
    w = sample_q(0, q)
    np.testing.assert_allclose(jnp.exp(jax.nn.logsumexp(all_log_probs(q, w, group, **config))), 1.0, rtol=1e-4)
    # r(sigma' | g.w) = r(compose(sigma', g) | w): relabelling the units relabels the draws
    for seed in range(3):
        g, sigma = permutations(seed, group.widths), permutations(seed + 10, group.widths)
        left = log_prob(q, group.act(g, w), group, sigma, **config)
        right = log_prob(q, w, group, group.compose(sigma, g), **config)
        np.testing.assert_allclose(left, right, rtol=1e-4, atol=1e-4)


def test_draws_are_permutations_with_the_returned_log_probs():
    q, group = random_q(11, 3, (7, 3, 2))
    w = sample_q(0, q)
    sigmas, log_r = sample(jax.random.key(0), q, w, group, 50)
    assert [s.shape for s in sigmas] == [(50, 7), (50, 3)]
    for layer, d in enumerate(group.widths):
        np.testing.assert_array_equal(jnp.sort(sigmas[layer], axis=1), jnp.broadcast_to(jnp.arange(d), (50, d)))
    again = jax.vmap(lambda s: log_prob(q, w, group, s))(sigmas)
    np.testing.assert_allclose(log_r, again, rtol=1e-4, atol=1e-4)


def test_draw_frequencies_match_the_pmf():
    q, group = random_q(12, 2, (3, 1), loc_scale=0.4, scale=0.4)
    w = sample_q(0, q)
    probs = np.exp(np.asarray(all_log_probs(q, w, group)))
    sigmas, _ = sample(jax.random.key(1), q, w, group, 6000)
    elements = np.asarray(group.elements()[0])
    codes = {tuple(e): k for k, e in enumerate(elements)}
    counts = np.bincount([codes[tuple(s)] for s in np.asarray(sigmas[0])], minlength=len(elements))
    expected = probs * 6000
    chi2 = np.sum((counts - expected) ** 2 / expected)
    assert chi2 < 25.7, (counts, expected)  # chi-square, 5 degrees of freedom, p = 1e-4


def test_invariant_q_gives_the_uniform_proposal():
    group = PermutationGroup(widths=(4,), layer_names=("Dense_0", "Dense_1"))
    loc = {"Dense_0": {"kernel": jnp.broadcast_to(jnp.array([[0.2], [-0.1]]), (2, 4)), "bias": jnp.full(4, 0.1)},
           "Dense_1": {"kernel": jnp.broadcast_to(jnp.array([0.3, -0.3]), (4, 2)), "bias": jnp.zeros(2)}}
    q = meanfield.init(loc, init_scale=0.5)
    w = sample_q(0, q)
    np.testing.assert_allclose(all_log_probs(q, w, group), -jnp.log(24.0), rtol=1e-5)


def test_far_apart_units_concentrate_the_proposal_on_the_identity():
    group = PermutationGroup(widths=(5,), layer_names=("Dense_0", "Dense_1"))
    loc = {"Dense_0": {"kernel": jnp.arange(10.0).reshape(2, 5), "bias": jnp.arange(5.0)},
           "Dense_1": {"kernel": jnp.ones((5, 2)), "bias": jnp.zeros(2)}}
    q = meanfield.init(loc, init_scale=0.01)
    w = sample_q(0, q)
    assert float(log_prob(q, w, group, group.identity())) > -1e-6
    g = permutations(1, group.widths)
    sigmas, _ = sample(jax.random.key(2), q, group.act(g, w), group, 5)
    # drawing for g.w undoes g: sigma.(g.w) = w, i.e. compose(sigma, g) = e
    np.testing.assert_array_equal(jax.vmap(lambda s: group.compose((s,), g)[0])(sigmas[0]),
                                  jnp.broadcast_to(jnp.arange(5), (5, 5)))


def test_bad_configuration_raises():
    q, group = random_q(13, 2, (3, 2))
    w = sample_q(0, q)
    with pytest.raises(ValueError, match="temperature"):
        proposals.log_prob(q, w, group, group.identity(), temperature=0.0)
    with pytest.raises(ValueError, match="num_iterations"):
        proposals.sample(jax.random.key(0), q, w, group, 2, num_iterations=-1)
    with pytest.raises(ValueError, match="num_samples"):
        proposals.sample(jax.random.key(0), q, w, group, 0)
    with pytest.raises(ValueError, match="one index array per factor"):
        proposals.log_prob(q, w, group, ())


def test_shared_first_log_weights_give_the_same_draws_and_pmf():
    """orbits.importance_terms builds factor 0's weights once and passes them to sample and log_prob."""
    q, group = random_q(12, 3, (5, 3, 2))
    w = sample_q(0, q)
    first = proposals.layer_log_weights(q, w, group, 0)
    sigmas, log_r = sample(jax.random.key(4), q, w, group, 6)
    shared_sigmas, shared_log_r = jax.jit(
        lambda f: proposals.sample(jax.random.key(4), q, w, group, 6, first_log_weights=f))(first)
    for a, b in zip(sigmas, shared_sigmas):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(shared_log_r, log_r, rtol=1e-6, atol=1e-6)
    one = tuple(s[0] for s in sigmas)
    np.testing.assert_allclose(proposals.log_prob(q, w, group, one, first_log_weights=first),
                               log_prob(q, w, group, one), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"first_log_weights must be factor 0's log F of shape \(5, 5\)"):
        proposals.log_prob(q, w, group, one, first_log_weights=first[:3])
