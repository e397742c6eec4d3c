import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from symvi_jax import MLP, PermutationGroup, likelihoods, meanfield, vi
from fixtures import small_classification_problem, make_mlp


def _classification(next_key, n=32):
    model, params = make_mlp(next_key(), 3, (4, 3))
    apply_fn = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
    x = jax.random.normal(next_key(), (n, 3))
    y = jax.random.randint(next_key(), (n,), 0, 3)
    return params, likelihoods.categorical(apply_fn), (x, y)


@pytest.mark.parametrize("objective", ["elbo", "symmetrized_elbo"])
def test_jitted_step_compiles_once_and_has_finite_gradients(next_key, objective):
    params, loglik, data = _classification(next_key)
    kwargs = dict(group=PermutationGroup.from_params(params), num_permutations=5) if objective != "elbo" else {}
    algorithm = vi.build(loglik, optax.adam(1e-2), data_size=32, objective=objective, num_samples=2, **kwargs)
    state = algorithm.init(params)
    step = jax.jit(chex.assert_max_traces(algorithm.step, n=1))
    for _ in range(3):
        state, info = step(next_key(), state, data)
    assert isinstance(state, vi.VIState) and isinstance(info, vi.VIInfo)
    assert np.isfinite(info.grad_norm) and info.grad_norm > 0
    assert np.isfinite(info.objective)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state.q))
    draws = algorithm.sample(next_key(), state, 5)
    assert draws["Dense_0"]["kernel"].shape == (5, 3, 4)


def test_fit_compiles_the_epoch_once_and_stacks_the_history(next_key):
    params, loglik, data = _classification(next_key, n=40)
    algorithm = vi.build(loglik, optax.adam(1e-2), data_size=40, objective="symmetrized_elbo",
                         group=PermutationGroup.from_params(params), num_permutations=3)
    # two traces in all: fit's up-front abstract check of the data (jax.eval_shape, no compile) and the
    # one compilation of the epoch; a retrace per epoch would make it four
    counted = vi.VIAlgorithm(algorithm.init, chex.assert_max_traces(algorithm.step, n=2), algorithm.sample)
    state, history = vi.fit(next_key(), counted, counted.init(params), data, num_epochs=3, batch_size=16,
                            progress_bar=False)
    assert history.objective.shape == (3, 2)  # 40 // 16 = 2 steps per epoch, the remainder dropped
    assert np.all(np.isfinite(history.objective))


def test_step_is_vmappable_over_seeds(next_key):
    params, loglik, data = _classification(next_key)
    algorithm = vi.build(loglik, optax.adam(1e-2), data_size=32)
    states = jax.vmap(lambda _: algorithm.init(params))(jnp.arange(4))
    keys = jax.random.split(next_key(), 4)
    states, infos = jax.jit(jax.vmap(algorithm.step, in_axes=(0, 0, None)))(keys, states, data)
    assert infos.objective.shape == (4,)
    assert len(set(np.asarray(infos.objective).tolist())) == 4  # independent seeds


def test_fit_reports_the_first_non_finite_step(next_key):
    """The log-likelihood becomes NaN once w > 0.45; Adam moves w by lr = 0.1 per step, so step 5."""
    params = {"Dense_0": {"kernel": jnp.zeros((1, 1))}}

    def loglik(p, batch):
        w = p["Dense_0"]["kernel"][0, 0]
        return jnp.where(w > 0.45, jnp.nan, w) * jnp.ones(batch[0].shape[0])

    algorithm = vi.build(loglik, optax.adam(0.1), data_size=4, init_scale=1e-6, prior_scale=100.0)
    data = (jnp.ones((4, 1)), jnp.ones(4))
    with pytest.raises(vi.NonFiniteError, match="step 5") as err:
        vi.fit(next_key(), algorithm, algorithm.init(params), data, num_epochs=5, batch_size=2, progress_bar=False)
    assert err.value.step == 5
    last = err.value.state.q.loc["Dense_0"]["kernel"][0, 0]
    assert np.isfinite(last) and abs(float(last) - 0.5) < 1e-3  # the state before the bad update


def test_mean_field_recovers_an_exact_gaussian_posterior(next_key):
    """Bayesian linear regression with an orthogonal design: the posterior is a diagonal Gaussian,
    so the mean-field optimum is exact: mean = tau Lambda^{-1} X^T y, variance = 1 / diag(Lambda)."""
    base = jnp.array([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    x = jnp.tile(base, (5, 1))  # columns x1, x2 and the bias column are orthogonal
    y = x @ jnp.array([0.7, -0.3]) + 0.2 + 0.3 * jax.random.normal(next_key(), (20,))
    tau, prior_scale = 4.0, 1.0
    design = jnp.concatenate([x, jnp.ones((20, 1))], axis=1)
    precision = tau * design.T @ design + jnp.eye(3) / prior_scale**2
    assert jnp.allclose(precision, jnp.diag(jnp.diag(precision)))
    mean = jnp.linalg.solve(precision, tau * design.T @ y)
    std = 1 / jnp.sqrt(jnp.diag(precision))

    model = MLP(features=(1,))
    params = model.init(next_key(), x)["params"]
    loglik = likelihoods.gaussian(lambda p, x: model.apply({"params": p}, x), noise_precision=tau)
    algorithm = vi.build(loglik, optax.adam(2e-2), data_size=20, num_samples=16, prior_scale=prior_scale,
                         init_scale=0.5)
    state, _ = vi.fit(next_key(), algorithm, algorithm.init(params), (x, y), num_epochs=1500, batch_size=20,
                      progress_bar=False)
    q = state.q
    got_mean = jnp.concatenate([q.loc["Dense_0"]["kernel"][:, 0], q.loc["Dense_0"]["bias"]])
    scale = meanfield.scale(q)
    got_std = jnp.concatenate([scale["Dense_0"]["kernel"][:, 0], scale["Dense_0"]["bias"]])
    # stochastic optimisation: the means settle within a small fraction of a posterior std
    np.testing.assert_allclose(got_mean, mean, atol=0.1 * float(std.min()))
    np.testing.assert_allclose(got_std, std, rtol=0.1)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"objective": "elbo_g"}, "objective must be"),
        ({"objective": "symmetrized_elbo"}, "needs group"),
        ({"objective": "symmetrized_elbo", "group": "G", "num_permutations": 2}, "PermutationGroup"),
        ({"num_permutations": 3}, "no group"),
        ({"num_samples": 0}, "num_samples"),
        ({"data_size": -5}, "data_size"),
        ({"prior_scale": 0.0}, "prior_scale"),
        ({"init_scale": -1.0}, "init_scale"),
    ],
)
def test_build_rejects_bad_configuration(next_key, kwargs, message):
    params, loglik, _ = _classification(next_key)
    kwargs = {"data_size": 32, **kwargs}
    with pytest.raises(ValueError, match=message):
        vi.build(loglik, optax.adam(1e-2), **kwargs)


def test_build_rejects_a_non_optax_optimizer(next_key):
    _, loglik, _ = _classification(next_key)
    with pytest.raises(ValueError, match="optimizer"):
        vi.build(loglik, "adam", data_size=32)


def test_fit_rejects_bad_data(next_key):
    params, loglik, (x, y) = _classification(next_key)
    algorithm = vi.build(loglik, optax.adam(1e-2), data_size=32)
    state = algorithm.init(params)
    fit = lambda data, **kw: vi.fit(next_key(), algorithm, state, data, progress_bar=False,  # noqa: E731
                                    **{"num_epochs": 1, "batch_size": 8, **kw})
    with pytest.raises(ValueError, match="expects 3"):
        fit((jnp.ones((32, 5)), y))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        fit((x, y.at[3].set(7)))
    with pytest.raises(ValueError, match="disagree"):
        fit((x, y[:10]))
    with pytest.raises(ValueError, match="batch_size"):
        fit((x, y), batch_size=64)
    with pytest.raises(ValueError, match="num_epochs"):
        fit((x, y), num_epochs=0)
    with pytest.raises(ValueError, match="empty"):
        fit((x[:0], y[:0]))


def test_fit_refuses_a_data_size_other_than_len_data_unless_told(next_key):
    """The README once built data_size=60_000 and fitted 400 points: the likelihood weighed 150x."""
    params, loglik, (x, y) = _classification(next_key)
    algorithm = vi.build(loglik, optax.adam(1e-2), data_size=60_000)
    assert algorithm.data_size == 60_000 and algorithm.loglikelihood_fn is loglik
    state = algorithm.init(params)
    with pytest.raises(ValueError, match=r"data_size=60000 but data holds 32 examples.*1\.88e\+03x.*"
                                         r"allow_data_size_mismatch=True"):
        vi.fit(next_key(), algorithm, state, (x, y), num_epochs=1, batch_size=8, progress_bar=False)
    # a deliberate mismatch (data is a shard of a larger set) is allowed when asked for
    _, history = vi.fit(next_key(), algorithm, state, (x, y), num_epochs=1, batch_size=8, progress_bar=False,
                        allow_data_size_mismatch=True)
    assert history.objective.shape == (1, 4)


def test_fit_runs_the_likelihoods_check_batch_even_when_the_step_cannot_see_label_values(next_key):
    """A likelihood that jits internally hides label values from every trace of the step: without
    fit's eager check_batch, a label past the classes only surfaced as a NaN objective."""
    params, loglik, (x, y) = _classification(next_key)
    jitted = jax.jit(loglik)

    def opaque(p, batch):
        return jitted(p, batch)

    opaque.check_batch = loglik.check_batch
    bad = (x, y.at[3].set(7))
    algorithm = vi.build(opaque, optax.adam(1e-2), data_size=32)
    state = algorithm.init(params)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        vi.fit(next_key(), algorithm, state, bad, num_epochs=1, batch_size=8, progress_bar=False)
    # without the check, the same data trains into a non-finite objective instead of a clear error
    del opaque.check_batch
    with pytest.raises(vi.NonFiniteError):
        vi.fit(next_key(), algorithm, state, bad, num_epochs=1, batch_size=8, progress_bar=False)


def _run_problem():
    params, group, loglik, data = small_classification_problem(num_points=24)
    algorithm = vi.build(loglik, optax.adam(1e-2), data_size=24, objective="symmetrized_elbo", group=group,
                         num_permutations=3)
    return algorithm, algorithm.init(params), data


def test_run_follows_fits_key_schedule():
    algorithm, state, data = _run_problem()
    key = jax.random.key(5)
    ran, infos = jax.jit(lambda k, s, d: vi.run(k, algorithm, s, d, num_epochs=2, batch_size=8))(key, state, data)
    fitted, history = vi.fit(key, algorithm, state, data, num_epochs=2, batch_size=8, progress_bar=False)
    assert infos.objective.shape == history.objective.shape == (2, 3)
    np.testing.assert_allclose(infos.objective, history.objective, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), ran.q, fitted.q)


def test_run_vmaps_over_seeds():
    algorithm, state, data = _run_problem()
    keys = jax.random.split(jax.random.key(1), 3)
    many = jax.jit(jax.vmap(lambda k: vi.run(k, algorithm, state, data, num_epochs=2, batch_size=8)))(keys)
    single = jax.jit(lambda k: vi.run(k, algorithm, state, data, num_epochs=2, batch_size=8))
    for i, key in enumerate(keys):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a[i], b, rtol=1e-5, atol=1e-6), many, single(key))


def test_run_steps_draws_an_independent_minibatch_per_step():
    """run_steps against its documented schedule written out, and its argument checks."""
    algorithm, state, data = _run_problem()
    step_keys = jax.random.split(jax.random.key(5), 4)
    ran, infos = jax.jit(lambda s: vi.run_steps(algorithm, s, data, step_keys, batch_size=8))(state)
    assert infos.objective.shape == (4,)
    manual = state
    for key in step_keys:
        key_batch, key_step = jax.random.split(key)
        index = jax.random.choice(key_batch, 24, (8,), replace=False)
        manual, _ = jax.jit(algorithm.step)(key_step, manual, jax.tree.map(lambda x: x[index], data))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), ran.q, manual.q)
    with pytest.raises(ValueError, match="batch_size"):
        vi.run_steps(algorithm, state, data, step_keys, batch_size=25)
    with pytest.raises(ValueError, match="batch_size"):
        vi.run_steps(algorithm, state, data, step_keys, batch_size=True)

def test_run_epochs_takes_its_own_key_schedule_and_a_vmapped_step():
    """run_epochs with the epoch keys as data: a hand-written epoch loop, and two algorithms' steps
    over a stacked state with a shared step key (common random numbers) equal each run alone."""
    algorithm, state, data = _run_problem()
    epoch_keys = jax.random.split(jax.random.key(3), 2)
    ran, infos = jax.jit(lambda s: vi.run_epochs(algorithm, s, data, epoch_keys, batch_size=8))(state)
    assert infos.objective.shape == (2, 3)
    manual = state
    for key in epoch_keys:  # the documented schedule, written out
        key_order, key_steps = jax.random.split(key)
        order = jax.random.permutation(key_order, 24)[:24].reshape(3, 8)
        for index, step_key in zip(order, jax.random.split(key_steps, 3)):
            manual, _ = jax.jit(algorithm.step)(step_key, manual, jax.tree.map(lambda x: x[index], data))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), ran.q, manual.q)

    mfvi = vi.build(algorithm.loglikelihood_fn, optax.adam(1e-2), data_size=24)
    stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), state, mfvi.init(state.q.loc))
    both = vi.VIAlgorithm(init=None, step=lambda k, s, b: (
        jax.tree.map(lambda x, y: jnp.stack([x, y]), *(alg.step(k, jax.tree.map(lambda x: x[i], s), b)
                                                      for i, alg in enumerate((algorithm, mfvi))))), sample=None)
    together, _ = jax.jit(lambda s: vi.run_epochs(both, s, data, epoch_keys, batch_size=8))(stacked)
    alone = jax.jit(lambda s: vi.run_epochs(mfvi, s, data, epoch_keys, batch_size=8))(mfvi.init(state.q.loc))[0]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a[0], b, rtol=1e-5, atol=1e-6), together.q, ran.q)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a[1], b, rtol=1e-5, atol=1e-6), together.q, alone.q)
