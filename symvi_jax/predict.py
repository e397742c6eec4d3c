"""Posterior predictive averages and the metrics reported on them.

The predictive of q and of q^G are the same: f_{g.w} = f_w, so sampling w ~ q^G (draw from q,
then permute) gives the same functions as w ~ q (PAPER.md, Section 4). Predictions therefore
average S models drawn from q:

    p(y | x) ~= (1/S) sum_s softmax(f_{w_s}(x))      (classification)
    E[y | x] ~= (1/S) sum_s f_{w_s}(x)               (regression)

Samples are drawn and evaluated ``chunk_size`` at a time under ``lax.scan`` so that S = 1000
fits in memory on any dataset size.

Regression with Gaussian noise of std sigma: the predictive is the mixture (1/S) sum_s
N(f_{w_s}(x), sigma^2), with mean m = (1/S) sum_s f_s and, by the law of total variance,

    v = (1/S) sum_s (f_s - m)^2 + sigma^2        (epistemic + aleatoric).

:func:`predictive_mean_and_std` returns (m, sqrt(v)); :func:`gaussian_nll`,
:func:`central_interval` and :func:`interval_coverage` use the moment-matched N(m, v).

Classification uncertainty (Houlsby et al., 2011; Depeweg et al., 2018): with p_s = softmax(f_s),

    H[p(y | x)] = I[y; w | x] + E_q H[p(y | x, w)]   (total = epistemic + aleatoric),

where I[y; w | x] is the predictive mutual information between the label and the weights (not
the orbit term I(g; w) of the symmetrized ELBO). See :func:`classification_uncertainty`.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from symvi_jax import _checks, meanfield
from symvi_jax.meanfield import MeanFieldState
from symvi_jax.types import Array, ArrayTree, PRNGKey

__all__ = [
    "local_predictive_probs",
    "predictive_mean",
    "predictive_probs",
    "accuracy",
    "nll",
    "ece",
    "mse",
    "predictive_entropy",
    "auroc",
    "predictive_mean_and_std",
    "gaussian_nll",
    "central_interval",
    "interval_coverage",
    "ClassificationUncertainty",
    "classification_uncertainty",
    "predictive_mutual_information",
    "ReliabilityBins",
    "reliability_bins",
    "reliability_diagram",
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
    """(1/S) sum_s fn(w_s, inputs) for w_s ~ q, accumulated ``chunk_size`` samples at a time.

    ``fn`` may return an array or a pytree of arrays (each leaf is averaged).
    """
    _checks.mean_field_state(q)
    _checks.positive_int(num_samples, "num_samples")
    chunk = num_samples if chunk_size is None else int(chunk_size)
    if chunk < 1 or num_samples % chunk:
        raise ValueError(f"chunk_size must be a positive divisor of num_samples ({num_samples}), got {chunk_size!r}")

    def body(total, key):
        samples = meanfield.sample(key, q, chunk)
        outputs = jax.vmap(lambda w: fn(w, inputs))(samples)
        return jax.tree.map(lambda t, o: t + jnp.sum(o, axis=0), total, outputs), None

    shapes = jax.eval_shape(lambda: fn(q.loc, inputs))
    total0 = jax.tree.map(lambda shape: jnp.zeros(shape.shape, shape.dtype), shapes)
    total, _ = jax.lax.scan(body, total0, jax.random.split(rng_key, num_samples // chunk))
    return jax.tree.map(lambda t: t / num_samples, total)


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


def _forward_rest(pre_activation, rest, names):
    h = pre_activation
    for name in names[1:]:
        h = jax.nn.relu(h)
        layer = rest[name]
        h = h @ layer["kernel"] + (layer["bias"] if "bias" in layer else 0.0)
    return h


def local_predictive_probs(rng_key, q, inputs, *, num_samples: int, chunk_size: int, layer_names):
    """(1/S) sum_s softmax(f(x; a_s, w_s)) with first-layer pre-activations drawn from their
    exact Gaussian marginal, a_s = x mu_0 + b_0 + sqrt(x^2 sigma_0^2 + sigma_b^2) * eps_s, and the
    later layers w_s ~ q. ``chunk_size`` draws are evaluated at a time.

    For a ReLU ``MLP`` whose Dense layers are named ``layer_names`` in order. The first layer's
    pre-activations of an example are Gaussian under q, so each draw needs one standard-normal
    vector per hidden unit (shared by all examples) instead of an (inputs x width) weight draw and
    a matrix product. Every example's p(y | x) has exactly the distribution it has under
    :func:`predictive_probs`; only the correlation of Monte Carlo noise between examples differs.
    """
    _checks.mean_field_state(q)
    first = layer_names[0]
    sigma = meanfield.scale(q)
    loc0, scale0 = q.loc[first], sigma[first]
    mean = inputs @ loc0["kernel"] + loc0.get("bias", 0.0)
    var = jnp.square(inputs) @ jnp.square(scale0["kernel"])
    if "bias" in scale0:
        var = var + jnp.square(scale0["bias"])
    std = jnp.sqrt(var)
    rest_q = meanfield.MeanFieldState(
        {n: q.loc[n] for n in layer_names[1:]}, {n: q.raw_scale[n] for n in layer_names[1:]}
    )

    def body(total, key):
        key_eps, key_rest = jax.random.split(key)
        eps = meanfield.standard_normal(key_eps, (chunk_size, mean.shape[1]), dtype=mean.dtype)
        rest = meanfield.sample(key_rest, rest_q, chunk_size)

        def one(eps_s, rest_s):
            return jax.nn.softmax(_forward_rest(mean + std * eps_s, rest_s, layer_names), axis=-1)

        return total + jnp.sum(jax.vmap(one)(eps, rest), axis=0), None

    num_outputs = q.loc[layer_names[-1]]["kernel"].shape[1]
    total0 = jnp.zeros((inputs.shape[0], num_outputs), mean.dtype)
    total, _ = jax.lax.scan(body, total0, jax.random.split(rng_key, num_samples // chunk_size))
    return total / num_samples


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

    The bins are those of :func:`reliability_bins` (and of :func:`reliability_diagram`).
    """
    bins = reliability_bins(probs, labels, num_bins=num_bins)
    return jnp.sum(jnp.abs(bins.correct_sum - bins.confidence_sum)) / probs.shape[0]


class ReliabilityBins(NamedTuple):
    """Per-bin sums over equal-width confidence bins ``((b - 1)/B, b/B]`` (the first includes 0).

    ``confidence_sum / count`` is a bin's mean confidence, ``correct_sum / count`` its accuracy.
    """

    edges: Array
    count: Array
    confidence_sum: Array
    correct_sum: Array


def reliability_bins(probs: Array, labels: Array, *, num_bins: int = 15) -> ReliabilityBins:
    """Bin examples by their confidence max_c p(c | x) into ``num_bins`` equal-width bins."""
    _checks.positive_int(num_bins, "num_bins")
    _check_probs_labels(probs, labels)
    confidence = jnp.max(probs, axis=-1)
    correct = (jnp.argmax(probs, axis=-1) == labels).astype(probs.dtype)
    bins = jnp.clip(jnp.ceil(confidence * num_bins).astype(jnp.int32) - 1, 0, num_bins - 1)
    count = jnp.zeros(num_bins, jnp.int32).at[bins].add(1)
    conf_sum = jnp.zeros(num_bins).at[bins].add(confidence)
    correct_sum = jnp.zeros(num_bins).at[bins].add(correct)
    return ReliabilityBins(jnp.linspace(0.0, 1.0, num_bins + 1), count, conf_sum, correct_sum)


def reliability_diagram(probs: Array, labels: Array, *, num_bins: int = 15, ax=None, title: Optional[str] = None):
    """Draw a reliability diagram: accuracy against mean confidence per bin, with the ECE.

    Bars show each non-empty bin's accuracy, the diagonal is perfect calibration, and the gap
    to it is shaded. matplotlib is imported only here. Without ``ax`` a new
    ``matplotlib.figure.Figure`` is made (no pyplot, so the global backend is left alone; save
    it with ``fig.savefig(path)``).

    Returns:
      The figure drawn into.
    """
    bins = jax.device_get(reliability_bins(probs, labels, num_bins=num_bins))
    error = float(ece(probs, labels, num_bins=num_bins))
    from symvi_jax import _optional

    Figure = _optional.require("matplotlib.figure", extra="plots", feature="reliability_diagram").Figure
    if ax is None:
        fig = Figure(figsize=(4, 4))
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    edges = np.asarray(bins.edges)
    width = edges[1] - edges[0]
    filled = np.asarray(bins.count) > 0
    count = np.maximum(np.asarray(bins.count), 1)
    accuracy_per_bin = np.asarray(bins.correct_sum) / count
    confidence_per_bin = np.asarray(bins.confidence_sum) / count
    left = edges[:-1][filled]
    ax.bar(left, accuracy_per_bin[filled], width=width, align="edge", edgecolor="black", label="accuracy")
    ax.bar(left, confidence_per_bin[filled] - accuracy_per_bin[filled], bottom=accuracy_per_bin[filled],
           width=width, align="edge", color="red", alpha=0.3, label="gap to confidence")
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="calibrated")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(title if title is not None else f"ECE = {error:.3f}")
    ax.legend(loc="upper left")
    return fig


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


# ---- regression: predictive mean and std, Gaussian NLL, central intervals ---------------------------


def _check_scale(value, name: str, *, allow_zero: bool) -> float:
    """A finite number (a Python or NumPy scalar, or a concrete 0-d array such as a learned noise std)."""
    if isinstance(value, (jax.Array, np.ndarray)) and not isinstance(value, jax.core.Tracer) and value.ndim == 0 and (
        jnp.issubdtype(value.dtype, jnp.floating) or jnp.issubdtype(value.dtype, jnp.integer)
    ):
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if not np.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be finite and {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


def predictive_mean_and_std(
    rng_key: PRNGKey,
    q: MeanFieldState,
    apply_fn: Callable[[ArrayTree, Array], Array],
    inputs: Array,
    *,
    num_samples: int,
    noise_std: float = 0.0,
    chunk_size: Optional[int] = None,
) -> tuple[Array, Array]:
    """Mean m and std sqrt(v) of the regression predictive (see the module docstring).

    Args:
      noise_std: sigma, the likelihood's noise std (``1 / sqrt(noise_precision)`` for
        ``likelihoods.gaussian``; with a learned one,
        ``vi.hyperparameters(state)["noise_precision"] ** -0.5``); 0 gives the epistemic spread
        of f alone.

    The second moment is accumulated about the mean network f_mu (v = E[d^2] - E[d]^2 with
    d = f_s - f_mu), which avoids the cancellation of E[f^2] - E[f]^2 when |m| >> std.
    """
    noise_std = _check_scale(noise_std, "noise_std", allow_zero=True)
    _checks.mean_field_state(q)
    center = apply_fn(q.loc, inputs)

    def moments(w, x):
        d = apply_fn(w, x) - center
        return d, jnp.square(d)

    mean_d, mean_d2 = predictive_mean(rng_key, q, moments, inputs, num_samples=num_samples, chunk_size=chunk_size)
    variance = jnp.maximum(mean_d2 - jnp.square(mean_d), 0.0) + noise_std**2
    return center + mean_d, jnp.sqrt(variance)


def _match(values: Array, targets: Array, name: str) -> Array:
    """Targets shaped like ``values``; ``(M,)`` targets are accepted for ``(M, 1)`` values."""
    if jnp.ndim(values) == jnp.ndim(targets) + 1 and jnp.shape(values)[-1] == 1:
        targets = jnp.asarray(targets)[..., None]
    if jnp.shape(values) != jnp.shape(targets):
        raise ValueError(f"{name} {jnp.shape(values)} and targets {jnp.shape(targets)} differ in shape")
    return targets


def gaussian_nll(mean: Array, std: Array, targets: Array) -> Array:
    """Mean over examples of -log N(y; m, s^2) = 1/2 log(2 pi s^2) + (y - m)^2 / (2 s^2),
    summed over output dimensions (the moment-matched Gaussian predictive)."""
    if jnp.shape(mean) != jnp.shape(std):
        raise ValueError(f"mean {jnp.shape(mean)} and std {jnp.shape(std)} differ in shape")
    if jnp.ndim(mean) < 1:
        raise ValueError(f"mean needs a leading example axis, got shape {jnp.shape(mean)}")
    targets = _match(mean, targets, "mean")
    per_dim = 0.5 * jnp.log(2 * math.pi * jnp.square(std)) + 0.5 * jnp.square((targets - mean) / std)
    return jnp.mean(jnp.sum(per_dim.reshape(per_dim.shape[0], -1), axis=-1))


def central_interval(mean: Array, std: Array, *, level: float = 0.95) -> tuple[Array, Array]:
    """The central ``level`` interval of N(m, s^2): m -+ z s with z = Phi^{-1}((1 + level) / 2)."""
    if isinstance(level, (bool, np.bool_)) or not isinstance(level, (int, float, np.floating)) or not 0 < level < 1:
        raise ValueError(f"level must be a number in (0, 1), got {level!r}")
    if jnp.shape(mean) != jnp.shape(std):
        raise ValueError(f"mean {jnp.shape(mean)} and std {jnp.shape(std)} differ in shape")
    z = float(jax.scipy.special.ndtri(np.float64((1 + level) / 2)))
    return mean - z * std, mean + z * std


def interval_coverage(lower: Array, upper: Array, targets: Array) -> Array:
    """Fraction of targets inside their interval [lower, upper] (over examples and outputs).

    For calibrated intervals at level l it is close to l; far below l means overconfidence.
    """
    if jnp.shape(lower) != jnp.shape(upper):
        raise ValueError(f"lower {jnp.shape(lower)} and upper {jnp.shape(upper)} differ in shape")
    targets = _match(lower, targets, "lower")
    return jnp.mean((targets >= lower) & (targets <= upper))


# ---- classification: total, aleatoric and epistemic uncertainty -------------------------------------


class ClassificationUncertainty(NamedTuple):
    """Per-example uncertainties of the predictive (see the module docstring).

    Fields:
      probs: the predictive (1/S) sum_s p_s, shape (examples, classes).
      entropy: H[(1/S) sum_s p_s], total uncertainty.
      expected_entropy: (1/S) sum_s H[p_s], aleatoric.
      mutual_information: entropy - expected_entropy = I[y; w | x] >= 0, epistemic (clipped at 0
        against rounding).
    """

    probs: Array
    entropy: Array
    expected_entropy: Array
    mutual_information: Array


def classification_uncertainty(
    rng_key: PRNGKey,
    q: MeanFieldState,
    apply_fn: Callable[[ArrayTree, Array], Array],
    inputs: Array,
    *,
    num_samples: int,
    chunk_size: Optional[int] = None,
) -> ClassificationUncertainty:
    """Predictive probabilities with their entropy split into aleatoric and epistemic parts."""

    def probs_and_entropy(w, x):
        log_p = jax.nn.log_softmax(apply_fn(w, x), axis=-1)
        p = jnp.exp(log_p)
        return p, -jnp.sum(p * log_p, axis=-1)

    probs, expected_entropy = predictive_mean(rng_key, q, probs_and_entropy, inputs, num_samples=num_samples,
                                              chunk_size=chunk_size)
    entropy = predictive_entropy(probs)
    return ClassificationUncertainty(probs, entropy, expected_entropy, jnp.maximum(entropy - expected_entropy, 0.0))


def predictive_mutual_information(
    rng_key: PRNGKey,
    q: MeanFieldState,
    apply_fn: Callable[[ArrayTree, Array], Array],
    inputs: Array,
    *,
    num_samples: int,
    chunk_size: Optional[int] = None,
) -> Array:
    """I[y; w | x] per example (BALD's score): the epistemic part of :func:`classification_uncertainty`."""
    return classification_uncertainty(rng_key, q, apply_fn, inputs, num_samples=num_samples,
                                      chunk_size=chunk_size).mutual_information
