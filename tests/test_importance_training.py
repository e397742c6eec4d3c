"""Training with ``estimator="importance"``: the option threads through objectives and vi.build."""

import jax
import numpy as np
import optax
import pytest

from symvi_jax import objectives, orbits, vi
from fixtures import small_classification_problem

_problem = small_classification_problem


def test_importance_step_trains_and_compiles_once():
    params, group, loglik, batch = _problem()
    algorithm = vi.build(loglik, optax.adam(1e-2), data_size=8, objective="symmetrized_elbo", group=group,
                         num_permutations=5, estimator="importance", proposal_temperature=2.0, init_scale=0.3)
    state = algorithm.init(params)
    traces = []

    def step(key, state, batch):
        traces.append(1)
        return algorithm.step(key, state, batch)

    step = jax.jit(step)
    for i in range(3):
        state, info = step(jax.random.key(i), state, batch)
    assert len(traces) == 1
    assert np.isfinite(float(info.objective)) and float(info.grad_norm) > 0
    assert 0.0 < float(info.mutual_information) <= group.log_order() + 1e-5


def test_importance_objective_has_a_reparameterisation_gradient_through_the_orbit_terms():
    params, group, loglik, batch = _problem()
    algorithm = vi.build(loglik, optax.sgd(0.0), data_size=8, init_scale=0.5)
    q = algorithm.init(params).q

    def mi(q):
        _, info = objectives.symmetrized_elbo(jax.random.key(3), q, batch, loglikelihood_fn=loglik, group=group,
                                              data_size=8, num_samples=4, num_permutations=5,
                                              estimator="importance")
        return info.mutual_information

    grads = jax.jit(jax.grad(mi))(q)
    norm = float(optax.tree.norm(grads))
    assert np.isfinite(norm) and norm > 0


def test_temperature_is_checked():
    params, group, loglik, _ = _problem()
    with pytest.raises(ValueError, match="temperature only applies"):
        vi.build(loglik, optax.adam(1e-2), data_size=8, objective="symmetrized_elbo", group=group,
                 num_permutations=5, proposal_temperature=2.0)
    with pytest.raises(ValueError, match="temperature applies"):
        vi.build(loglik, optax.adam(1e-2), data_size=8, proposal_temperature=2.0)
    with pytest.raises(ValueError, match="temperature must be"):
        vi.build(loglik, optax.adam(1e-2), data_size=8, objective="symmetrized_elbo", group=group,
                 num_permutations=5, estimator="importance", proposal_temperature=-1.0)
    with pytest.raises(ValueError, match="num_permutations"):
        orbits.mutual_information(jax.random.key(0), None, group, num_samples=2, estimator="importance")


def test_temperature_is_a_deprecated_alias_of_proposal_temperature():
    params, group, loglik, batch = _problem()
    kwargs = dict(data_size=8, objective="symmetrized_elbo", group=group, num_permutations=5, estimator="importance",
                  init_scale=0.3)
    with pytest.warns(DeprecationWarning, match="use proposal_temperature="):
        old = vi.build(loglik, optax.adam(1e-2), temperature=2.0, **kwargs)
    new = vi.build(loglik, optax.adam(1e-2), proposal_temperature=2.0, **kwargs)
    other = vi.build(loglik, optax.adam(1e-2), proposal_temperature=0.5, **kwargs)
    state = new.init(params)
    # one program for the three steps (compiled once; XLA may share the identical computations)
    a, b, c = jax.jit(lambda key, state: tuple(algo.step(key, state, batch)[1].mutual_information
                                               for algo in (old, new, other)))(jax.random.key(1), state)
    assert float(a) == float(b)  # the alias reaches the proposal
    assert float(c) != float(b)  # and the proposal's temperature matters
    with pytest.raises(ValueError, match="pass proposal_temperature only"):
        vi.build(loglik, optax.adam(1e-2), temperature=2.0, proposal_temperature=2.0, **kwargs)
    with pytest.warns(DeprecationWarning, match="use proposal_temperature="):  # warned when traced
        jax.eval_shape(lambda q: objectives.symmetrized_elbo(
            jax.random.key(0), q, batch, loglikelihood_fn=loglik, group=group, data_size=8, num_permutations=5,
            estimator="importance", temperature=2.0), state.q)


def test_score_correction_threads_through_vi_build_and_is_checked():
    params, group, loglik, batch = _problem()
    algorithm = vi.build(loglik, optax.adam(1e-2), data_size=8, objective="symmetrized_elbo", group=group,
                         num_permutations=5, estimator="importance", score_correction=True, init_scale=0.3)
    state, info = jax.jit(algorithm.step)(jax.random.key(0), algorithm.init(params), batch)
    assert np.isfinite(float(info.objective)) and float(info.grad_norm) > 0
    with pytest.raises(ValueError, match="score_correction applies"):
        vi.build(loglik, optax.adam(1e-2), data_size=8, objective="symmetrized_elbo", group=group,
                 num_permutations=5, score_correction=True)
    with pytest.raises(ValueError, match="score_correction applies"):
        orbits.mutual_information(jax.random.key(0), state.q, group, num_samples=2, num_permutations=5,
                                  score_correction=True)
