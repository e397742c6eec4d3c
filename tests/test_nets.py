import jax
import jax.numpy as jnp
import pytest

from symvi_jax import MLP, nets
from fixtures import make_mlp


def test_dense_chain_layout(next_key):
    model, params = make_mlp(next_key(), 5, (7, 3, 2))
    assert sorted(params) == ["Dense_0", "Dense_1", "Dense_2"]
    assert params["Dense_0"]["kernel"].shape == (5, 7)
    assert params["Dense_1"]["kernel"].shape == (7, 3)
    assert params["Dense_2"]["bias"].shape == (2,)
    names, widths = nets.dense_chain(params)
    assert names == ["Dense_0", "Dense_1", "Dense_2"] and widths == [5, 7, 3, 2]
    assert model.apply({"params": params}, jnp.ones((4, 5))).shape == (4, 2)


def test_use_bias_per_layer(next_key):
    _, params = make_mlp(next_key(), 1, (2, 1), use_bias=(True, False))
    assert "bias" in params["Dense_0"] and "bias" not in params["Dense_1"]
    _, params = make_mlp(next_key(), 1, (2, 1), use_bias=False)
    assert all("bias" not in layer for layer in params.values())
    with pytest.raises(ValueError, match="use_bias"):
        make_mlp(next_key(), 1, (2, 1), use_bias=(True,))


def test_activation_is_applied_between_layers_only(next_key):
    model, params = make_mlp(next_key(), 3, (4, 2), activation=lambda x: x)
    x = jax.random.normal(next_key(), (6, 3))
    linear = x @ params["Dense_0"]["kernel"] @ params["Dense_1"]["kernel"]
    linear += params["Dense_0"]["bias"] @ params["Dense_1"]["kernel"] + params["Dense_1"]["bias"]
    assert jnp.allclose(model.apply({"params": params}, x), linear, atol=1e-5)


def test_dense_chain_rejects_mismatched_shapes_naming_the_layer(next_key):
    _, params = make_mlp(next_key(), 3, (4, 2))
    params["Dense_1"]["kernel"] = jnp.zeros((5, 2))
    with pytest.raises(ValueError, match="Dense_1"):
        nets.dense_chain(params)
    _, params = make_mlp(next_key(), 3, (4, 2))
    params["Dense_0"]["bias"] = jnp.zeros(3)
    with pytest.raises(ValueError, match="Dense_0"):
        nets.dense_chain(params)


def test_dense_chain_rejects_other_layouts():
    with pytest.raises(ValueError, match="Dense_<i>"):
        nets.dense_chain({"Conv_0": {"kernel": jnp.zeros((2, 2))}})
    with pytest.raises(ValueError, match="without gaps"):
        nets.dense_chain({"Dense_0": {"kernel": jnp.zeros((2, 2))}, "Dense_2": {"kernel": jnp.zeros((2, 2))}})
    with pytest.raises(ValueError, match="non-empty"):
        nets.dense_chain({})


def test_partition_and_combine_round_trip(next_key):
    _, params = make_mlp(next_key(), 1, (2, 1), use_bias=False)
    trainable, frozen = nets.partition(params, ["Dense_1"])
    assert list(trainable) == ["Dense_0"] and list(frozen) == ["Dense_1"]
    merged = nets.combine(trainable, frozen)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), merged, params))
    with pytest.raises(ValueError, match="unknown leaves"):
        nets.partition(params, ["Dense_7/kernel"])
    with pytest.raises(ValueError, match="more than one tree"):
        nets.combine(params, params)


def test_mlp_rejects_bad_features():
    with pytest.raises(ValueError, match="features"):
        MLP(features=(3, 0)).init(jax.random.key(0), jnp.ones((1, 2)))
