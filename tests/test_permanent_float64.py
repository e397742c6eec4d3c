"""Float64 identities of the permanent path and of the importance-weighted orbit bound.

* The permanent gives exactly the enumerated q^G (to 1e-8) for one hidden layer, widths 1-7.
* The importance bound, averaged over w ~ q and the proposals, never exceeds the exact I beyond
  Monte Carlo error; it is at least as tight as the paper's uniform estimator at equal K; it is
  exact for a G-invariant q. Tolerances are 4 standard errors of the paired per-sample differences.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from symvi_jax import meanfield, orbits
from test_permanent import random_q, sample

STATIC = ("group", "num_permutations", "estimator", "chunk_size", "temperature")
mi_terms = jax.jit(orbits.mutual_information_terms, static_argnames=STATIC)


pytestmark = pytest.mark.usefixtures("float64")  # x64 on for this module (conftest.py)


def overlapping_q(seed, in_features, features, loc_scale=0.5, scale=0.5):
    return random_q(seed, in_features, features, loc_scale=loc_scale, scale=scale, dtype=np.float64)


def test_exact_estimator_takes_the_permanent_and_equals_enumeration():
    for width in range(1, 8):
        q, group = overlapping_q(width, 3, (width, 2), loc_scale=0.3, scale=0.4)
        assert orbits.uses_permanent(group)
        samples = sample(width, q, 3)
        both = jax.jit(lambda q, samples: (
            orbits.mutual_information_terms(None, q, samples, group, num_permutations=None, estimator="exact"),
            meanfield.log_prob(q, samples) - jax.vmap(lambda w: orbits.symmetrized_log_prob(q, w, group))(samples),
        ))
        by_permanent, by_enumeration = both(q, samples)
        np.testing.assert_allclose(by_permanent, by_enumeration, rtol=0, atol=1e-8, err_msg=f"width {width}")


def _paired(upper, lower):
    diff = np.asarray(upper) - np.asarray(lower)
    return float(diff.mean()), float(diff.std(ddof=1) / math.sqrt(diff.size))


CASES = {
    "one-layer-5": dict(seed=1, in_features=2, features=(5, 2), loc_scale=0.4, scale=0.6),
    "one-layer-6-broad": dict(seed=2, in_features=3, features=(6, 1), loc_scale=0.3, scale=0.6),
    "two-layers-4-3": dict(seed=3, in_features=2, features=(4, 3, 1), loc_scale=0.3, scale=0.6),
}
# The two-layer case compiles a per-proposal second layer (~10 s); its proposal's equivariance is
# checked cheaply in test_proposals.py, the bound itself here under -m slow.
SLOW = {"two-layers-4-3"}


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW else c for c in sorted(CASES)])
def test_importance_bound_is_valid_and_at_least_as_tight_as_uniform(case):
    q, group = overlapping_q(**CASES[case])
    num_samples = 1500
    samples = sample(11, q, num_samples)
    exact = mi_terms(jax.random.key(0), q, samples, group, num_permutations=None, estimator="exact")
    exact_mean = float(exact.mean())
    assert 0.2 * group.log_order() < exact_mean < 0.95 * group.log_order()  # the copies overlap: not degenerate
    for k in (1, 5) if case == "one-layer-5" else (5,):
        importance = mi_terms(jax.random.key(k), q, samples, group, num_permutations=k, estimator="importance")
        # valid: E[importance] <= I, in expectation over w and the proposals
        gap, se = _paired(exact, importance)
        assert gap > -4 * se, (k, gap, se)
    # the uniform draws are shared by all samples (Theorem 4.3): average over several sets of them
    uniform = np.mean([
        np.asarray(mi_terms(key, q, samples, group, num_permutations=5)) for key in jax.random.split(jax.random.key(9), 8)
    ], axis=0)
    better, se_better = _paired(importance, uniform)
    assert better > -4 * se_better, (better, se_better)  # at least as tight at equal K
    assert better > 0.1 * exact_mean, (better, exact_mean)  # and clearly tighter here
    assert float(importance.mean()) > 0.9 * exact_mean  # K = 5 is within 10% on these small groups


def test_importance_bound_for_a_tempered_or_unbalanced_proposal_is_still_valid():
    q, group = overlapping_q(**CASES["one-layer-5"])
    samples = sample(12, q, 1500)
    exact = mi_terms(jax.random.key(0), q, samples, group, num_permutations=None, estimator="exact")
    for config in (dict(temperature=0.3, num_iterations=0),):
        terms = jax.jit(lambda key: orbits.importance_terms(key, q, samples, group, num_permutations=3, **config))(
            jax.random.key(5))
        gap, se = _paired(exact, terms)
        assert gap > -4 * se, (config, gap, se)


@pytest.mark.parametrize("features", [(4, 2), pytest.param((3, 2, 2), marks=pytest.mark.slow)])
def test_importance_bound_is_exact_for_an_invariant_q(features):
    params, group = overlapping_q(0, 2, features)
    params = params.loc
    loc, scale = {}, {}
    for name, layer in params.items():
        loc[name], scale[name] = {}, {}
        for leaf, x in layer.items():
            # every unit of every hidden layer shares its loc and scale
            if leaf == "kernel" and name == group.layer_names[0]:
                base = jnp.broadcast_to(jnp.linspace(-0.3, 0.3, x.shape[0])[:, None], x.shape)
            else:
                base = jnp.full(x.shape, 0.2)
            loc[name][leaf], scale[name][leaf] = base, jnp.full(x.shape, 0.5)
    q = meanfield.MeanFieldState(loc, jax.tree.map(lambda x: jnp.asarray(np.log(np.expm1(np.asarray(x) - 1e-7))), scale))
    assert group.is_invariant(q.loc) and group.is_invariant(q.raw_scale)
    samples = sample(1, q, 40)
    terms = mi_terms(jax.random.key(0), q, samples, group, num_permutations=4, estimator="importance")
    np.testing.assert_allclose(terms, 0.0, atol=1e-9)


def test_far_apart_copies_give_log_order_with_one_term():
    """Non-overlapping copies: the proposal finds the identity, so K = 1 already returns log|G|
    where the uniform estimator is stuck at log K."""
    params, group = overlapping_q(0, 2, (7, 1))
    loc = jax.tree.map(lambda p: jnp.asarray(10.0 * np.arange(p.size).reshape(p.shape)), params.loc)
    q = meanfield.MeanFieldState(loc, jax.tree.map(lambda r: jnp.full(r.shape, np.log(np.expm1(1e-2 - 1e-7))),
                                                   params.raw_scale))
    samples = sample(1, q, 10)
    importance = mi_terms(jax.random.key(2), q, samples, group, num_permutations=1, estimator="importance")
    np.testing.assert_allclose(importance, group.log_order(), rtol=1e-9)
    uniform = mi_terms(jax.random.key(2), q, samples, group, num_permutations=20)
    assert float(uniform.max()) <= math.log(20) + 1e-9 < group.log_order()
