"""`symvi-jax tractable` on a quick setting: the result schema and the identities it must satisfy."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from symvi_jax import cli, meanfield, orbits, posterior_grid
from symvi_jax.experiments import base, tractable

QUICK = [
    "--alphas", "[0.05, 0.2]", "--num-seeds", "2", "--num-predictive-samples", "50", "--num-eval-samples", "50",
    "--num-eval-permutations", "8", "--grid-points", "60", "--kl-grid-points", "41", "--hmc-chains", "2",
    "--hmc-warmup", "30", "--hmc-samples", "40", "--tv-bin-factor", "6", "--sensitivity", "[]",
]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tractable")
    assert cli.main(["tractable", "--config", "configs/tractable.yaml", "--out", str(out), *QUICK]) == 0
    return out, json.loads((out / "results.json").read_text())


def test_result_schema(quick_run):
    out, payload = quick_run
    assert (out / "results.md").exists() and (out / "figure4.png").stat().st_size > 0
    config = payload["config"]
    assert config["alphas"] == [0.05, 0.2] and config["num_seeds"] == 2
    runs = [r for r in payload["rows"] if r["method"] in ("mfvi", "sgm")]
    assert len(runs) == 2 * 2 * 2  # alphas x methods x seeds
    keys = {"variant", "alpha", "method", "seed", "test_mse", "elbo", "elbo_symmetrized", "elbo_symmetrized_k",
            "elbo_grid", "mutual_information", "kl_to_posterior", "kl_symmetrized_to_posterior", "log_normaliser",
            "mode_axis_position", "off_axis", "interpolation", "loc", "scale"}
    for row in runs:
        assert keys <= set(row), keys - set(row)
        assert all(row[k] is not None and math.isfinite(row[k]) for k in keys if isinstance(row[k], float))
    hmc_rows = [r for r in payload["rows"] if r["method"] == "hmc"]
    assert [r["alpha"] for r in hmc_rows] == [0.05, 0.2]
    for row in hmc_rows:
        assert 0.0 <= row["total_variation"] <= 1.0 and 0.0 <= row["total_variation_floor"] <= 1.0
    markdown = (out / "results.md").read_text()
    for heading in ("## Table 2", "## Table 3", "## Against the exact posterior", "## HMC reference",
                    "## Do the conclusions hold?"):
        assert heading in markdown


def test_identities_hold_on_every_run(quick_run):
    _, payload = quick_run
    runs = [r for r in payload["rows"] if r["method"] in ("mfvi", "sgm")]
    for row in runs:
        # KL(q^G || p) = KL(q || p) - I(g; w) with 0 <= I <= log|G| = log 2 (Theorem 4.1)
        gap = row["kl_to_posterior"] - row["kl_symmetrized_to_posterior"]
        assert -1e-6 <= gap <= math.log(2) + 1e-6
        # L^G - L = I / N, within the same bounds
        assert -1e-6 <= (row["elbo_symmetrized"] - row["elbo"]) * 100 <= math.log(2) + 1e-5
        # KL >= 0, and the grid ELBO log Z - KL is an upper bound on nothing but equals L up to MC error
        assert row["kl_to_posterior"] >= -1e-6
        assert abs(row["elbo"] - row["elbo_grid"]) < 0.05


def test_grid_kl_agrees_with_direct_integration_on_the_posterior_grid():
    """KL(q || p) on q's own grid equals int q log(q / p) on the posterior grid when q is resolved there."""
    config = tractable.Config(noise_precision=1.0)
    with jax.enable_x64(True):
        prob = tractable.problem(config.noise_precision)
        data = tractable.make_data(jax.random.key(0), 0.1, 100)
        data = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), data)
        logpost = tractable.log_posterior_fn(prob, config.prior_scale, data)
        logdensity = lambda w: logpost(prob.unravel(w))  # noqa: E731
        grid = posterior_grid.make_grid((-0.4, -0.4), (0.4, 0.4), 320)
        post = jax.jit(posterior_grid.evaluate, static_argnums=0)(logdensity, grid)
        loc, scale = jnp.array([0.08, -0.05]), jnp.array([0.05, 0.04])
        q = meanfield.MeanFieldState(prob.unravel(loc), prob.unravel(meanfield.inverse_softplus_scale(scale)))
        log_q = lambda w: meanfield.log_prob(q, prob.unravel(w))  # noqa: E731
        log_qg = lambda w: orbits.symmetrized_log_prob(q, prob.unravel(w), prob.group)  # noqa: E731

        @jax.jit
        def both():
            kl, _ = posterior_grid.kl_to_posterior(log_q, logdensity, post.log_normaliser,
                                                   posterior_grid.gaussian_grid(loc, scale, 201))
            log_p = posterior_grid.log_cell_masses(post) - jnp.log(jnp.diff(grid.x[:2]) * jnp.diff(grid.y[:2]))
            pts = posterior_grid.points(grid).reshape(-1, 2)
            lq = jax.vmap(log_q)(pts).reshape(log_p.shape)
            lqg = jax.vmap(log_qg)(pts).reshape(log_p.shape)
            area = (grid.x[1] - grid.x[0]) * (grid.y[1] - grid.y[0])
            direct = jnp.sum(jnp.exp(lq) * (lq - log_p)) * area
            direct_g = jnp.sum(jnp.exp(lqg) * (lqg - log_p)) * area
            return kl, direct, direct_g

        kl, direct, direct_g = both()
        np.testing.assert_allclose(kl, direct, rtol=1e-3)
        assert float(direct_g) < float(direct)


def test_config_validation():
    with pytest.raises(ValueError, match="alphas"):
        base.config_from_dict(tractable.Config, {"alphas": [0.1, -0.2]})
    with pytest.raises(ValueError, match="batch_size"):
        base.config_from_dict(tractable.Config, {"batch_size": 7})
    with pytest.raises(ValueError, match="sensitivity"):
        base.config_from_dict(tractable.Config, {"sensitivity": ["learning_rat=0.1"]})
    with pytest.raises(ValueError, match="grid_points"):
        base.config_from_dict(tractable.Config, {"grid_points": 401})
    assert tractable.parse_variant("init_scale=0.1,num_seeds=20") == {"init_scale": 0.1, "num_seeds": 20}
