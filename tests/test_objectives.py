import jax
import jax.numpy as jnp
import numpy as np
import pytest

from symvi_jax import PermutationGroup, likelihoods, meanfield, objectives
from fixtures import make_mlp


@pytest.fixture
def setup(next_key):
    model, params = make_mlp(next_key(), 3, (4, 3))
    apply_fn = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
    q = meanfield.init(params, init_scale=0.2)
    x = jax.random.normal(next_key(), (12, 3))
    y = jax.random.randint(next_key(), (12,), 0, 3)
    return dict(q=q, batch=(x, y), loglik=likelihoods.categorical(apply_fn), group=PermutationGroup.from_params(params))


def _elbo(setup, key, **kw):
    kw = {"loglikelihood_fn": setup["loglik"], "data_size": 120, "num_samples": 3, **kw}
    return jax.jit(lambda k: objectives.elbo(k, setup["q"], setup["batch"], **kw))(key)


def _sym(setup, key, **kw):
    kw = {"loglikelihood_fn": setup["loglik"], "data_size": 120, "num_samples": 3, "group": setup["group"],
          "num_permutations": 4, **kw}
    return jax.jit(lambda k: objectives.symmetrized_elbo(k, setup["q"], setup["batch"], **kw))(key)


def test_elbo_decomposes(setup, next_key):
    value, info = _elbo(setup, next_key())
    np.testing.assert_allclose(value, info.expected_loglikelihood - info.kl, rtol=1e-6)
    np.testing.assert_allclose(info.kl, meanfield.kl_to_normal(setup["q"], 1.0), rtol=1e-6)
    assert info.mutual_information == 0 and info.log_group_order == 0 and info.objective == value


def test_symmetrized_elbo_adds_the_mutual_information(setup, next_key):
    value, info = _sym(setup, next_key())
    np.testing.assert_allclose(value, info.expected_loglikelihood - info.kl + info.mutual_information, rtol=1e-6)
    np.testing.assert_allclose(info.log_group_order, setup["group"].log_order(), rtol=1e-6)
    assert 0 <= info.mutual_information <= np.log(4) + 1e-5
    _, info1 = _sym(setup, next_key(), num_permutations=1)
    assert info1.mutual_information == 0


def test_minibatch_scaling_is_unbiased(setup, next_key):
    """With the same weight draws, the average of the N/M-scaled minibatch terms is the full-batch term."""
    x, y = setup["batch"]
    key = next_key()
    full = objectives.elbo(key, setup["q"], (x, y), loglikelihood_fn=setup["loglik"], data_size=12, num_samples=2)[1]
    parts = [
        objectives.elbo(key, setup["q"], (x[i:i + 4], y[i:i + 4]), loglikelihood_fn=setup["loglik"], data_size=12,
                        num_samples=2)[1].expected_loglikelihood
        for i in (0, 4, 8)
    ]
    np.testing.assert_allclose(np.mean(parts), full.expected_loglikelihood, rtol=1e-5)


def test_gradients_are_finite(setup, next_key):
    key = next_key()
    grads = jax.jit(jax.grad(lambda q: objectives.symmetrized_elbo(
        key, q, setup["batch"], loglikelihood_fn=setup["loglik"], data_size=120, group=setup["group"],
        num_permutations=3)[0]))(setup["q"])
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


def test_monte_carlo_kl_option(setup, next_key):
    _, info = _elbo(setup, next_key(), num_samples=2000, kl_estimator="monte_carlo")
    closed = meanfield.kl_to_normal(setup["q"], 1.0)
    assert abs(float(info.kl) - float(closed)) < 0.05 * float(closed)
    with pytest.raises(ValueError, match="kl_estimator"):
        _elbo(setup, next_key(), kl_estimator="exactly")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_permutations": 0}, "num_permutations"),
        ({"num_permutations": -3}, "num_permutations"),
        ({"num_permutations": 2.5}, "num_permutations"),
        ({"num_samples": 0}, "num_samples"),
        ({"data_size": 0}, "data_size"),
        ({"prior_scale": 0.0}, "prior_scale"),
        ({"prior_scale": -1.0}, "prior_scale"),
        ({"estimator": "uniform"}, "estimator must be one of"),
        ({"estimator": "exact", "num_permutations": 10_000}, "sums over all"),
        ({"group": "S_4"}, "PermutationGroup"),
    ],
)
def test_bad_configuration_is_rejected(setup, next_key, kwargs, message):
    with pytest.raises(ValueError, match=message):
        _sym(setup, next_key(), **kwargs)


def test_non_invariant_prior_is_rejected(setup, next_key):
    prior = jax.tree.map(lambda x: jnp.ones_like(x), setup["q"].loc)
    _sym(setup, next_key(), prior_scale=prior)  # shared by all units: fine
    prior["Dense_0"]["bias"] = jnp.array([1.0, 2.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="not invariant"):
        _sym(setup, next_key(), prior_scale=prior)
