"""Float64 mode end to end: build, fit (symmetrized objective), checkpoint round trip, predictions."""

import jax
import pytest
import jax.numpy as jnp
import numpy as np
import optax

from symvi_jax import PermutationGroup, checkpoint, likelihoods, meanfield, predict, vi
from fixtures import make_mlp


pytestmark = pytest.mark.usefixtures("float64")  # x64 on for this module (conftest.py)


def _all_float64(tree):
    return all(leaf.dtype == jnp.float64 for leaf in jax.tree.leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.floating))


def test_fit_checkpoint_and_predict_in_float64(tmp_path):
    model, params = make_mlp(jax.random.key(0), 3, (4, 3), dtype=jnp.float64)
    apply_fn = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
    x = jax.random.normal(jax.random.key(1), (24, 3), dtype=jnp.float64)
    y = jax.random.randint(jax.random.key(2), (24,), 0, 3)
    algorithm = vi.build(likelihoods.categorical(apply_fn), optax.adam(1e-2), data_size=24,
                         objective="symmetrized_elbo", group=PermutationGroup.from_params(params),
                         num_permutations=3, init_scale=1e-3)
    start = algorithm.init(params)
    assert _all_float64(start)
    # init_scale 1e-3 would be fine in float32 too; in float64 the family resolves it exactly
    np.testing.assert_allclose(jax.tree.leaves(meanfield.scale(start.q))[0], 1e-3, rtol=1e-12)

    state, history = vi.fit(jax.random.key(3), algorithm, start, (x, y), num_epochs=3, batch_size=8,
                            progress_bar=False, checkpoint_dir=tmp_path, checkpoint_every=4)
    assert _all_float64(state) and history.objective.dtype == jnp.float64
    assert np.all(np.isfinite(history.objective)) and history.objective.shape == (3, 3)

    restored = checkpoint.restore(tmp_path, start, history=jax.device_get(history))
    assert restored.step == 9 and _all_float64(restored.state)
    for a, b in zip(jax.tree.leaves(restored.state), jax.tree.leaves(state)):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()

    probs = jax.jit(lambda k, q: predict.predictive_probs(k, q, apply_fn, x, num_samples=8))(
        jax.random.key(4), state.q)
    assert probs.dtype == jnp.float64
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-12)
    assert 0.0 <= float(predict.accuracy(probs, y)) <= 1.0
