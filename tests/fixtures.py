"""Shared test helpers: fresh keys and a small network factory (after blackjax tests/fixtures.py)."""

import jax
import jax.numpy as jnp

from symvi_jax import MLP


class KeySource:
    """Hands out fresh keys from one seed (after blackjax's ``tests/fixtures.py``)."""

    def __init__(self, seed: int = 0):
        self._key = jax.random.key(seed)

    def __call__(self):
        self._key, key = jax.random.split(self._key)
        return key


def make_mlp(key, in_features, features, activation=jax.nn.relu, use_bias=True, dtype=jnp.float32):
    model = MLP(features=tuple(features), activation=activation, use_bias=use_bias)
    params = model.init(key, jnp.zeros((1, in_features), dtype=dtype))["params"]
    params = jax.tree.map(lambda p: p.astype(dtype), params)
    return model, params


def small_classification_problem(num_points: int = 8):
    """A 2 -> 4 -> 3 MLP, its Dense-chain group, a categorical log-likelihood and one batch of ``num_points``."""
    import numpy as np

    from symvi_jax import PermutationGroup, likelihoods

    model = MLP(features=(4, 3))
    params = model.init(jax.random.key(0), jnp.zeros((1, 2)))["params"]
    loglik = likelihoods.categorical(lambda p, x: model.apply({"params": p}, x))
    rng = np.random.default_rng(0)
    batch = (jnp.asarray(rng.normal(size=(num_points, 2)), jnp.float32),
             jnp.asarray(rng.integers(0, 3, num_points), jnp.int32))
    return params, PermutationGroup.from_params(params), loglik, batch
