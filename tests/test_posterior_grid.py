"""The grid posterior: normaliser, KL to the posterior, exact sampling and total variation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from symvi_jax import posterior_grid

LOC = jnp.array([0.3, -0.2])
SCALE = jnp.array([0.5, 0.2])
LOG_C = 3.7  # an arbitrary constant: log p~ = LOG_C + log N(w; LOC, diag(SCALE^2)) + log(2 pi s1 s2)


def gaussian_logdensity(w, loc=LOC, scale=SCALE, log_c=LOG_C):
    """Unnormalised: exp(log_c) * exp(-||(w - loc) / scale||^2 / 2), so log Z = log_c + log(2 pi s1 s2)."""
    return log_c - 0.5 * jnp.sum(jnp.square((w - loc) / scale))


def box(loc=LOC, scale=SCALE, width=9.0):
    return tuple(np.asarray(loc - width * scale)), tuple(np.asarray(loc + width * scale))


evaluate = jax.jit(posterior_grid.evaluate, static_argnames=("logdensity_fn", "chunk_size"))
total_variation = jax.jit(posterior_grid.total_variation, static_argnums=2)
sample = jax.jit(posterior_grid.sample, static_argnums=2)


def test_normaliser_of_a_gaussian():
    grid = posterior_grid.make_grid(*box(), (180, 120))
    post = evaluate(gaussian_logdensity, grid)
    expected = LOG_C + math.log(2 * math.pi * float(SCALE[0] * SCALE[1]))
    # float32 log-densities of size ~40 at the box edge: ~1e-5 absolute error is float rounding.
    np.testing.assert_allclose(post.log_normaliser, expected, atol=1e-4)
    assert post.log_density.shape == (180, 120)
    np.testing.assert_allclose(jnp.sum(jnp.exp(posterior_grid.log_cell_masses(post))), 1.0, atol=1e-5)
    # chunked rows give the same answer
    chunked = evaluate(gaussian_logdensity, grid, chunk_size=7)
    np.testing.assert_allclose(chunked.log_density, post.log_density, atol=1e-5)  # float32 rounding


def test_normaliser_of_a_bimodal_mixture():
    """Two mirror modes with weights 0.3 and 0.7: Z = 0.3 * 2 pi s^2 + 0.7 * 2 pi s^2."""
    s = 0.1

    def logdensity(w):
        a = jnp.array([0.4, -0.4])
        first = math.log(0.3) - 0.5 * jnp.sum(jnp.square((w - a) / s))
        second = math.log(0.7) - 0.5 * jnp.sum(jnp.square((w + a) / s))
        return jnp.logaddexp(first, second)

    grid = posterior_grid.make_grid((-1.5, -1.5), (1.5, 1.5), 300)
    post = evaluate(logdensity, grid)
    np.testing.assert_allclose(post.log_normaliser, math.log(2 * math.pi * s * s), atol=1e-4)
    # the mass of the half-plane w1 > 0 is the weight of the first mode
    masses = jnp.exp(posterior_grid.log_cell_masses(post))
    np.testing.assert_allclose(jnp.sum(masses[grid.x > 0]), 0.3, atol=1e-4)


def diag_gaussian_kl(m1, s1, m2, s2):
    return float(jnp.sum(jnp.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5))


@pytest.mark.parametrize("q_loc,q_scale", [((0.1, 0.0), (0.3, 0.25)), ((0.5, -0.3), (0.01, 0.02))])
def test_kl_to_posterior_matches_the_closed_form(q_loc, q_scale):
    q_loc, q_scale = jnp.array(q_loc), jnp.array(q_scale)
    post = evaluate(gaussian_logdensity, posterior_grid.make_grid(*box(), 200))

    def log_q(w):
        return jnp.sum(-0.5 * jnp.square((w - q_loc) / q_scale) - jnp.log(q_scale) - 0.5 * math.log(2 * math.pi))

    grid = posterior_grid.gaussian_grid(q_loc, q_scale, 151)
    kl, mass = jax.jit(posterior_grid.kl_to_posterior, static_argnums=(0, 1))(
        log_q, gaussian_logdensity, post.log_normaliser, grid)
    np.testing.assert_allclose(mass, 1.0, atol=1e-5)
    np.testing.assert_allclose(kl, diag_gaussian_kl(q_loc, q_scale, LOC, SCALE), rtol=1e-4, atol=2e-4)


def test_exact_samples_and_total_variation(next_key):
    grid = posterior_grid.make_grid(*box(), 200)
    post = evaluate(gaussian_logdensity, grid)
    n = 20_000
    samples = sample(next_key(), post, n)
    assert samples.shape == (n, 2)
    # sample mean within 4 standard errors of the true mean
    se = SCALE / math.sqrt(n)
    assert jnp.all(jnp.abs(samples.mean(axis=0) - LOC) < 4 * se)
    # TV of exact draws on 20 x 20 bins is only the multinomial noise: E|P - Q| <= sqrt(P (1 - P) / n)
    # per bin, so TV <= (1/2) sum_b sqrt(P_b / n) (Cauchy-Schwarz bound on the expectation).
    masses = posterior_grid.bin_masses(post, 10)
    bound = 0.5 * float(jnp.sum(jnp.sqrt(masses / n)))
    tv = float(total_variation(samples, post, 10))
    assert 0.0 < tv < bound
    # draws from a shifted distribution are far away; draws outside the grid count in full
    shifted = samples + jnp.array([2.0, 0.0]) * SCALE
    assert float(total_variation(shifted, post, 10)) > 0.5
    outside = jnp.full((100, 2), 100.0)
    np.testing.assert_allclose(total_variation(outside, post, 10), 1.0, atol=1e-6)
    hist, out = jax.jit(posterior_grid.histogram, static_argnums=2)(samples, post, 10)
    np.testing.assert_allclose(jnp.sum(hist) + out, 1.0, atol=1e-6)


def test_gaussian_grid_covers_q():
    grid = posterior_grid.gaussian_grid(jnp.array([1.0, -2.0]), jnp.array([0.1, 0.5]), 101, width=8.0)
    np.testing.assert_allclose([grid.x[0], grid.x[-1]], [1.0 - 0.8 + 0.8 / 101, 1.0 + 0.8 - 0.8 / 101], rtol=1e-5)
    np.testing.assert_allclose(grid.y.mean(), -2.0, atol=1e-5)


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="lower < upper"):
        posterior_grid.make_grid((0.0, 0.0), (1.0, -1.0), 10)
    with pytest.raises(ValueError, match="num_points"):
        posterior_grid.make_grid((0.0, 0.0), (1.0, 1.0), 1)
    post = evaluate(gaussian_logdensity, posterior_grid.make_grid(*box(), 30))
    with pytest.raises(ValueError, match="factor"):
        posterior_grid.bin_masses(post, 7)
    with pytest.raises(ValueError, match="num_samples"):
        posterior_grid.sample(jax.random.key(0), post, 0)
