"""Hypothesis fuzzing of the group and network constructors: they work or raise ValueError, never
another exception type, and what they accept is consistent."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from symvi_jax import MLP, PermutationGroup, nets

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# anything a confused caller might pass where a width, a name or a flag is expected
junk = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4), st.just(np.int64(3)), st.just(np.float32(2.0)), st.just(np.bool_(True)),
)
sequences_of = lambda elements: st.one_of(st.lists(elements, max_size=4), st.lists(elements, max_size=4).map(tuple))  # noqa: E731


@FUZZ
@given(widths=st.one_of(junk, sequences_of(junk), sequences_of(st.integers(-2, 5))),
       layer_names=st.one_of(junk, sequences_of(st.one_of(st.sampled_from(["Dense_0", "Dense_1", "Dense_2"]), junk))))
def test_permutation_group_constructor(widths, layer_names):
    try:
        group = PermutationGroup(widths=widths, layer_names=layer_names)
    except ValueError:
        return
    assert isinstance(group.widths, tuple) and all(type(d) is int and d >= 1 for d in group.widths)
    assert len(group.layer_names) == len(group.widths) + 1 and len(set(group.layer_names)) == len(group.layer_names)
    hash(group)  # usable as a static jit argument
    assert group.order() >= 1 and group.log_order() >= 0.0


def _leaf():
    shapes = st.lists(st.integers(0, 3), min_size=0, max_size=3).map(tuple)
    arrays = shapes.map(lambda s: np.zeros(s, np.float32))
    return st.one_of(arrays, arrays, arrays, junk, st.lists(st.integers(), max_size=2))


layer_names = st.one_of(st.sampled_from(["Dense_0", "Dense_1", "Dense_2", "Dense_01", "Dense_-1", "Conv_0", "params"]),
                        st.text(max_size=6), st.integers(0, 2))
layers = st.one_of(
    st.dictionaries(st.sampled_from(["kernel", "bias", "scale"]), _leaf(), max_size=3),
    junk,
)
trees = st.one_of(st.dictionaries(layer_names, layers, max_size=4), junk,
                  st.dictionaries(st.just("params"), st.dictionaries(layer_names, layers, max_size=3), max_size=1))


@FUZZ
@given(tree=trees)
def test_from_params_and_dense_chain_on_random_trees(tree):
    try:
        names, widths = nets.dense_chain(tree)
    except ValueError:
        names = None
    try:
        group = PermutationGroup.from_params(tree)
    except ValueError:
        assert names is None  # from_params fails only where dense_chain does
        return
    assert names is not None
    assert list(group.layer_names) == names and list(group.widths) == widths[1:-1]
    assert all(d >= 1 for d in widths[1:])
    # the layers really are Dense_0 .. Dense_{L-1} and their shapes chain
    assert names == [f"Dense_{i}" for i in range(len(names))]


@st.composite
def chains(draw):
    """A valid Dense chain, then maybe one mutation; returns (tree, widths or None if mutated)."""
    widths = draw(st.lists(st.integers(1, 4), min_size=2, max_size=4))
    tree = {}
    for i in range(len(widths) - 1):
        layer = {"kernel": np.arange(widths[i] * widths[i + 1], dtype=np.float32).reshape(widths[i], widths[i + 1])}
        if draw(st.booleans()):
            layer["bias"] = np.arange(widths[i + 1], dtype=np.float32)
        tree[f"Dense_{i}"] = layer
    mutation = draw(st.sampled_from(["none", "none", "transpose", "junk_leaf", "rename", "extra_leaf", "drop_layer"]))
    name = draw(st.sampled_from(sorted(tree)))
    if mutation == "transpose" and tree[name]["kernel"].shape[0] != tree[name]["kernel"].shape[1]:
        tree[name]["kernel"] = tree[name]["kernel"].T
    elif mutation == "junk_leaf":
        tree[name]["kernel"] = draw(junk)
    elif mutation == "rename":
        tree["Dense_0" + name[len("Dense_"):]] = tree.pop(name) if name != "Dense_0" else tree[name]
    elif mutation == "extra_leaf":
        tree[name]["scale"] = np.ones(1, np.float32)
    elif mutation == "drop_layer" and len(tree) > 1:
        del tree[name]
    else:
        return tree, widths
    return tree, None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chain=chains(), seed=st.integers(0, 2**16))
def test_valid_chains_are_accepted_and_mutated_ones_work_or_raise_value_error(chain, seed):
    tree, widths = chain
    try:
        group = PermutationGroup.from_params(tree)
    except ValueError:
        assert widths is None, "a valid chain was rejected"
        return
    if widths is not None:
        assert list(group.widths) == widths[1:-1]
    # whatever is accepted, a sampled element acts on without changing any shape
    g = tuple(np.asarray(jax.random.permutation(jax.random.key(seed + i), d)) for i, d in enumerate(group.widths))
    moved = group.act(g, tree)
    assert jax.tree.map(np.shape, moved) == jax.tree.map(np.shape, tree)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(features=st.one_of(junk, sequences_of(st.one_of(st.integers(-1, 4), junk)), sequences_of(st.integers(1, 4))),
       use_bias=st.one_of(junk, sequences_of(st.one_of(st.booleans(), junk))))
def test_mlp_features_and_use_bias(features, use_bias):
    model = MLP(features=features, use_bias=use_bias)
    try:
        shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 2)))  # abstract: no compiling
    except ValueError:
        return
    names, widths = nets.dense_chain(shapes["params"])
    assert widths == [2, *[int(f) for f in features]]
