"""Float32 accuracy of the orbit terms log q(sigma.w) - log q(w) for near-identical units (issue 12, item 5).

The reference is float64 on the same float32-rounded inputs (benchmarks/orbit_precision.py, which
prints the table quoted in docs/estimators.md, section 2.1). The bound is the error budget of the
per-pair centred form: 4 eps_32 sum_{i,c} |delta_ic| (|delta_ic| + 2 |r_ic|) / s_ic^2, set by the
size of the differences the terms are made of, not by the raw log-densities.
"""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from symvi_jax import WeightSymmetry, meanfield, orbits, units

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import orbit_precision  # noqa: E402

from weight_symmetry_nets import NETS  # noqa: E402


pytestmark = pytest.mark.usefixtures("float64")  # x64 on for this module (conftest.py)


@pytest.mark.parametrize("case", [orbit_precision.CASES[0], orbit_precision.CASES[3]], ids=["sigma1e-3", "spread1000"])
def test_float32_orbit_terms_of_near_identical_units_are_within_the_difference_bound(case):
    (row,) = orbit_precision.measure(width=8, cases=(case,))
    assert row["gather"] < row["bound"], row
    assert row["pairs"] < row["bound"], row  # the pair matrices of the same differences
    assert row["matmul"] > row["bound"], row  # the unit matrix's cancellation: the old path fails the bound


@pytest.mark.parametrize("name", ["signed", "residual", "layernorm"])
def test_gather_and_matmul_agree_in_float64_values_and_gradients(name):
    """Both paths are the same function in float64; the gather path's hand-written VJP included."""
    if name == "signed":
        params, group = _signed_one_hidden()
    else:
        _, params, _, axes, flips, _ = NETS[name](jnp.float64)
        group = WeightSymmetry.from_axes(params, axes, sign_flips=flips)
    q = meanfield.init(jax.tree.map(lambda x: x + 0.3, params), init_scale=0.4)
    w = jax.tree.map(lambda x: x[0], meanfield.sample(jax.random.key(1), q, 1))
    sigmas = group.sample(jax.random.key(2), 5)
    weights = jnp.linspace(0.5, 1.5, 5)

    def loss(q, w, method):
        return jnp.sum(weights * orbits.assignment_log_ratios(q, w, sigmas, group, method=method))

    value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)), static_argnums=2)
    value_gather, grad_gather = value_and_grad(q, w, "gather")
    value_matmul, grad_matmul = value_and_grad(q, w, "matmul")
    np.testing.assert_allclose(value_gather, value_matmul, rtol=1e-12, atol=1e-9)
    for a, b in zip(jax.tree.leaves(grad_gather), jax.tree.leaves(grad_matmul)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)


def test_assignment_log_ratio_terms_checks_the_index_shape():
    x = jnp.zeros((4, 3))
    with pytest.raises(ValueError, match=r"index must have shape \(K, 4\)"):
        units.assignment_log_ratio_terms(x, x, x + 1.0, jnp.zeros((2, 5), jnp.int32))
    with pytest.raises(ValueError, match="x, loc and sigma must be"):
        units.assignment_log_ratio_terms(x, x[:, :2], x + 1.0, jnp.zeros((2, 4), jnp.int32))
    with pytest.raises(ValueError, match="method must be 'gather' or 'matmul'"):
        orbits.assignment_log_ratios(*_tiny(), method="pairwise")


def _signed_one_hidden(width=5):
    k1, k2, k3, k4 = jax.random.split(jax.random.key(0), 4)
    params = {"w1": jax.random.normal(k1, (3, width)), "b1": jax.random.normal(k2, (width,)),
              "w2": jax.random.normal(k3, (width, 2)), "b2": jax.random.normal(k4, (2,))}
    group = WeightSymmetry.from_axes(params, {"h": [("w1", 1), ("b1", 0), ("w2", 0)]}, sign_flips=["h"])
    return params, group


def _tiny():
    params = {"w1": jnp.ones((2, 3)), "b1": jnp.ones((3,)), "w2": jnp.ones((3, 1))}
    group = WeightSymmetry.from_axes(params, {"h": [("w1", 1), ("b1", 0), ("w2", 0)]})
    q = meanfield.init(params, init_scale=0.1)
    return q, params, group.sample(jax.random.key(0), 2), group


@pytest.mark.parametrize("signed", [False, True], ids=["permutations", "sign_flips"])
@pytest.mark.parametrize("d,k", [(5, 7), (8, 3)])
def test_pair_and_assignment_formulations_agree_in_float64(d, k, signed):
    """units.assignment_log_ratio_terms's two formulations, values and hand-written gradients."""
    kx, km, ks, kp, kg, kf = jax.random.split(jax.random.key(d * k), 6)
    x = jax.random.normal(kx, (d, 11))
    loc = x + 0.1 * jax.random.normal(km, x.shape)
    sigma = 0.5 + jax.random.uniform(ks, x.shape)
    index = jax.vmap(lambda key: jax.random.permutation(key, d))(jax.random.split(kp, k)).at[0].set(jnp.arange(d))
    signs = jnp.where(jax.random.bernoulli(kf, 0.3, index.shape), -1.0, 1.0).at[0].set(1.0) if signed else None
    weights = jax.random.normal(kg, (k,))

    def value_and_grad(formulation):
        def loss(x, loc, sigma):
            return jnp.sum(weights * units.assignment_log_ratio_terms(x, loc, sigma, index, signs,
                                                                      formulation=formulation))
        terms = units.assignment_log_ratio_terms(x, loc, sigma, index, signs, formulation=formulation)
        return terms, jax.grad(loss, argnums=(0, 1, 2))(x, loc, sigma)

    terms_a, grads_a = value_and_grad("assignments")
    terms_p, grads_p = value_and_grad("pairs")
    assert terms_p[0] == 0.0  # the identity draw: every P[i, i] is exactly 0
    np.testing.assert_allclose(terms_p, terms_a, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads_p, grads_a):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-11)
    with pytest.raises(ValueError, match="formulation must be one of"):
        units.assignment_log_ratio_terms(x, loc, sigma, index, signs, formulation="loop")


@pytest.mark.parametrize("formulation", ["assignments", "pairs"])
def test_orbit_terms_backward_is_skipped_only_where_every_weight_is_zero(formulation):
    # units._unless_all_zero: all-zero weights (InfoNCE on copies that do not overlap) give exact
    # zeros without the backward loop, through a conditional that stays one under vmap; any weight,
    # in any lane, runs it for every lane, and a NaN weight still propagates
    d, k = 6, 5
    kx, kp = jax.random.split(jax.random.key(3))
    x = jax.random.normal(kx, (d, 9))
    loc, sigma = x + 0.1, jnp.full(x.shape, 0.5)
    index = jax.vmap(lambda key: jax.random.permutation(key, d))(jax.random.split(kp, k))

    def grad(weights):
        return jax.grad(lambda x, loc, sigma: jnp.sum(weights * units.assignment_log_ratio_terms(
            x, loc, sigma, index, formulation=formulation)), argnums=(0, 1, 2))(x, loc, sigma)

    for g in grad(jnp.zeros(k)):
        np.testing.assert_array_equal(np.asarray(g), 0.0)
    weights = jnp.linspace(0.0, 1.0, k)
    lanes = jnp.stack([jnp.zeros(k), weights])
    batched = jax.jit(jax.vmap(grad))(lanes)
    for lane_grads, g in zip(batched, grad(weights)):
        np.testing.assert_array_equal(np.asarray(lane_grads[0]), 0.0)
        np.testing.assert_allclose(lane_grads[1], g, rtol=1e-5, atol=1e-5)
    assert "cond[" in str(jax.make_jaxpr(jax.vmap(grad))(lanes))
    # nested vmap (Table 1's seeds of methods): still one conditional, and still exact
    nested = jnp.stack([lanes, jnp.zeros_like(lanes)])
    assert "cond[" in str(jax.make_jaxpr(jax.vmap(jax.vmap(grad)))(nested))
    for seed_grads, lane_grads in zip(jax.jit(jax.vmap(jax.vmap(grad)))(nested), batched):
        np.testing.assert_array_equal(np.asarray(seed_grads[0]), np.asarray(lane_grads))
        np.testing.assert_array_equal(np.asarray(seed_grads[1]), 0.0)
    assert np.any(np.isnan(np.asarray(grad(jnp.zeros(k).at[1].set(jnp.nan))[0])))  # the units it moves


def test_auto_formulation_takes_the_form_with_fewer_passes():
    assert units._uses_pairs(30, 40, signed=False) and not units._uses_pairs(30, 19, signed=False)
    assert units._uses_pairs(20, 19, signed=False) and not units._uses_pairs(20, 19, signed=True)


@pytest.mark.parametrize("formulation", ["assignments", "pairs"])
def test_units_an_assignment_keeps_in_place_get_exactly_zero_gradient(formulation):
    # t_k does not depend on a unit that assignment k leaves in its slot with its sign (delta = 0
    # identically), so draws that keep every unit (identity draws, whose InfoNCE weight is not 0)
    # must add exactly 0 to the gradient, not an FMA's rounding residue: with the other draws'
    # weights exactly 0 (the copies do not overlap), the methods of a seed then train the same q
    # bit for bit (docs/mnist.md, "SGM - MFVI, stated plainly")
    d, c = 5, 795
    kx, km, ks = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (d, c))
    loc = x + 0.01 * jax.random.normal(km, (d, c))
    sigma = 0.01 + 0.01 * jax.random.uniform(ks, (d, c))
    identity = jnp.arange(d)
    index = jnp.stack([identity, jnp.array([1, 0, 2, 4, 3]), identity, jnp.array([0, 2, 1, 3, 4])])
    weights = jnp.array([0.37, 0.0, 0.21, 0.0])  # only the identity draws carry weight
    grads = jax.jit(jax.grad(lambda x, loc, sigma: jnp.sum(weights * units.assignment_log_ratio_terms(
        x, loc, sigma, index, formulation=formulation)), argnums=(0, 1, 2)))(x, loc, sigma)
    for g in grads:
        np.testing.assert_array_equal(np.asarray(g), 0.0)
    # a unit kept in place by a weighted draw that moves others: its gradient is the other draws' only
    weights = jnp.array([0.0, 0.0, 0.0, 0.5])  # draw 3 swaps units 1 and 2, keeps 0, 3, 4
    g_x = jax.jit(jax.grad(lambda x: jnp.sum(weights * units.assignment_log_ratio_terms(
        x, loc, sigma, index, formulation=formulation))))(x)
    np.testing.assert_array_equal(np.asarray(g_x[jnp.array([0, 3, 4])]), 0.0)
    assert np.all(np.abs(np.asarray(g_x[1:3])) > 0)


def test_orbit_terms_read_their_inputs_through_a_conditional_with_the_same_values():
    # units._materialised: XLA:CPU drops optimization barriers before fusing, so the sample and the
    # scales reach the unit-major transposes through a conditional (which XLA keeps); its other
    # branch (NaN) must never be taken, for signed indices too, and under vmap (a select) neither
    params, group = _signed_one_hidden()
    q = meanfield.init(jax.tree.map(lambda x: x + 0.3, params), init_scale=0.4)
    w = jax.tree.map(lambda x: x[0], meanfield.sample(jax.random.key(1), q, 1))
    signed = group.sample(jax.random.key(2), 6)
    assert np.any(np.asarray(signed[0]) < 0)  # encoded sign flips: the raw indices go negative

    def terms(q, w, sigmas):
        return units.unit_assignment_log_ratios(q, w, group, 0, sigmas[0])

    def reference(q, w, sigmas):  # the same terms without the conditional
        p, s = units.decode_signed(sigmas[0])
        x, loc, sigma = (units.unit_features(t, group, 0) for t in (w, q.loc, meanfield.scale(q)))
        return units.assignment_log_ratio_terms(x, loc, sigma, p, s)

    assert "cond" in str(jax.make_jaxpr(terms)(q, w, signed))
    loss = lambda fn: lambda q, w: jnp.sum(jnp.linspace(0.5, 1.5, 6) * fn(q, w, signed))  # noqa: E731
    value, grads = jax.value_and_grad(loss(terms), argnums=(0, 1))(q, w)  # op by op: no fusion differences
    value_ref, grads_ref = jax.value_and_grad(loss(reference), argnums=(0, 1))(q, w)
    assert np.isfinite(value) and value == value_ref
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    batched = jax.tree.map(lambda a, b: jnp.stack([a, b]), signed, group.sample(jax.random.key(3), 6))
    per_batch = jax.jit(jax.vmap(lambda s: terms(q, w, s)))(batched)
    np.testing.assert_allclose(per_batch[0], reference(q, w, signed), rtol=1e-6, atol=1e-6)
    assert np.all(np.isfinite(per_batch))
    # under vmap (Table 1's seed blocks batch q, w and the draws) the conditional stays one, forward
    # and backward, instead of becoming a select that XLA fuses through
    qs, ws = (jax.tree.map(lambda x: jnp.stack([x, x + 0.01]), t) for t in (q, w))
    batched_loss = jax.vmap(jax.value_and_grad(lambda q, w, s: jnp.sum(terms(q, w, s)), argnums=(0, 1)))
    jaxpr = str(jax.make_jaxpr(batched_loss)(qs, ws, batched))
    assert jaxpr.count("cond[") >= 2  # jax's own rule leaves none: a batched predicate makes a select
    values, grads = batched_loss(qs, ws, batched)
    for b in range(2):
        pick = lambda t: jax.tree.map(lambda x: x[b], t)  # noqa: E731
        value_ref, grads_ref = jax.value_and_grad(
            lambda q, w: jnp.sum(reference(q, w, pick(batched))), argnums=(0, 1))(pick(qs), pick(ws))
        np.testing.assert_allclose(values[b], value_ref, rtol=1e-6)
        for a, r in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)):
            np.testing.assert_allclose(np.asarray(a)[b], np.asarray(r), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("width,k", [(5, 20), (12, 3)], ids=["pairs", "assignments"])
def test_zero_weight_backward_leaves_no_transposes_outside_the_conditional(width, k):
    # units._view_ratios: the leaves enter as views in their own layout; their transposes into unit
    # rows happen once forward, and the cotangents' transposes back happen inside the backward
    # conditional, so where every weight is 0 nothing of the backward pass runs. Differentiating
    # units.unit_features put those transposes after the conditional, applied to its zeros.
    params, group = _signed_one_hidden(width)
    q = meanfield.init(jax.tree.map(lambda x: x + 0.3, params), init_scale=0.4)
    w = jax.tree.map(lambda x: x[0], meanfield.sample(jax.random.key(1), q, 1))
    sigmas = group.sample(jax.random.key(2), k)
    assert units._uses_pairs(width, k, True) == (width == 5)

    def terms(q, w):
        return units.unit_assignment_log_ratios(q, w, group, 0, sigmas[0])

    def transposes_outside_conditionals(fn):
        def inner(value):  # the jaxprs held in an equation's parameter
            if isinstance(value, (tuple, list)):
                return [j for v in value for j in inner(v)]
            value = getattr(value, "jaxpr", value)
            return [value] if hasattr(value, "eqns") else []

        def count(jaxpr):
            n = 0
            for eqn in jaxpr.eqns:
                n += eqn.primitive.name == "transpose"
                if eqn.primitive.name != "cond":
                    n += sum(count(j) for v in eqn.params.values() for j in inner(v))
            return n
        return count(jax.make_jaxpr(fn)(q, w).jaxpr)

    forward = transposes_outside_conditionals(terms)
    assert forward > 0  # the unit rows of the leaves whose units are not their leading axis
    zero_weights = jax.grad(lambda q, w: jnp.sum(0.0 * terms(q, w)), argnums=(0, 1))
    assert transposes_outside_conditionals(zero_weights) == forward
    # and the same values and gradients as the unit rows' terms, bit for bit (float64 here)
    p, s = units.decode_signed(sigmas[0])

    def reference(q, w):
        x, loc, sigma = (units.unit_features(t, group, 0) for t in (w, q.loc, meanfield.scale(q)))
        return units.assignment_log_ratio_terms(x, loc, sigma, p, s)

    weights = jnp.linspace(0.5, 1.5, k)
    value, grads, value_ref, grads_ref = (
        out for fn in (terms, reference)
        for out in jax.jit(jax.value_and_grad(lambda q, w: jnp.sum(weights * fn(q, w)), argnums=(0, 1)))(q, w))
    assert value == value_ref
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("k", [5, 6])
def test_two_assignments_per_pass_give_the_terms_of_one(k):
    # units._forward_terms reads the units once for two assignments from d = 512 on; an odd K
    # repeats its last assignment and drops the copy
    d = 7
    kx, km, ks, kp, kf = jax.random.split(jax.random.key(k), 5)
    x = jax.random.normal(kx, (d, 11))
    loc = x + 0.1 * jax.random.normal(km, x.shape)
    precision = 1.0 / jnp.square(0.5 + jax.random.uniform(ks, x.shape))
    index = jax.vmap(lambda key: jax.random.permutation(key, d))(jax.random.split(kp, k))
    signs = jnp.where(jax.random.bernoulli(kf, 0.3, index.shape), -1.0, 1.0)
    one = units._forward_terms(x, loc, precision, index, signs, 1)
    two = units._forward_terms(x, loc, precision, index, signs, 2)
    assert two.shape == (k,)
    np.testing.assert_allclose(two, one, rtol=1e-13, atol=1e-13)
    assert units._two_per_pass(512) and not units._two_per_pass(511)
    with pytest.raises(ValueError, match="per_pass must be 1 or 2"):
        units._forward_terms(x, loc, precision, index, signs, 3)
