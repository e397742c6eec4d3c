import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from symvi_jax import meanfield, predict
from fixtures import make_mlp


def test_predictive_probs_average_sampled_softmaxes(next_key):
    model, params = make_mlp(next_key(), 3, (4, 3))
    apply_fn = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
    q = meanfield.init(params, init_scale=0.5)
    x = jax.random.normal(next_key(), (7, 3))
    key = next_key()
    probs = jax.jit(lambda k: predict.predictive_probs(k, q, apply_fn, x, num_samples=40, chunk_size=10))(key)
    assert probs.shape == (7, 3)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    # same as drawing every sample at once with the same chunk keys
    keys = jax.random.split(key, 4)
    draws = [jax.vmap(lambda w: jax.nn.softmax(apply_fn(w, x)))(meanfield.sample(k, q, 10)) for k in keys]
    np.testing.assert_allclose(probs, jnp.concatenate(draws).mean(0), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="divisor"):
        predict.predictive_probs(key, q, apply_fn, x, num_samples=40, chunk_size=7)


def test_classification_metrics():
    probs = jnp.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    labels = jnp.array([0, 1, 1, 1])
    assert float(predict.accuracy(probs, labels)) == 0.75
    expected_nll = -np.mean(np.log([0.9, 0.8, 0.4, 0.7]))
    np.testing.assert_allclose(predict.nll(probs, labels), expected_nll, rtol=1e-6)
    # ECE with 10 bins: bins of confidence 0.9, 0.8, 0.6, 0.7 each hold one example
    expected_ece = (abs(1 - 0.9) + abs(1 - 0.8) + abs(0 - 0.6) + abs(1 - 0.7)) / 4
    np.testing.assert_allclose(predict.ece(probs, labels, num_bins=10), expected_ece, rtol=1e-6)
    perfect = jnp.eye(3)
    assert float(predict.ece(perfect, jnp.arange(3))) == 0.0


def test_mse_and_entropy():
    assert float(predict.mse(jnp.array([[1.0], [3.0]]), jnp.array([2.0, 3.0]))) == 0.5
    with pytest.raises(ValueError, match="differ in shape"):
        predict.mse(jnp.ones(3), jnp.ones(2))
    np.testing.assert_allclose(predict.predictive_entropy(jnp.array([[0.5, 0.5]])), [np.log(2)], rtol=1e-6)


def test_auroc_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    neg = rng.integers(0, 5, 30).astype(float)  # with ties
    pos = rng.integers(2, 8, 20).astype(float)
    pairs = [(1.0 if p > n else 0.5 if p == n else 0.0) for n, p in itertools.product(neg, pos)]
    assert predict.auroc(neg, pos) == pytest.approx(np.mean(pairs))
    assert predict.auroc([0.0, 1.0], [2.0, 3.0]) == 1.0
