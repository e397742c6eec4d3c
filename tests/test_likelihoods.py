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


# --- bernoulli, student_t, poisson against scipy.stats -----------------------------------------

from scipy import special, stats  # noqa: E402


def _net(next_key, in_features, features):
    model, params = make_mlp(next_key(), in_features, features)
    return (lambda p, x: model.apply({"params": p}, x)), params


def test_bernoulli_matches_scipy(next_key):
    apply_fn, params = _net(next_key, 3, (4, 2))
    x = 3.0 * jax.random.normal(next_key(), (7, 3))
    y = jax.random.bernoulli(next_key(), 0.5, (7, 2)).astype(jnp.int32)
    out = likelihoods.bernoulli(apply_fn)(params, (x, y))
    p = special.expit(np.asarray(apply_fn(params, x), np.float64))  # float64: jax would round to float32
    expected = stats.bernoulli.logpmf(np.asarray(y), p).sum(-1)
    assert out.shape == (7,)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    # bool and float labels give the same values
    for labels in (y.astype(bool), y.astype(jnp.float32)):
        np.testing.assert_allclose(likelihoods.bernoulli(apply_fn)(params, (x, labels)), out, rtol=1e-6)


def test_bernoulli_single_output_takes_flat_labels_and_is_stable_for_large_logits(next_key):
    apply_fn, params = _net(next_key, 2, (3, 1))
    x = jax.random.normal(next_key(), (5, 2))
    y = jnp.array([0, 1, 1, 0, 1])
    loglik = likelihoods.bernoulli(apply_fn)
    np.testing.assert_allclose(loglik(params, (x, y)), loglik(params, (x, y[:, None])))
    big = lambda p, x: jnp.full((x.shape[0], 1), 200.0)  # noqa: E731
    out = likelihoods.bernoulli(big)(params, (x, y))
    np.testing.assert_allclose(out, np.where(np.asarray(y) == 1, 0.0, -200.0), atol=1e-5)


@pytest.mark.parametrize("df, scale", [(1.0, 0.5), (3.0, 2.0), (30.0, 1.0)])
def test_student_t_matches_scipy(next_key, df, scale):
    apply_fn, params = _net(next_key, 2, (3, 2))
    x = jax.random.normal(next_key(), (6, 2))
    y = 3.0 * jax.random.normal(next_key(), (6, 2))
    out = likelihoods.student_t(apply_fn, df=df, scale=scale)(params, (x, y))
    f = np.asarray(apply_fn(params, x), np.float64)
    expected = stats.t.logpdf(np.asarray(y), df, loc=f, scale=scale).sum(-1)
    np.testing.assert_allclose(out, expected, rtol=1e-5)


def test_student_t_approaches_the_gaussian_for_large_df(next_key):
    apply_fn, params = _net(next_key, 2, (3, 1))
    x = jax.random.normal(next_key(), (4, 2))
    y = jax.random.normal(next_key(), (4,))
    t = likelihoods.student_t(apply_fn, df=1e6, scale=0.5)(params, (x, y))
    g = likelihoods.gaussian(apply_fn, noise_precision=4.0)(params, (x, y))
    np.testing.assert_allclose(t, g, rtol=1e-4)


def test_poisson_matches_scipy(next_key):
    apply_fn, params = _net(next_key, 3, (4, 2))
    x = jax.random.normal(next_key(), (8, 3))
    counts = jax.random.poisson(next_key(), 2.0, (8, 2))
    out = likelihoods.poisson(apply_fn)(params, (x, counts))
    rate = np.exp(np.asarray(apply_fn(params, x), np.float64))
    expected = stats.poisson.logpmf(np.asarray(counts), rate).sum(-1)
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    np.testing.assert_allclose(likelihoods.poisson(apply_fn)(params, (x, counts.astype(jnp.float32))), out, rtol=1e-6)


@pytest.mark.parametrize("name, kwargs", [("df", dict(scale=1.0)), ("scale", dict(df=3.0))])
@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan"), "2", True])
def test_student_t_rejects_bad_df_and_scale(name, kwargs, bad):
    with pytest.raises(ValueError, match=f"{name} must be"):
        likelihoods.student_t(lambda p, x: x, **{name: bad}, **kwargs)


@pytest.mark.parametrize("labels", [[0, 2, 1], [0, -1, 1], [0.5, 1.0, 0.0]])
def test_bernoulli_rejects_labels_outside_0_1(next_key, labels):
    apply_fn, params = _net(next_key, 2, (3, 1))
    with pytest.raises(ValueError, match="binary labels must be 0 or 1"):
        likelihoods.bernoulli(apply_fn)(params, (jnp.ones((3, 2)), jnp.array(labels)))


@pytest.mark.parametrize("counts", [[0, -1, 2], [0.5, 1.0, 2.0], [0.0, float("nan"), 1.0]])
def test_poisson_rejects_bad_counts(next_key, counts):
    apply_fn, params = _net(next_key, 2, (3, 1))
    with pytest.raises(ValueError, match="counts must be non-negative integers"):
        likelihoods.poisson(apply_fn)(params, (jnp.ones((3, 2)), jnp.array(counts)))


def test_new_likelihoods_reject_target_shape_mismatch(next_key):
    apply_fn, params = _net(next_key, 2, (3, 2))
    x = jnp.ones((4, 2))
    for loglik, targets in (
        (likelihoods.bernoulli(apply_fn), jnp.zeros((4, 3), jnp.int32)),
        (likelihoods.student_t(apply_fn, df=3.0, scale=1.0), jnp.zeros((4,))),
        (likelihoods.poisson(apply_fn), jnp.zeros((4, 1), jnp.int32)),
    ):
        with pytest.raises(ValueError, match=r"have shape \("):
            loglik(params, (x, targets))


def test_check_batch_catches_bad_labels_that_jit_would_hide(classifier):
    """Under jit the labels are traced, so only the eager check_batch can see their values."""
    apply_fn, params = classifier
    loglik = likelihoods.categorical(apply_fn)
    batch = (jnp.ones((2, 3)), jnp.array([0, 5]))
    out = jax.jit(loglik)(params, batch)  # no error: the value check needs concrete labels
    assert out.shape == (2,)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\)"):
        loglik.check_batch(params, batch)
    loglik.check_batch(params, (jnp.ones((2, 3)), jnp.array([0, 4])))  # good labels pass
    with pytest.raises(ValueError, match="one integer label per example"):
        loglik.check_batch(params, (jnp.ones((2, 3)), jnp.zeros((2, 1), jnp.int32)))
    with pytest.raises(ValueError, match="expects 3"):
        loglik.check_batch(params, (jnp.ones((2, 4)), jnp.array([0, 1])))


def test_check_batch_on_every_builder(next_key):
    apply_fn, params = _net(next_key, 2, (3, 1))
    x = jnp.ones((3, 2))
    cases = [
        (likelihoods.bernoulli(apply_fn), jnp.array([0, 1, 1]), jnp.array([0, 1, 3]), "binary labels"),
        (likelihoods.poisson(apply_fn), jnp.array([0, 4, 1]), jnp.array([0, -4, 1]), "counts"),
        (likelihoods.gaussian(apply_fn, noise_precision=1.0), jnp.zeros(3), jnp.zeros((3, 2)), "targets have shape"),
        (likelihoods.student_t(apply_fn, df=2.0, scale=1.0), jnp.zeros(3), jnp.zeros((3, 2)), "targets have shape"),
    ]
    for loglik, good, bad, match in cases:
        loglik.check_batch(params, (x, good))
        with pytest.raises(ValueError, match=match):
            loglik.check_batch(params, (x, bad))


def test_scalar_arrays_are_accepted_as_numbers(next_key):
    apply_fn, params = _net(next_key, 2, (3, 1))
    batch = (jnp.ones((2, 2)), jnp.zeros(2))
    a = likelihoods.gaussian(apply_fn, noise_precision=jnp.float32(2.0))(params, batch)
    b = likelihoods.gaussian(apply_fn, noise_precision=2.0)(params, batch)
    np.testing.assert_array_equal(a, b)
    likelihoods.student_t(apply_fn, df=np.float64(3.0), scale=np.asarray(1.5))
    with pytest.raises(ValueError, match="scale must be a finite number > 0"):
        likelihoods.student_t(apply_fn, df=3.0, scale=jnp.ones(2))
    with pytest.raises(ValueError, match="df must be a finite number > 0"):
        likelihoods.student_t(apply_fn, df=1 + 2j, scale=1.0)
