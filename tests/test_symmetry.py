import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from symvi_jax import MLP, PermutationGroup
from symvi_jax.symmetry import MAX_ELEMENTS
from fixtures import make_mlp

ACTIVATIONS = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "gelu": jax.nn.gelu,
    "sigmoid": jax.nn.sigmoid,
    "softplus": jax.nn.softplus,
}

net_shapes = st.tuples(
    st.integers(1, 4),  # input size
    st.lists(st.integers(1, 6), min_size=1, max_size=4),  # hidden widths: 1-4 hidden layers
    st.integers(1, 3),  # output size
    st.sampled_from(sorted(ACTIVATIONS)),
    st.booleans(),  # use_bias
    st.integers(0, 2**31 - 1),  # seed
)


@settings(max_examples=20, deadline=None)
@given(net_shapes)
def test_function_is_invariant_under_random_elements(shape):
    in_features, hidden, out, activation, use_bias, seed = shape
    keys = jax.random.split(jax.random.key(seed), 3)
    model, params = make_mlp(keys[0], in_features, (*hidden, out), ACTIVATIONS[activation], use_bias)
    group = PermutationGroup.from_params(params)
    assert group.widths == tuple(hidden)

    @jax.jit  # one program per example instead of one per op and shape
    def outputs(params, key, x):
        moved = group.act(group.sample(key), params)
        return model.apply({"params": params}, x), model.apply({"params": moved}, x)

    before, after = outputs(params, keys[1], jax.random.normal(keys[2], (5, in_features)))
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)


@settings(max_examples=15, deadline=None)
@given(net_shapes)
def test_act_is_a_group_action(shape):
    in_features, hidden, out, activation, use_bias, seed = shape
    keys = jax.random.split(jax.random.key(seed), 3)
    model = MLP(features=(*hidden, out), activation=ACTIVATIONS[activation], use_bias=use_bias)
    # jitted: one program per example instead of one per op and shape (the action is gathers: exact)
    params = jax.jit(model.init)(keys[0], jnp.zeros((1, in_features)))["params"]
    group = PermutationGroup.from_params(params)

    @jax.jit
    def actions(params, key_g, key_h):
        g, h = group.sample(key_g), group.sample(key_h)
        return (group.act(group.compose(g, h), params), group.act(g, group.act(h, params)),
                group.act(group.inverse(g), group.act(g, params)), group.act(group.identity(), params),
                group.act(g, params))

    composed, in_turn, undone, by_identity, moved = jax.device_get(actions(params, keys[1], keys[2]))
    params = jax.device_get(params)
    same = lambda a, b: jax.tree.all(jax.tree.map(np.array_equal, a, b))  # noqa: E731
    assert same(composed, in_turn)
    assert same(undone, params)
    assert same(by_identity, params)
    # the action only permutes entries: it preserves the norm (|det| = 1)
    norm = lambda p: sum(float(np.sum(np.square(x, dtype=np.float64))) for x in jax.tree.leaves(p))  # noqa: E731
    assert math.isclose(norm(moved), norm(params), rel_tol=1e-12)


def test_action_convention_is_a_gather(next_key):
    _, params = make_mlp(next_key(), 2, (3, 4))
    group = PermutationGroup.from_params(params)
    g = (jnp.array([2, 0, 1], dtype=jnp.int32),)
    moved = group.act(g, params)
    for i, src in enumerate([2, 0, 1]):
        assert jnp.array_equal(moved["Dense_0"]["kernel"][:, i], params["Dense_0"]["kernel"][:, src])
        assert moved["Dense_0"]["bias"][i] == params["Dense_0"]["bias"][src]
        assert jnp.array_equal(moved["Dense_1"]["kernel"][i], params["Dense_1"]["kernel"][src])
    assert jnp.array_equal(moved["Dense_1"]["bias"], params["Dense_1"]["bias"])


@pytest.mark.parametrize("hidden", [(3,), (2, 3), (3, 1, 2), (4, 2)])
def test_elements_enumerates_the_group(next_key, hidden):
    _, params = make_mlp(next_key(), 2, (*hidden, 2))
    group = PermutationGroup.from_params(params)
    elements = group.elements()
    order = math.prod(math.factorial(d) for d in hidden)
    assert group.order() == order
    assert math.isclose(group.log_order(), math.log(order))
    assert all(e.shape == (order, d) and e.dtype == jnp.int32 for e, d in zip(elements, hidden))
    rows = {tuple(np.concatenate([np.asarray(e[k]) for e in elements])) for k in range(order)}
    assert len(rows) == order  # all distinct
    assert all(np.array_equal(e[0], np.arange(d)) for e, d in zip(elements, hidden))  # identity first
    for e in elements:
        assert all(sorted(r) == list(range(e.shape[1])) for r in np.asarray(e))


def test_elements_past_the_limit_points_to_sampling():
    group = PermutationGroup(widths=(9,), layer_names=("Dense_0", "Dense_1"))
    assert group.order() > MAX_ELEMENTS
    with pytest.raises(ValueError, match="sample"):
        group.elements()


def test_sample_shapes_and_uniformity(next_key):
    group = PermutationGroup(widths=(3, 5), layer_names=("Dense_0", "Dense_1", "Dense_2"))
    one = group.sample(next_key())
    assert [x.shape for x in one] == [(3,), (5,)]
    many = group.sample(next_key(), 6000)
    assert [x.shape for x in many] == [(6000, 3), (6000, 5)]
    # each of the 3! permutations of the first layer appears with frequency ~1/6
    counts = {}
    for row in np.asarray(many[0]):
        counts[tuple(row)] = counts.get(tuple(row), 0) + 1
    assert set(counts) == set(itertools.permutations(range(3)))
    freq = np.array(list(counts.values())) / 6000
    assert np.all(np.abs(freq - 1 / 6) < 5 * math.sqrt(1 / 6 * 5 / 6 / 6000))
    with pytest.raises(ValueError, match="num"):
        group.sample(next_key(), 0)


def test_compose_and_inverse_on_batches(next_key):
    group = PermutationGroup(widths=(4,), layer_names=("Dense_0", "Dense_1"))
    g, h = group.sample(next_key(), 7), group.sample(next_key(), 7)
    gh = group.compose(g, h)
    for k in range(7):
        single = group.compose((g[0][k],), (h[0][k],))
        assert jnp.array_equal(gh[0][k], single[0])
    ident = group.compose(g, group.inverse(g))
    assert jnp.array_equal(ident[0], jnp.broadcast_to(jnp.arange(4), (7, 4)))


def test_act_is_jittable_and_vmappable(next_key):
    _, params = make_mlp(next_key(), 2, (3, 3, 1))
    group = PermutationGroup.from_params(params)
    gs = group.sample(next_key(), 5)
    batched = jax.jit(jax.vmap(group.act, in_axes=(0, None)))(gs, params)
    assert batched["Dense_1"]["kernel"].shape == (5, 3, 3)
    one = group.act(tuple(x[2] for x in gs), params)
    assert jnp.array_equal(batched["Dense_1"]["kernel"][2], one["Dense_1"]["kernel"])


def test_partial_trees_and_wrapped_variables(next_key):
    _, params = make_mlp(next_key(), 1, (2, 1), use_bias=False)
    group = PermutationGroup.from_params({"params": params})
    swap = (jnp.array([1, 0], dtype=jnp.int32),)
    only_first = {"Dense_0": params["Dense_0"]}
    moved = group.act(swap, only_first)
    assert list(moved) == ["Dense_0"]
    assert jnp.array_equal(moved["Dense_0"]["kernel"], params["Dense_0"]["kernel"][:, ::-1])
    wrapped = group.act(swap, {"params": params})
    assert set(wrapped) == {"params"}


def test_is_invariant():
    group = PermutationGroup(widths=(3,), layer_names=("Dense_0", "Dense_1"))
    shared = {"Dense_0": {"kernel": jnp.ones((2, 3)), "bias": jnp.full(3, 2.0)}, "Dense_1": {"kernel": jnp.ones((3, 1))}}
    assert group.is_invariant(shared)
    per_unit = {"Dense_0": {"kernel": jnp.ones((2, 3)), "bias": jnp.array([1.0, 2.0, 1.0])}}
    assert not group.is_invariant(per_unit)
    per_input = {"Dense_0": {"kernel": jnp.array([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]])}}
    assert group.is_invariant(per_input)  # differing across inputs, shared across units


def test_group_rejects_inconsistent_construction():
    with pytest.raises(ValueError, match="layer_names"):
        PermutationGroup(widths=(3,), layer_names=("Dense_0",))
    with pytest.raises(ValueError, match="positive"):
        PermutationGroup(widths=(0,), layer_names=("Dense_0", "Dense_1"))
    group = PermutationGroup(widths=(3,), layer_names=("Dense_0", "Dense_1"))
    with pytest.raises(ValueError, match="one index array per factor"):
        group.act((), {})


def test_network_without_hidden_layers_has_the_trivial_group(next_key):
    _, params = make_mlp(next_key(), 3, (2,))
    group = PermutationGroup.from_params(params)
    assert group.widths == () and group.order() == 1 and group.log_order() == 0.0
    assert group.elements() == ()
