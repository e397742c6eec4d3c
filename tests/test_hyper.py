"""Point-estimated hyperparameters in the VI state: learned noise, learned prior scales, the q rename."""

import math
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

from symvi_jax import MLP, WeightSymmetry, infer_symmetry, likelihoods, meanfield, objectives, vi
from fixtures import make_mlp

TRUE_NOISE_SD = 0.3


def regression_problem(num_examples=1024, width=8, seed=0):
    """y = sin(2x) + N(0, 0.3^2) on x ~ U(-2, 2), and a 1 -> width -> 1 tanh MLP."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, size=(num_examples, 1)).astype(np.float32)
    y = (np.sin(2 * x[:, 0]) + TRUE_NOISE_SD * rng.normal(size=num_examples)).astype(np.float32)
    model = MLP(features=(width, 1), activation=jnp.tanh)
    params = model.init(jax.random.key(0), x[:1])["params"]
    return (lambda p, inputs: model.apply({"params": p}, inputs)), params, (jnp.asarray(x), jnp.asarray(y))


def learned_noise_sd(state):
    return float(1 / jnp.sqrt(vi.hyperparameters(state)["noise_precision"]))


# --- likelihoods -------------------------------------------------------------------------------


def test_learned_noise_gaussian_matches_scipy_and_needs_hyper(next_key):
    model, params = make_mlp(next_key(), 2, (3, 2))
    apply_fn = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
    x, y = jax.random.normal(next_key(), (5, 2)), jax.random.normal(next_key(), (5, 2))
    loglik = likelihoods.gaussian(apply_fn, noise_precision=4.0, learn_noise=True)
    assert loglik.hyper_init == {"log_noise_precision": pytest.approx(math.log(4.0))}
    tau = 2.5
    out = loglik(params, (x, y), {"log_noise_precision": jnp.log(tau)})
    expected = stats.norm.logpdf(np.asarray(y), np.asarray(apply_fn(params, x)), 1 / math.sqrt(tau)).sum(-1)
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    with pytest.raises(ValueError, match="hyper: this loglikelihood_fn learns 'log_noise_precision'"):
        loglik(params, (x, y))
    with pytest.raises(ValueError, match="learn_noise must be True or False"):
        likelihoods.gaussian(apply_fn, noise_precision=1.0, learn_noise=1)


def test_heteroscedastic_gaussian_matches_scipy(next_key):
    model, params = make_mlp(next_key(), 2, (3, 4))  # D = 2: two means, two log-precisions
    apply_fn = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
    x, y = jax.random.normal(next_key(), (6, 2)), jax.random.normal(next_key(), (6, 2))
    out = likelihoods.heteroscedastic_gaussian(apply_fn)(params, (x, y))
    f = np.asarray(apply_fn(params, x), np.float64)
    expected = stats.norm.logpdf(np.asarray(y), f[:, :2], np.exp(-0.5 * f[:, 2:])).sum(-1)
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    model1, params1 = make_mlp(next_key(), 2, (3, 2))  # D = 1: flat targets accepted
    apply1 = lambda p, x: model1.apply({"params": p}, x)  # noqa: E731
    f1 = np.asarray(apply1(params1, x), np.float64)
    np.testing.assert_allclose(likelihoods.heteroscedastic_gaussian(apply1)(params1, (x, y[:, 0])),
                               stats.norm.logpdf(np.asarray(y[:, 0]), f1[:, 0], np.exp(-0.5 * f1[:, 1])), rtol=1e-5)
    model3, params3 = make_mlp(next_key(), 2, (3, 3))
    with pytest.raises(ValueError, match="even number 2D of network outputs"):
        likelihoods.heteroscedastic_gaussian(lambda p, x: model3.apply({"params": p}, x))(params3, (x, y))


# --- the state ---------------------------------------------------------------------------------


@pytest.mark.default_emitters  # different programs, bit for bit (tests/conftest.py)
def test_empty_hyper_reproduces_the_state_without_hyperparameters_bitwise():
    """No hyperparameter: opt_state = optimizer.init(q), and every number is what it was."""
    apply_fn, params, data = regression_problem(num_examples=64)
    optimizer = optax.adam(1e-2)
    algorithm = vi.build(likelihoods.gaussian(apply_fn, noise_precision=4.0), optimizer, data_size=64)
    state = algorithm.init(params)
    assert state.hyper == ()
    q = meanfield.init(params, init_scale=1e-2)
    reference = optimizer.init(q)
    assert jax.tree.structure(state.opt_state) == jax.tree.structure(reference)
    # vi.step as it was before hyperparameters existed, written out and jitted the same way
    def old_step(rng_key, q, opt_state, batch):
        def loss_fn(q):
            value, info = objectives.elbo(rng_key, q, batch, loglikelihood_fn=algorithm.loglikelihood_fn, data_size=64)
            return -value, info

        (_, info), grads = jax.value_and_grad(loss_fn, has_aux=True)(q)
        updates, opt_state = optimizer.update(grads, opt_state, q)
        return optax.apply_updates(q, updates), opt_state, info.objective, optax.tree.norm(grads)

    expected = jax.jit(old_step)(jax.random.key(1), q, reference, data)
    new_state, info = jax.jit(algorithm.step)(jax.random.key(1), state, data)
    got = (new_state.q, new_state.opt_state, info.objective, info.grad_norm)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(a, b)
    assert new_state.hyper == ()


def test_params_alias_warns_and_works():
    apply_fn, params, _ = regression_problem(num_examples=8)
    state = vi.build(likelihoods.gaussian(apply_fn, noise_precision=1.0), optax.sgd(0.1), data_size=8).init(params)
    with pytest.warns(DeprecationWarning, match="VIState.params is deprecated"):
        assert state.params is state.q
    with pytest.warns(DeprecationWarning, match=r"VIState\(params=...\) is deprecated"):
        old = vi.VIState(params=state.q, opt_state=state.opt_state)
    assert old.q is state.q and old.hyper == ()
    with pytest.raises(ValueError, match="pass only q"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vi.VIState(state.q, state.opt_state, params=state.q)
    # still a pytree rebuilt positionally: jit, vmap and scan keep the type and the fields
    doubled = jax.jit(lambda s: jax.tree.map(lambda x: 2 * x, s))(state)
    assert type(doubled) is vi.VIState and doubled.hyper == ()
    stacked = jax.vmap(lambda k: state)(jnp.arange(3))
    assert type(stacked) is vi.VIState and jax.tree.leaves(stacked.q)[0].shape[0] == 3
    carried, _ = jax.lax.scan(lambda s, _: (s, None), state, None, length=2)
    assert type(carried) is vi.VIState


def test_hyper_is_trained_with_q_and_ignored_by_sample():
    apply_fn, params, data = regression_problem(num_examples=64)
    loglik = likelihoods.gaussian(apply_fn, noise_precision=1.0, learn_noise=True)
    algorithm = vi.build(loglik, optax.adam(1e-2), data_size=64, learn_prior_scale=True, prior_scale=0.5)
    state = algorithm.init(params)
    assert set(state.hyper) == {"log_noise_precision", "log_prior_scale"}
    assert state.hyper["log_noise_precision"].dtype == jnp.float32
    np.testing.assert_allclose(vi.hyperparameters(state)["prior_scale"], 0.5, rtol=1e-6)
    assert jax.tree.structure(state.opt_state) == jax.tree.structure(optax.adam(1e-2).init((state.q, state.hyper)))
    new_state, _ = jax.jit(algorithm.step)(jax.random.key(1), state, data)
    assert float(new_state.hyper["log_noise_precision"]) != float(state.hyper["log_noise_precision"])
    samples = algorithm.sample(jax.random.key(2), new_state, 3)
    assert jax.tree.structure(samples) == jax.tree.structure(params)
    assert vi.hyperparameters(algorithm.init(params)._replace(hyper=())) == {}


# --- learned noise recovers the true noise ------------------------------------------------------


def _symmetry(kind, apply_fn, params, inputs):
    if kind == "infer_symmetry":
        return infer_symmetry(apply_fn, params, inputs[:4])
    return WeightSymmetry.from_axes(params, {"hidden": [("Dense_0/kernel", 1), ("Dense_0/bias", 0),
                                                        ("Dense_1/kernel", 0)]})


@pytest.mark.parametrize("objective, symmetry", [("elbo", None), ("symmetrized_elbo", "infer_symmetry"),
                                                 ("symmetrized_elbo", "from_axes")])
def test_learned_noise_recovers_the_true_noise(objective, symmetry):
    """MFVI's type-II ML noise includes q's predictive variance, so it sits a little above the truth
    (0.316 for 0.307 in the sample at this size); 10% of 0.3 is the tolerance."""
    apply_fn, params, data = regression_problem()
    loglik = likelihoods.gaussian(apply_fn, noise_precision=1.0, learn_noise=True)
    kwargs = {} if symmetry is None else dict(group=_symmetry(symmetry, apply_fn, params, data[0]), num_permutations=4)
    algorithm = vi.build(loglik, optax.adam(1e-2), data_size=1024, objective=objective, **kwargs)
    state, _ = jax.jit(lambda k, s: vi.run(k, algorithm, s, data, num_epochs=300, batch_size=256))(
        jax.random.key(1), algorithm.init(params))
    assert abs(learned_noise_sd(state) - TRUE_NOISE_SD) < 0.1 * TRUE_NOISE_SD, learned_noise_sd(state)


# --- prior scales: per leaf, learned (empirical Bayes) -------------------------------------------


def test_empirical_bayes_prior_scale_gradient_vanishes_at_its_closed_form_optimum():
    """d KL / d log s = sum_i [1 - (mu_i^2 + sigma_i^2) / s^2] = 0 at s^2 = mean_i(mu_i^2 + sigma_i^2), per leaf."""
    apply_fn, params, data = regression_problem(num_examples=32)
    q = meanfield.init(params, init_scale=0.05)
    q = q._replace(loc=jax.tree.map(lambda x: x + 0.3, q.loc))
    sigma = meanfield.scale(q)
    optimum = jax.tree.map(lambda m, s: jnp.sqrt(jnp.mean(m**2 + s**2)), q.loc, sigma)
    loglik = likelihoods.gaussian(apply_fn, noise_precision=1.0, learn_noise=True)

    def grad_log_prior_scale(log_scale, fn, **kwargs):
        hyper = {"log_noise_precision": jnp.zeros(()), "log_prior_scale": log_scale}
        return jax.jit(jax.grad(lambda h: fn(jax.random.key(0), q, data, loglikelihood_fn=loglik, data_size=32,
                                             hyper=h, **kwargs)[0]))(hyper)["log_prior_scale"]

    group = infer_symmetry(apply_fn, params, data[0][:4])
    for fn, kwargs in ((objectives.elbo, {}), (objectives.symmetrized_elbo, dict(group=group, num_permutations=3))):
        at_optimum = grad_log_prior_scale(jax.tree.map(jnp.log, optimum), fn, **kwargs)
        for g in jax.tree.leaves(at_optimum):
            assert abs(float(g)) < 1e-3, at_optimum
        elsewhere = grad_log_prior_scale(jax.tree.map(lambda s: jnp.log(2 * s), optimum), fn, **kwargs)
        for g, m in zip(jax.tree.leaves(elsewhere), jax.tree.leaves(q.loc)):
            # s too large by 2: the gradient is sum_i [1 - 1/4] = 0.75 n, n the leaf's size
            np.testing.assert_allclose(g, -0.75 * m.size, rtol=1e-4)


@pytest.mark.parametrize("objective", ["elbo", "symmetrized_elbo"])
def test_per_leaf_prior_tree_and_learned_noise_train_under_both_objectives(objective):
    apply_fn, params, data = regression_problem(num_examples=256)
    prior = {"Dense_0": {"bias": 2.0, "kernel": 1.0}, "Dense_1": {"bias": 1.0, "kernel": 0.5}}
    loglik = likelihoods.gaussian(apply_fn, noise_precision=1.0, learn_noise=True)
    kwargs = {} if objective == "elbo" else dict(group=_symmetry("from_axes", apply_fn, params, data[0]),
                                                 num_permutations=4)
    algorithm = vi.build(loglik, optax.adam(1e-2), data_size=256, objective=objective, prior_scale=prior,
                         learn_prior_scale=True, **kwargs)
    state = algorithm.init(params)
    state, history = vi.fit(jax.random.key(1), algorithm, state, data, num_epochs=100, batch_size=128,
                            progress_bar=False)
    assert bool(jnp.all(jnp.isfinite(history.objective)))
    assert float(history.objective[-10:].mean()) > float(history.objective[:10].mean()) + 50
    learned = vi.hyperparameters(state)
    assert jax.tree.structure(learned["prior_scale"]) == jax.tree.structure(prior)
    assert learned_noise_sd(state) < 0.6  # from 1 towards 0.3
    # a fixed per-leaf tree trains too (no hyperparameter but the noise)
    fixed = vi.build(loglik, optax.adam(1e-2), data_size=256, objective=objective, prior_scale=prior, **kwargs)
    assert set(fixed.init(params).hyper) == {"log_noise_precision"}


def test_learned_array_prior_scale_is_refused_for_the_symmetrized_objective():
    apply_fn, params, data = regression_problem(num_examples=16)
    group = _symmetry("from_axes", apply_fn, params, data[0])
    loglik = likelihoods.gaussian(apply_fn, noise_precision=1.0)
    prior = jax.tree.map(lambda x: jnp.ones(x.shape), params)
    with pytest.raises(ValueError, match=r"prior_scale: leaf \['Dense_0'\]\['bias'\] is an array of shape \(8,\)"):
        vi.build(loglik, optax.adam(1e-2), data_size=16, objective="symmetrized_elbo", group=group,
                 num_permutations=3, prior_scale=prior, learn_prior_scale=True)
    # fixed, invariant array scales are fine; learned arrays are fine for MFVI, whose prior needs no invariance
    vi.build(loglik, optax.adam(1e-2), data_size=16, objective="symmetrized_elbo", group=group,
             num_permutations=3, prior_scale=prior)
    state = vi.build(loglik, optax.adam(1e-2), data_size=16, prior_scale=prior, learn_prior_scale=True).init(params)
    assert state.hyper["log_prior_scale"]["Dense_0"]["kernel"].shape == (1, 8)


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_noise_precision_and_prior_scale_fail_early(bad):
    apply_fn, params, _ = regression_problem(num_examples=8)
    with pytest.raises(ValueError, match="noise_precision"):
        likelihoods.gaussian(apply_fn, noise_precision=bad, learn_noise=True)
    loglik = likelihoods.gaussian(apply_fn, noise_precision=1.0, learn_noise=True)
    tree = {"Dense_0": {"bias": 1.0, "kernel": bad}, "Dense_1": {"bias": 1.0, "kernel": 1.0}}
    for prior in (bad, tree):
        for learn in (False, True):
            with pytest.raises(ValueError, match="prior_scale"):
                vi.build(loglik, optax.adam(1e-2), data_size=8, prior_scale=prior, learn_prior_scale=learn)
    for beta in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="kl_weight"):
            vi.build(loglik, optax.adam(1e-2), data_size=8, kl_weight=beta)


def test_prior_tree_structure_mismatch_names_the_leaves():
    apply_fn, params, data = regression_problem(num_examples=8)
    loglik = likelihoods.gaussian(apply_fn, noise_precision=1.0)
    prior = {"Dense_0": {"kernel": 1.0}, "Dense_1": {"bias": 1.0, "kernel": 1.0}}
    algorithm = vi.build(loglik, optax.adam(1e-2), data_size=8, prior_scale=prior)
    message = (r"prior_scale: the tree's leaves \[\"\['Dense_0'\]\['kernel'\]\", .*\] do not match the params' "
               r"leaves \[\"\['Dense_0'\]\['bias'\]\"")
    with pytest.raises(ValueError, match=message):
        algorithm.init(params)
    with pytest.raises(ValueError, match=message):
        objectives.elbo(jax.random.key(0), meanfield.init(params, init_scale=0.1), data, loglikelihood_fn=loglik,
                        data_size=8, prior_scale=prior)
    wrong_shape = jax.tree.map(lambda x: jnp.ones(x.shape[:-1] + (x.shape[-1] + 1,)), params)
    with pytest.raises(ValueError, match=r"prior_scale: leaf \['Dense_0'\]\['bias'\] has shape \(9,\)"):
        vi.build(loglik, optax.adam(1e-2), data_size=8, prior_scale=wrong_shape).init(params)


# --- checkpoints ---------------------------------------------------------------------------------


def test_fit_resumes_bitwise_with_learned_noise(tmp_path):
    apply_fn, params, data = regression_problem(num_examples=64)
    loglik = likelihoods.gaussian(apply_fn, noise_precision=1.0, learn_noise=True)
    algorithm = vi.build(loglik, optax.adam(1e-2), data_size=64, learn_prior_scale=True)
    state = algorithm.init(params)
    fit = lambda num_epochs, **kw: vi.fit(jax.random.key(3), algorithm, state, data, num_epochs=num_epochs,  # noqa: E731
                                          batch_size=16, progress_bar=False, **kw)
    reference, reference_history = fit(4)
    fit(2, checkpoint_dir=tmp_path / "run")
    resumed, history = fit(4, checkpoint_dir=tmp_path / "run", resume=True)
    for a, b in zip(jax.tree.leaves((reference, reference_history)), jax.tree.leaves((resumed, history)), strict=True):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    assert float(resumed.hyper["log_noise_precision"]) != float(state.hyper["log_noise_precision"])


class _VIStateBeforeTheRename(NamedTuple):
    """The layout of vi.VIState when its q was called params (orbax stores fields by name)."""

    params: meanfield.MeanFieldState
    opt_state: optax.OptState


def test_checkpoint_written_with_the_old_field_name_restores(tmp_path):
    from symvi_jax import checkpoint

    apply_fn, params, data = regression_problem(num_examples=16)
    algorithm = vi.build(likelihoods.gaussian(apply_fn, noise_precision=1.0), optax.adam(1e-2), data_size=16)
    state, _ = jax.jit(algorithm.step)(jax.random.key(0), algorithm.init(params), data)
    old = _VIStateBeforeTheRename(state.q, state.opt_state)
    checkpoint.save(tmp_path / "old", checkpoint.TrainingCheckpoint(old, jax.random.key(1), 5))
    restored = checkpoint.restore(tmp_path / "old", algorithm.init(params))
    assert type(restored.state) is vi.VIState and restored.state.hyper == () and restored.step == 5
    for a, b in zip(jax.tree.leaves(restored.state), jax.tree.leaves(state), strict=True):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    learned = vi.build(likelihoods.gaussian(apply_fn, noise_precision=1.0, learn_noise=True), optax.adam(1e-2),
                       data_size=16)
    with pytest.raises(ValueError, match="saved before hyperparameters existed"):
        checkpoint.restore(tmp_path / "old", learned.init(params))


def test_the_predictive_takes_the_learned_noise():
    from symvi_jax import predict

    apply_fn, params, data = regression_problem(num_examples=16)
    loglik = likelihoods.gaussian(apply_fn, noise_precision=4.0, learn_noise=True)
    state = vi.build(loglik, optax.adam(1e-2), data_size=16).init(params)
    noise_std = vi.hyperparameters(state)["noise_precision"] ** -0.5  # a 0-d array, 0.5
    _, std = predict.predictive_mean_and_std(jax.random.key(0), state.q, apply_fn, data[0], num_samples=8,
                                             noise_std=noise_std)
    _, epistemic = predict.predictive_mean_and_std(jax.random.key(0), state.q, apply_fn, data[0], num_samples=8)
    np.testing.assert_allclose(std**2, epistemic**2 + 0.25, rtol=1e-5)
    with pytest.raises(ValueError, match="noise_std must be finite"):
        predict.predictive_mean_and_std(jax.random.key(0), state.q, apply_fn, data[0], num_samples=8,
                                        noise_std=jnp.asarray(-1.0))
