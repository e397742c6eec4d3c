"""objectives.ELBO / SymmetrizedELBO: settings checked once when built, and vi.from_objective trains them
exactly as vi.build's keywords do."""

import collections
import warnings

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fixtures import make_mlp, small_classification_problem
from symvi_jax import PermutationGroup, objectives, orbits, vi


@pytest.fixture(scope="module")
def problem():
    params, group, loglik, batch = small_classification_problem()
    return dict(params=params, group=group, loglik=loglik, batch=batch)


def _sym(problem, **kwargs):
    settings = dict(loglikelihood_fn=problem["loglik"], group=problem["group"], data_size=32,
                    estimator=orbits.InfoNCE(3))
    settings.update(kwargs)
    return objectives.SymmetrizedELBO(**settings)


BAD = [
    ("a group that is not a WeightSymmetry", dict(group="S_4"), "group must be a WeightSymmetry"),
    ("a non-invariant prior", dict(prior_scale="unit 1 scaled"), "prior_scale is not invariant"),
    ("kl_weight 0", dict(kl_weight=0.0), "kl_weight must be a finite number > 0"),
    ("kl_weight True", dict(kl_weight=True), "kl_weight must be a finite number > 0"),
    ("likelihood_temperature inf", dict(likelihood_temperature=float("inf")),
     "likelihood_temperature must be a finite number > 0"),
    ("a negative mi_weight", dict(mi_weight=-1.0), "mi_weight must be a finite number >= 0"),
    ("an estimator name", dict(estimator="infonce"), "estimator must be an orbits.InfoNCE / Exact / Importance value"),
    ("chunk_size 0", dict(chunk_size=0), "chunk_size must be a positive int"),
    ("num_samples 0", dict(num_samples=0), "num_samples must be a positive int"),
    ("data_size 2.5", dict(data_size=2.5), "data_size must be a positive int"),
    ("a kl_estimator typo", dict(kl_estimator="closed"), "kl_estimator must be one of"),
    ("a learned array prior", dict(prior_scale="ones", learn_prior_scale=True),
     r"prior_scale: leaf \['Dense_0'\]\['bias'\] is an array of shape \(4,\)"),
    ("learn_prior_scale 1", dict(learn_prior_scale=1), "learn_prior_scale must be True or False"),
    ("a likelihood that is not callable", dict(loglikelihood_fn="categorical"), "loglikelihood_fn must be callable"),
]


@pytest.mark.parametrize("case, change, message", BAD, ids=[c[0] for c in BAD])
def test_symmetrized_elbo_value_checks_its_settings_when_built(problem, case, change, message):
    if change.get("prior_scale") == "ones":
        change["prior_scale"] = jax.tree.map(jnp.ones_like, problem["params"])
    elif change.get("prior_scale") == "unit 1 scaled":
        prior = jax.tree.map(jnp.ones_like, problem["params"])
        prior["Dense_0"]["bias"] = prior["Dense_0"]["bias"].at[1].set(2.0)
        change["prior_scale"] = prior
    with pytest.raises(ValueError, match=message):
        _sym(problem, **change)


def test_a_trivial_group_is_refused(next_key):
    _, params = make_mlp(next_key(), 3, (2,))  # no hidden layer: |G| = 1
    trivial = PermutationGroup.from_params(params)
    with pytest.raises(ValueError, match=r"group is trivial \(\|G\| = 1\)"):
        objectives.SymmetrizedELBO(lambda p, b: jnp.zeros(2), trivial, 8, orbits.InfoNCE(2))


def test_elbo_value_checks_its_settings_when_built(problem):
    with pytest.raises(ValueError, match="kl_weight must be a finite number > 0"):
        objectives.ELBO(problem["loglik"], 32, kl_weight=-1.0)
    with pytest.raises(ValueError, match="prior_scale must be finite and > 0"):
        objectives.ELBO(problem["loglik"], 32, prior_scale=0.0)
    assert objectives.ELBO(problem["loglik"], 32).group is None


@pytest.mark.default_emitters  # different programs, bit for bit (tests/conftest.py)
@pytest.mark.parametrize("objective", ["elbo", "symmetrized_elbo"])
def test_from_objective_steps_bitwise_as_build(problem, objective):
    params, group, loglik, batch = problem["params"], problem["group"], problem["loglik"], problem["batch"]
    settings = dict(prior_scale=0.5, kl_weight=0.7, learn_prior_scale=True)
    if objective == "elbo":
        value = objectives.ELBO(loglik, 32, **settings)
        keywords = dict(settings)
    else:
        value = objectives.SymmetrizedELBO(loglik, group, 32, orbits.InfoNCE(3), **settings)
        keywords = dict(settings, group=group, num_permutations=3)
    built = vi.build(loglik, optax.adam(1e-2), data_size=32, objective=objective, init_scale=0.1, **keywords)
    bound = vi.from_objective(value, optax.adam(1e-2), init_scale=0.1)
    assert (bound.data_size, bound.loglikelihood_fn, bound.group) == (32, loglik, value.group)
    state = bound.init(params)
    assert set(state.hyper) == {"log_prior_scale"}
    # one program for both steps (compiled once; XLA may share the identical computations)
    a, b = jax.jit(lambda key, state: tuple(algorithm.step(key, state, batch) for algorithm in (built, bound)))(
        jax.random.key(1), state)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert np.array_equal(x, y, equal_nan=True)


def test_build_takes_a_value_only_with_its_own_settings_unset(problem):
    loglik, group = problem["loglik"], problem["group"]
    value = _sym(problem)
    algorithm = vi.build(loglik, optax.adam(1e-2), data_size=32, objective=value, init_scale=0.1)
    assert algorithm.group is group
    with pytest.raises(ValueError, match="is a value: set group, num_permutations as its fields"):
        vi.build(loglik, optax.adam(1e-2), data_size=32, objective=value, group=group, num_permutations=3)
    with pytest.raises(ValueError, match="is a value: set prior_scale as its fields"):
        vi.build(loglik, optax.adam(1e-2), data_size=32, objective=value, prior_scale=np.float32(1.0))
    with pytest.raises(ValueError, match=r"another loglikelihood_fn or data_size \(data_size=32\)"):
        vi.build(loglik, optax.adam(1e-2), data_size=64, objective=value)
    with pytest.raises(ValueError, match="objective must be an objectives.ELBO / SymmetrizedELBO value or a callable"):
        vi.from_objective("elbo", optax.adam(1e-2))


def test_a_traced_weight_and_k_build_one_program(problem):
    """mi_weight and K as data (vmapped), as the MNIST experiment builds its methods."""
    q = vi.init(problem["params"], optax.adam(1e-2), init_scale=0.3).q
    key = jax.random.key(0)

    def values(k, weight):
        objective = _sym(problem, estimator=orbits.InfoNCE(k, max_permutations=4), mi_weight=weight)
        traced = objective(key, q, problem["batch"])[0]
        full = _sym(problem, estimator=orbits.InfoNCE(4))(key, q, problem["batch"])[0]
        elbo = objectives.ELBO(problem["loglik"], 32)(jax.random.split(key)[0], q, problem["batch"])[0]
        return traced, full, elbo

    traced, full, elbo = jax.jit(jax.vmap(values))(jnp.asarray([4, 2], jnp.int32), jnp.asarray([1.0, 0.0]))
    np.testing.assert_allclose(traced[0], full[0], rtol=1e-6)  # K = K_max, weight 1: L^K
    np.testing.assert_allclose(traced[1], elbo[1], rtol=1e-6)  # weight 0: the ELBO on the same draws


def test_a_static_weight_0_is_the_elbo_gradient_without_the_backward_pass_of_i(problem):
    """mi_weight=0.0 (a number): the value and the reported I^K of a traced weight 0, the ELBO's gradient,
    and a gradient program that does not differentiate I^K."""
    q = vi.init(problem["params"], optax.adam(1e-2), init_scale=0.3).q
    key = jax.random.key(0)
    static = _sym(problem, estimator=orbits.InfoNCE(4), mi_weight=0.0)
    elbo = objectives.ELBO(problem["loglik"], 32)

    def traced(q, weight):
        return _sym(problem, estimator=orbits.InfoNCE(4), mi_weight=weight)(key, q, problem["batch"])

    def grads(q):
        return (jax.grad(lambda q: static(key, q, problem["batch"])[0])(q),
                jax.grad(lambda q: elbo(jax.random.split(key)[0], q, problem["batch"])[0])(q),
                static(key, q, problem["batch"]), traced(q, jnp.float32(0.0)))

    (g_static, g_elbo, (v_static, info_static), (v_traced, info_traced)) = jax.jit(grads)(q)
    for a, b in zip(jax.tree.leaves(g_static), jax.tree.leaves(g_elbo)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert v_static == v_traced and info_static.mutual_information == info_traced.mutual_information
    # the orbit terms gather the permuted units; their backward pass would add gathers and scatter-adds
    forward = _primitives(jax.make_jaxpr(lambda q: static(key, q, problem["batch"])[0])(q).jaxpr)
    gradient = _primitives(jax.make_jaxpr(jax.grad(lambda q: static(key, q, problem["batch"])[0]))(q).jaxpr)
    elbo_gradient = _primitives(jax.make_jaxpr(jax.grad(lambda q: elbo(key, q, problem["batch"])[0]))(q).jaxpr)
    assert gradient["gather"] == forward["gather"] > elbo_gradient["gather"], (forward, gradient)
    assert gradient["scatter-add"] == elbo_gradient["scatter-add"], (gradient, elbo_gradient)


def _primitives(jaxpr, counts=None):
    """How many times each primitive appears in ``jaxpr``, sub-jaxprs included."""
    counts = collections.Counter() if counts is None else counts
    for eqn in jaxpr.eqns:
        counts[eqn.primitive.name] += 1
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            _primitives(sub, counts)
    return counts


def test_tempered_estimators_is_deprecated():
    assert "TEMPERED_ESTIMATORS" not in orbits.__all__
    with pytest.warns(DeprecationWarning, match="orbits.TEMPERED_ESTIMATORS is deprecated"):
        assert orbits.TEMPERED_ESTIMATORS == ("importance",)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AttributeError):
            orbits.NO_SUCH_NAME  # noqa: B018
