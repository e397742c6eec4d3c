"""Estimators of I(g; w) as frozen values (``orbits.InfoNCE``, ``Exact``, ``Importance``), issue #13.

The names with ``num_permutations=`` / ``temperature=`` stay as conveniences: ``orbits.as_estimator``
turns them into the same values, so both spellings give the same numbers for the same key.
"""

import dataclasses

import jax
import numpy as np
import optax
import pytest

from symvi_jax import meanfield, objectives, orbits, vi
from symvi_jax.orbits import Exact, Importance, InfoNCE
from fixtures import small_classification_problem

_problem = small_classification_problem


def test_values_are_frozen_hashable_and_equal_by_value():
    assert InfoNCE(5) == InfoNCE(5) and hash(InfoNCE(5)) == hash(InfoNCE(5)) and InfoNCE(5) != InfoNCE(6)
    assert Exact() == Exact() and len({Importance(5), Importance(5), Importance(5, proposal_temperature=2.0)}) == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        InfoNCE(5).num_permutations = 6
    assert (InfoNCE.name, Exact.name, Importance.name) == ("infonce", "exact", "importance")


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: InfoNCE(0), "num_permutations"),
        (lambda: InfoNCE(True), "num_permutations"),
        (lambda: InfoNCE(2.0), "num_permutations"),
        (lambda: Importance(None), "num_permutations"),
        (lambda: Importance(5, proposal_temperature=0.0), "proposal_temperature must be a finite number > 0"),
        (lambda: Importance(5, proposal_temperature=True), "proposal_temperature"),
        (lambda: Importance(5, num_iterations=-1), "num_iterations"),
        (lambda: Importance(5, score_correction=1), "score_correction must be True or False"),
    ],
)
def test_values_validate_themselves_when_built(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_as_estimator_builds_the_value_once_from_a_name():
    assert orbits.as_estimator("infonce", num_permutations=5) == InfoNCE(5)
    assert orbits.as_estimator("exact") == Exact()
    assert orbits.as_estimator("importance", num_permutations=5, temperature=2.0, score_correction=True) == Importance(
        5, proposal_temperature=2.0, score_correction=True)
    value = Importance(3)
    assert orbits.as_estimator(value) is value
    with pytest.raises(ValueError, match="is a value"):
        orbits.as_estimator(InfoNCE(5), num_permutations=5)
    with pytest.raises(ValueError, match="estimator must be one of"):
        orbits.as_estimator("nce", num_permutations=5)
    with pytest.raises(ValueError, match="temperature only applies"):
        orbits.as_estimator("infonce", num_permutations=5, temperature=2.0)
    with pytest.raises(ValueError, match="score_correction applies"):
        orbits.as_estimator("infonce", num_permutations=5, score_correction=True)


@pytest.mark.parametrize(
    "name, kwargs, value",
    [
        ("infonce", dict(num_permutations=5), InfoNCE(5)),
        ("exact", {}, Exact()),
        ("importance", dict(num_permutations=5, temperature=2.0), Importance(5, proposal_temperature=2.0)),
    ],
    ids=["infonce", "exact", "importance"],
)
def test_a_value_and_its_name_give_the_same_mutual_information(name, kwargs, value):
    params, group, _, _ = _problem()
    q = meanfield.init(params, init_scale=0.5)
    by_name = orbits.mutual_information(jax.random.key(1), q, group, num_samples=3, estimator=name, **kwargs)
    by_value = orbits.mutual_information(jax.random.key(1), q, group, num_samples=3, estimator=value)
    np.testing.assert_array_equal(by_name, by_value)


def test_vi_build_and_symmetrized_elbo_take_a_value():
    params, group, loglik, batch = _problem()
    common = dict(data_size=8, objective="symmetrized_elbo", group=group, init_scale=0.3)
    by_value = vi.build(loglik, optax.adam(1e-2), estimator=Importance(5, proposal_temperature=2.0), **common)
    by_name = vi.build(loglik, optax.adam(1e-2), estimator="importance", num_permutations=5,
                       proposal_temperature=2.0, **common)
    state = by_value.init(params)
    # one program for both steps (compiled once; XLA may share the identical computations)
    a, b = jax.jit(lambda key, state: (by_value.step(key, state, batch)[1],
                                       by_name.step(key, state, batch)[1]))(jax.random.key(2), state)
    assert float(a.objective) == float(b.objective) and float(a.mutual_information) == float(b.mutual_information)
    value, info = jax.jit(lambda key, q: objectives.symmetrized_elbo(
        key, q, batch, loglikelihood_fn=loglik, group=group, data_size=8, estimator=InfoNCE(4)))(jax.random.key(2), state.q)
    assert np.isfinite(float(value)) and 0.0 <= float(info.mutual_information) <= np.log(4) + 1e-5
    with pytest.raises(ValueError, match="is a value"):
        vi.build(loglik, optax.adam(1e-2), estimator=InfoNCE(5), num_permutations=5, **common)


def test_a_value_is_a_static_argument_that_compiles_once():
    params, group, _, _ = _problem()
    q = meanfield.init(params, init_scale=0.5)
    traces = []

    @jax.jit
    def mi(key, q):
        return inner(key, q, InfoNCE(5))

    def inner(key, q, estimator):
        traces.append(estimator)
        return orbits.mutual_information(key, q, group, num_samples=2, estimator=estimator)

    static = jax.jit(inner, static_argnums=2)
    for i in range(2):
        mi(jax.random.key(i), q)
        static(jax.random.key(i), q, InfoNCE(5))  # a fresh but equal value: no retrace
    assert len(traces) == 2
