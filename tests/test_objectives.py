import jax
import jax.numpy as jnp
import numpy as np
import pytest

from symvi_jax import PermutationGroup, likelihoods, meanfield, objectives
from fixtures import make_mlp


@pytest.fixture
def setup(next_key):
    model, params = make_mlp(next_key(), 3, (4, 3))
    apply_fn = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
    q = meanfield.init(params, init_scale=0.2)
    x = jax.random.normal(next_key(), (12, 3))
    y = jax.random.randint(next_key(), (12,), 0, 3)
    return dict(q=q, batch=(x, y), loglik=likelihoods.categorical(apply_fn), group=PermutationGroup.from_params(params))


def _elbo(setup, key, **kw):
    kw = {"loglikelihood_fn": setup["loglik"], "data_size": 120, "num_samples": 3, **kw}
    return jax.jit(lambda k: objectives.elbo(k, setup["q"], setup["batch"], **kw))(key)


def _sym(setup, key, **kw):
    kw = {"loglikelihood_fn": setup["loglik"], "data_size": 120, "num_samples": 3, "group": setup["group"],
          "num_permutations": 4, **kw}
    return jax.jit(lambda k: objectives.symmetrized_elbo(k, setup["q"], setup["batch"], **kw))(key)


def test_elbo_decomposes(setup, next_key):
    value, info = _elbo(setup, next_key())
    np.testing.assert_allclose(value, info.expected_loglikelihood - info.kl, rtol=1e-6)
    np.testing.assert_allclose(info.kl, meanfield.kl_to_normal(setup["q"], 1.0), rtol=1e-6)
    assert info.mutual_information == 0 and info.log_group_order == 0 and info.objective == value


def test_symmetrized_elbo_adds_the_mutual_information(setup, next_key):
    value, info = _sym(setup, next_key())
    np.testing.assert_allclose(value, info.expected_loglikelihood - info.kl + info.mutual_information, rtol=1e-6)
    np.testing.assert_allclose(info.log_group_order, setup["group"].log_order(), rtol=1e-6)
    assert 0 <= info.mutual_information <= np.log(4) + 1e-5
    _, info1 = _sym(setup, next_key(), num_permutations=1)
    assert info1.mutual_information == 0


def test_minibatch_scaling_is_unbiased(setup, next_key):
    """With the same weight draws, the average of the N/M-scaled minibatch terms is the full-batch term."""
    x, y = setup["batch"]
    key = next_key()
    full = objectives.elbo(key, setup["q"], (x, y), loglikelihood_fn=setup["loglik"], data_size=12, num_samples=2)[1]
    parts = [
        objectives.elbo(key, setup["q"], (x[i:i + 4], y[i:i + 4]), loglikelihood_fn=setup["loglik"], data_size=12,
                        num_samples=2)[1].expected_loglikelihood
        for i in (0, 4, 8)
    ]
    np.testing.assert_allclose(np.mean(parts), full.expected_loglikelihood, rtol=1e-5)


def test_gradients_are_finite(setup, next_key):
    key = next_key()
    grads = jax.jit(jax.grad(lambda q: objectives.symmetrized_elbo(
        key, q, setup["batch"], loglikelihood_fn=setup["loglik"], data_size=120, group=setup["group"],
        num_permutations=3)[0]))(setup["q"])
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


def test_monte_carlo_kl_option(setup, next_key):
    _, info = _elbo(setup, next_key(), num_samples=2000, kl_estimator="monte_carlo")
    closed = meanfield.kl_to_normal(setup["q"], 1.0)
    assert abs(float(info.kl) - float(closed)) < 0.05 * float(closed)
    with pytest.raises(ValueError, match="kl_estimator"):
        _elbo(setup, next_key(), kl_estimator="exactly")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_permutations": 0}, "num_permutations"),
        ({"num_permutations": -3}, "num_permutations"),
        ({"num_permutations": 2.5}, "num_permutations"),
        ({"num_samples": 0}, "num_samples"),
        ({"data_size": 0}, "data_size"),
        ({"prior_scale": 0.0}, "prior_scale"),
        ({"prior_scale": -1.0}, "prior_scale"),
        ({"estimator": "uniform"}, "estimator must be one of"),
        ({"estimator": "exact", "num_permutations": 10_000}, "sums over all"),
        ({"group": "S_4"}, "PermutationGroup"),
    ],
)
def test_bad_configuration_is_rejected(setup, next_key, kwargs, message):
    with pytest.raises(ValueError, match=message):
        _sym(setup, next_key(), **kwargs)


def test_non_invariant_prior_is_rejected(setup, next_key):
    prior = jax.tree.map(lambda x: jnp.ones_like(x), setup["q"].loc)
    _sym(setup, next_key(), prior_scale=prior)  # shared by all units: fine
    prior["Dense_0"]["bias"] = jnp.array([1.0, 2.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="not invariant"):
        _sym(setup, next_key(), prior_scale=prior)


# ---- tempering: kl_weight (beta) and likelihood_temperature (T) --------------------------------------


@pytest.mark.parametrize("beta, temperature", [(1.0, 1.0), (0.1, 1.0), (1.0, 0.25), (3.0, 2.0)])
def test_tempered_objectives_weigh_their_terms(setup, next_key, beta, temperature):
    key = next_key()
    tempering = dict(kl_weight=beta, likelihood_temperature=temperature)
    value, info = _elbo(setup, key, **tempering)
    _, plain = _elbo(setup, key)
    # the info reports the unweighted terms (same draws), the value weighs them
    np.testing.assert_array_equal(info.expected_loglikelihood, plain.expected_loglikelihood)
    np.testing.assert_array_equal(info.kl, plain.kl)
    np.testing.assert_allclose(value, info.expected_loglikelihood / temperature - beta * info.kl, rtol=1e-6)
    value, info = _sym(setup, key, **tempering)
    expected = info.expected_loglikelihood / temperature - beta * (info.kl - info.mutual_information)
    np.testing.assert_allclose(value, expected, rtol=1e-6)


def test_default_tempering_is_bitwise_the_plain_objective(setup, next_key):
    key = next_key()
    for fn in (_elbo, _sym):
        value, info = fn(setup, key)
        explicit, _ = fn(setup, key, kl_weight=1.0, likelihood_temperature=1.0)
        assert np.asarray(value).tobytes() == np.asarray(explicit).tobytes()
    value, info = _sym(setup, key)
    plain = info.expected_loglikelihood - info.kl + info.mutual_information
    assert np.asarray(value).tobytes() == np.asarray(plain).tobytes()


def test_tempered_gradients_weigh_the_terms(setup, next_key):
    """grad L_{T,beta} = (1/T) grad E log p - beta grad KL, on the same draws."""
    key = next_key()

    def grad_of(**kw):
        def term(q, which):
            _, info = objectives.elbo(key, q, setup["batch"], loglikelihood_fn=setup["loglik"], data_size=120, **kw)
            return getattr(info, which)

        value_grad = jax.grad(lambda q: objectives.elbo(key, q, setup["batch"], loglikelihood_fn=setup["loglik"],
                                                        data_size=120, **kw)[0])(setup["q"])
        return value_grad, jax.grad(term)(setup["q"], "expected_loglikelihood"), jax.grad(term)(setup["q"], "kl")

    tempered, grad_ll, grad_kl = grad_of(kl_weight=2.0, likelihood_temperature=0.5)
    expected = jax.tree.map(lambda a, b: a / 0.5 - 2.0 * b, grad_ll, grad_kl)
    for a, b in zip(jax.tree.leaves(tempered), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["kl_weight", "likelihood_temperature"])
@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan"), "1", True, None])
def test_tempering_rejects_bad_values(setup, next_key, name, bad):
    for fn in (objectives.elbo, objectives.symmetrized_elbo):
        kw = dict(loglikelihood_fn=setup["loglik"], data_size=120, **{name: bad})
        if fn is objectives.symmetrized_elbo:
            kw.update(group=setup["group"], num_permutations=4)
        with pytest.raises(ValueError, match=f"{name} must be a finite number > 0"):
            fn(next_key(), setup["q"], setup["batch"], **kw)


def test_vi_build_threads_the_tempering_and_validates_it(setup, next_key):
    import optax

    from symvi_jax import vi

    params = setup["q"].loc
    for objective, extra in (("elbo", {}), ("symmetrized_elbo", dict(group=setup["group"], num_permutations=4))):
        algorithm = vi.build(setup["loglik"], optax.adam(1e-2), data_size=120, objective=objective, kl_weight=0.5,
                             likelihood_temperature=0.2, **extra)
        _, info = jax.jit(algorithm.step)(next_key(), algorithm.init(params), setup["batch"])
        expected = info.expected_loglikelihood / 0.2 - 0.5 * (info.kl - info.mutual_information)
        np.testing.assert_allclose(info.objective, expected, rtol=1e-6)
    with pytest.raises(ValueError, match="kl_weight must be a finite number > 0"):
        vi.build(setup["loglik"], optax.adam(1e-2), data_size=120, kl_weight=0.0)
    with pytest.raises(ValueError, match="likelihood_temperature must be a finite number > 0"):
        vi.build(setup["loglik"], optax.adam(1e-2), data_size=120, likelihood_temperature=-2.0)
    with pytest.raises(ValueError, match="a callable objective weighs its own terms"):
        vi.build(setup["loglik"], optax.adam(1e-2), data_size=120, objective=lambda k, q, b: None, kl_weight=2.0)
