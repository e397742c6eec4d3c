"""Point-estimated hyperparameters in the VI state: learned noise, learned prior scales, the q rename."""

import math
import warnings

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
