import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from symvi_jax import likelihoods
from fixtures import make_mlp


@pytest.fixture
def classifier(next_key):
    model, params = make_mlp(next_key(), 3, (4, 5))
    return (lambda p, x: model.apply({"params": p}, x)), params


def test_categorical_is_log_softmax_of_the_label(classifier, next_key):
    apply_fn, params = classifier
    x = jax.random.normal(next_key(), (6, 3))
    y = jnp.array([0, 1, 2, 3, 4, 0])
    out = likelihoods.categorical(apply_fn)(params, (x, y))
    expected = jax.nn.log_softmax(apply_fn(params, x))[jnp.arange(6), y]
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert out.shape == (6,)


def test_gaussian_matches_the_normal_density(next_key):
    model, params = make_mlp(next_key(), 2, (3, 2))
    apply_fn = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
    x = jax.random.normal(next_key(), (5, 2))
    y = jax.random.normal(next_key(), (5, 2))
    tau = 4.0
    out = likelihoods.gaussian(apply_fn, noise_precision=tau)(params, (x, y))
    f = apply_fn(params, x)
    expected = jnp.sum(-0.5 * math.log(2 * math.pi / tau) - 0.5 * tau * (y - f) ** 2, axis=-1)
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    # one output: targets may be given without the trailing axis
    model1, params1 = make_mlp(next_key(), 2, (3, 1))
    apply1 = lambda p, x: model1.apply({"params": p}, x)  # noqa: E731
    a = likelihoods.gaussian(apply1, noise_precision=tau)(params1, (x, y[:, 0]))
    b = likelihoods.gaussian(apply1, noise_precision=tau)(params1, (x, y[:, :1]))
    np.testing.assert_allclose(a, b)


def test_feature_size_mismatch_is_a_clear_error(classifier):
    apply_fn, params = classifier
    with pytest.raises(ValueError, match="expects 3"):
        likelihoods.categorical(apply_fn)(params, (jnp.ones((2, 4)), jnp.zeros(2, jnp.int32)))


@pytest.mark.parametrize("labels", [[0, 5], [-1, 0]])
def test_labels_out_of_range(classifier, labels):
    apply_fn, params = classifier
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\)"):
        likelihoods.categorical(apply_fn)(params, (jnp.ones((2, 3)), jnp.array(labels)))


def test_non_integer_labels_and_bad_batches(classifier):
    apply_fn, params = classifier
    loglik = likelihoods.categorical(apply_fn)
    with pytest.raises(ValueError, match="integers"):
        loglik(params, (jnp.ones((2, 3)), jnp.array([0.0, 1.0])))
    with pytest.raises(ValueError, match="pair"):
        loglik(params, jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="number of examples"):
        loglik(params, (jnp.ones((2, 3)), jnp.array([0, 1, 2])))
    with pytest.raises(ValueError, match="leading example axis"):
        loglik(params, (jnp.ones((0, 3)), jnp.zeros((0,), jnp.int32)))


def test_regression_shape_mismatch_and_bad_precision(next_key):
    model, params = make_mlp(next_key(), 2, (3, 2))
    apply_fn = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
    with pytest.raises(ValueError, match="targets have shape"):
        likelihoods.gaussian(apply_fn, noise_precision=1.0)(params, (jnp.ones((4, 2)), jnp.ones((4, 3))))
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="noise_precision"):
            likelihoods.gaussian(apply_fn, noise_precision=bad)
