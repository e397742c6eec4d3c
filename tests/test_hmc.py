"""The NUTS wrapper recovers a known Gaussian, and symmetrize spreads draws over the group."""

import math

import blackjax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from symvi_jax import PermutationGroup, hmc

MEAN = jnp.array([1.0, -1.0])
STD = jnp.array([0.5, 0.2])


def logdensity(params):
    w = params["Dense_0"]["kernel"][0]
    return -0.5 * jnp.sum(jnp.square((w - MEAN) / STD))


@pytest.fixture(scope="module")
def draws():
    init = {"Dense_0": {"kernel": jnp.zeros((2, 1, 2))}}  # two chains
    run = jax.jit(lambda key, x: hmc.sample(key, logdensity, x, num_warmup=200, num_samples=500))
    return run(jax.random.key(3), init)


def test_sample_recovers_a_gaussian(draws):
    positions, info = draws
    w = positions["Dense_0"]["kernel"][..., 0, :]  # (chains, samples, 2)
    assert w.shape == (2, 500, 2)
    assert info.step_size.shape == (2,) and info.acceptance_rate.shape == (2,)
    assert jnp.all(info.num_divergent == 0)
    assert jnp.all(info.acceptance_rate > 0.6)
    ess_fn = jax.jit(blackjax.diagnostics.effective_sample_size)
    rhat_fn = jax.jit(blackjax.diagnostics.potential_scale_reduction)
    for k in range(2):
        ess = float(ess_fn(w[..., k]))
        rhat = float(rhat_fn(w[..., k]))
        assert ess > 100 and rhat < 1.05
        se = float(STD[k]) / math.sqrt(ess)
        assert abs(float(w[..., k].mean()) - float(MEAN[k])) < 4 * se
        np.testing.assert_allclose(float(w[..., k].std()), float(STD[k]), rtol=0.2)


def test_symmetrize_applies_a_uniform_swap(draws, next_key):
    positions, _ = draws
    group = PermutationGroup(widths=(2,), layer_names=("Dense_0", "Dense_1"))  # MLP(features=(2, 1))
    moved = jax.jit(hmc.symmetrize, static_argnames="group")(next_key(), positions, group)
    before = positions["Dense_0"]["kernel"][..., 0, :]
    after = moved["Dense_0"]["kernel"][..., 0, :]
    assert after.shape == before.shape
    # every draw is kept or swapped, never changed otherwise
    kept = jnp.all(after == before, axis=-1)
    swapped = jnp.all(after == before[..., ::-1], axis=-1)
    assert jnp.all(kept | swapped)
    # the swap is a fair coin per draw: 1000 draws, fraction within 4 binomial standard errors of 1/2
    n = kept.size
    assert abs(float(swapped.mean()) - 0.5) < 4 * 0.5 / math.sqrt(n)


def test_bad_input_is_rejected():
    init = {"Dense_0": {"kernel": jnp.zeros((2, 1, 2))}}
    with pytest.raises(ValueError, match="num_warmup"):
        hmc.sample(jax.random.key(0), logdensity, init, num_warmup=0, num_samples=10)
    with pytest.raises(ValueError, match="target_acceptance_rate"):
        hmc.sample(jax.random.key(0), logdensity, init, num_warmup=5, num_samples=10, target_acceptance_rate=1.5)
    with pytest.raises(ValueError, match="chain"):
        hmc.sample(jax.random.key(0), logdensity, {"a": jnp.zeros(())}, num_warmup=5, num_samples=10)
    with pytest.raises(ValueError, match="PermutationGroup"):
        hmc.symmetrize(jax.random.key(0), init, "S_2")
