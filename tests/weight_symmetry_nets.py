"""Small networks written the ways researchers write them, with their symmetry given by hand.

Each ``make_*`` returns ``(apply_fn, params, inputs, axes, sign_flips, log_order)``; ``log_order`` is
the true log|G| of the spec, computed from the widths by hand.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp


class SetupNamed(nn.Module):
    """fc1 -> tanh -> fc2 -> tanh -> out, layers named in setup."""

    widths: tuple = (3, 2)

    def setup(self):
        self.fc1 = nn.Dense(self.widths[0])
        self.fc2 = nn.Dense(self.widths[1])
        self.out = nn.Dense(2)

    def __call__(self, x):
        return self.out(jnp.tanh(self.fc2(jnp.tanh(self.fc1(x)))))


class Residual(nn.Module):
    """h = Dense_0(x); h = h + relu(Dense_1(h)); f = Dense_2(h): one stream of d units."""

    width: int = 3

    @nn.compact
    def __call__(self, x):
        h = nn.Dense(self.width, name="Dense_0")(x)
        h = h + nn.relu(nn.Dense(self.width, name="Dense_1")(h))
        return nn.Dense(2, name="Dense_2")(h)


class WithLayerNorm(nn.Module):
    width: int = 3

    @nn.compact
    def __call__(self, x):
        h = nn.Dense(self.width, name="Dense_0")(x)
        h = nn.LayerNorm(name="LayerNorm_0")(h)
        return nn.Dense(2, name="Dense_1")(jnp.tanh(h))


class FlattenCNN(nn.Module):
    """conv(C) -> relu -> flatten [H, W, C] -> Dense: the channel is a sub-axis of the features."""

    channels: int = 3

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Conv(self.channels, (3, 3), padding="SAME", name="Conv_0")(x))
        return nn.Dense(2, name="Dense_0")(h.reshape(h.shape[0], -1))


def _init(module, shape, dtype=jnp.float32):
    key_init, key_x = jax.random.split(jax.random.key(0))
    x = jax.random.normal(key_x, shape, dtype)
    params = module.init(key_init, x)["params"]
    # move every leaf off flax's initial values (zero biases, unit scales hide broken symmetries)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = jax.tree.unflatten(treedef, [(p + 0.3 * jax.random.normal(k, p.shape)).astype(dtype)
                                          for p, k in zip(leaves, keys)])
    return (lambda p, x: module.apply({"params": p}, x)), params, x


def make_setup_named(dtype=jnp.float32, widths=(3, 2)):
    apply_fn, params, x = _init(SetupNamed(widths), (5, 2), dtype)
    axes = {
        "h1": [("fc1/kernel", 1), ("fc1/bias", 0), ("fc2/kernel", 0)],
        "h2": [("fc2/kernel", 1), ("fc2/bias", 0), ("out/kernel", 0)],
    }
    log_order = sum(math.lgamma(d + 1) + d * math.log(2) for d in widths)
    return apply_fn, params, x, axes, ("h1", "h2"), log_order


def make_residual(dtype=jnp.float32, width=3):
    apply_fn, params, x = _init(Residual(width), (5, 2), dtype)
    axes = {"stream": [("Dense_0/kernel", 1), ("Dense_0/bias", 0), ("Dense_1/kernel", 0), ("Dense_1/kernel", 1),
                       ("Dense_1/bias", 0), ("Dense_2/kernel", 0)]}
    return apply_fn, params, x, axes, (), math.lgamma(width + 1)


def make_layernorm(dtype=jnp.float32, width=3):
    apply_fn, params, x = _init(WithLayerNorm(width), (5, 2), dtype)
    axes = {"hidden": [("Dense_0/kernel", 1), ("Dense_0/bias", 0), ("LayerNorm_0/scale", 0),
                       ("LayerNorm_0/bias", 0), ("Dense_1/kernel", 0)]}
    return apply_fn, params, x, axes, (), math.lgamma(width + 1)


def make_flatten_cnn(dtype=jnp.float32, channels=3):
    apply_fn, params, x = _init(FlattenCNN(channels), (2, 4, 4, 1), dtype)
    axes = {"channels": [("Conv_0/kernel", 3), ("Conv_0/bias", 0), ("Dense_0/kernel", 0, 1)]}
    return apply_fn, params, x, axes, (), math.lgamma(channels + 1)


NETS = {
    "setup_named_tanh_signed": make_setup_named,
    "residual": make_residual,
    "layernorm": make_layernorm,
    "flatten_cnn": make_flatten_cnn,
}
