"""Posterior predictive averages and the metrics reported on them.

The predictive of q and of q^G are the same: f_{g.w} = f_w, so sampling w ~ q^G (draw from q,
then permute) gives the same functions as w ~ q (PAPER.md, Section 4). Predictions therefore
average S models drawn from q:

    p(y | x) ~= (1/S) sum_s softmax(f_{w_s}(x))      (classification)
    E[y | x] ~= (1/S) sum_s f_{w_s}(x)               (regression)

Samples are drawn and evaluated ``chunk_size`` at a time under ``lax.scan`` so that S = 1000
fits in memory on any dataset size.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from symvi_jax import meanfield
from symvi_jax.meanfield import MeanFieldState
from symvi_jax.types import Array, ArrayTree, PRNGKey

__all__ = [
    "predictive_mean",
    "predictive_probs",
    "accuracy",
    "nll",
    "ece",
    "mse",
    "predictive_entropy",
    "auroc",
]


def predictive_mean(
    rng_key: PRNGKey,
    q: MeanFieldState,
    fn: Callable[[ArrayTree, Array], Array],
    inputs: Array,
    *,
    num_samples: int,
    chunk_size: Optional[int] = None,
) -> Array:
    """(1/S) sum_s fn(w_s, inputs) for w_s ~ q, accumulated ``chunk_size`` samples at a time."""
    if not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    chunk = num_samples if chunk_size is None else int(chunk_size)
    if chunk < 1 or num_samples % chunk:
        raise ValueError(f"chunk_size must be a positive divisor of num_samples ({num_samples}), got {chunk_size!r}")

    def body(total, key):
        samples = meanfield.sample(key, q, chunk)
        outputs = jax.vmap(lambda w: fn(w, inputs))(samples)
        return total + jnp.sum(outputs, axis=0), None

    shape = jax.eval_shape(lambda: fn(q.loc, inputs))
    total0 = jnp.zeros(shape.shape, shape.dtype)
    total, _ = jax.lax.scan(body, total0, jax.random.split(rng_key, num_samples // chunk))
    return total / num_samples


def predictive_probs(
    rng_key: PRNGKey,
    q: MeanFieldState,
    apply_fn: Callable[[ArrayTree, Array], Array],
    inputs: Array,
    *,
    num_samples: int,
    chunk_size: Optional[int] = None,
) -> Array:
    """Bayesian model average of class probabilities, (1/S) sum_s softmax(f_{w_s}(x))."""
    return predictive_mean(
        rng_key,
        q,
        lambda w, x: jax.nn.softmax(apply_fn(w, x), axis=-1),
        inputs,
        num_samples=num_samples,
        chunk_size=chunk_size,
    )


def _check_probs_labels(probs, labels) -> None:
    if jnp.ndim(probs) < 1 or jnp.shape(labels) != jnp.shape(probs)[:-1]:
        raise ValueError(
            f"labels must have shape probs.shape[:-1]: probs {jnp.shape(probs)} (examples, classes) need labels "
            f"{jnp.shape(probs)[:-1]}, got {jnp.shape(labels)}"
        )


def accuracy(probs: Array, labels: Array) -> Array:
    """Fraction of examples whose most probable class is the label."""
    _check_probs_labels(probs, labels)
    return jnp.mean(jnp.argmax(probs, axis=-1) == labels)


def nll(probs: Array, labels: Array, *, eps: float = 1e-12) -> Array:
    """Mean negative log predictive probability of the labels (probabilities clipped at eps)."""
    _check_probs_labels(probs, labels)
    picked = jnp.take_along_axis(probs, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
    return -jnp.mean(jnp.log(jnp.maximum(picked, eps)))


def ece(probs: Array, labels: Array, *, num_bins: int = 15) -> Array:
    """Expected calibration error with equal-width confidence bins (Guo et al., 2017):

    ECE = sum_b (|B_b| / n) |accuracy(B_b) - confidence(B_b)|.
    """
    if not isinstance(num_bins, (int, np.integer)) or isinstance(num_bins, bool) or num_bins < 1:
        raise ValueError(f"num_bins must be a positive int, got {num_bins!r}")
    _check_probs_labels(probs, labels)
    confidence = jnp.max(probs, axis=-1)
    correct = (jnp.argmax(probs, axis=-1) == labels).astype(probs.dtype)
    bins = jnp.clip(jnp.ceil(confidence * num_bins).astype(jnp.int32) - 1, 0, num_bins - 1)
    conf_sum = jnp.zeros(num_bins).at[bins].add(confidence)
    correct_sum = jnp.zeros(num_bins).at[bins].add(correct)
    return jnp.sum(jnp.abs(correct_sum - conf_sum)) / probs.shape[0]


def mse(predictions: Array, targets: Array) -> Array:
    """Mean squared error of the predictive mean."""
    if jnp.ndim(predictions) == jnp.ndim(targets) + 1 and jnp.shape(predictions)[-1] == 1:
        predictions = predictions[..., 0]
    if jnp.shape(predictions) != jnp.shape(targets):
        raise ValueError(f"predictions {jnp.shape(predictions)} and targets {jnp.shape(targets)} differ in shape")
    return jnp.mean(jnp.square(predictions - targets))


def predictive_entropy(probs: Array, *, eps: float = 1e-12) -> Array:
    """H[p(y | x)] per example, for out-of-distribution scores."""
    return -jnp.sum(probs * jnp.log(jnp.maximum(probs, eps)), axis=-1)


def auroc(scores_negative: Array, scores_positive: Array) -> float:
    """Area under the ROC curve for telling positives (higher score) from negatives.

    Computed as the Mann-Whitney U statistic with ties counted as 1/2.
    """
    neg = np.asarray(scores_negative, dtype=np.float64).reshape(-1)
    pos = np.asarray(scores_positive, dtype=np.float64).reshape(-1)
    if neg.size == 0 or pos.size == 0:
        raise ValueError(f"auroc needs at least one negative and one positive score, got {neg.size} and {pos.size}")
    if not (np.all(np.isfinite(neg)) and np.all(np.isfinite(pos))):
        raise ValueError("auroc scores must be finite")
    allscores = np.concatenate([neg, pos])
    order = np.argsort(allscores, kind="mergesort")
    ranks = np.empty(len(allscores))
    sorted_scores = allscores[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    rank_pos = ranks[len(neg):].sum()
    u = rank_pos - len(pos) * (len(pos) + 1) / 2.0
    return float(u / (len(pos) * len(neg)))
