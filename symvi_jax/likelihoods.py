"""Per-example log-likelihoods log p(y_n | x_n, w) built from a network function.

Each builder takes ``apply_fn(params, inputs) -> outputs`` and returns
``loglikelihood_fn(params, batch) -> Array[M]`` with ``batch = (inputs, targets)``; the
objectives scale the minibatch sum by N / M.

* :func:`categorical`: log softmax(f(x))[y] for integer labels y in [0, C).
* :func:`gaussian`: log N(y; f(x), 1/tau) = 0.5 log(tau / 2 pi) - tau/2 ||y - f(x)||^2 per example,
  summed over output dimensions, for a fixed noise precision tau.

Shapes are checked when the function is traced; label values are checked whenever they are
concrete (outside ``jit``; ``vi.fit`` checks its data before compiling).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from symvi_jax import nets
from symvi_jax.types import Array, ArrayTree

__all__ = ["categorical", "gaussian", "check_batch"]

LogLikelihoodFn = Callable[[ArrayTree, Any], Array]


def _split_batch(batch):
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise ValueError(f"batch must be a pair (inputs, targets), got {type(batch).__name__}")
    inputs, targets = batch
    if jnp.ndim(inputs) < 1 or jnp.shape(inputs)[0] == 0:
        raise ValueError(f"batch inputs must have a leading example axis of size >= 1, got shape {jnp.shape(inputs)}")
    if jnp.shape(targets)[:1] != jnp.shape(inputs)[:1]:
        raise ValueError(
            f"batch inputs and targets disagree on the number of examples: {jnp.shape(inputs)[0]} vs "
            f"{jnp.shape(targets)[:1]}"
        )
    return inputs, targets


def check_batch(params: ArrayTree, batch) -> None:
    """Check a batch against a Dense-chain params tree: input features must match ``Dense_0``."""
    inputs, _ = _split_batch(batch)
    try:
        _, widths = nets.dense_chain(params)
    except ValueError:
        return  # not a Dense chain: nothing to compare against
    if widths[0] is not None and jnp.shape(inputs)[-1] != widths[0]:
        raise ValueError(
            f"batch inputs have {jnp.shape(inputs)[-1]} features but the network's first layer "
            f"expects {widths[0]} (inputs shape {jnp.shape(inputs)})"
        )


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_labels(labels, num_classes: int) -> None:
    """Integer labels in [0, num_classes); values are checked when concrete."""
    if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
        raise ValueError(f"labels must be integers, got dtype {jnp.result_type(labels)}")
    if _is_concrete(labels):
        values = np.asarray(labels)
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(
                f"labels must lie in [0, {num_classes}) for a network with {num_classes} outputs, "
                f"got values in [{values.min()}, {values.max()}]"
            )


def categorical(apply_fn: Callable[[ArrayTree, Array], Array]) -> LogLikelihoodFn:
    """Softmax classification: log p(y | x, w) = log_softmax(f_w(x))[y]."""

    def loglikelihood_fn(params, batch):
        check_batch(params, batch)
        inputs, labels = _split_batch(batch)
        logits = apply_fn(params, inputs)
        check_labels(labels, logits.shape[-1])
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        return jnp.take_along_axis(log_probs, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]

    return loglikelihood_fn


def gaussian(apply_fn: Callable[[ArrayTree, Array], Array], *, noise_precision: float) -> LogLikelihoodFn:
    """Regression with fixed noise: log N(y; f_w(x), 1/tau), summed over output dimensions."""
    if not np.isfinite(noise_precision) or noise_precision <= 0:
        raise ValueError(f"noise_precision must be finite and > 0, got {noise_precision!r}")
    log_norm = 0.5 * math.log(noise_precision / (2 * math.pi))

    def loglikelihood_fn(params, batch):
        check_batch(params, batch)
        inputs, targets = _split_batch(batch)
        predictions = apply_fn(params, inputs)
        if jnp.ndim(targets) == jnp.ndim(predictions) - 1 and predictions.shape[-1] == 1:
            targets = targets[..., None]
        if jnp.shape(targets) != jnp.shape(predictions):
            raise ValueError(
                f"regression targets have shape {jnp.shape(targets)} but the network outputs {jnp.shape(predictions)}"
            )
        per_dim = log_norm - 0.5 * noise_precision * jnp.square(targets - predictions)
        return jnp.sum(per_dim.reshape(per_dim.shape[0], -1), axis=-1)

    return loglikelihood_fn
