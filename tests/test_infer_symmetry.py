"""infer_symmetry / explain_symmetry: the group read off the jaxpr, checked in float64.

Every network is checked twice: the inferred factors (sizes, members) against what the
architecture implies, and f(g.w) == f(w) for random g with an action written here, independent of
``symmetry.WeightSymmetry``. Parameters are redrawn from N(0, 1) first: flax initialises biases to
0 and LayerNorm scales to 1, which would hide a wrongly permuted bias or scale.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from symvi_jax import symmetry
from symvi_jax.jaxpr_symmetry import explain_symmetry, infer_symmetry



pytestmark = pytest.mark.usefixtures("float64")  # x64 on for this module (conftest.py)


# ---- helpers ---------------------------------------------------------------------------------
def _randomize(key, tree):
    """N(0, 1) leaves of the same shapes, drawn with numpy (no compilation)."""
    rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**31 - 1)))
    return jax.tree.map(lambda x: rng.standard_normal(x.shape), tree)


def _build(model, x, key, collections=("params",)):
    """(apply_fn, params, inputs) with N(0, 1) parameters in float64; init is only shape-traced."""
    variables = jax.eval_shape(model.init, key, x)
    if collections == ("params",):
        params = _randomize(key, variables["params"])
        return (lambda p, inputs: model.apply({"params": p}, inputs)), params, x
    params = _randomize(key, {c: variables[c] for c in collections})
    return (lambda p, inputs: model.apply(p, inputs)), params, x


def _path(key_path):
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in key_path)


def _act(params, factor, perm, signs):
    """Independent reference action: view each member axis as (outer, d, inner), permute d."""
    flat = {_path(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    for path, axis, inner in factor.members:
        leaf = flat[path]
        shape = leaf.shape
        outer = shape[axis] // (factor.size * inner)
        view = leaf.reshape(shape[:axis] + (outer, factor.size, inner) + shape[axis + 1:])
        view = np.take(view, np.asarray(perm), axis=axis + 1)
        sign_shape = [1] * view.ndim
        sign_shape[axis + 1] = factor.size
        flat[path] = (view * np.asarray(signs).reshape(sign_shape)).reshape(shape)
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
    return treedef.unflatten([flat[_path(path)] for path, _ in leaves_with_path])


def _assert_invariant(apply_fn, params, x, report, key, *, flips=False, draws=2):
    apply_fn = jax.jit(apply_fn)
    before = apply_fn(params, x)
    rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**31 - 1)))
    for _ in range(draws):
        moved = params
        for factor in report.factors:
            perm = rng.permutation(factor.size)
            if np.array_equal(perm, np.arange(factor.size)):
                perm = np.roll(perm, 1)  # always move a unit
            signs = rng.choice([-1.0, 1.0], factor.size) if flips else np.ones(factor.size)
            moved = _act(moved, factor, perm, signs)
        assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(moved), jax.tree.leaves(params)))
        np.testing.assert_allclose(apply_fn(moved, x), before, rtol=1e-10, atol=1e-10)


def _sizes(report):
    return [factor.size for factor in report.factors]


def _factor_with(report, path, axis):
    found = [f for f in report.factors if any(m[:2] == (path, axis) for m in f.members)]
    assert len(found) <= 1
    return found[0] if found else None


# ---- MLPs written three ways -----------------------------------------------------------------
class CompactMLP(nn.Module):
    """The trap: flax names the OUTER Dense ``Dense_1`` and the inner one... see below."""

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Dense(8)(x))  # Dense_0
        return nn.Dense(3)(nn.tanh(nn.Dense(5)(h)))  # Dense(3) is constructed first: Dense_1


class SetupMLP(nn.Module):
    def setup(self):
        self.fc1, self.fc2, self.out = nn.Dense(8), nn.Dense(5), nn.Dense(3)

    def __call__(self, x):
        return self.out(nn.tanh(self.fc2(nn.relu(self.fc1(x)))))


def _sequential():
    return nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(5), nn.tanh, nn.Dense(3)])


MLPS = {
    # name: (model, hidden layers as (producer, consumer) leaf names)
    "compact": (CompactMLP(), [("Dense_0", "Dense_2"), ("Dense_2", "Dense_1")]),
    "setup": (SetupMLP(), [("fc1", "fc2"), ("fc2", "out")]),
    "sequential": (_sequential(), [("layers_0", "layers_2"), ("layers_2", "layers_4")]),
}


@pytest.mark.parametrize("name", sorted(MLPS))
def test_mlp_factors_follow_the_computation_not_the_names(name):
    model, hidden = MLPS[name]
    apply_fn, params, x = _build(model, jnp.ones((4, 6)), jax.random.key(0))
    report = explain_symmetry(apply_fn, params, x)
    assert sorted(_sizes(report)) == [5, 8]
    for (producer, consumer), width in zip(hidden, (8, 5)):
        factor = _factor_with(report, f"{producer}/kernel", 1)
        assert factor is not None and factor.size == width
        assert set(factor.members) == {(f"{producer}/bias", 0, 1), (f"{producer}/kernel", 1, 1),
                                       (f"{consumer}/kernel", 0, 1)}
        assert factor.name == f"{producer}/kernel:1"
    assert report.log_order() == pytest.approx(math.lgamma(9) + math.lgamma(6))
    assert {(b.path.split("/")[1], b.axis, b.reason) for b in report.broken} == {
        ("kernel", 0, "reaches the input"), ("kernel", 1, "reaches the output"), ("bias", 0, "reaches the output")}
    _assert_invariant(apply_fn, params, x, report, jax.random.key(1))
    # the same spec through WeightSymmetry's own action
    group = infer_symmetry(apply_fn, params, x, check=False)
    assert group.log_order() == pytest.approx(math.lgamma(9) + math.lgamma(6))
    g = group.sample(jax.random.key(2))
    np.testing.assert_allclose(apply_fn(group.act(g, params), x), apply_fn(params, x), rtol=1e-10, atol=1e-10)


def test_trap_names_the_hidden_layers_by_dataflow():
    """In CompactMLP Dense_1 is the output layer: its kernel rows carry the 5 units of Dense_2."""
    model, _ = MLPS["compact"]
    apply_fn, params, x = _build(model, jnp.ones((4, 6)), jax.random.key(0))
    assert params["Dense_1"]["kernel"].shape == (5, 3)
    report = explain_symmetry(apply_fn, params, x)
    assert _factor_with(report, "Dense_1/kernel", 0).size == 5
    assert _factor_with(report, "Dense_1/kernel", 1) is None


def test_slicing_the_data_axes_keeps_the_hidden_factors():
    model, _ = MLPS["setup"]
    apply_fn, params, x = _build(model, jnp.ones((4, 6)), jax.random.key(0))
    report = explain_symmetry(lambda p, inputs: apply_fn(p, inputs[:2])[:, :1], params, x)
    assert sorted(_sizes(report)) == [5, 8]


def test_jit_and_checkpoint_inside_apply_are_walked():
    model, _ = MLPS["setup"]
    apply_fn, params, x = _build(model, jnp.ones((4, 6)), jax.random.key(0))
    wrapped = jax.jit(lambda p, inputs: jax.checkpoint(apply_fn)(p, inputs))
    assert explain_symmetry(wrapped, params, x) == explain_symmetry(apply_fn, params, x)


# ---- extra leaves, residual streams, LayerNorm -----------------------------------------------
def test_custom_vjp_under_checkpoint_is_walked():
    @jax.custom_vjp
    def odd(h):
        return jnp.sin(h)

    odd.defvjp(lambda h: (odd(h), h), lambda h, g: (g * jnp.cos(h),))

    def apply_fn(p, x):
        return jax.checkpoint(odd)(x @ p["w"] + p["b"]) @ p["v"]

    params = _randomize(jax.random.key(40), {"w": np.ones((3, 4)), "b": np.ones(4), "v": np.ones((4, 2))})
    (factor,) = explain_symmetry(apply_fn, params, np.ones((2, 3))).factors
    assert set(factor.members) == {("b", 0, 1), ("v", 0, 1), ("w", 1, 1)} and factor.sign_flips


def test_extra_leaves_are_left_alone():
    model, _ = MLPS["setup"]
    apply_fn, params, x = _build(model, jnp.ones((4, 6)), jax.random.key(0))
    params = {"net": params, "log_noise": jnp.zeros(3), "unused": jnp.zeros(4)}

    def with_noise(p, inputs):
        return apply_fn(p["net"], inputs) * jnp.exp(p["log_noise"])

    report = explain_symmetry(with_noise, params, x)
    assert sorted(_sizes(report)) == [5, 8]
    assert not any(m[0] in ("log_noise", "unused") for f in report.factors for m in f.members)
    reasons = {b.path: b.reason for b in report.broken}
    assert reasons["log_noise"] == "reaches the output"
    assert "unused" in reasons["unused"]


class ResidualMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Dense(6)(x)
        for _ in range(2):
            inner = nn.Dense(4)(h)
            h = h + nn.Dense(6)(nn.relu(inner))
        return nn.Dense(2)(nn.relu(h))


def test_residual_stream_is_one_factor():
    apply_fn, params, x = _build(ResidualMLP(), jnp.ones((3, 5)), jax.random.key(2))
    report = explain_symmetry(apply_fn, params, x)
    stream = _factor_with(report, "Dense_0/kernel", 1)
    assert stream.size == 6
    # Dense_1 / Dense_3 read the stream, Dense_2 / Dense_4 write into it, Dense_5 reads it out
    for path, axis in [("Dense_1/kernel", 0), ("Dense_2/kernel", 1), ("Dense_2/bias", 0),
                       ("Dense_3/kernel", 0), ("Dense_4/kernel", 1), ("Dense_5/kernel", 0)]:
        assert (path, axis, 1) in stream.members
    assert sorted(_sizes(report)) == [4, 4, 6]
    _assert_invariant(apply_fn, params, x, report, jax.random.key(3))


class LayerNormMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.LayerNorm()(nn.Dense(6)(x))
        return nn.Dense(2)(nn.tanh(h))


def test_layernorm_scale_and_bias_join_the_factor():
    apply_fn, params, x = _build(LayerNormMLP(), jnp.ones((3, 5)), jax.random.key(4))
    report = explain_symmetry(apply_fn, params, x)
    (factor,) = report.factors
    assert set(factor.members) == {("Dense_0/bias", 0, 1), ("Dense_0/kernel", 1, 1), ("Dense_1/kernel", 0, 1),
                                   ("LayerNorm_0/bias", 0, 1), ("LayerNorm_0/scale", 0, 1)}
    assert not factor.sign_flips  # the mean over the units is not odd per unit
    _assert_invariant(apply_fn, params, x, report, jax.random.key(5))


# ---- convolutions ----------------------------------------------------------------------------
class PooledCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Conv(8, (3, 3))(x))
        h = nn.relu(nn.Conv(16, (3, 3))(h))
        return nn.Dense(3)(h.mean(axis=(1, 2)))


class FlattenCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.avg_pool(nn.relu(nn.Conv(4, (3, 3))(x)), (2, 2), strides=(2, 2))
        return nn.Dense(3)(h.reshape((h.shape[0], -1)))


def test_cnn_channels_are_factors():
    apply_fn, params, x = _build(PooledCNN(), jnp.ones((2, 5, 5, 2)), jax.random.key(6))
    report = explain_symmetry(apply_fn, params, x)
    assert _sizes(report) == [8, 16]
    assert set(report.factors[0].members) == {("Conv_0/bias", 0, 1), ("Conv_0/kernel", 3, 1), ("Conv_1/kernel", 2, 1)}
    assert ("Dense_0/kernel", 0, 1) in report.factors[1].members
    assert {b.reason for b in report.broken if b.path.endswith("kernel") and b.axis in (0, 1)
            and b.path.startswith("Conv")} == {"spatial axis of a convolution"}
    _assert_invariant(apply_fn, params, x, report, jax.random.key(7))


def test_flatten_makes_the_channel_a_sub_axis():
    apply_fn, params, x = _build(FlattenCNN(), jnp.ones((2, 6, 6, 1)), jax.random.key(8))
    assert params["Dense_0"]["kernel"].shape == (3 * 3 * 4, 3)  # outer = H*W = 9, d = 4, inner = 1
    report = explain_symmetry(apply_fn, params, x)
    (factor,) = report.factors
    assert factor.size == 4
    assert set(factor.members) == {("Conv_0/bias", 0, 1), ("Conv_0/kernel", 3, 1), ("Dense_0/kernel", 0, 1)}
    assert dict(zip(factor.members, factor.outers))[("Dense_0/kernel", 0, 1)] == 9
    assert "Dense_0/kernel axis 0 viewed as (outer 9, d, inner 1)" in str(report)
    _assert_invariant(apply_fn, params, x, report, jax.random.key(9))


class ChannelFirst(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = jnp.tanh(nn.Conv(3, (3, 3))(x)).transpose((0, 3, 1, 2))
        return nn.Dense(2)(h.reshape((h.shape[0], -1)))


def test_channel_first_flatten_has_inner_stride():
    """[B, H, W, C] -> [B, C, H, W] -> flatten: the channel is the OUTER sub-axis, inner = H*W."""
    apply_fn, params, x = _build(ChannelFirst(), jnp.ones((2, 4, 4, 1)), jax.random.key(10))
    report = explain_symmetry(apply_fn, params, x)
    (factor,) = report.factors
    assert ("Dense_0/kernel", 0, 16) in factor.members
    _assert_invariant(apply_fn, params, x, report, jax.random.key(11), flips=True)


def test_grouped_convolution_is_refused_by_name():
    class Depthwise(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = jnp.tanh(nn.Conv(4, (1, 1))(x))
            h = jnp.tanh(nn.Conv(4, (3, 3), feature_group_count=4)(h))
            return nn.Dense(2)(h.mean(axis=(1, 2)))

    apply_fn, params, x = _build(Depthwise(), jnp.ones((2, 4, 4, 2)), jax.random.key(12))
    report = explain_symmetry(apply_fn, params, x)
    assert _factor_with(report, "Conv_0/kernel", 3) is None
    reasons = {(b.path, b.axis): b.reason for b in report.broken}
    assert "feature_group_count=4" in reasons[("Conv_0/kernel", 3)]


# ---- sign flips ------------------------------------------------------------------------------
class TanhMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.tanh(nn.Dense(4)(x))
        h = nn.tanh(nn.Dense(3)(h))
        return nn.Dense(2)(h)


def test_tanh_mlp_keeps_sign_flips():
    apply_fn, params, x = _build(TanhMLP(), jnp.ones((3, 5)), jax.random.key(13))
    report = explain_symmetry(apply_fn, params, x)
    assert _sizes(report) == [4, 3] and all(f.sign_flips for f in report.factors)
    expected = math.lgamma(5) + 4 * math.log(2) + math.lgamma(4) + 3 * math.log(2)
    assert report.log_order(sign_flips=True) == pytest.approx(expected)
    _assert_invariant(apply_fn, params, x, report, jax.random.key(14), flips=True)


@pytest.mark.parametrize(
    "activation, op",
    [(nn.relu, "relu (custom_jvp_call max)"), (nn.softplus, "logaddexp (custom_jvp_call max)"), (nn.sigmoid, "logistic"),
     (lambda h: h * h, "mul of two values that carry the same units")],
    ids=["relu", "softplus", "sigmoid", "square"],
)
def test_sign_flips_through_an_even_activation_raise_naming_the_op(activation, op):
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = activation(nn.Dense(4)(x))
            return nn.Dense(2)(h)

    apply_fn, params, x = _build(Net(), jnp.ones((3, 5)), jax.random.key(15))
    with pytest.raises(ValueError, match="sign flips through") as error:
        infer_symmetry(apply_fn, params, x, sign_flips=True)
    assert op in str(error.value) and "Dense_0/kernel:1" in str(error.value)


def test_bias_free_add_of_a_constant_loses_flips():
    class Shifted(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = jnp.tanh(nn.Dense(4)(x) + 1.0)
            return nn.Dense(2)(h)

    apply_fn, params, x = _build(Shifted(), jnp.ones((3, 5)), jax.random.key(16))
    (factor,) = explain_symmetry(apply_fn, params, x).factors
    assert not factor.sign_flips and "add" in factor.flip_reason


def test_a_sum_over_the_units_keeps_permutations_but_not_flips():
    class Readout(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = jnp.tanh(nn.Dense(4)(x))
            return nn.Dense(2)(h) + h.sum(axis=-1, keepdims=True)

    apply_fn, params, x = _build(Readout(), jnp.ones((3, 5)), jax.random.key(27))
    (factor,) = explain_symmetry(apply_fn, params, x).factors
    assert factor.size == 4 and not factor.sign_flips and factor.flip_reason == "reduce_sum over the units"
    report = explain_symmetry(apply_fn, params, x)
    _assert_invariant(apply_fn, params, x, report, jax.random.key(28))


# ---- ops that do not commute with a permutation of the units ---------------------------------
NON_COMMUTING = {
    "arange_scale": (lambda h: h * jnp.arange(h.shape[-1]), "iota"),
    "cumsum": (lambda h: jnp.cumsum(h, axis=-1), "cumsum"),
    "gather": (lambda h: h[:, jnp.array([1, 0, 3, 2])], "gather"),
    "concatenate": (lambda h: jnp.concatenate([h, h], axis=-1), "concatenate"),
    "sort": (lambda h: jnp.sort(h, axis=-1), "sort"),
    "constant_scale": (lambda h: h * np.linspace(1.0, 2.0, h.shape[-1]), "constant"),
    "argmax": (lambda h: h + jnp.argmax(h, axis=-1, keepdims=True), "argmax"),
    "slice": (lambda h: h[:, :3], "slice cuts the axis"),
}


@pytest.mark.parametrize("name", sorted(NON_COMMUTING))
def test_non_commuting_op_on_the_hidden_axis_gets_no_factor(name):
    op, reason = NON_COMMUTING[name]

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = op(jnp.tanh(nn.Dense(4)(x)))
            return nn.Dense(2)(h)

    apply_fn, params, x = _build(Net(), jnp.ones((3, 5)), jax.random.key(17))
    report = explain_symmetry(apply_fn, params, x)
    assert _factor_with(report, "Dense_0/kernel", 1) is None
    reasons = {(b.path, b.axis): b.reason for b in report.broken}
    assert reason in reasons[("Dense_0/kernel", 1)]


@pytest.mark.parametrize("name", ["arange_scale", "cumsum"])
def test_the_refused_permutation_really_changes_the_function(name):
    """So that the refusal above is necessary, not just cautious."""
    op, _ = NON_COMMUTING[name]

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = op(jnp.tanh(nn.Dense(4)(x)))
            return nn.Dense(2)(h)

    apply_fn, params, x = _build(Net(), jnp.ones((3, 5)), jax.random.key(18))
    from symvi_jax.jaxpr_symmetry import InferredFactor

    naive = InferredFactor("hidden", 4, (("Dense_0/bias", 0, 1), ("Dense_0/kernel", 1, 1), ("Dense_1/kernel", 0, 1)),
                           False, None)
    moved = _act(params, naive, jnp.array([1, 0, 3, 2]), jnp.ones(4))
    assert not np.allclose(apply_fn(moved, x), apply_fn(params, x))


# ---- attention and BatchNorm -----------------------------------------------------------------
class Attention(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Dense(6)(x)
        h = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=4, out_features=6)(h)
        return nn.Dense(2)(h.mean(axis=1))


def test_attention_heads_permute_as_blocks():
    apply_fn, params, x = _build(Attention(), jnp.ones((2, 3, 5)), jax.random.key(19))
    report = explain_symmetry(apply_fn, params, x)
    attention = "MultiHeadDotProductAttention_0"
    heads = _factor_with(report, f"{attention}/query/kernel", 1)
    assert heads.size == 2
    assert {(f"{attention}/{p}/kernel", 1, 1) for p in ("query", "key", "value")} <= set(heads.members)
    assert (f"{attention}/out/kernel", 0, 1) in heads.members
    head_dim_qk = _factor_with(report, f"{attention}/query/kernel", 2)
    assert (f"{attention}/key/kernel", 2, 1) in head_dim_qk.members
    head_dim_v = _factor_with(report, f"{attention}/value/kernel", 2)
    assert (f"{attention}/out/kernel", 1, 1) in head_dim_v.members and head_dim_v is not head_dim_qk
    assert sorted(_sizes(report)) == [2, 2, 2, 6, 6]
    _assert_invariant(apply_fn, params, x, report, jax.random.key(20))


def test_batchnorm_running_statistics_join_the_factor():
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.BatchNorm(use_running_average=True)(nn.Dense(4)(x))
            return nn.Dense(2)(nn.relu(h))

    model, x = Net(), jnp.ones((3, 5))
    apply_fn, variables, _ = _build(model, x, jax.random.key(21), collections=("params", "batch_stats"))
    variables["batch_stats"] = jax.tree.map(jnp.abs, variables["batch_stats"])  # a variance is positive
    report = explain_symmetry(apply_fn, variables, x)
    (factor,) = report.factors
    assert {("batch_stats/BatchNorm_0/mean", 0, 1), ("batch_stats/BatchNorm_0/var", 0, 1),
            ("params/BatchNorm_0/scale", 0, 1)} <= set(factor.members)
    _assert_invariant(apply_fn, variables, x, report, jax.random.key(22))
    # check() perturbs a positive leaf (the variance) multiplicatively, so it stays a variance
    group = infer_symmetry(apply_fn, variables, x)
    assert group.log_order() == pytest.approx(math.lgamma(5))

    # closed over instead of passed in, the statistics are data: no factor
    stats = variables["batch_stats"]
    closed = explain_symmetry(lambda p, inputs: model.apply({"params": p, "batch_stats": stats}, inputs),
                              variables["params"], x)
    assert closed.factors == ()


# ---- reshapes that split a unit axis: maxout, hand-written attention, GroupNorm ----------------
def test_maxout_splits_the_units_into_two_factors():
    class Maxout(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.Dense(4 * 3)(x).reshape((x.shape[0], 4, 3)).max(axis=-1)
            return nn.Dense(2)(h)

    apply_fn, params, x = _build(Maxout(), jnp.ones((3, 5)), jax.random.key(29))
    report = explain_symmetry(apply_fn, params, x)
    units, pieces = report.factors
    assert (units.size, pieces.size) == (4, 3)
    assert set(units.members) == {("Dense_0/bias", 0, 3), ("Dense_0/kernel", 1, 3), ("Dense_1/kernel", 0, 1)}
    assert set(pieces.members) == {("Dense_0/bias", 0, 1), ("Dense_0/kernel", 1, 1)}
    assert not units.sign_flips and "reduce_max" in units.flip_reason
    _assert_invariant(apply_fn, params, x, report, jax.random.key(30))


def _hand_attention(p, x, heads=2):
    """Self-attention with [D, H*hd] projections reshaped to heads, params as a plain dict."""
    batch, length, _ = x.shape
    q, k, v = ((x @ p[n] + p[n + "_bias"]).reshape(batch, length, heads, -1) for n in ("wq", "wk", "wv"))
    weights = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(q.shape[-1]), axis=-1)
    attended = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, length, -1)
    return (attended @ p["wo"]).mean(axis=1)


def test_hand_written_attention_heads_are_sub_axes_with_inner_head_dim():
    key = jax.random.key(31)
    shapes = {"wq": (5, 6), "wk": (5, 6), "wv": (5, 8), "wo": (8, 3),
              "wq_bias": (6,), "wk_bias": (6,), "wv_bias": (8,)}
    params = _randomize(key, {n: jax.ShapeDtypeStruct(s, jnp.float64) for n, s in shapes.items()})
    x = np.random.default_rng(0).standard_normal((2, 4, 5))
    report = explain_symmetry(_hand_attention, params, x)
    (heads,) = [f for f in report.factors if ("wq", 1, 3) in f.members]
    assert heads.size == 2
    assert {("wq", 1, 3), ("wk", 1, 3), ("wv", 1, 4), ("wo", 0, 4)} <= set(heads.members)
    head_dim_qk = [f for f in report.factors if ("wq", 1, 1) in f.members]
    head_dim_v = [f for f in report.factors if ("wv", 1, 1) in f.members]
    assert head_dim_qk[0].size == 3 and ("wk", 1, 1) in head_dim_qk[0].members
    assert head_dim_v[0].size == 4 and ("wo", 0, 1) in head_dim_v[0].members
    assert sorted(_sizes(report)) == [2, 3, 4]
    _assert_invariant(_hand_attention, params, x, report, jax.random.key(32))


def test_groupnorm_permutes_groups_and_channels_within_them():
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.GroupNorm(num_groups=2)(nn.Conv(6, (3, 3))(x))
            return nn.Dense(2)(nn.relu(h).mean(axis=(1, 2)))

    apply_fn, params, x = _build(Net(), jnp.ones((2, 4, 4, 1)), jax.random.key(33))
    report = explain_symmetry(apply_fn, params, x)
    assert sorted(_sizes(report)) == [2, 3]
    groups = [f for f in report.factors if f.size == 2][0]
    assert ("Conv_0/kernel", 3, 3) in groups.members and ("GroupNorm_0/scale", 0, 3) in groups.members
    _assert_invariant(apply_fn, params, x, report, jax.random.key(34))


def test_plain_jax_params_in_a_list():
    def apply_fn(p, x):
        for layer in p[:-1]:
            x = jnp.tanh(x @ layer["w"] + layer["b"])
        return x @ p[-1]["w"]

    key = jax.random.key(35)
    shapes = [((5, 4), (4,)), ((4, 3), (3,)), ((3, 2), None)]
    params = [{"w": jax.ShapeDtypeStruct(w, jnp.float64), **({"b": jax.ShapeDtypeStruct(b, jnp.float64)} if b else {})}
              for w, b in shapes]
    params = _randomize(key, params)
    x = np.ones((3, 5))
    report = explain_symmetry(apply_fn, params, x)
    assert [f.name for f in report.factors] == ["0/w:1", "1/w:1"]
    assert set(report.factors[1].members) == {("1/b", 0, 1), ("1/w", 1, 1), ("2/w", 0, 1)}
    assert all(f.sign_flips for f in report.factors)
    _assert_invariant(apply_fn, params, x, report, jax.random.key(36), flips=True)


RESHAPES = {
    # name: (function of (params, x), expected factor sizes)
    "transposed_flatten": (lambda p, x: jnp.tanh(x @ p["a"]).reshape(-1, 3, 4).transpose(0, 2, 1).reshape(-1, 12)
                           @ p["b"], [3, 4]),
    "split_two_ways": (lambda p, x: (jnp.tanh(x @ p["a"]).reshape(-1, 3, 4).sum(1)
                                     + jnp.tanh(x @ p["a"]).reshape(-1, 4, 3).sum(2)) @ p["c"], []),
    "regroup": (lambda p, x: jnp.tanh(x @ p["a"]).reshape(-1, 2, 6).reshape(-1, 3, 4).sum(1) @ p["c"], []),
    "outer_product": (lambda p, x: (lambda h: (h[:, :, None] * h[:, None, :]).reshape(-1, 144))(
        jnp.tanh(x @ p["a"])) @ p["d"], [12]),
    "reshaped_parameter": (lambda p, x: jnp.tanh(x[:, :3] @ p["e"].reshape(3, 4)) @ p["c"], [4]),
}


@pytest.mark.parametrize("name", sorted(RESHAPES))
def test_reshapes_never_claim_a_false_group(name):
    apply_fn, sizes = RESHAPES[name]
    shapes = {"a": (5, 12), "b": (12, 2), "c": (4, 2), "d": (144, 2), "e": (12,)}
    params = _randomize(jax.random.key(37), {n: jax.ShapeDtypeStruct(s, jnp.float64) for n, s in shapes.items()})
    x = np.random.default_rng(1).standard_normal((3, 5))
    report = explain_symmetry(apply_fn, params, x)
    assert sorted(_sizes(report)) == sizes
    if sizes:
        _assert_invariant(apply_fn, params, x, report, jax.random.key(38), flips=name == "transposed_flatten")


# ---- the group object and validation ---------------------------------------------------------
def test_infer_symmetry_returns_a_checked_group():
    apply_fn, params, x = _build(TanhMLP(), jnp.ones((3, 5)), jax.random.key(23))
    group, report = infer_symmetry(apply_fn, params, x, sign_flips=True, return_report=True)
    assert isinstance(group, symmetry.WeightSymmetry)
    assert [f.size for f in group.factors] == [4, 3]
    assert group.log_order() == pytest.approx(report.log_order(sign_flips=True))
    g = group.sample(jax.random.key(24))
    np.testing.assert_allclose(apply_fn(group.act(g, params), x), apply_fn(params, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "model, shape, sign_flips",
    [(FlattenCNN(), (2, 6, 6, 1), False), (ResidualMLP(), (3, 5), False), (ChannelFirst(), (2, 4, 4, 1), True)],
    ids=["flatten_cnn", "residual", "channel_first_with_flips"],
)
def test_group_check_passes_on_inferred_groups(model, shape, sign_flips):
    apply_fn, params, x = _build(model, jnp.ones(shape), jax.random.key(25))
    group = infer_symmetry(apply_fn, params, x, sign_flips=sign_flips)  # runs group.check
    assert group.sizes == tuple(_sizes(explain_symmetry(apply_fn, params, x)))
    assert group.has_sign_flips == sign_flips


def test_group_check_passes_on_hand_written_attention():
    shapes = {"wq": (5, 6), "wk": (5, 6), "wv": (5, 8), "wo": (8, 3), "wq_bias": (6,), "wk_bias": (6,), "wv_bias": (8,)}
    params = _randomize(jax.random.key(39), {n: jax.ShapeDtypeStruct(s, jnp.float64) for n, s in shapes.items()})
    group = infer_symmetry(_hand_attention, params, np.random.default_rng(2).standard_normal((2, 4, 5)))
    assert sorted(group.sizes) == [2, 3, 4]


def test_a_net_without_provable_symmetry_gets_the_trivial_group():
    class Linear(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(2)(x)

    apply_fn, params, x = _build(Linear(), jnp.ones((3, 5)), jax.random.key(26))
    group, report = infer_symmetry(apply_fn, params, x, return_report=True)
    assert group.factors == () and group.log_order() == 0.0
    assert {(b.path, b.axis) for b in report.broken} == {("Dense_0/kernel", 0), ("Dense_0/kernel", 1), ("Dense_0/bias", 0)}


def test_bad_arguments_are_named():
    model, _ = MLPS["setup"]
    apply_fn, params, x = _build(model, jnp.ones((4, 6)), jax.random.key(0))
    with pytest.raises(ValueError, match="apply_fn must be callable"):
        explain_symmetry("not a function", params, x)
    with pytest.raises(ValueError, match="sign_flips must be True or False"):
        infer_symmetry(apply_fn, params, x, sign_flips="yes")
    with pytest.raises(ValueError, match="params must be a pytree with at least one array leaf"):
        explain_symmetry(apply_fn, {}, x)
    with pytest.raises(ValueError, match="could not be traced"):
        explain_symmetry(apply_fn, params, jnp.ones((4, 7)))
