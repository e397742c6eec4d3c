"""Per-example log-likelihoods log p(y_n | x_n, w) built from a network function.

Each builder takes ``apply_fn(params, inputs) -> outputs`` and returns
``loglikelihood_fn(params, batch) -> Array[M]`` with ``batch = (inputs, targets)``; the
objectives scale the minibatch sum by N / M.

* :func:`categorical`: log softmax(f(x))[y] for integer labels y in [0, C).
* :func:`gaussian`: log N(y; f(x), 1/tau) = 0.5 log(tau / 2 pi) - tau/2 ||y - f(x)||^2 per example,
  summed over output dimensions, for a fixed noise precision tau, or a learned one
  (``learn_noise=True``: tau = exp(hyper["log_noise_precision"]), a point estimate in ``VIState.hyper``).
* :func:`heteroscedastic_gaussian`: log N(y; m(x), exp(-eta(x))) with the network's 2D outputs
  split into the mean m and the log-precision eta.
* :func:`bernoulli`: y log sigmoid(f(x)) + (1 - y) log sigmoid(-f(x)) = y f(x) - softplus(f(x)) for
  binary labels y in {0, 1} and logits f(x), summed over output dimensions.
* :func:`student_t`: log St(y; f(x), s, nu) = log Gamma((nu+1)/2) - log Gamma(nu/2) - 1/2 log(nu pi)
  - log s - (nu+1)/2 log(1 + ((y - f(x)) / s)^2 / nu), summed over output dimensions (robust
  regression with fixed degrees of freedom nu and scale s).
* :func:`poisson`: y f(x) - exp(f(x)) - log y! for counts y in {0, 1, 2, ...} and log-rates f(x),
  summed over output dimensions.

Shapes are checked when the function is traced; label values are checked whenever they are
concrete (outside ``jit``). Every returned function also carries ``check_batch(params, batch)``,
which runs all the checks eagerly on concrete data (the output shape from ``jax.eval_shape``, so
nothing is computed); ``vi.fit`` calls it once on the training data before compiling, because
under ``jit`` an out-of-range label only shows up as a wrong or NaN objective.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from symvi_jax import _checks
from symvi_jax import nets
from symvi_jax.types import Array, ArrayTree

__all__ = [
    "categorical",
    "gaussian",
    "heteroscedastic_gaussian",
    "hyper_value",
    "bernoulli",
    "student_t",
    "poisson",
    "check_batch",
    "check_labels",
    "check_binary_labels",
    "check_counts",
]

LogLikelihoodFn = Callable[[ArrayTree, Any], Array]

_LOG_2PI = math.log(2 * math.pi)


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


def _match_targets(targets, output_shape, what: str = "regression targets"):
    """Targets shaped like the network outputs; ``(M,)`` is accepted for a single output."""
    output_shape = tuple(output_shape)
    if jnp.ndim(targets) == len(output_shape) - 1 and output_shape[-1] == 1:
        targets = targets[..., None]
    if jnp.shape(targets) != output_shape:
        raise ValueError(f"{what} have shape {jnp.shape(targets)} but the network outputs {output_shape}")
    return targets


def check_binary_labels(labels) -> None:
    """Bool, integer or float labels with values in {0, 1}; values are checked when concrete."""
    dtype = jnp.result_type(labels)
    if not (jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating) or dtype == jnp.bool_):
        raise ValueError(f"binary labels must be bool, integer or float, got dtype {dtype}")
    if _is_concrete(labels):
        values = np.asarray(labels)
        bad = values[(values != 0) & (values != 1)]
        if bad.size:
            raise ValueError(
                f"binary labels must be 0 or 1, got {bad.size} other value(s), e.g. {sorted(set(bad.tolist()))[:5]}"
            )


def check_counts(counts) -> None:
    """Integer or float counts with values in {0, 1, 2, ...}; values are checked when concrete."""
    dtype = jnp.result_type(counts)
    if not (jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)):
        raise ValueError(f"counts must be integer or float, got dtype {dtype}")
    if _is_concrete(counts):
        values = np.asarray(counts)
        bad = values[~np.isfinite(values) | (values < 0) | (values != np.round(values))]
        if bad.size:
            raise ValueError(
                f"counts must be non-negative integers, got {bad.size} other value(s), e.g. {sorted(set(bad.tolist()))[:5]}"
            )


def _with_check(loglikelihood_fn, apply_fn, check_targets):
    """Attach ``check_batch(params, batch)``: every check, eagerly, on concrete data.

    ``check_targets(targets, output_shape)`` validates the targets against the network's output
    shape, which comes from ``jax.eval_shape`` (nothing is computed).
    """

    def check(params, batch) -> None:
        check_batch(params, batch)
        inputs, targets = _split_batch(batch)
        outputs = jax.eval_shape(apply_fn, params, inputs)
        check_targets(jax.device_get(targets), outputs.shape)

    loglikelihood_fn.check_batch = check
    loglikelihood_fn.apply_fn = apply_fn  # lets vi.fit check the group's invariance on real inputs
    return loglikelihood_fn


def _per_example_sum(values: Array) -> Array:
    return jnp.sum(values.reshape(values.shape[0], -1), axis=-1)


def categorical(apply_fn: Callable[[ArrayTree, Array], Array]) -> LogLikelihoodFn:
    """Softmax classification: log p(y | x, w) = log_softmax(f_w(x))[y].

    The returned function has ``check_batch(params, batch)`` (see the module docstring).
    """

    def check_targets(labels, output_shape):
        check_labels(labels, output_shape[-1])
        if jnp.shape(labels) != tuple(output_shape[:-1]):
            raise ValueError(
                f"class labels have shape {jnp.shape(labels)} but the network's logits {tuple(output_shape)} need "
                f"{tuple(output_shape[:-1])} (one integer label per example)"
            )

    def loglikelihood_fn(params, batch):
        check_batch(params, batch)
        inputs, labels = _split_batch(batch)
        logits = apply_fn(params, inputs)
        check_targets(labels, logits.shape)
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        return jnp.take_along_axis(log_probs, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]

    return _with_check(loglikelihood_fn, apply_fn, check_targets)


def gaussian(
    apply_fn: Callable[[ArrayTree, Array], Array], *, noise_precision: float, learn_noise: bool = False
) -> LogLikelihoodFn:
    """Regression with Gaussian noise: log N(y; f_w(x), 1/tau), summed over output dimensions.

    Args:
      apply_fn: ``(params, inputs) -> predictions``.
      noise_precision: tau > 0; with ``learn_noise`` its initial value.
      learn_noise: learn tau by type-II maximum likelihood alongside q. The returned function is
        then ``loglikelihood_fn(params, batch, hyper)`` with tau = exp(hyper["log_noise_precision"])
        and carries ``hyper_init = {"log_noise_precision": log tau}``, which ``vi.build`` puts in
        ``VIState.hyper`` (``vi.hyperparameters(state)["noise_precision"]`` reads tau back).

    The returned function has ``check_batch(params, batch)`` (see the module docstring).
    """
    noise_precision = _checks.positive_float(noise_precision, "noise_precision")
    if not isinstance(learn_noise, bool):
        raise ValueError(f"learn_noise must be True or False, got {learn_noise!r}")
    if learn_noise:
        return _learned_noise_gaussian(apply_fn, noise_precision)
    log_norm = 0.5 * math.log(noise_precision / (2 * math.pi))

    def loglikelihood_fn(params, batch):
        check_batch(params, batch)
        inputs, targets = _split_batch(batch)
        predictions = apply_fn(params, inputs)
        targets = _match_targets(targets, predictions.shape)
        per_dim = log_norm - 0.5 * noise_precision * jnp.square(targets - predictions)
        return _per_example_sum(per_dim)

    return _with_check(loglikelihood_fn, apply_fn, _match_targets)


def hyper_value(hyper, name: str) -> Array:
    """``hyper[name]``, or a ValueError saying that this likelihood learns ``name`` and needs ``hyper``."""
    if not isinstance(hyper, Mapping) or name not in hyper:
        raise ValueError(
            f"hyper: this loglikelihood_fn learns {name!r}; call it as loglikelihood_fn(params, batch, hyper) "
            f"with hyper=state.hyper (a dict holding {name!r}), got {hyper!r}"
        )
    return hyper[name]


def _learned_noise_gaussian(apply_fn, noise_precision: float) -> LogLikelihoodFn:
    """``gaussian`` with tau = exp(hyper["log_noise_precision"]) (see :func:`gaussian`)."""

    def loglikelihood_fn(params, batch, hyper=None):
        log_tau = hyper_value(hyper, "log_noise_precision")
        check_batch(params, batch)
        inputs, targets = _split_batch(batch)
        predictions = apply_fn(params, inputs)
        targets = _match_targets(targets, predictions.shape)
        log_tau = jnp.asarray(log_tau, dtype=predictions.dtype)
        per_dim = 0.5 * (log_tau - _LOG_2PI) - 0.5 * jnp.exp(log_tau) * jnp.square(targets - predictions)
        return _per_example_sum(per_dim)

    loglikelihood_fn.hyper_init = {"log_noise_precision": math.log(noise_precision)}
    return _with_check(loglikelihood_fn, apply_fn, _match_targets)


def heteroscedastic_gaussian(apply_fn: Callable[[ArrayTree, Array], Array]) -> LogLikelihoodFn:
    """Regression whose noise the network predicts: f_w(x) = (m, eta) has 2D outputs, the mean m
    (the first D) and the log-precision eta (the last D), and, summed over the D dimensions,

        log p(y | x, w) = 0.5 eta - 0.5 log(2 pi) - 0.5 exp(eta) (y - m)^2   (= log N(y; m, exp(-eta))).

    Targets have shape ``(M, D)`` (or ``(M,)`` when D = 1). The returned function has
    ``check_batch(params, batch)`` (see the module docstring).
    """

    def check_targets(targets, output_shape):
        output_shape = tuple(output_shape)
        if not output_shape or output_shape[-1] % 2:
            raise ValueError(
                f"heteroscedastic_gaussian needs an even number 2D of network outputs (D means, D log-precisions), "
                f"got output shape {output_shape}"
            )
        return _match_targets(targets, output_shape[:-1] + (output_shape[-1] // 2,))

    def loglikelihood_fn(params, batch):
        check_batch(params, batch)
        inputs, targets = _split_batch(batch)
        outputs = apply_fn(params, inputs)
        targets = check_targets(targets, outputs.shape)
        mean, log_precision = jnp.split(outputs, 2, axis=-1)
        per_dim = 0.5 * (log_precision - _LOG_2PI) - 0.5 * jnp.exp(log_precision) * jnp.square(targets - mean)
        return _per_example_sum(per_dim)

    return _with_check(loglikelihood_fn, apply_fn, check_targets)


def bernoulli(apply_fn: Callable[[ArrayTree, Array], Array]) -> LogLikelihoodFn:
    """Binary classification from logits f = f_w(x), summed over output dimensions:

        log p(y | x, w) = y log sigmoid(f) + (1 - y) log sigmoid(-f) = y f - softplus(f),

    for labels y in {0, 1} (bool, int or float). A network with one output takes labels of shape
    ``(M,)`` or ``(M, 1)``; with D outputs (multi-label) ``(M, D)``. The returned function has
    ``check_batch(params, batch)`` (see the module docstring).
    """

    def check_targets(labels, output_shape):
        check_binary_labels(labels)
        return _match_targets(labels, output_shape, "binary labels")

    def loglikelihood_fn(params, batch):
        check_batch(params, batch)
        inputs, labels = _split_batch(batch)
        logits = apply_fn(params, inputs)
        labels = check_targets(labels, logits.shape).astype(logits.dtype)
        return _per_example_sum(labels * logits - jax.nn.softplus(logits))

    return _with_check(loglikelihood_fn, apply_fn, check_targets)


def student_t(apply_fn: Callable[[ArrayTree, Array], Array], *, df: float, scale: float) -> LogLikelihoodFn:
    """Robust regression with Student-t noise of ``df`` = nu degrees of freedom and ``scale`` = s:

        log p(y | x, w) = log Gamma((nu+1)/2) - log Gamma(nu/2) - 1/2 log(nu pi) - log s
                          - (nu+1)/2 log(1 + ((y - f_w(x)) / s)^2 / nu),

    summed over output dimensions. nu -> inf recovers ``gaussian(noise_precision=1/s^2)``; small nu
    makes outliers cost only logarithmically. Targets are shaped like the outputs (``(M,)`` for
    one output). The returned function has ``check_batch(params, batch)``.
    """
    df = _checks.positive_float(df, "df")
    scale = _checks.positive_float(scale, "scale")
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi) - math.log(scale)

    def loglikelihood_fn(params, batch):
        check_batch(params, batch)
        inputs, targets = _split_batch(batch)
        predictions = apply_fn(params, inputs)
        targets = _match_targets(targets, predictions.shape)
        z = (targets - predictions) / scale
        return _per_example_sum(log_norm - 0.5 * (df + 1) * jnp.log1p(jnp.square(z) / df))

    return _with_check(loglikelihood_fn, apply_fn, _match_targets)


def poisson(apply_fn: Callable[[ArrayTree, Array], Array]) -> LogLikelihoodFn:
    """Count regression with log-rate f = f_w(x), summed over output dimensions:

        log p(y | x, w) = y f - exp(f) - log Gamma(y + 1),   y in {0, 1, 2, ...}.

    Counts may be integer or float (with integral values); ``(M,)`` is accepted for one output.
    The returned function has ``check_batch(params, batch)`` (see the module docstring).
    """

    def check_targets(counts, output_shape):
        check_counts(counts)
        return _match_targets(counts, output_shape, "counts")

    def loglikelihood_fn(params, batch):
        check_batch(params, batch)
        inputs, counts = _split_batch(batch)
        log_rate = apply_fn(params, inputs)
        counts = check_targets(counts, log_rate.shape).astype(log_rate.dtype)
        return _per_example_sum(counts * log_rate - jnp.exp(log_rate) - jax.lax.lgamma(counts + 1))

    return _with_check(loglikelihood_fn, apply_fn, check_targets)
