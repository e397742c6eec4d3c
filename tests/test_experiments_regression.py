"""symvi-jax regression: learned noise and interval coverage on a tiny config."""

import math

import pytest

from symvi_jax.experiments import base, regression
from symvi_jax.experiments.stats import mean_ci


@pytest.mark.slow  # 20-30 s on the shared 2-core CPU; keeps the CI suite near 10 minutes
def test_rows_and_page_on_a_tiny_config():
    config = base.config_from_dict(regression.Config, dict(num_seeds=2, num_train=256, num_test=200, num_epochs=60,
                                                           batch_size=128, num_predictive_samples=20))
    result = regression.run(config)
    assert len(result.rows) == 2 * len(regression.METHODS)
    for row in result.rows:
        # trained from sd 1 towards the true 0.3
        assert 0.2 < row["learned_noise_sd"] < 0.7
        coverages = [row["coverage_50"], row["coverage_90"], row["coverage_95"]]
        assert all(0.0 <= c <= 1.0 for c in coverages) and coverages == sorted(coverages)
        assert math.isfinite(row["nll"]) and row["rmse"] > 0
    assert "| symmetrized_elbo |" in result.markdown and "learned noise sd" in result.markdown


def test_config_is_validated():
    with pytest.raises(ValueError, match="num_seeds"):
        base.config_from_dict(regression.Config, dict(num_seeds=1))
    with pytest.raises(ValueError, match="batch_size"):
        base.config_from_dict(regression.Config, dict(num_train=10, batch_size=20))


def test_mean_ci_is_the_t_interval():
    mean, low, high = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and high - mean == pytest.approx(4.303 * 1.0 / math.sqrt(3))
    assert math.isnan(mean_ci([1.0])[1])
