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


def test_mlp_param_dtype_float64_needs_no_casts():
    """With x64 on (locally, in a context), param_dtype=float64 gives float64 params and outputs."""
    import numpy as np

    with jax.enable_x64(True):
        model = MLP(features=(4, 2), param_dtype=jnp.float64)
        x = jax.random.normal(jax.random.key(1), (3, 5), dtype=jnp.float64)
        params = model.init(jax.random.key(0), x)["params"]
        assert all(leaf.dtype == jnp.float64 for leaf in jax.tree.leaves(params))
        out = model.apply({"params": params}, x)
        assert out.dtype == jnp.float64
        # the computation really is float64: it matches a float64 numpy forward pass to 1e-12
        h = np.maximum(np.asarray(x) @ np.asarray(params["Dense_0"]["kernel"]) + np.asarray(params["Dense_0"]["bias"]), 0)
        ref = h @ np.asarray(params["Dense_1"]["kernel"]) + np.asarray(params["Dense_1"]["bias"])
        np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-12, atol=1e-12)
        # dtype=float32 computes in float32 while keeping float64 parameters
        out32 = MLP(features=(4, 2), param_dtype=jnp.float64, dtype=jnp.float32).apply({"params": params}, x)
        assert out32.dtype == jnp.float32


def test_mlp_default_param_dtype_is_float32():
    params = MLP(features=(3,)).init(jax.random.key(0), jnp.ones((1, 2)))["params"]
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
    params16 = MLP(features=(3,), param_dtype=jnp.bfloat16).init(jax.random.key(0), jnp.ones((1, 2)))["params"]
    assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(params16))


@pytest.mark.parametrize("name, value", [("param_dtype", jnp.int32), ("param_dtype", None), ("param_dtype", "nope"),
                                         ("dtype", jnp.bool_)])
def test_mlp_rejects_non_float_dtypes(name, value):
    with pytest.raises(ValueError, match=f"{name} must be a floating dtype"):
        MLP(features=(3,), **{name: value}).init(jax.random.key(0), jnp.ones((1, 2)))


def test_mlp_float64_without_x64_is_refused():
    assert not jax.config.jax_enable_x64
    with pytest.raises(ValueError, match="jax_enable_x64"):
        MLP(features=(3,), param_dtype=jnp.float64).init(jax.random.key(0), jnp.ones((1, 2)))
