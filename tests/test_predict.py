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


# ---- regression: mean and std, Gaussian NLL, intervals and coverage ---------------------------------

from scipy import stats  # noqa: E402


@pytest.fixture
def regression(next_key):
    model, params = make_mlp(next_key(), 2, (5, 1))
    apply_fn = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
    q = meanfield.init(params, init_scale=0.3)
    x = jax.random.normal(next_key(), (9, 2))
    return apply_fn, q, x


def _draws(key, q, fn, x, num_samples, chunk):
    keys = jax.random.split(key, num_samples // chunk)
    return jnp.concatenate([jax.vmap(lambda w: fn(w, x))(meanfield.sample(k, q, chunk)) for k in keys])


def test_predictive_mean_and_std_are_the_moments_of_the_draws(regression, next_key):
    apply_fn, q, x = regression
    key = next_key()
    mean, std = jax.jit(lambda k: predict.predictive_mean_and_std(k, q, apply_fn, x, num_samples=60, chunk_size=20))(key)
    draws = np.asarray(_draws(key, q, apply_fn, x, 60, 20), np.float64)
    assert mean.shape == std.shape == (9, 1)
    np.testing.assert_allclose(mean, draws.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(std, draws.std(0), rtol=1e-4, atol=1e-6)
    # the noise adds in variance, not in std
    _, noisy = predict.predictive_mean_and_std(key, q, apply_fn, x, num_samples=60, chunk_size=20, noise_std=0.5)
    np.testing.assert_allclose(noisy, np.sqrt(draws.var(0) + 0.25), rtol=1e-4)


def test_predictive_std_survives_a_large_offset(regression, next_key):
    """E[f^2] - E[f]^2 in float32 loses the spread when |f| ~ 1e4; the shifted moments do not."""
    apply_fn, q, x = regression
    key = next_key()
    _, std = predict.predictive_mean_and_std(key, q, apply_fn, x, num_samples=50)
    mean_far, std_far = predict.predictive_mean_and_std(key, q, lambda w, x: apply_fn(w, x) + 1e4, x, num_samples=50)
    np.testing.assert_allclose(std_far, std, rtol=1e-2)
    assert np.all(np.asarray(mean_far) > 9e3)


def test_gaussian_nll_matches_scipy():
    rng = np.random.default_rng(0)
    mean = rng.normal(size=(6, 2)).astype(np.float32)
    std = rng.uniform(0.2, 2.0, size=(6, 2)).astype(np.float32)
    y = rng.normal(size=(6, 2)).astype(np.float32)
    expected = -stats.norm.logpdf(y, mean, std).sum(-1).mean()
    np.testing.assert_allclose(predict.gaussian_nll(mean, std, y), expected, rtol=1e-5)
    # one output: flat targets are accepted
    np.testing.assert_allclose(predict.gaussian_nll(mean[:, :1], std[:, :1], y[:, 0]),
                               -stats.norm.logpdf(y[:, 0], mean[:, 0], std[:, 0]).mean(), rtol=1e-5)


def test_central_interval_has_its_coverage_on_gaussian_data():
    rng = np.random.default_rng(1)
    n = 20_000
    mean = rng.normal(size=(n, 1)).astype(np.float32)
    std = rng.uniform(0.5, 2.0, size=(n, 1)).astype(np.float32)
    y = (mean + std * rng.normal(size=(n, 1))).astype(np.float32)
    for level in (0.5, 0.9, 0.95):
        lower, upper = predict.central_interval(mean, std, level=level)
        np.testing.assert_allclose(upper - mean, stats.norm.ppf((1 + level) / 2) * std, rtol=1e-5)
        coverage = float(predict.interval_coverage(lower, upper, y[:, 0]))
        standard_error = np.sqrt(level * (1 - level) / n)
        assert abs(coverage - level) < 4 * standard_error, (level, coverage)
    # too narrow intervals show up as under-coverage
    lower, upper = predict.central_interval(mean, 0.5 * std, level=0.95)
    assert float(predict.interval_coverage(lower, upper, y)) < 0.75


def test_interval_coverage_counts_the_endpoints():
    lower, upper = jnp.array([0.0, 0.0, 0.0, 0.0]), jnp.array([1.0, 1.0, 1.0, 1.0])
    assert float(predict.interval_coverage(lower, upper, jnp.array([0.0, 1.0, 0.5, 1.5]))) == 0.75


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: predict.central_interval(jnp.zeros(3), jnp.ones(3), level=1.0), "level must be a number in"),
        (lambda: predict.central_interval(jnp.zeros(3), jnp.ones(3), level=0.0), "level must be a number in"),
        (lambda: predict.central_interval(jnp.zeros(3), jnp.ones(2)), "differ in shape"),
        (lambda: predict.gaussian_nll(jnp.zeros((3, 1)), jnp.ones((3, 1)), jnp.zeros((3, 2))), "differ in shape"),
        (lambda: predict.gaussian_nll(jnp.zeros(3), jnp.ones((3, 1)), jnp.zeros(3)), "mean .* and std"),
        (lambda: predict.interval_coverage(jnp.zeros(3), jnp.ones(4), jnp.zeros(3)), "lower .* and upper"),
    ],
)
def test_regression_tools_reject_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("bad", [-0.1, float("inf"), float("nan"), "1", True])
def test_noise_std_is_checked(regression, bad):
    apply_fn, q, x = regression
    with pytest.raises(ValueError, match="noise_std must be"):
        predict.predictive_mean_and_std(jax.random.key(0), q, apply_fn, x, num_samples=2, noise_std=bad)


# ---- classification: entropy, expected entropy, mutual information ---------------------------------


def test_classification_uncertainty_decomposes_the_entropy(next_key):
    model, params = make_mlp(next_key(), 3, (4, 3))
    apply_fn = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
    q = meanfield.init(params, init_scale=1.0)
    x = 2.0 * jax.random.normal(next_key(), (8, 3))
    key = next_key()
    out = jax.jit(lambda k: predict.classification_uncertainty(k, q, apply_fn, x, num_samples=40, chunk_size=10))(key)
    p = np.asarray(_draws(key, q, lambda w, x: jax.nn.softmax(apply_fn(w, x)), x, 40, 10), np.float64)
    mean_p = p.mean(0)
    entropy = -(mean_p * np.log(mean_p)).sum(-1)
    expected_entropy = (-(p * np.log(p)).sum(-1)).mean(0)
    np.testing.assert_allclose(out.probs, mean_p, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.entropy, entropy, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out.expected_entropy, expected_entropy, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out.mutual_information, entropy - expected_entropy, rtol=1e-3, atol=1e-5)
    assert np.all(np.asarray(out.mutual_information) > 0)  # the weights disagree under init_scale=1
    np.testing.assert_allclose(out.entropy, predict.predictive_entropy(out.probs), rtol=1e-5)
    mi = predict.predictive_mutual_information(key, q, apply_fn, x, num_samples=40, chunk_size=10)
    np.testing.assert_allclose(mi, out.mutual_information, rtol=1e-5, atol=1e-7)  # eager vs jit rounding


def test_mutual_information_vanishes_when_the_weights_do_not_matter(next_key):
    model, params = make_mlp(next_key(), 3, (4, 3))
    q = meanfield.init(params, init_scale=1.0)
    fixed = lambda w, x: model.apply({"params": params}, x)  # noqa: E731  (ignores the sampled weights)
    x = jax.random.normal(next_key(), (5, 3))
    out = predict.classification_uncertainty(next_key(), q, fixed, x, num_samples=20)
    np.testing.assert_allclose(out.mutual_information, 0.0, atol=1e-6)
    np.testing.assert_allclose(out.entropy, out.expected_entropy, rtol=1e-5)


# ---- reliability diagram ---------------------------------------------------------------------------


def _calibration_data():
    rng = np.random.default_rng(2)
    probs = rng.dirichlet(np.ones(4) * 0.5, size=200).astype(np.float32)
    labels = np.array([rng.choice(4, p=p / p.sum()) for p in probs.astype(np.float64)], np.int32)
    return jnp.asarray(probs), jnp.asarray(labels)


def test_reliability_bins_agree_with_ece():
    probs, labels = _calibration_data()
    bins = predict.reliability_bins(probs, labels, num_bins=10)
    assert int(bins.count.sum()) == 200 and bins.edges.shape == (11,)
    gap = np.abs(np.asarray(bins.correct_sum) - np.asarray(bins.confidence_sum)).sum() / 200
    np.testing.assert_allclose(predict.ece(probs, labels, num_bins=10), gap, rtol=1e-6)
    # a bin's accuracy is the fraction of its examples that are right
    confidence = np.asarray(probs).max(-1)
    in_last = confidence > 0.9
    np.testing.assert_allclose(bins.count[-1], in_last.sum())
    np.testing.assert_allclose(bins.correct_sum[-1], (np.asarray(probs).argmax(-1) == labels)[in_last].sum())


def test_reliability_diagram_draws_the_bins(tmp_path):
    import matplotlib
    from matplotlib.figure import Figure

    backend = matplotlib.get_backend()
    probs, labels = _calibration_data()
    fig = predict.reliability_diagram(probs, labels, num_bins=10)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    filled = int((predict.reliability_bins(probs, labels, num_bins=10).count > 0).sum())
    assert len(ax.patches) == 2 * filled  # an accuracy bar and a gap bar per non-empty bin
    assert ax.get_title() == f"ECE = {float(predict.ece(probs, labels, num_bins=10)):.3f}"
    fig.savefig(tmp_path / "reliability.png")
    assert (tmp_path / "reliability.png").stat().st_size > 0
    # drawing into a given axis returns that axis's figure
    other = Figure()
    target = other.add_subplot()
    assert predict.reliability_diagram(probs, labels, ax=target, title="mine") is other
    assert target.get_title() == "mine"
    assert matplotlib.get_backend() == backend  # the global backend was left alone
    with pytest.raises(ValueError, match="num_bins must be a positive int"):
        predict.reliability_diagram(probs, labels, num_bins=0)
