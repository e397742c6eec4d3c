"""Multi-layer perceptrons as pure functions, and the Dense-chain layout the group acts on.

The network is a ``flax.linen`` module whose parameters are the standard Dense chain
``{"Dense_0": {"kernel": (d_0, d_1), "bias": (d_1,)}, ..., "Dense_{L-1}": ...}``:

    h_0 = x,   h_l = act(h_{l-1} W_l + b_l)  for l < L,   f(x) = h_{L-1} W_L + b_L.

Freezing: the variational family only sees the parameters you give it. To keep some leaves fixed
(the paper's tractable model fixes the output weights to 1), split the tree with
:func:`partition`, train the first part and :func:`combine` the two inside the likelihood.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from symvi_jax import _checks
from symvi_jax.types import Array, ArrayTree

__all__ = ["MLP", "dense_chain", "partition", "combine"]

_LAYER_NAME = re.compile(r"^Dense_(0|[1-9][0-9]*)$")  # no leading zeros: "Dense_01" is not layer 1


class MLP(nn.Module):
    """A fully connected network with a pointwise activation between layers.

    Attributes:
      features: output width of every layer; the last entry is the output dimension.
      activation: any pointwise function, applied after every layer but the last.
      use_bias: one flag for all layers, or one per layer.
      param_dtype: dtype of every kernel and bias (passed to ``nn.Dense``). ``jnp.float64``
        needs ``jax.config.update("jax_enable_x64", True)`` first; without it JAX would hand
        back float32 arrays, so this is refused.
      dtype: dtype of the computation; None (the default) lets ``nn.Dense`` promote the inputs
        and ``param_dtype``, so float64 inputs and parameters compute in float64 with no casts.

    Example (float64 end to end)::

        jax.config.update("jax_enable_x64", True)
        model = MLP(features=(8, 1), param_dtype=jnp.float64)
        params = model.init(jax.random.key(0), jnp.zeros((1, 2), jnp.float64))["params"]
    """

    features: Sequence[int]
    activation: Callable[[Array], Array] = nn.relu
    use_bias: Union[bool, Sequence[bool]] = True
    param_dtype: Any = jnp.float32
    dtype: Optional[Any] = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        features = self.features
        if (
            not isinstance(features, Sequence) or isinstance(features, str) or not features
            or not all(_checks.is_int(f) for f in features)
            or any(f < 1 for f in features)
        ):
            raise ValueError(f"features must be a non-empty sequence of positive int widths, got {features!r}")
        features = tuple(int(f) for f in features)
        use_bias = _per_layer(self.use_bias, len(features), "use_bias")
        param_dtype = _float_dtype(self.param_dtype, "param_dtype")
        dtype = None if self.dtype is None else _float_dtype(self.dtype, "dtype")
        for i, (width, bias) in enumerate(zip(features, use_bias)):
            x = nn.Dense(int(width), use_bias=bias, param_dtype=param_dtype, dtype=dtype, name=f"Dense_{i}")(x)
            if i < len(features) - 1:
                x = self.activation(x)
        return x


def _float_dtype(value, name: str) -> np.dtype:
    """A floating dtype that JAX can hold under the current x64 setting."""
    try:
        dtype = None if value is None else np.dtype(value)  # np.dtype(None) would be float64
    except TypeError:
        dtype = None
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"{name} must be a floating dtype such as jnp.float32 or jnp.float64, got {value!r}")
    if dtype.itemsize == 8 and not jax.config.jax_enable_x64:
        raise ValueError(
            f"{name}={dtype} needs 64-bit JAX: call jax.config.update('jax_enable_x64', True) first "
            "(otherwise the arrays would silently be float32)"
        )
    return dtype


def _per_layer(value, num_layers: int, name: str) -> tuple:
    if isinstance(value, (bool, np.bool_)):
        return (bool(value),) * num_layers
    if not isinstance(value, Sequence) or isinstance(value, str) or not all(isinstance(v, (bool, np.bool_)) for v in value):
        raise ValueError(f"{name} must be a bool or a sequence of bools (one per layer), got {value!r}")
    value = tuple(bool(v) for v in value)
    if len(value) != num_layers:
        raise ValueError(f"{name} must be a bool or have one entry per layer ({num_layers}), got {len(value)}")
    return value


def is_variables(tree: Any) -> bool:
    """Whether ``tree`` is flax ``variables`` holding only params: ``{"params": ...}``."""
    return isinstance(tree, Mapping) and set(tree.keys()) == {"params"}


def unwrap(tree: Any) -> Any:
    """Accept both flax ``variables`` (``{"params": ...}``) and the bare params."""
    return tree["params"] if is_variables(tree) else tree


def dense_chain(params: Mapping[str, Any]) -> tuple[list[str], list[int]]:
    """Validate a Dense chain and return its layer names (in order) and layer widths.

    Args:
      params: ``{"Dense_0": {"kernel", "bias"?}, ...}`` (or ``{"params": that}``); a layer may lack
        its kernel or bias when that leaf is held out of the tree (see :func:`partition`), but
        then some other leaf must fix its width.

    Returns:
      ``(names, widths)`` with ``widths[0]`` the input size (or ``None`` if unknown) and
      ``widths[l + 1]`` the output width of layer ``l``.

    Raises:
      ValueError: naming the layer whose shapes disagree with its neighbours.
    """
    params = unwrap(params)
    if not isinstance(params, Mapping) or not params:
        raise ValueError("params must be a non-empty dict of Dense layers named 'Dense_0', 'Dense_1', ...")
    indices = {}
    for name in params:
        match = _LAYER_NAME.match(str(name))
        if match is None:
            raise ValueError(f"params has a layer {name!r} that is not named 'Dense_<i>'; only Dense chains are supported")
        indices[int(match.group(1))] = name
    order = sorted(indices)
    if order != list(range(len(order))):
        raise ValueError(f"params layers must be Dense_0 .. Dense_{len(order) - 1} without gaps, got {sorted(params)}")
    names = [indices[i] for i in order]
    widths: list = [None] * (len(names) + 1)
    for i, name in enumerate(names):
        layer = params[name]
        if not isinstance(layer, Mapping) or not set(layer) <= {"kernel", "bias"}:
            raise ValueError(f"layer {name} must be a dict with 'kernel' and optionally 'bias', got {layer!r:.80}")
        for leaf_name, leaf in layer.items():
            if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
                raise ValueError(f"layer {name}: {leaf_name} must be an array, got {type(leaf).__name__}")
        if "kernel" in layer:
            kernel_shape = jnp.shape(layer["kernel"])
            if len(kernel_shape) != 2:
                raise ValueError(f"layer {name}: kernel must have shape (in, out), got {kernel_shape}")
            _set_width(widths, i, kernel_shape[0], name, "kernel rows")
            _set_width(widths, i + 1, kernel_shape[1], name, "kernel columns")
        if "bias" in layer:
            bias_shape = jnp.shape(layer["bias"])
            if len(bias_shape) != 1:
                raise ValueError(f"layer {name}: bias must have shape (out,), got {bias_shape}")
            _set_width(widths, i + 1, bias_shape[0], name, "bias length")
    for i, name in enumerate(names):
        if widths[i + 1] is None:
            raise ValueError(f"layer {name} has no kernel or bias left to fix its width")
        if widths[i + 1] < 1 or (i == 0 and widths[0] is not None and widths[0] < 1):
            raise ValueError(f"layer {name} has a zero width; every layer width must be positive, got {widths}")
    return names, widths


def _set_width(widths: list, index: int, value: int, name: str, what: str) -> None:
    if widths[index] is not None and widths[index] != value:
        raise ValueError(
            f"layer {name}: {what} = {value} does not match the width {widths[index]} "
            "set by its neighbour; consecutive Dense shapes must agree"
        )
    widths[index] = int(value)


def partition(params: ArrayTree, frozen: Sequence[str]) -> tuple[dict, dict]:
    """Split a params dict into ``(trainable, frozen)`` by leaf paths such as ``"Dense_1/kernel"``.

    A path naming a whole layer (``"Dense_1"``) freezes all its leaves.
    """
    if isinstance(frozen, str) or not isinstance(frozen, Sequence):
        raise ValueError(f"frozen must be a list of leaf paths such as ['Dense_1/kernel'], got {frozen!r}")
    params = unwrap(params)
    flat = _flatten(params)
    unknown = [p for p in frozen if not any(k == p or k.startswith(p + "/") for k in flat)]
    if unknown:
        raise ValueError(f"frozen names unknown leaves {unknown}; valid leaves are {sorted(flat)}")
    is_frozen = lambda k: any(k == p or k.startswith(p + "/") for p in frozen)  # noqa: E731
    trainable = _unflatten({k: v for k, v in flat.items() if not is_frozen(k)})
    fixed = _unflatten({k: v for k, v in flat.items() if is_frozen(k)})
    return trainable, fixed


def combine(*trees: Mapping[str, Any]) -> dict:
    """Merge disjoint nested dicts (the inverse of :func:`partition`)."""
    flat: dict = {}
    for tree in trees:
        for key, value in _flatten(tree).items():
            if key in flat:
                raise ValueError(f"combine: leaf {key!r} appears in more than one tree")
            flat[key] = value
    return _unflatten(flat)


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, path + "/"))
        else:
            out[path] = value
    return out


def _unflatten(flat: Mapping[str, Any]) -> dict:
    out: dict = {}
    for path, value in flat.items():
        node = out
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def num_params(params: ArrayTree) -> int:
    """The number of scalar parameters in a tree."""
    return int(sum(jnp.size(x) for x in jax.tree.leaves(params)))
