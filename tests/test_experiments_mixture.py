"""`symvi-jax mixture` (Section 3) on a quick setting: the KL estimate, interpolation and the schema."""

import json
import math

import jax
import jax.numpy as jnp
import pytest

from symvi_jax import cli
from symvi_jax.experiments import base, mixture


def test_kl_estimate_matches_the_closed_form_when_the_modes_coincide(next_key):
    """With a = 0, p_a = N(0, s^2 I) and KL(N(0, I) || N(0, s^2 I)) = d/2 (1/s^2 - 1) + d log s."""
    d, s, n = 2, 0.5, 20_000
    q = mixture.GaussianState(jnp.zeros(d), jnp.zeros(d), jnp.zeros((d, d)))
    direction = jnp.zeros(d).at[0].set(1.0)
    keys = jax.random.split(next_key(), 8)
    values = jax.jit(jax.vmap(lambda k: mixture.kl_estimate(k, q, 0.0, s, direction, n)))(keys)
    expected = d / 2 * (1 / s**2 - 1) + d * math.log(s)
    se = float(jnp.std(values)) / math.sqrt(len(values))
    assert abs(float(values.mean()) - expected) < 4 * se + 1e-4


def test_far_modes_cost_log_2_and_near_modes_are_interpolated(tmp_path):
    out = tmp_path / "mixture"
    args = ["mixture", "--config", "configs/mixture.yaml", "--out", str(out), "--scales", "[1.0]",
            "--separation-ratios", "[1.0, 8.0]", "--num-steps", "400", "--num-samples", "256",
            "--num-seeds", "1", "--num-eval-samples", "4000"]
    assert cli.main(args) == 0
    payload = json.loads((out / "results.json").read_text())
    fits = [r for r in payload["rows"] if "interpolation" in r]
    assert [r["alpha"] for r in fits] == [1.0, 8.0]
    keys = {"scale", "alpha", "seed", "interpolation", "det_covariance", "kl", "loc", "covariance"}
    assert all(keys <= set(r) for r in fits)
    near, far = fits
    assert abs(near["interpolation"] - 0.5) < 0.1  # the mean moved to the midpoint a/2
    assert far["interpolation"] < 0.05  # the mean stayed on the component it started in
    # q = N(0, I) on one of two far components: KL = log 2 (up to Monte Carlo error of ~0.02)
    assert abs(far["kl"] - math.log(2)) < 0.05
    threshold = [r for r in payload["rows"] if "threshold_lower" in r]
    assert threshold == [{"scale": 1.0, "threshold_lower": 1.0, "threshold_upper": 8.0, "threshold_paper": 5.0}]
    assert (out / "mixture_sweep.png").exists() and (out / "mixture_fits.png").exists()


def test_config_validation():
    with pytest.raises(ValueError, match="scales"):
        base.config_from_dict(mixture.Config, {"scales": [0.0]})
    with pytest.raises(ValueError, match="figure_scale"):
        base.config_from_dict(mixture.Config, {"scales": [0.5], "figure_scale": 1.0})
    with pytest.raises(ValueError, match="num_steps"):
        base.config_from_dict(mixture.Config, {"num_steps": 0})
