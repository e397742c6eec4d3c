"""Exact identities of the symmetrized objective, in float64 on nets small enough to enumerate."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from symvi_jax import PermutationGroup, likelihoods, meanfield, objectives, orbits
from fixtures import KeySource, make_mlp


STATIC = ("group", "num_permutations", "estimator", "chunk_size")
mi_terms = jax.jit(orbits.mutual_information_terms, static_argnames=STATIC)
sym_log_prob = jax.jit(orbits.symmetrized_log_prob, static_argnames=("group", "chunk_size"))


pytestmark = pytest.mark.usefixtures("float64")  # x64 on for this module (conftest.py)


def overlapping_q(key, in_features, features, loc_scale=0.5, scale=0.5):
    """A q whose permuted copies overlap, so that 0 < I < log|G|."""
    keys = KeySource(int(jax.random.randint(key, (), 0, 2**30)))
    model, params = make_mlp(keys(), in_features, features, dtype=jnp.float64)
    loc = jax.tree.map(lambda p: loc_scale * jax.random.normal(keys(), p.shape, jnp.float64), params)
    q = meanfield.init(loc, init_scale=scale)
    raw = jax.tree.map(lambda r: r + 0.3 * jax.random.normal(keys(), r.shape, jnp.float64), q.raw_scale)
    return model, meanfield.MeanFieldState(loc, raw), PermutationGroup.from_params(params)


def invariant_q(group, params, scale=0.4):
    """A G-invariant q: every hidden unit has the same loc and scale (varying across inputs)."""
    loc = {}
    for name, layer in params.items():
        loc[name] = {}
        for leaf, x in layer.items():
            base = jnp.arange(x.size, dtype=jnp.float64).reshape(x.shape) * 0.1
            if leaf == "kernel":
                base = jnp.broadcast_to(jnp.arange(x.shape[0], dtype=jnp.float64)[:, None] * 0.1 - 0.2, x.shape)
                if name != group.layer_names[0]:
                    base = jnp.full(x.shape, 0.3)
            else:
                base = jnp.full(x.shape, 0.05)
            loc[name][leaf] = base
    q = meanfield.init(loc, init_scale=scale)
    assert group.is_invariant(q.loc) and group.is_invariant(q.raw_scale)
    return q


@pytest.mark.parametrize("features", [(3, 1), (2, 3, 2), (4, 2)])
def test_symmetrized_log_prob_is_invariant(next_key, features):
    _, q, group = overlapping_q(next_key(), 2, features)
    w = meanfield.sample(next_key(), q)
    base = sym_log_prob(q, w, group)
    for g in [group.sample(next_key()) for _ in range(5)]:
        np.testing.assert_allclose(sym_log_prob(q, group.act(g, w), group), base, rtol=1e-12, atol=1e-12)
    # chunked lax.map gives the same value as vmap
    np.testing.assert_allclose(sym_log_prob(q, w, group, chunk_size=5), base, rtol=1e-12)


@pytest.mark.parametrize("features", [(3, 1), (2, 2, 1)])
def test_elbo_plus_exact_mutual_information_is_the_elbo_of_q_G(next_key, features):
    model, q, group = overlapping_q(next_key(), 2, features)
    apply = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
    loglik = likelihoods.gaussian(apply, noise_precision=4.0)
    x = jax.random.normal(next_key(), (7, 2), jnp.float64)
    y = jax.random.normal(next_key(), (7, 1), jnp.float64)
    data_size, prior_scale, num_samples = 50, 0.8, 64
    key = next_key()

    value, info = objectives.elbo(
        key, q, (x, y), loglikelihood_fn=loglik, data_size=data_size, prior_scale=prior_scale,
        num_samples=num_samples, kl_estimator="monte_carlo",
    )
    samples = meanfield.sample(key, q, num_samples)  # the draws elbo made
    terms_exact = mi_terms(next_key(), q, samples, group, num_permutations=None, estimator="exact")
    ours = value + jnp.mean(terms_exact)

    # Direct definition on draws from q^G (draw from q, then apply a uniform g):
    #   L^G = E_{q^G}[(N/M) sum log p(y|x,w) + log p(w) - log q^G(w)].
    gs = group.sample(next_key(), num_samples)
    sym = jax.vmap(group.act)(gs, samples)
    prior = meanfield.normal(jax.tree.map(jnp.zeros_like, q.loc), prior_scale)
    ll = jax.vmap(lambda w: data_size * jnp.mean(loglik(w, (x, y))))(sym)
    log_qg = jax.vmap(lambda w: sym_log_prob(q, w, group))(sym)
    direct = jnp.mean(ll + meanfield.log_prob(prior, sym) - log_qg)
    np.testing.assert_allclose(ours, direct, rtol=1e-6, atol=1e-6)
    assert info.mutual_information == 0.0

    # With the closed-form KL the two agree in expectation: KL(q^G || p) = KL(q || p) - I.
    _, closed = objectives.elbo(key, q, (x, y), loglikelihood_fn=loglik, data_size=data_size,
                                prior_scale=prior_scale, num_samples=num_samples)
    np.testing.assert_allclose(closed.expected_loglikelihood, info.expected_loglikelihood, rtol=1e-12)


def _infonce_exact_over_permutations(log_orbit, k):
    """E over g_1..g_{K-1} iid uniform of the per-sample InfoNCE term, by enumeration.

    log_orbit: (S, |G|) values log q(g^{-1}.w_s) with the identity in column 0.
    """
    s, n = log_orbit.shape
    log_q = log_orbit[:, 0]
    if k == 1:
        return jnp.zeros(s)
    combos = np.array(list(itertools.product(range(n), repeat=k - 1)))  # (|G|^{K-1}, K-1)
    others = log_orbit[:, combos]  # (S, C, K-1)
    stacked = jnp.concatenate([jnp.broadcast_to(log_q[:, None, None], others.shape[:2] + (1,)), others], axis=2)
    terms = log_q[:, None] - (jax.nn.logsumexp(stacked, axis=2) - math.log(k))
    return jnp.mean(terms, axis=1)


def test_infonce_is_a_lower_bound_that_grows_with_k(next_key):
    _, q, group = overlapping_q(next_key(), 1, (3, 1), loc_scale=0.4, scale=0.6)
    samples = meanfield.sample(next_key(), q, 3000)
    elements = group.elements()
    log_orbit = jax.jit(jax.vmap(lambda w: orbits.orbit_log_probs(q, w, elements, group)))(samples)  # (S, 6)
    exact_terms = mi_terms(next_key(), q, samples, group, num_permutations=None, estimator="exact")
    per_k = [_infonce_exact_over_permutations(log_orbit, k) for k in (1, 2, 3)]
    chain = per_k + [exact_terms]
    for lower, upper in zip(chain[:-1], chain[1:]):
        diff = upper - lower
        se = float(jnp.std(diff)) / math.sqrt(diff.size)
        assert float(jnp.mean(diff)) > -3 * se, (float(jnp.mean(diff)), se)
    mi = float(jnp.mean(exact_terms))
    assert 0.05 < mi < group.log_order()  # the copies overlap: the check is not degenerate
    assert float(jnp.mean(per_k[2])) < mi  # strictly below: K = 3 < |G| = 6
    assert jnp.all(per_k[1] <= math.log(2) + 1e-12) and jnp.all(per_k[2] <= math.log(3) + 1e-12)
    # the library's sampled InfoNCE agrees with the enumerated expectation within Monte Carlo error
    # (the K-1 permutations are shared by all samples, so the draws of permutations are the units)
    infonce = jax.jit(lambda key: jnp.mean(orbits.mutual_information_terms(key, q, samples, group, num_permutations=3)))
    sampled = jax.lax.map(infonce, jax.random.split(next_key(), 40))
    se = float(jnp.std(sampled)) / math.sqrt(sampled.size)
    assert abs(float(jnp.mean(sampled)) - float(jnp.mean(per_k[2]))) < 4 * se


@pytest.mark.parametrize("features", [(3, 1), (2, 3, 2)])
def test_invariant_q_has_zero_mutual_information(next_key, features):
    _, params = make_mlp(next_key(), 2, features, dtype=jnp.float64)
    group = PermutationGroup.from_params(params)
    q = invariant_q(group, params)
    samples = meanfield.sample(next_key(), q, 50)
    for estimator, k in (("infonce", 1), ("infonce", 4), ("infonce", 50), ("exact", None)):
        terms = mi_terms(next_key(), q, samples, group, num_permutations=k, estimator=estimator)
        np.testing.assert_allclose(terms, 0.0, atol=1e-10)


def test_non_overlapping_copies_saturate_at_log_k_and_log_order(next_key):
    _, params = make_mlp(next_key(), 2, (3, 1), dtype=jnp.float64)
    loc = jax.tree.map(lambda p: 10.0 * jnp.arange(p.size, dtype=jnp.float64).reshape(p.shape), params)
    q = meanfield.init(loc, init_scale=1e-2)
    group = PermutationGroup.from_params(params)
    samples = meanfield.sample(next_key(), q, 20)
    exact = mi_terms(next_key(), q, samples, group, num_permutations=None, estimator="exact")
    np.testing.assert_allclose(exact, group.log_order(), rtol=1e-10)
    # uniform draws can repeat the identity, so I^K = log K only up to those collisions (|G| = 6)
    infonce = mi_terms(next_key(), q, samples, group, num_permutations=4)
    assert jnp.all(infonce <= math.log(4) + 1e-12) and jnp.all(infonce >= math.log(4 / 3) - 1e-12)


def test_predictions_of_q_and_q_G_agree(next_key):
    model, q, group = overlapping_q(next_key(), 2, (3, 2, 2))
    x = jax.random.normal(next_key(), (5, 2), jnp.float64)
    samples = meanfield.sample(next_key(), q, 10)
    gs = group.sample(next_key(), 10)
    out = jax.vmap(lambda w: model.apply({"params": w}, x))(samples)
    out_g = jax.vmap(lambda g, w: model.apply({"params": group.act(g, w)}, x))(gs, samples)
    np.testing.assert_allclose(out_g, out, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("features, use_bias", [((4, 2), True), ((3, 4, 2), True), ((3, 2, 4, 2), False), ((5, 1), False)])
def test_orbit_log_ratios_match_permuting_the_weights(next_key, features, use_bias):
    """The matrix-product path of orbits.assignment_log_ratios against log q of explicitly permuted weights."""
    keys = KeySource(3)
    _, params = make_mlp(keys(), 3, features, use_bias=use_bias, dtype=jnp.float64)
    group = PermutationGroup.from_params(params)
    loc = jax.tree.map(lambda p: 2.0 + 0.5 * jax.random.normal(keys(), p.shape, jnp.float64), params)
    q = meanfield.init(loc, init_scale=0.3)
    q = meanfield.MeanFieldState(q.loc, jax.tree.map(lambda r: r + 0.5 * jax.random.normal(keys(), r.shape), q.raw_scale))
    w = meanfield.sample(keys(), q)
    elements = group.sample(keys(), 9)
    direct = jax.jit(jax.vmap(lambda g: meanfield.log_prob(q, group.act(group.inverse(g), w))))(elements)
    fast = jax.jit(orbits.orbit_log_probs, static_argnames=("group", "chunk_size"))(q, w, elements, group)
    np.testing.assert_allclose(fast, direct, rtol=1e-12, atol=1e-9)
    chunked = jax.jit(orbits.orbit_log_probs, static_argnames=("group", "chunk_size"))(q, w, elements, group,
                                                                                       chunk_size=4)
    np.testing.assert_allclose(chunked, direct, rtol=1e-12, atol=1e-9)
