"""WeightSymmetry: explicit specs over any pytree, sign flips, the numerical check, bad input."""


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from symvi_jax import PermutationGroup, WeightSymmetry, likelihoods, meanfield, nets, orbits, vi
from symvi_jax.symmetry import check_held_out
from weight_symmetry_nets import NETS, make_layernorm, make_residual, make_setup_named


@pytest.mark.parametrize("name", sorted(NETS))
def test_spec_is_a_symmetry_with_the_right_order(name):
    apply_fn, params, x, axes, flips, log_order = NETS[name]()
    group = WeightSymmetry.from_axes(params, axes, sign_flips=flips)
    assert group.log_order() == pytest.approx(log_order, rel=1e-12)
    group.check(apply_fn, params, x)  # raises if f(g.w) != f(w)
    for key in jax.random.split(jax.random.key(3), 3):
        g = group.sample(key)
        np.testing.assert_allclose(apply_fn(group.act(g, params), x), apply_fn(params, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(NETS))
def test_act_is_a_group_action(name):
    _, params, _, axes, flips, _ = NETS[name]()
    group = WeightSymmetry.from_axes(params, axes, sign_flips=flips)
    g, h = group.sample(jax.random.key(1)), group.sample(jax.random.key(2))
    same = lambda a, b: all(jax.tree.leaves(jax.tree.map(lambda u, v: bool(jnp.array_equal(u, v)), a, b)))  # noqa: E731
    assert same(group.act(group.compose(g, h), params), group.act(g, group.act(h, params)))
    assert same(group.act(group.inverse(g), group.act(g, params)), params)
    assert same(group.act(group.identity(), params), params)


def test_sign_flips_sample_both_signs_and_enumerate_2_to_the_d_d_factorial():
    _, params, _, axes, flips, _ = make_setup_named(widths=(2, 1))
    group = WeightSymmetry.from_axes(params, axes, sign_flips=flips)
    assert group.order() == 2**2 * 2 * 2**1 * 1
    elements = group.elements()
    assert elements[0].shape == (group.order(), 2)
    encoded = {tuple(tuple(np.asarray(e[i]).tolist()) for e in elements) for i in range(group.order())}
    assert len(encoded) == group.order()  # all distinct
    draws = np.asarray(group.sample(jax.random.key(0), 200)[0])
    assert (draws < 0).any() and (draws >= 0).any()


def test_dense_chain_spec_that_ignores_a_skip_connection_is_refused_by_check():
    apply_fn, params, x, _, _, _ = make_residual()
    chain = PermutationGroup.from_params(params)  # names Dense_0..2 look like a chain of widths (3, 3)
    assert chain.sizes == (3, 3)
    with pytest.raises(ValueError, match=r"factor 'Dense_0' .*is not a symmetry of apply_fn: max \|f\(g.w\) - f\(w\)\|"):
        chain.check(apply_fn, params, x)


def test_spec_that_leaves_out_layernorm_is_refused_by_check():
    apply_fn, params, x, axes, _, _ = make_layernorm()
    partial = {"hidden": [m for m in axes["hidden"] if not m[0].startswith("LayerNorm")]}
    group = WeightSymmetry.from_axes(params, partial)
    with pytest.raises(ValueError, match="factor 'hidden'.*not a symmetry"):
        group.check(apply_fn, params, x)


def test_sign_flips_through_relu_are_refused_by_check():
    apply_fn, params, x, axes, _, _ = make_residual()
    group = WeightSymmetry.from_axes(params, axes, sign_flips=("stream",))
    with pytest.raises(ValueError, match="factor 'stream' \\(d = 3, with sign flips\\) is not a symmetry"):
        group.check(apply_fn, params, x)


def test_from_axes_rejects_bad_specs_naming_factor_leaf_and_axis():
    _, params, _, axes, _, _ = make_layernorm()
    with pytest.raises(ValueError, match="factor 'hidden': leaf 'Dense_1/kernel' axis 1 has size 2, but the factor has d = 3"):
        WeightSymmetry.from_axes(params, {"hidden": axes["hidden"] + [("Dense_1/kernel", 1)]})
    with pytest.raises(ValueError, match="factor 'hidden': leaf 'Dense_9/kernel' is not in params"):
        WeightSymmetry.from_axes(params, {"hidden": [("Dense_9/kernel", 0)]})
    with pytest.raises(ValueError, match="factor 'hidden': leaf 'Dense_0/bias' has 1 axes, axis 1 is out of range"):
        WeightSymmetry.from_axes(params, {"hidden": [("Dense_0/bias", 1)]})
    with pytest.raises(ValueError, match="sign_flips names factors \\['other'\\]"):
        WeightSymmetry.from_axes(params, axes, sign_flips=("other",))
    with pytest.raises(ValueError, match="belongs to factor 'a' and to factor 'b'"):
        WeightSymmetry.from_axes(params, {"a": [("Dense_0/bias", 0)], "b": [("Dense_0/bias", 0)]})


def test_any_pytree_lists_and_tuples():
    """Paths index lists and tuples too: a hand-written MLP whose params are a list of (W, b)."""
    key = jax.random.key(0)
    k1, k2, k3, k4, kx = jax.random.split(key, 5)
    params = [(jax.random.normal(k1, (2, 4)), jax.random.normal(k2, (4,))),
              (jax.random.normal(k3, (4, 1)), jax.random.normal(k4, (1,)))]

    def apply_fn(p, x):
        (w1, b1), (w2, b2) = p
        return jnp.tanh(x @ w1 + b1) @ w2 + b2

    group = WeightSymmetry.from_axes(params, {"hidden": [("0/0", 1), ("0/1", 0), ("1/0", 0)]}, sign_flips=["hidden"])
    x = jax.random.normal(kx, (6, 2))
    group.check(apply_fn, params, x)
    moved = group.act(group.sample(jax.random.key(5)), params)
    assert isinstance(moved, list) and isinstance(moved[0], tuple)


def test_group_is_hashable_and_a_static_jit_argument():
    _, params, _, axes, flips, _ = make_setup_named()
    a = WeightSymmetry.from_axes(params, axes, sign_flips=flips)
    b = WeightSymmetry.from_axes(params, axes, sign_flips=flips)
    assert a == b and hash(a) == hash(b)
    f = jax.jit(lambda g, p: a.act(g, p))
    f(a.identity(), params)


def test_is_invariant_with_flips_and_scalar_leaves():
    _, params, _, axes, flips, _ = make_setup_named()
    group = WeightSymmetry.from_axes(params, axes, sign_flips=flips)
    ones = jax.tree.map(jnp.ones_like, params)
    assert not group.is_invariant(ones)  # a flip negates a row of ones
    assert group.is_invariant(jax.tree.map(lambda p: 0.5, params))
    plain = WeightSymmetry.from_axes(params, axes)
    assert plain.is_invariant(ones)


def test_frozen_leaves_moved_by_the_group_must_be_invariant():
    _, params, _, axes, _, _ = make_layernorm()
    group = WeightSymmetry.from_axes(params, axes)
    trainable, frozen = nets.partition(params, ["Dense_1/kernel"])
    with pytest.raises(ValueError, match="moves leaf 'Dense_1/kernel', which is not in params; .*pass frozen="):
        check_held_out(group, trainable)
    with pytest.raises(ValueError, match="frozen leaf 'Dense_1/kernel' is moved by the group .*not invariant"):
        check_held_out(group, trainable, frozen)
    constant = {"Dense_1": {"kernel": jnp.ones_like(params["Dense_1"]["kernel"])}}
    check_held_out(group, trainable, constant)  # a kernel with equal rows is invariant


@pytest.mark.parametrize("estimator", ["infonce", "exact", "importance"])
@pytest.mark.parametrize("name", ["layernorm", "residual"])
def test_symmetrized_training_runs_with_a_general_group(name, estimator):
    apply_fn, params, x, axes, flips, _ = NETS[name]()
    group = WeightSymmetry.from_axes(params, axes, sign_flips=flips)
    y = jnp.asarray(np.random.default_rng(0).integers(0, 2, x.shape[0]), jnp.int32)
    k = None if estimator == "exact" else 4
    algorithm = vi.build(likelihoods.categorical(apply_fn), optax.adam(1e-2), data_size=5,
                         objective="symmetrized_elbo", group=group, num_permutations=k, estimator=estimator,
                         init_scale=0.3)
    state = algorithm.init(params)
    step = jax.jit(algorithm.step)
    for i in range(2):
        state, info = step(jax.random.key(i), state, (x, y))
    assert np.isfinite(float(info.objective))
    # the importance bound holds in expectation; one draw is capped at log|G| + log K (test_experiments_cnn)
    cap = group.log_order() + (np.log(k) if estimator == "importance" else 0.0)
    assert 0.0 <= float(info.mutual_information) <= cap + 1e-4


def test_exact_estimator_with_sign_flips_trains():
    apply_fn, params, x, axes, flips, _ = make_setup_named(widths=(3,) * 1 + (2,))
    group = WeightSymmetry.from_axes(params, axes, sign_flips=flips)
    y = jnp.zeros((x.shape[0], 2))
    algorithm = vi.build(likelihoods.gaussian(apply_fn, noise_precision=1.0), optax.adam(1e-2), data_size=5,
                         objective="symmetrized_elbo", group=group, estimator="exact", init_scale=0.3)
    state, info = jax.jit(algorithm.step)(jax.random.key(0), algorithm.init(params), (x, y))
    assert 0.0 <= float(info.mutual_information) <= group.log_order() + 1e-4


def test_importance_refuses_sign_flips_with_a_clear_message():
    _, params, _, axes, flips, _ = make_setup_named()
    group = WeightSymmetry.from_axes(params, axes, sign_flips=flips)
    q = meanfield.init(params, init_scale=0.1)
    with pytest.raises(ValueError, match="sign flips"):
        orbits.mutual_information(jax.random.key(0), q, group, num_samples=2, num_permutations=3,
                                  estimator="importance")


def test_a_group_taken_from_a_partitioned_tree_is_refused_as_trivial():
    from symvi_jax import MLP
    model = MLP(features=(3, 1))
    params = model.init(jax.random.key(0), jnp.zeros((1, 2)))["params"]
    trainable, frozen = nets.partition(params, ["Dense_1"])
    loglik = likelihoods.gaussian(lambda p, x: model.apply({"params": nets.combine(p, frozen)}, x), noise_precision=1.0)
    assert PermutationGroup.from_params(trainable).order() == 1  # the output layer is gone: no hidden layer left
    with pytest.raises(ValueError, match="group is trivial .*take it from the full params"):
        vi.build(loglik, optax.adam(1e-2), data_size=4, objective="symmetrized_elbo",
                 group=PermutationGroup.from_params(trainable), num_permutations=2)
    # from the full params, with the frozen output kernel declared: it is random, so not invariant
    algorithm = vi.build(loglik, optax.adam(1e-2), data_size=4, objective="symmetrized_elbo",
                         group=PermutationGroup.from_params(params), num_permutations=2, frozen=frozen)
    with pytest.raises(ValueError, match="frozen leaf 'Dense_1/kernel' is moved by the group"):
        algorithm.init(trainable)


def test_fit_checks_the_groups_invariance_before_the_first_step(tmp_path):
    """A Dense-chain group read off a residual net's names is refused by vi.fit, and nothing is written."""
    apply_fn, params, x, _, _, _ = make_residual()
    y = jnp.asarray(np.random.default_rng(0).integers(0, 2, x.shape[0]), jnp.int32)
    wrong = PermutationGroup.from_params(params)
    algorithm = vi.build(likelihoods.categorical(apply_fn), optax.adam(1e-2), data_size=5,
                         objective="symmetrized_elbo", group=wrong, num_permutations=3)
    with pytest.raises(ValueError, match="group: factor 'Dense_0' .*not a symmetry.*checked by vi.fit"):
        vi.fit(jax.random.key(0), algorithm, algorithm.init(params), (x, y), num_epochs=1, batch_size=5,
               progress_bar=False, checkpoint_dir=str(tmp_path / "ckpt"))
    assert not (tmp_path / "ckpt").exists() or not any((tmp_path / "ckpt").iterdir())


@pytest.mark.parametrize("inferred", [False, True])
def test_per_leaf_prior_scale_tree_trains_under_the_symmetrized_objective(inferred):
    """A per-layer scalar prior tree used to crash is_invariant (axis 1 out of bounds on a scalar)."""
    from symvi_jax import MLP, infer_symmetry
    model = MLP(features=(4, 3))
    params = model.init(jax.random.key(0), jnp.zeros((1, 2)))["params"]
    apply_fn = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
    x = jax.random.normal(jax.random.key(1), (8, 2))
    group = infer_symmetry(apply_fn, params, x) if inferred else PermutationGroup.from_params(params)
    prior = {"Dense_0": {"kernel": 1.0, "bias": 0.5}, "Dense_1": {"kernel": 0.3, "bias": 2.0}}
    kwargs = dict(data_size=8, objective="symmetrized_elbo", group=group, num_permutations=3)
    algorithm = vi.build(likelihoods.categorical(apply_fn), optax.adam(1e-2), prior_scale=prior, **kwargs)
    _, info = jax.jit(algorithm.step)(jax.random.key(0), algorithm.init(params), (x, jnp.zeros(8, jnp.int32)))
    assert np.isfinite(float(info.objective))
    # a full-array prior leaf that gives the hidden units different scales is not invariant: refused
    uneven = {**prior, "Dense_0": {"kernel": jnp.ones((2, 4)).at[:, 0].set(3.0), "bias": 0.5}}
    with pytest.raises(ValueError, match="prior_scale is not invariant under the group"):
        vi.build(likelihoods.categorical(apply_fn), optax.adam(1e-2), prior_scale=uneven, **kwargs)


def test_a_dense_chains_draws_keep_their_random_stream():
    """sample() splits one key per factor and draws jax.random.permutation from it, as PermutationGroup
    always did, so results computed from the draws are unchanged for Dense chains."""
    from symvi_jax import MLP
    params = MLP(features=(5, 4, 2)).init(jax.random.key(0), jnp.zeros((1, 3)))["params"]
    group = PermutationGroup.from_params(params)
    keys = jax.random.split(jax.random.key(7), 2)
    drawn = group.sample(jax.random.key(7), 3)
    for key, d, got in zip(keys, (5, 4), drawn):
        expected = jax.vmap(lambda k, d=d: jax.random.permutation(k, d))(jax.random.split(key, 3))
        np.testing.assert_array_equal(got, expected)
