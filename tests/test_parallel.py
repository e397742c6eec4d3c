"""Data-parallel training over 4 forced CPU devices equals single-device training."""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np, optax
    from symvi_jax import MLP, PermutationGroup, likelihoods, vi, parallel
    assert jax.device_count() == 4, jax.devices()
    model = MLP(features=(8, 3))
    params = model.init(jax.random.key(0), jnp.zeros((1, 5)))["params"]
    loglik = likelihoods.categorical(lambda p, x: model.apply({"params": p}, x))
    algorithm = vi.build(loglik, optax.adam(1e-2), data_size=64, objective="symmetrized_elbo",
                         group=PermutationGroup.from_params(params), num_samples=2, num_permutations=4)
    x = jax.random.normal(jax.random.key(1), (64, 5))
    y = jax.random.randint(jax.random.key(2), (64,), 0, 3)
    keys = jax.random.split(jax.random.key(3), 5)

    single = jax.jit(algorithm.step)
    state = jax.device_put(algorithm.init(params), jax.devices()[0])
    batch = jax.device_put((x, y), jax.devices()[0])
    for k in keys:
        state, info = single(k, state, batch)

    mesh = parallel.data_mesh()
    step = parallel.data_parallel_step(algorithm.step, mesh)
    pstate = parallel.replicate(algorithm.init(params), mesh)
    pbatch = parallel.shard_batch((x, y), mesh)
    assert len(pbatch[0].sharding.device_set) == 4
    for k in keys:
        pstate, pinfo = step(k, pstate, pbatch)

    for a, b in zip(jax.tree.leaves(state.q), jax.tree.leaves(pstate.q)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(info.objective, pinfo.objective, rtol=1e-5)
    try:
        parallel.shard_batch((x[:63], y[:63]), mesh)
    except ValueError as err:
        assert "multiple of the number of devices" in str(err)
    else:
        raise AssertionError("expected a ValueError")
    print("OK")
    """
)


def test_data_parallel_matches_single_device():
    flags = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("OK")
