"""The gradient of the importance-weighted orbit bound, in float64, against exact references (issue #12).

The weight samples w_s = loc + scale eps_s use one fixed key, so only the proposal's draws vary;
"the exact gradient of I" is d/dq (1/S) sum_s [log q(w_s) - log q^G(w_s)] on those eps_s, with
q^G from the permanent (one hidden layer) or by enumerating G (two hidden layers). Tolerances
are z = 4.5 Monte Carlo standard errors per coordinate over the draws, plus a float64 rounding
floor of 1e-9 max|reference| (the K = 1 gradient has no randomness). Helpers live in
benchmarks/importance_gradient.py, which prints the full table.
"""

import sys
from pathlib import Path

import jax
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import importance_gradient as ig  # noqa: E402

NUM_SAMPLES = 4


pytestmark = pytest.mark.usefixtures("float64")  # x64 on for this module (conftest.py)


def _case(net):
    in_features, features = ig.NETS[net]
    q, group = ig.overlapping_q(0, in_features, features)
    return q, group, jax.random.key(2)


# Out of CI (run with -m slow): the two-hidden-layer net at K = 2 and 4; K = 1 and 8 stay in.
_CASES = [pytest.param(net, k, marks=pytest.mark.slow) if i > 0 and k in (2, 4) else (net, k)
          for i, net in enumerate(ig.NETS) for k in (1, 2, 4, 8)]


@pytest.mark.parametrize("net,num_permutations", _CASES)
def test_gradient_is_unbiased_when_the_proposal_is_the_exact_posterior(net, num_permutations):
    q, group, key_w = _case(net)
    exact = ig.exact_gradient(q, group, key_w, NUM_SAMPLES)
    keys = jax.random.split(jax.random.key(1), 512)
    with ig.exact_posterior_proposal():
        grads = ig.estimator_gradients(q, group, key_w, NUM_SAMPLES, num_permutations, keys)
    assert ig.within_monte_carlo_error(grads, exact) <= 1.0


def test_stopping_the_identity_term_is_detected_as_the_issue_12_bias():
    # the estimator before the fix: its mean gradient is (K - 1)/K of the exact one, here 1/2
    q, group, key_w = _case("one hidden layer (3)")
    exact = ig.exact_gradient(q, group, key_w, NUM_SAMPLES)
    keys = jax.random.split(jax.random.key(1), 512)
    with ig.identity_stopped(exact=True):
        grads = ig.estimator_gradients(q, group, key_w, NUM_SAMPLES, 2, keys)
    assert ig.within_monte_carlo_error(grads, exact) > 1.0
    stats = ig.compare(grads, exact)
    assert abs(stats["ratio"] - 0.5) <= 4.5 * stats["ratio_se"]


@pytest.mark.parametrize("num_permutations", [2, pytest.param(8, marks=pytest.mark.slow)])
def test_sinkhorn_gradient_is_closer_to_the_exact_one_than_before(num_permutations):
    q, group, key_w = _case("one hidden layer (3)")
    exact = ig.exact_gradient(q, group, key_w, NUM_SAMPLES)
    keys = jax.random.split(jax.random.key(1), 512)
    with ig.identity_stopped():
        before = ig.compare(ig.estimator_gradients(q, group, key_w, NUM_SAMPLES, num_permutations, keys), exact)
    after = ig.compare(ig.estimator_gradients(q, group, key_w, NUM_SAMPLES, num_permutations, keys), exact)
    print(f"K={num_permutations}: ratio before {before['ratio']:.3f} +- {before['ratio_se']:.3f}, "
          f"after {after['ratio']:.3f} +- {after['ratio_se']:.3f}")
    assert abs(after["ratio"] - 1.0) + 3 * after["ratio_se"] < abs(before["ratio"] - 1.0)


@pytest.mark.parametrize("net", [net if i == 0 else pytest.param(net, marks=pytest.mark.slow)
                                 for i, net in enumerate(ig.NETS)])
def test_score_corrected_gradient_is_unbiased_for_the_sinkhorn_proposal(net):
    # the reference is the gradient of the bound E[t] itself (every pair of draws enumerated)
    q, group, key_w = _case(net)
    bound = ig.bound_gradient(q, group, key_w, NUM_SAMPLES, 2, temperature=1.0)
    keys = jax.random.split(jax.random.key(5), 2048)
    grads = ig.estimator_gradients(q, group, key_w, NUM_SAMPLES, 2, keys, score_correction=True)
    assert ig.within_monte_carlo_error(grads, bound) <= 1.0
    if net.startswith("two"):
        # the default gradient is visibly biased for this inexact proposal: the test can tell
        default = ig.estimator_gradients(q, group, key_w, NUM_SAMPLES, 2, keys)
        assert ig.within_monte_carlo_error(default, bound) > 1.0
