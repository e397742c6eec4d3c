"""Float64 identities for general weight-space symmetries: orbit terms, exact q^G, exact I.

References are computed the slow way: move the weights with ``group.act`` and evaluate
``meanfield.log_prob`` of the moved copy, for every enumerated element.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from symvi_jax import WeightSymmetry, meanfield, orbits, permanent
from weight_symmetry_nets import NETS, make_layernorm


pytestmark = pytest.mark.usefixtures("float64")  # x64 on for this module (conftest.py)


def _q_and_w(params, seed=0, scale=0.4):
    q = meanfield.init(params, init_scale=scale)
    key_loc, key_w = jax.random.split(jax.random.key(seed))
    leaves, treedef = jax.tree.flatten(q.loc)
    keys = jax.random.split(key_loc, len(leaves))
    loc = jax.tree.unflatten(treedef, [x + 0.5 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)])
    q = meanfield.MeanFieldState(loc, q.raw_scale)
    w = jax.tree.map(lambda x: x[0], meanfield.sample(key_w, q, 1))
    return q, w


@functools.partial(jax.jit, static_argnums=2)  # one program per group; op-by-op dispatch is slow here
def _brute_log_qg(q, w, group):
    elements = group.elements()
    log_terms = jax.vmap(lambda g: meanfield.log_prob(q, group.act(g, w)))(elements)
    return jax.nn.logsumexp(log_terms) - group.log_order()


@pytest.mark.parametrize("name", sorted(NETS))
def test_orbit_log_ratios_match_moved_weights(name):
    _, params, _, axes, flips, _ = NETS[name](jnp.float64)
    group = WeightSymmetry.from_axes(params, axes, sign_flips=flips)
    q, w = _q_and_w(params)
    sigmas = group.sample(jax.random.key(7), 6)
    fast = jax.jit(lambda q, w, sigmas: orbits.assignment_log_ratios(q, w, sigmas, group))(q, w, sigmas)
    slow = jax.jit(lambda q, w, sigmas: jax.vmap(lambda s: meanfield.log_prob(q, group.act(s, w)))(sigmas)
                   - meanfield.log_prob(q, w))(q, w, sigmas)
    np.testing.assert_allclose(fast, slow, rtol=1e-10, atol=1e-8)


@pytest.mark.parametrize("name,kwargs", [("setup_named_tanh_signed", dict(widths=(3, 2))), ("layernorm", dict(width=4)),
                                         ("residual", dict(width=4))])
def test_exact_log_qg_by_enumeration_matches_moved_weights(name, kwargs):
    _, params, _, axes, flips, _ = NETS[name](jnp.float64, **kwargs)
    group = WeightSymmetry.from_axes(params, axes, sign_flips=flips)
    q, w = _q_and_w(params, seed=1)
    fast = jax.jit(lambda q, w: orbits.symmetrized_log_prob(q, w, group))(q, w)
    np.testing.assert_allclose(fast, _brute_log_qg(q, w, group), rtol=0, atol=1e-7)


def _signed_one_hidden(width=4):
    k1, k2, k3, k4 = jax.random.split(jax.random.key(0), 4)
    params = {"w1": jax.random.normal(k1, (2, width)), "b1": jax.random.normal(k2, (width,)),
              "w2": jax.random.normal(k3, (width, 1)), "b2": jax.random.normal(k4, (1,))}
    group = WeightSymmetry.from_axes(params, {"h": [("w1", 1), ("b1", 0), ("w2", 0)]}, sign_flips=["h"])
    return params, group


@pytest.mark.parametrize("case", ["signed_permutations", "layernorm_leaves"])
def test_permanent_log_qg_and_exact_mi_match_enumeration(case):
    if case == "signed_permutations":
        params, group = _signed_one_hidden(3)  # |G| = 2^3 3! = 48
        scale = 0.8  # wide enough that the signed copies overlap
    else:
        _, params, _, axes, _, _ = make_layernorm(jnp.float64, width=4)
        group = WeightSymmetry.from_axes(params, axes)
        scale = 0.6
    assert orbits.uses_permanent(group, params)
    q, w = _q_and_w(params, seed=2, scale=scale)
    brute = _brute_log_qg(q, w, group)
    fast = jax.jit(lambda q, w: permanent.symmetrized_log_prob(q, w, group))(q, w)
    np.testing.assert_allclose(fast, brute, rtol=0, atol=1e-7)
    # the exact estimator's terms are log q(w) - log q^G(w) on the same draws
    samples = meanfield.sample(jax.random.key(3), q, 4)
    terms = jax.jit(lambda q, samples: orbits.mutual_information_terms(
        jax.random.key(4), q, samples, group, num_permutations=None, estimator="exact"))(q, samples)
    reference = jax.jit(jax.vmap(lambda s: meanfield.log_prob(q, s) - _brute_log_qg(q, s, group)))(samples)
    np.testing.assert_allclose(terms, reference, rtol=0, atol=1e-7)
    assert 0.0 < float(jnp.mean(reference)) < group.log_order()


@pytest.mark.slow
def test_signed_mi_exceeds_the_permutation_only_mi_on_the_same_q():
    """Adding flips can only enlarge the orbit: I(signed) >= I(permutations), both exact."""
    params, signed = _signed_one_hidden(4)
    plain = WeightSymmetry(tuple(f.__class__(f.name, f.size, f.members, False) for f in signed.factors))
    q, _ = _q_and_w(params, seed=5, scale=0.8)
    samples = meanfield.sample(jax.random.key(6), q, 64)
    mi = {name: float(jnp.mean(orbits.mutual_information_terms(jax.random.key(0), q, samples, g,
                                                                num_permutations=None, estimator="exact")))
          for name, g in (("signed", signed), ("plain", plain))}
    assert mi["signed"] > mi["plain"] > 0.0
    assert mi["signed"] <= signed.log_order()
