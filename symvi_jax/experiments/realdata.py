"""Real data, offline: MFVI and symmetrized VI against NumPyro's SVI (AutoNormal) on scikit-learn's data sets.

scikit-learn ships three small real data sets inside its wheel, so nothing is downloaded:

* ``diabetes``: regression, 442 patients, 10 inputs (Gaussian likelihood);
* ``breast_cancer``: binary, 569 tumours, 30 inputs (Bernoulli likelihood, one logit);
* ``digits``: 8x8 images, 1797 digits, 64 inputs, 10 classes (categorical likelihood).

Every method sees the same ``num_splits`` random train/test splits (``test_fraction`` held out),
inputs standardised with the training split's mean and std (constant columns are only centred),
regression targets standardised likewise, the same network (``MLP(hidden + (outputs,),
activation=tanh)``), the same prior N(0, s^2 I), the same likelihood, the same initial q
(the flax initialisation as the means, ``init_scale`` as every std), the same Adam optimiser and
the same number of full-batch steps with S weight draws each:

* ``mfvi``: ``vi.build(objective="elbo")``;
* ``symvi``: ``vi.build(objective="symmetrized_elbo")`` with ``PermutationGroup.from_params`` and
  the InfoNCE estimator over K permutations;
* ``symvi_importance``: the same with ``estimator="importance"`` (the Sinkhorn proposal);
* ``numpyro``: ``numpyro.infer.SVI`` with an ``AutoNormal`` guide and ``TraceMeanField_ELBO``
  (the closed-form KL, as in ``objectives.elbo``) on the same network written as a NumPyro model.

AutoNormal's guide is itself a mean-field Gaussian, so its fitted (loc, scale) is turned into a
``meanfield.MeanFieldState`` and evaluated by the same ``symvi_jax.predict`` calls, with the same
keys and the same number of predictive draws, as the symvi-jax methods. Test metrics: RMSE and
NLL in the original units of the target and the coverage of the central 50/90/95% predictive
intervals (regression); NLL, ECE (15 bins) and accuracy (classification). Wall time is per split:
the compiled training program, median over splits; the compile time of the training program
plus, for NumPyro, the eager ``svi.init`` of every split (slow on the first) is reported apart.

Regression noise: with ``learn_noise`` (the default) the noise precision tau is a point estimate
trained with q by the same optimiser on the same objective (type-II maximum likelihood), starting
at 1 / ``noise_std``^2 in every method: ``likelihoods.gaussian(..., learn_noise=True)`` (tau =
exp(hyper["log_noise_precision"])) in symvi-jax, ``numpyro.param("noise_precision",
constraint=positive)`` (also tau = exp(an unconstrained leaf)) in NumPyro. With
``learn_noise=False`` every method uses the fixed noise std ``noise_std`` (standardised target units).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from symvi_jax import _optional, diagnostics, likelihoods, meanfield, predict, vi
from symvi_jax.experiments import stats
from symvi_jax.experiments.base import Result
from symvi_jax.nets import MLP
from symvi_jax.symmetry import PermutationGroup
from symvi_jax.types import Array, ArrayTree, PRNGKey

__all__ = ["Config", "DATASETS", "METHODS", "METRICS", "Split", "load", "split_indices", "standardize", "prepare",
           "problem", "train_symvi", "numpyro_model", "numpyro_to_meanfield", "train_numpyro", "predictive", "metrics",
           "markdown", "run"]

#: name -> (task, loader name in ``sklearn.datasets``)
DATASETS = {
    "diabetes": ("regression", "load_diabetes"),
    "breast_cancer": ("binary", "load_breast_cancer"),
    "digits": ("categorical", "load_digits"),
}
METHODS = ("mfvi", "symvi", "symvi_importance", "numpyro")
INTERVAL_LEVELS = (0.5, 0.9, 0.95)
#: the metrics of each task: (key, label, which direction is better)
METRICS = {
    "regression": [("rmse", "RMSE", "lower"), ("nll", "NLL", "lower"), ("coverage_50", "cover 50%", "0.50"),
                   ("coverage_90", "cover 90%", "0.90"), ("coverage_95", "cover 95%", "0.95")],
    "binary": [("nll", "NLL", "lower"), ("ece", "ECE", "lower"), ("accuracy", "accuracy", "higher")],
    "categorical": [("nll", "NLL", "lower"), ("ece", "ECE", "lower"), ("accuracy", "accuracy", "higher")],
}


@dataclasses.dataclass(frozen=True)
class Config:
    datasets: tuple[str, ...] = tuple(DATASETS)
    methods: tuple[str, ...] = METHODS
    num_splits: int = 10
    test_fraction: float = 0.1
    hidden: tuple[int, ...] = (50,)
    prior_scale: float = 1.0
    noise_std: float = 0.7          # regression noise std (learn_noise: its initial value), standardised units
    learn_noise: bool = True        # regression: learn the noise precision alongside q (every method)
    init_scale: float = 0.01        # initial std of every weight in q (all methods)
    learning_rate: float = 0.01
    num_steps: int = 2000           # full-batch Adam steps
    num_samples: int = 1            # S, weight draws per step
    num_permutations: int = 20      # K of the symmetrized objectives
    num_eval_samples: int = 500     # predictive draws
    eval_chunk_size: int = 100
    seed: int = 0

    def validate(self):
        check_datasets(self.datasets, "datasets")
        methods = self.methods
        if not methods or any(m not in METHODS for m in methods) or len(set(methods)) != len(methods):
            raise ValueError(f"config key 'methods' must be distinct names among {METHODS}, got {self.methods!r}")
        check_test_fraction(self.test_fraction, "test_fraction")
        for key in ("prior_scale", "noise_std", "init_scale", "learning_rate"):
            value = getattr(self, key)
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"config key {key!r} must be a finite number > 0, got {value}")
        for key in ("num_splits", "num_steps", "num_samples", "num_eval_samples", "eval_chunk_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"config key {key!r} must be >= 1, got {getattr(self, key)}")
        if self.num_permutations < 2:
            raise ValueError(f"config key 'num_permutations' must be >= 2 (K includes the identity), "
                             f"got {self.num_permutations}")
        if not self.hidden or any(h < 2 for h in self.hidden):
            raise ValueError(f"config key 'hidden' must be one or more widths >= 2 (a width-1 layer has no "
                             f"permutation symmetry), got {self.hidden!r}")
        if self.num_eval_samples % self.eval_chunk_size:
            raise ValueError(f"config key 'eval_chunk_size' ({self.eval_chunk_size}) must divide "
                             f"'num_eval_samples' ({self.num_eval_samples})")


# ---- data ------------------------------------------------------------------------------------------


def check_datasets(names, argument: str = "dataset") -> None:
    names = (names,) if isinstance(names, str) else names
    bad = [n for n in names if n not in DATASETS] if isinstance(names, (tuple, list)) else [names]
    if not names or bad:
        raise ValueError(f"{argument} must be among {sorted(DATASETS)}, got {names!r}")


def check_test_fraction(test_fraction, argument: str = "test_fraction") -> float:
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float, np.floating)) \
            or not 0 < test_fraction < 1:
        raise ValueError(f"{argument} must be a number in (0, 1), got {test_fraction!r}")
    return float(test_fraction)


def load(name: str) -> tuple[np.ndarray, np.ndarray, str]:
    """``(inputs float32 [N, D], targets, task)`` of a scikit-learn data set (from its wheel, offline).

    Targets are float32 for regression, int32 in {0, 1} for binary and in [0, 10) for digits.
    """
    check_datasets(name, "dataset")
    task, loader = DATASETS[name]
    datasets = _optional.require("sklearn.datasets", extra="realdata", feature="symvi-jax realdata")
    inputs, targets = getattr(datasets, loader)(return_X_y=True)
    inputs = np.asarray(inputs, dtype=np.float32)
    targets = np.asarray(targets, dtype=np.float32 if task == "regression" else np.int32)
    return inputs, targets, task


def split_indices(rng_key: PRNGKey, num_examples: int, *, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """A random split: ``(train, test)`` index arrays, disjoint, covering 0..N-1, the test part
    ``round(test_fraction * N)`` long (at least one example on either side)."""
    test_fraction = check_test_fraction(test_fraction)
    if isinstance(num_examples, bool) or not isinstance(num_examples, (int, np.integer)) or num_examples < 2:
        raise ValueError(f"num_examples must be an int >= 2, got {num_examples!r}")
    num_test = int(round(test_fraction * num_examples))
    if not 0 < num_test < num_examples:
        raise ValueError(f"test_fraction={test_fraction} of {num_examples} examples leaves an empty "
                         f"{'test' if num_test == 0 else 'training'} split")
    order = np.asarray(jax.random.permutation(rng_key, num_examples))
    return np.sort(order[num_test:]), np.sort(order[:num_test])


def standardize(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train - m) / s and (test - m) / s with m, s the training columns' mean and std (s = 1 for a
    constant training column). Returns the two arrays, m and s."""
    train, test = np.asarray(train, np.float64), np.asarray(test, np.float64)
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return ((train - mean) / std).astype(np.float32), ((test - mean) / std).astype(np.float32), mean, std


class Split(NamedTuple):
    """One standardised train/test split; ``y_mean``/``y_std`` undo the target standardisation
    (0 and 1 for classification)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    y_mean: float
    y_std: float


def prepare(inputs, targets, task: str, train_index, test_index) -> Split:
    x_train, x_test, _, _ = standardize(inputs[train_index], inputs[test_index])
    y_train, y_test = targets[train_index], targets[test_index]
    if task == "regression":
        y_train, y_test, y_mean, y_std = standardize(y_train, y_test)
        return Split(x_train, y_train, x_test, y_test, float(y_mean), float(y_std))
    return Split(x_train, y_train, x_test, y_test, 0.0, 1.0)


# ---- the model, the same for every method ------------------------------------------------------------


class Problem(NamedTuple):
    task: str
    apply_fn: Any
    loglikelihood_fn: Any
    params: ArrayTree          # the flax initialisation, q's initial means in every method
    num_outputs: int


def problem(rng_key: PRNGKey, task: str, num_inputs: int, config: Config) -> Problem:
    num_outputs = 10 if task == "categorical" else 1
    model = MLP(features=tuple(config.hidden) + (num_outputs,), activation=jnp.tanh)
    params = model.init(rng_key, jnp.zeros((1, num_inputs)))["params"]

    def apply_fn(p, x):
        return model.apply({"params": p}, x)

    if task == "regression":
        loglik = likelihoods.gaussian(apply_fn, noise_precision=1.0 / config.noise_std**2,
                                      learn_noise=config.learn_noise)
    elif task == "binary":
        loglik = likelihoods.bernoulli(apply_fn)
    else:
        loglik = likelihoods.categorical(apply_fn)
    return Problem(task, apply_fn, loglik, params, num_outputs)


def _algorithm(prob: Problem, method: str, config: Config, num_train: int) -> vi.VIAlgorithm:
    kwargs = {}
    if method in ("symvi", "symvi_importance"):
        kwargs = dict(objective="symmetrized_elbo", group=PermutationGroup.from_params(prob.params),
                      num_permutations=config.num_permutations,
                      estimator="importance" if method == "symvi_importance" else "infonce")
    return vi.build(prob.loglikelihood_fn, optax.adam(config.learning_rate), data_size=num_train,
                    num_samples=config.num_samples, prior_scale=config.prior_scale, init_scale=config.init_scale,
                    **kwargs)


def train_symvi(rng_key: PRNGKey, algorithm: vi.VIAlgorithm, params: ArrayTree, batch, *, num_steps: int):
    """``num_steps`` full-batch steps of ``algorithm`` from q = N(params, init_scale^2):
    (q, the learned hyperparameters ``vi.hyperparameters(state)``, the info trace)."""
    state = algorithm.init(params)

    def body(state, key):
        return algorithm.step(key, state, batch)

    state, info = jax.lax.scan(body, state, jax.random.split(rng_key, num_steps))
    return state.q, vi.hyperparameters(state), info


def numpyro_model(prob: Problem, *, prior_scale: float, noise_std: float, learn_noise: bool = False):
    """The same network, prior and likelihood as a NumPyro model ``model(x, y=None)``.

    Each leaf of the params tree is a sample site named by its path (``Dense_0/kernel``) with an
    N(0, prior_scale^2) prior; the network is ``prob.apply_fn`` on the sampled tree. Regression
    noise: std ``noise_std``, or with ``learn_noise`` the precision ``numpyro.param("noise_precision",
    1 / noise_std^2, constraint=positive)``.
    """
    numpyro = _optional.require("numpyro", extra="compare", feature="the NumPyro comparison")
    dist = numpyro.distributions
    flat = traverse_util.flatten_dict(prob.params, sep="/")

    def model(x, y=None):
        sampled = {name: numpyro.sample(name, dist.Normal(0.0, prior_scale).expand(leaf.shape).to_event(leaf.ndim))
                   for name, leaf in flat.items()}
        outputs = prob.apply_fn(traverse_util.unflatten_dict(sampled, sep="/"), x)
        with numpyro.plate("data", x.shape[0]):
            if prob.task == "regression":
                scale = noise_std
                if learn_noise:
                    precision = numpyro.param("noise_precision", 1.0 / noise_std**2,
                                              constraint=dist.constraints.positive)
                    scale = jax.lax.rsqrt(precision)
                numpyro.sample("y", dist.Normal(outputs[:, 0], scale), obs=y)
            elif prob.task == "binary":
                numpyro.sample("y", dist.Bernoulli(logits=outputs[:, 0]), obs=y)
            else:
                numpyro.sample("y", dist.Categorical(logits=outputs), obs=y)

    return model


def _numpyro_svi(prob: Problem, config: Config):
    numpyro = _optional.require("numpyro", extra="compare", feature="the NumPyro comparison")
    from numpyro.infer import SVI, TraceMeanField_ELBO, autoguide, init_to_value

    model = numpyro_model(prob, prior_scale=config.prior_scale, noise_std=config.noise_std,
                          learn_noise=config.learn_noise and prob.task == "regression")
    init_values = traverse_util.flatten_dict(prob.params, sep="/")
    guide = autoguide.AutoNormal(model, init_loc_fn=init_to_value(values=init_values), init_scale=config.init_scale)
    del numpyro
    return SVI(model, guide, optax.adam(config.learning_rate), TraceMeanField_ELBO(num_particles=config.num_samples))


def numpyro_to_meanfield(prob: Problem, numpyro_params: dict) -> meanfield.MeanFieldState:
    """AutoNormal's fitted ``{site}_auto_loc`` / ``{site}_auto_scale`` as a ``MeanFieldState``
    (every site is real-valued, so the guide's unconstrained loc is the weight's mean)."""
    names = traverse_util.flatten_dict(prob.params, sep="/")
    loc = {n: numpyro_params[f"{n}_auto_loc"] for n in names}
    scale = {n: numpyro_params[f"{n}_auto_scale"] for n in names}
    return meanfield.MeanFieldState(
        loc=traverse_util.unflatten_dict(loc, sep="/"),
        raw_scale=traverse_util.unflatten_dict({n: meanfield.inverse_softplus_scale(s) for n, s in scale.items()},
                                               sep="/"),
    )


def train_numpyro(svi, svi_state, batch, *, num_steps: int):
    """``num_steps`` ``svi.update`` steps under ``lax.scan``: (final svi state, losses). The random
    stream is the one ``svi.init(rng_key, ...)`` put in ``svi_state``."""
    x, y = batch

    def body(state, _):
        return svi.update(state, x, y)

    return jax.lax.scan(body, svi_state, None, length=num_steps)


# ---- evaluation: the same predict calls for every method ----------------------------------------------


def predictive(rng_key: PRNGKey, q: meanfield.MeanFieldState, prob: Problem, inputs: Array, *, num_samples: int,
               chunk_size: int):
    """The predictive of q on ``inputs``: ``(mean, epistemic std)`` of f (regression, standardised
    units; :func:`metrics` adds the noise) or class probabilities ``[M, C]`` (classification; two
    columns for binary). Jit-able."""
    if prob.task == "regression":
        return predict.predictive_mean_and_std(rng_key, q, prob.apply_fn, inputs, num_samples=num_samples,
                                               noise_std=0.0, chunk_size=chunk_size)
    if prob.task == "binary":
        p = predict.predictive_mean(rng_key, q, lambda w, x: jax.nn.sigmoid(prob.apply_fn(w, x)), inputs,
                                    num_samples=num_samples, chunk_size=chunk_size)
        return jnp.concatenate([1.0 - p, p], axis=-1)
    return predict.predictive_probs(rng_key, q, prob.apply_fn, inputs, num_samples=num_samples, chunk_size=chunk_size)


def metrics(task: str, predictive_values, split: Split, *, noise_std: float = 0.0) -> dict:
    """Test metrics of a predictive from :func:`predictive` (see the module docstring); regression
    metrics in the target's original units, for the predictive N(m, v + noise_std^2) with v the
    epistemic variance (``predict.predictive_mean_and_std``'s law of total variance; its
    ``noise_std`` is a Python float, so a learned one is added here). Eager
    (``predict.central_interval`` is not jit-able)."""
    y = jnp.asarray(split.y_test)
    if task == "regression":
        mean, epistemic_std = predictive_values
        std = jnp.sqrt(jnp.square(epistemic_std) + noise_std**2)
        mean, std = mean[:, 0] * split.y_std + split.y_mean, std[:, 0] * split.y_std
        y = y * split.y_std + split.y_mean
        out = dict(rmse=jnp.sqrt(predict.mse(mean, y)), nll=predict.gaussian_nll(mean, std, y))
        for level in INTERVAL_LEVELS:
            lower, upper = predict.central_interval(mean, std, level=level)
            out[f"coverage_{round(100 * level)}"] = predict.interval_coverage(lower, upper, y)
    else:
        probs = predictive_values
        out = dict(nll=predict.nll(probs, y), ece=predict.ece(probs, y), accuracy=predict.accuracy(probs, y))
    return {k: float(v) for k, v in out.items()}


# ---- the experiment -------------------------------------------------------------------------------------


def _timed(fn, *args):
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - start


def run_dataset(name: str, config: Config) -> list[dict]:
    """Every method on every split of one data set: one row per (method, split)."""
    inputs, targets, task = load(name)
    key = jax.random.fold_in(jax.random.key(config.seed), list(DATASETS).index(name))
    key_splits, key_init, key_train, key_eval = jax.random.split(key, 4)
    prob = problem(key_init, task, inputs.shape[1], config)
    group = PermutationGroup.from_params(prob.params)
    num_test = int(round(config.test_fraction * len(inputs)))
    num_train = len(inputs) - num_test
    rows = []
    compiled = {}
    for i in range(config.num_splits):
        train_index, test_index = split_indices(jax.random.fold_in(key_splits, i), len(inputs),
                                                test_fraction=config.test_fraction)
        split = prepare(inputs, targets, task, train_index, test_index)
        batch = (jnp.asarray(split.x_train), jnp.asarray(split.y_train))
        # the same training and evaluation keys for every method on a split
        key_fit, key_pred = jax.random.fold_in(key_train, i), jax.random.fold_in(key_eval, i)
        eval_fn = compiled.setdefault("eval", jax.jit(lambda k, q, x: predictive(
            k, q, prob, x, num_samples=config.num_eval_samples, chunk_size=config.eval_chunk_size)))
        for method in config.methods:
            row = dict(dataset=name, task=task, method=method, split=i, num_train=num_train, num_test=num_test)
            if method == "numpyro":
                svi = compiled.get("svi") or compiled.setdefault("svi", _numpyro_svi(prob, config))
                start = time.perf_counter()
                svi_state = svi.init(key_fit, *batch)  # eager; slow on the first split only
                row["setup_seconds"] = time.perf_counter() - start
                fit = compiled.get(method)
                if fit is None:
                    start = time.perf_counter()
                    fit = jax.jit(lambda s, b: train_numpyro(svi, s, b, num_steps=config.num_steps)).lower(
                        svi_state, batch).compile()
                    row["compile_seconds"] = time.perf_counter() - start
                    compiled[method] = fit
                (svi_state, losses), seconds = _timed(fit, svi_state, batch)
                numpyro_params = svi.get_params(svi_state)
                q = numpyro_to_meanfield(prob, numpyro_params)
                hyper = {k: v for k, v in numpyro_params.items() if k == "noise_precision"}
                row["final_loss"] = float(np.mean(np.asarray(losses[-100:])))
            else:
                algorithm = _algorithm(prob, method, config, num_train)
                fit = compiled.get(method)
                if fit is None:
                    start = time.perf_counter()
                    fit = jax.jit(lambda k, p, b, a=algorithm: train_symvi(k, a, p, b, num_steps=config.num_steps)
                                  ).lower(key_fit, prob.params, batch).compile()
                    row["compile_seconds"] = time.perf_counter() - start
                    compiled[method] = fit
                (q, hyper, info), seconds = _timed(fit, key_fit, prob.params, batch)
                row["final_loss"] = float(-np.mean(np.asarray(info.objective[-100:])))
                if method != "mfvi":  # the estimate of I(g; w) (nats) over the last 100 steps
                    row["mutual_information"] = float(np.mean(np.asarray(info.mutual_information[-100:])))
                    row["log_group_order"] = float(info.log_group_order[-1])
            noise_std = 0.0
            if task == "regression":
                noise_std = float(jax.lax.rsqrt(hyper["noise_precision"])) if config.learn_noise else config.noise_std
                row["noise_std"] = noise_std * split.y_std  # original units
                row["y_std"] = split.y_std
            row["collapsed_units"] = sum(diagnostics.collapsed_units(q, group, config.prior_scale))
            values, eval_seconds = _timed(eval_fn, key_pred, q, jnp.asarray(split.x_test))
            row.update(metrics(task, values, split, noise_std=noise_std))
            row["train_seconds"] = seconds
            row["eval_seconds"] = eval_seconds
            rows.append(row)
    return rows


def _mean_se(values) -> tuple[float, float]:
    values = np.asarray(values, dtype=np.float64)
    se = values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return float(values.mean()), float(se)


LABELS = {"mfvi": "MFVI (symvi-jax)", "symvi": "symmetrized, InfoNCE (symvi-jax)",
          "symvi_importance": "symmetrized, importance (symvi-jax)", "numpyro": "NumPyro SVI, AutoNormal"}


def table(rows: list[dict], name: str, methods) -> list[str]:
    """The markdown table of one data set: mean +- s.e. over splits for each metric and method."""
    task = DATASETS[name][0]
    metrics = METRICS[task] + ([("noise_std", "noise std", "")] if task == "regression" else []) + [
        ("collapsed_units", "collapsed units", ""), ("train_seconds", "train s / split (median)", ""),
        ("compile_seconds", "compile + setup s", "")]
    lines = ["| method | " + " | ".join(label for _, label, _ in metrics) + " |",
             "| --- |" + " --- |" * len(metrics)]
    for method in methods:
        mine = [r for r in rows if r["dataset"] == name and r["method"] == method]
        if not mine:
            continue
        cells = []
        for key, _, _ in metrics:
            if key == "train_seconds":
                cells.append(f"{np.median([r[key] for r in mine]):.2f}")
            elif key == "compile_seconds":
                cells.append(f"{sum(r.get(key, 0.0) + r.get('setup_seconds', 0.0) for r in mine):.1f}")
            else:
                mean, se = _mean_se([r[key] for r in mine])
                cells.append(f"{mean:.4g} +- {se:.2g}")
        lines.append(f"| {LABELS[method]} | " + " | ".join(cells) + " |")
    return lines


def paired_table(rows: list[dict], name: str, methods) -> list[str]:
    """Each method minus MFVI, paired by split: mean difference with its 95% t-interval."""
    task = DATASETS[name][0]
    keys = [m for m in METRICS[task] if m[0] in ("rmse", "nll", "coverage_90", "ece", "accuracy")]
    if "mfvi" not in methods:
        return []
    base = sorted((r for r in rows if r["dataset"] == name and r["method"] == "mfvi"), key=lambda r: r["split"])
    lines = ["| method - MFVI (paired by split) | " + " | ".join(label for _, label, _ in keys) + " |",
             "| --- |" + " --- |" * len(keys)]
    for method in methods:
        mine = sorted((r for r in rows if r["dataset"] == name and r["method"] == method), key=lambda r: r["split"])
        if method == "mfvi" or not mine:
            continue
        cells = []
        for key, _, _ in keys:
            mean, low, high = stats.paired_ci([r[key] for r in base], [r[key] for r in mine])
            cells.append(f"{mean:+.3g} [{low:+.3g}, {high:+.3g}]")
        lines.append(f"| {LABELS[method]} | " + " | ".join(cells) + " |")
    return lines


def markdown(config: Config, rows: list[dict]) -> str:
    """The results page of :func:`run` from its rows."""
    lines = [
        "# Real data (scikit-learn, offline): MFVI and symmetrized VI against NumPyro SVI (AutoNormal)",
        "",
        f"{config.num_splits} random splits ({round(100 * (1 - config.test_fraction))}/"
        f"{round(100 * config.test_fraction)} train/test), mean +- standard error over splits. Network "
        f"MLP{tuple(config.hidden) + ('out',)} with tanh, prior N(0, {config.prior_scale}^2), "
        f"{config.num_steps} full-batch Adam steps (lr {config.learning_rate}), S = {config.num_samples}, "
        f"initial std {config.init_scale}, K = {config.num_permutations}, {config.num_eval_samples} predictive "
        f"draws. Regression: "
        + (f"noise precision learned with q in every method from std {config.noise_std}"
           if config.learn_noise else f"fixed noise std {config.noise_std}")
        + " (standardised units); RMSE, NLL and the noise std in the target's original units. Collapsed units: "
        "hidden units whose KL(q_unit || prior) < 1 nat (``diagnostics.collapsed_units``).",
    ]
    for name in config.datasets:
        task = DATASETS[name][0]
        lines += ["", f"## {name} ({task})", ""] + table(rows, name, config.methods)
        paired = paired_table(rows, name, config.methods)
        if paired:
            lines += [""] + paired
        for method, ceiling in (("symvi", "log K"), ("symvi_importance", "log\\|G\\|")):
            mine = [r for r in rows if r["dataset"] == name and r["method"] == method]
            if mine:
                mi = [r["mutual_information"] for r in mine]
                lines += ["", f"{LABELS[method]}: the estimate of I(g; w) over the last 100 steps is {min(mi):.3f} .. "
                              f"{max(mi):.3f} nats across splits; its ceiling {ceiling} is "
                              + (f"{math.log(config.num_permutations):.3f}" if method == "symvi"
                                 else f"{mine[0]['log_group_order']:.2f}") + "."]
    return "\n".join(lines)


def run(config: Config) -> Result:
    rows = []
    for name in config.datasets:
        rows.extend(run_dataset(name, config))
    return Result(rows=rows, markdown=markdown(config, rows))
