"""symvi-jax realdata: scikit-learn's data sets, the splits, the standardisation, and the NumPyro baseline."""

import json
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from symvi_jax import meanfield
from symvi_jax.experiments import base, realdata

TINY = dict(num_splits=1, hidden=[3], num_steps=5, num_permutations=2, num_eval_samples=20, eval_chunk_size=10)


def test_import_symvi_jax_imports_neither_sklearn_nor_numpyro():
    script = "import json, sys, symvi_jax\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    modules = {m.split(".")[0] for m in json.loads(out.stdout.splitlines()[-1])}
    assert not {"sklearn", "numpyro"} & modules


def test_splits_are_deterministic_disjoint_and_cover_the_data():
    key = jax.random.key(3)
    train, test = realdata.split_indices(key, 442, test_fraction=0.1)
    again_train, again_test = realdata.split_indices(key, 442, test_fraction=0.1)
    np.testing.assert_array_equal(train, again_train)
    np.testing.assert_array_equal(test, again_test)
    assert len(test) == 44 and len(train) == 398
    assert not set(train) & set(test)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(442))
    other_train, _ = realdata.split_indices(jax.random.key(4), 442, test_fraction=0.1)
    assert not np.array_equal(train, other_train)


def test_standardisation_uses_the_training_statistics_only():
    rng = np.random.default_rng(0)
    train = rng.normal(3.0, 2.0, size=(50, 4)).astype(np.float32)
    train[:, 2] = 7.0  # a constant column (digits has them) is centred, not divided by 0
    test = rng.normal(size=(10, 4)).astype(np.float32)
    train_z, test_z, mean, std = realdata.standardize(train, test)
    np.testing.assert_allclose(train_z.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(train_z.std(axis=0)[[0, 1, 3]], 1.0, atol=1e-5)
    train_std = np.where(train.std(axis=0) > 0, train.std(axis=0), 1)
    np.testing.assert_allclose(test_z, (test - train.mean(axis=0)) / train_std, rtol=1e-5, atol=1e-5)
    # changing the test data changes nothing about the training side or the statistics
    train_z2, _, mean2, std2 = realdata.standardize(train, 100.0 + 5.0 * test)
    np.testing.assert_array_equal(train_z, train_z2)
    np.testing.assert_array_equal(mean, mean2)
    np.testing.assert_array_equal(std, std2)


def test_prepare_standardises_regression_targets_and_keeps_labels():
    inputs, targets, task = realdata.load("diabetes")
    assert task == "regression" and inputs.shape == (442, 10)
    train, test = realdata.split_indices(jax.random.key(0), len(inputs), test_fraction=0.2)
    split = realdata.prepare(inputs, targets, task, train, test)
    assert abs(split.y_train.mean()) < 1e-5 and split.y_std == pytest.approx(targets[train].std(), rel=1e-5)
    np.testing.assert_allclose(split.y_test * split.y_std + split.y_mean, targets[test], rtol=1e-5)
    inputs, labels, task = realdata.load("digits")
    assert task == "categorical" and labels.dtype == np.int32 and set(np.unique(labels)) == set(range(10))
    train, test = realdata.split_indices(jax.random.key(0), len(inputs), test_fraction=0.1)
    split = realdata.prepare(inputs, labels, task, train, test)
    assert np.isfinite(split.x_train).all() and split.y_std == 1.0


@pytest.mark.parametrize("name", ["iris", "", "Diabetes"])
def test_a_bad_dataset_name_is_a_value_error_naming_the_argument(name):
    with pytest.raises(ValueError, match="dataset"):
        realdata.load(name)
    with pytest.raises(ValueError, match="datasets"):
        base.config_from_dict(realdata.Config, dict(datasets=[name]))


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5, float("nan"), True, "0.1"])
def test_a_bad_split_fraction_is_a_value_error_naming_the_argument(fraction):
    with pytest.raises(ValueError, match="test_fraction"):
        realdata.split_indices(jax.random.key(0), 100, test_fraction=fraction)
    if isinstance(fraction, float):
        with pytest.raises(ValueError, match="test_fraction"):
            base.config_from_dict(realdata.Config, dict(test_fraction=fraction))


def test_a_fraction_that_leaves_a_split_empty_is_refused():
    with pytest.raises(ValueError, match="empty test split"):
        realdata.split_indices(jax.random.key(0), 10, test_fraction=0.01)


def _problem(task, num_inputs, **overrides):
    config = base.config_from_dict(realdata.Config, {**TINY, **overrides})
    return config, realdata.problem(jax.random.key(0), task, num_inputs, config)


REGRESSION_TARGETS = np.array([0.3, -1.2, 0.5, 2.0], np.float32)


@pytest.mark.parametrize("task, labels, learn_noise", [("regression", REGRESSION_TARGETS, False),
                                                       ("regression", REGRESSION_TARGETS, True),
                                                       ("binary", np.array([0, 1, 1, 0], np.int32), False),
                                                       ("categorical", np.array([0, 9, 3, 3], np.int32), False)])
def test_the_numpyro_model_has_the_same_prior_and_likelihood(task, labels, learn_noise):
    from numpyro.infer.util import log_density

    config, prob = _problem(task, 5, noise_std=0.7, prior_scale=0.8, learn_noise=learn_noise)
    x = jax.random.normal(jax.random.key(1), (4, 5))
    params = jax.tree.map(lambda p: p + 0.3, prob.params)
    model = realdata.numpyro_model(prob, prior_scale=config.prior_scale, noise_std=config.noise_std,
                                   learn_noise=learn_noise)
    tau = 3.0  # a learned precision away from its initial 1 / 0.7^2
    numpyro_extra, our_hyper = ({"noise_precision": tau}, ({"log_noise_precision": math.log(tau)},)) if learn_noise \
        else ({}, ())

    @jax.jit
    def both(params):
        numpyro_value, _ = log_density(model, (x, labels), {},
                                       {**traverse_util.flatten_dict(params, sep="/"), **numpyro_extra})
        prior = sum(jnp.sum(jax.scipy.stats.norm.logpdf(p, 0.0, config.prior_scale)) for p in jax.tree.leaves(params))
        return numpyro_value, jnp.sum(prob.loglikelihood_fn(params, (x, labels), *our_hyper)) + prior

    numpyro_value, ours = both(params)
    np.testing.assert_allclose(numpyro_value, ours, rtol=1e-5)


@pytest.mark.slow  # 20-30 s on the shared 2-core CPU; keeps the CI suite near 10 minutes
def test_one_tiny_split_gives_finite_metrics_with_the_same_keys_and_numpyro_q_is_mean_field():
    config = base.config_from_dict(realdata.Config, dict(TINY, datasets=["diabetes"],
                                                         methods=["mfvi", "numpyro"]))
    result = realdata.run(config)
    assert len(result.rows) == 2
    metric_keys = [k for k, _, _ in realdata.METRICS["regression"]]
    for row in result.rows:
        assert all(math.isfinite(row[k]) for k in metric_keys + ["train_seconds", "final_loss", "noise_std"])
        assert 0 <= row["collapsed_units"] <= 3
        assert row["noise_std"] != pytest.approx(0.7 * row["y_std"], rel=1e-6)  # the noise was learned
        assert 0 <= row["coverage_50"] <= row["coverage_90"] <= row["coverage_95"] <= 1
    keys = {row["method"]: set(row) & set(metric_keys) for row in result.rows}
    assert keys["numpyro"] == keys["mfvi"] == set(metric_keys)
    assert "## diabetes (regression)" in result.markdown and "NumPyro SVI, AutoNormal" in result.markdown

    # AutoNormal's q is turned into the same mean-field Gaussian (same shapes as above: NumPyro's eager
    # svi.init compiles some 200 small programs once per shape, so this reuses them)
    inputs, targets, task = realdata.load("diabetes")
    train, _ = realdata.split_indices(jax.random.key(0), len(inputs), test_fraction=config.test_fraction)
    x, y = jnp.asarray(inputs[train]), jnp.asarray(targets[train])
    x, y = (x - x.mean(0)) / x.std(0), (y - y.mean()) / y.std()
    prob = realdata.problem(jax.random.key(0), task, x.shape[1], config)
    svi = realdata._numpyro_svi(prob, config)
    state = svi.init(jax.random.key(2), x, y)
    # the initial q is the same in both: the flax initialisation as means, init_scale as stds
    first = realdata.numpyro_to_meanfield(prob, svi.get_params(state))
    ours = meanfield.init(prob.params, init_scale=config.init_scale)
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(ours)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    state, _ = jax.jit(lambda s: realdata.train_numpyro(svi, s, (x, y), num_steps=3))(state)
    numpyro_params = svi.get_params(state)
    q = realdata.numpyro_to_meanfield(prob, numpyro_params)
    median = svi.guide.median(numpyro_params)
    upper = svi.guide.quantiles(numpyro_params, [0.8413447])  # mu + 1 sigma
    for name, loc in traverse_util.flatten_dict(q.loc, sep="/").items():
        np.testing.assert_allclose(loc, median[name], rtol=1e-6)
    for name, sigma in traverse_util.flatten_dict(meanfield.scale(q), sep="/").items():
        np.testing.assert_allclose(sigma, upper[name][0] - median[name], rtol=1e-3, atol=1e-6)
    assert not np.allclose(jax.tree.leaves(q.loc)[0], jax.tree.leaves(first.loc)[0])  # it did train


@pytest.mark.parametrize("task, labels", [("binary", np.array([0, 1, 1, 0, 1], np.int32)),
                                          ("categorical", np.array([0, 9, 3, 3, 1], np.int32))])
def test_classification_metrics_are_finite_and_in_range(task, labels):
    config, prob = _problem(task, 4)
    x = jax.random.normal(jax.random.key(1), (5, 4))
    split = realdata.Split(x, labels, x, labels, 0.0, 1.0)
    q = meanfield.init(prob.params, init_scale=0.1)
    probs = jax.jit(lambda k, q, x: realdata.predictive(k, q, prob, x, num_samples=20, chunk_size=10))(
        jax.random.key(2), q, x)
    assert probs.shape == (5, 2 if task == "binary" else 10)
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, rtol=1e-5)
    metrics = realdata.metrics(task, probs, split)
    assert set(metrics) == {k for k, _, _ in realdata.METRICS[task]}
    assert math.isfinite(metrics["nll"]) and 0 <= metrics["ece"] <= 1 and 0 <= metrics["accuracy"] <= 1
