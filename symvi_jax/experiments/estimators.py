"""Orbit estimators on MNIST posteriors: uniform vs importance against exact I, wide nets, training.

Parts (``parts`` selects any of them):

* ``exact`` -- one-hidden-layer MNIST posteriors at widths 5-20, "trained" (MFVI from a small
  initial scale) and "broad" (MFVI started at the prior scale, a few steps in). The exact
  I(g; w) comes from the permanent (float64); the paper's uniform estimator and the importance
  estimator are run at K in ``num_permutations`` on the same weight samples, ``num_repeats`` times.
  Reported: the exact I, each estimator's mean, its relative bias, and the spread (standard
  deviation of its per-sample error).
* ``wide`` -- widths 100-1000, where nothing exact exists: both lower bounds at each K.
* ``distance`` -- the relative distance to the nearest equivalent mode of q's mean (Theorem 3.1)
  at every width, with the theorem's bound.
* ``train`` -- MFVI vs the uniform symmetrized objective vs the importance-weighted one (and, with
  ``"exact"`` in ``train_methods`` at widths <= ``permanent.MAX_WIDTH``, the exact L^G through the
  permanent) on an MNIST subset, over seeds paired across methods (seed i gives every method the
  same initial means, minibatches and step keys): train ELBO L, a lower bound on L^G (L + the
  importance bound at K = ``eval_num_permutations``, the same for every method), test NLL and
  accuracy, collapsed units, I / log|G|, and paired 95% t intervals of the differences.
* ``overhead`` -- training-step time of the three objectives at ``overhead_width``.

MNIST is read from ``data_path`` (``/work/shared/data/mnist.npz`` layout: uint8 x_train, y_train,
x_test, y_test); pixels are scaled to [0, 1].
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from symvi_jax import (MLP, PermutationGroup, diagnostics, likelihoods, meanfield, objectives, orbits, permanent,
                       predict, vi)
from symvi_jax.experiments import base
from symvi_jax.experiments.base import Result
from symvi_jax.experiments.stats import paired_ci

__all__ = ["Config", "run", "measure_step_times"]

PARTS = ("exact", "wide", "distance", "train", "overhead")
METHODS = ("mfvi", "uniform", "importance")
TRAIN_METHODS = METHODS + ("exact",)


@dataclasses.dataclass(frozen=True)
class Config:
    data_path: str = "../shared/data/mnist.npz"
    parts: tuple[str, ...] = PARTS
    seed: int = 0
    prior_scale: float = 1.0
    # posteriors for the estimator comparisons
    num_train: int = 5000
    batch_size: int = 100
    learning_rate: float = 1e-3
    trained_epochs: int = 10
    trained_init_scale: float = 1e-2
    broad_steps: int = 20
    # part "exact"
    exact_widths: tuple[int, ...] = (5, 10, 15, 20)
    num_permutations: tuple[int, ...] = (2, 5, 20, 100)
    num_samples: int = 16
    num_repeats: int = 4
    temperature: float = 1.0
    # part "wide"
    wide_widths: tuple[int, ...] = (100, 300, 1000)
    wide_num_permutations: tuple[int, ...] = (2, 20, 100)
    wide_num_samples: int = 4
    # part "train"
    train_widths: tuple[int, ...] = (100,)
    train_num_train: int = 1000
    train_epochs: int = 50
    train_prior_scale: float = 0.1
    train_init_scale: float = 0.1
    train_num_permutations: int = 20
    train_seeds: int = 3
    train_learning_rate: float = 3e-3
    train_methods: tuple[str, ...] = METHODS
    train_score_correction: bool = False   # importance: score-function term, unbiased for any proposal
    eval_num_permutations: int = 100
    eval_num_samples: int = 16
    predict_num_samples: int = 100
    # part "overhead"
    overhead_width: int = 1024
    overhead_num_permutations: int = 20
    overhead_batch_size: int = 100
    overhead_rounds: int = 3
    overhead_steps: int = 5

    def validate(self):
        unknown = sorted(set(self.parts) - set(PARTS))
        if unknown or not self.parts:
            raise ValueError(f"config key 'parts' must be a non-empty subset of {PARTS}, got {self.parts}")
        for key in ("prior_scale", "learning_rate", "trained_init_scale", "temperature", "train_prior_scale",
                    "train_init_scale", "train_learning_rate"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"config key {key!r} must be > 0, got {value}")
        for key in ("num_train", "batch_size", "trained_epochs", "num_samples", "num_repeats", "wide_num_samples",
                    "train_num_train", "train_epochs", "train_num_permutations", "train_seeds",
                    "eval_num_permutations", "eval_num_samples", "predict_num_samples", "overhead_width",
                    "overhead_num_permutations", "overhead_batch_size", "overhead_rounds", "overhead_steps"):
            if getattr(self, key) < 1:
                raise ValueError(f"config key {key!r} must be >= 1, got {getattr(self, key)}")
        if self.broad_steps < 0:
            raise ValueError(f"config key 'broad_steps' must be >= 0, got {self.broad_steps}")
        for key in ("exact_widths", "wide_widths", "train_widths"):
            if any(w < 1 for w in getattr(self, key)):
                raise ValueError(f"config key {key!r} must hold positive widths, got {getattr(self, key)}")
        if any(w > permanent.MAX_WIDTH for w in self.exact_widths):
            raise ValueError(f"config key 'exact_widths' must be <= {permanent.MAX_WIDTH}, got {self.exact_widths}")
        for key in ("num_permutations", "wide_num_permutations"):
            if not getattr(self, key) or any(k < 1 for k in getattr(self, key)):
                raise ValueError(f"config key {key!r} must be a non-empty tuple of K >= 1, got {getattr(self, key)}")
        if not self.train_methods or set(self.train_methods) - set(TRAIN_METHODS) or "mfvi" not in self.train_methods \
                or len(set(self.train_methods)) != len(self.train_methods):
            raise ValueError(f"config key 'train_methods' must hold distinct names from {TRAIN_METHODS}, "
                             f"'mfvi' among them (the reference of the paired differences), got {self.train_methods}")
        if "exact" in self.train_methods and any(w > permanent.MAX_WIDTH for w in self.train_widths):
            raise ValueError(f"config key 'train_methods' has 'exact', which needs train_widths <= "
                             f"{permanent.MAX_WIDTH} (the permanent), got {self.train_widths}")
        if not isinstance(self.train_score_correction, bool):
            raise ValueError(f"config key 'train_score_correction' must be true or false, got "
                             f"{self.train_score_correction!r}")
        if max(self.num_train, self.train_num_train) > 60000:
            raise ValueError("config keys 'num_train' and 'train_num_train' must be <= 60000 (MNIST's training set)")
        if self.batch_size > min(self.num_train, self.train_num_train):
            raise ValueError("config key 'batch_size' must not exceed 'num_train' or 'train_num_train'")


# ---- data and models ---------------------------------------------------------------------------


def _load_mnist(path: str):
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"config key 'data_path': no MNIST file at {path!r} (expected an .npz with x_train, "
                         "y_train, x_test, y_test)")
    with np.load(file) as data:
        x_train = data["x_train"].reshape(len(data["x_train"]), -1).astype(np.float32) / 255.0
        x_test = data["x_test"].reshape(len(data["x_test"]), -1).astype(np.float32) / 255.0
        return (x_train, data["y_train"].astype(np.int32)), (x_test, data["y_test"].astype(np.int32))


def _subset(data, size: int, seed: int):
    x, y = data
    index = np.random.default_rng(seed).permutation(len(x))[:size]
    return jnp.asarray(x[index]), jnp.asarray(y[index])


def _model(width: int, in_features: int = 784):
    model = MLP(features=(width, 10))
    return model, (lambda p, x: model.apply({"params": p}, x))


def _init_params(key, width, in_features=784):
    model, _ = _model(width)
    return model.init(key, jnp.zeros((1, in_features)))["params"]


def _train(keys, width, data, *, num_steps, batch_size, learning_rate, prior_scale, init_scale, objective_kwargs=None):
    """``num_steps`` minibatch steps of ``vi`` from a fresh init per key; one jitted, vmapped ``lax.scan``.

    Returns the final q of every key, stacked on a leading axis. The compiled program is cached
    per configuration, with ``init_scale`` a traced argument, so the "trained" and "broad"
    posteriors share it when their step counts agree.
    """
    if num_steps == 0:
        return jax.vmap(lambda key: meanfield.init(_init_params(jax.random.split(key)[0], width),
                                                   init_scale=init_scale))(keys)
    runner = _trainer(width, int(data[0].shape[0]), num_steps, batch_size, learning_rate, prior_scale,
                      tuple(sorted((objective_kwargs or {}).items())))
    return runner(keys, data, jnp.asarray(init_scale, jnp.float32))


@functools.lru_cache(maxsize=None)
def _trainer(width, size, num_steps, batch_size, learning_rate, prior_scale, objective_items):
    _, apply_fn = _model(width)
    optimizer = optax.adam(learning_rate)
    algorithm = vi.build(likelihoods.categorical(apply_fn), optimizer, data_size=size, prior_scale=prior_scale,
                         **dict(objective_items))

    def one(key, data, init_scale):
        key_init, key_steps = jax.random.split(key)
        state = vi.init(_init_params(key_init, width), optimizer, init_scale=init_scale)
        state, _ = vi.run_steps(algorithm, state, data, jax.random.split(key_steps, num_steps), batch_size=batch_size)
        return state.q

    return jax.jit(jax.vmap(one, in_axes=(0, None, None)))


def _first(tree):
    return jax.tree.map(lambda x: x[0], tree)


class _Posteriors:
    """The "trained" and "broad" one-hidden-layer posteriors of the estimator comparisons, per width.

    Trained once per width and shared by the parts that need them.
    """

    def __init__(self, config: Config, data, key):
        self.config, self.data, self.key, self.cache = config, data, key, {}

    def __call__(self, width: int) -> dict:
        if width not in self.cache:
            config = self.config
            key_trained, key_broad = jax.random.split(jax.random.fold_in(self.key, width))
            steps = config.trained_epochs * (config.num_train // config.batch_size)
            common = dict(batch_size=config.batch_size, learning_rate=config.learning_rate,
                          prior_scale=config.prior_scale)
            self.cache[width] = {
                "trained": _first(_train(key_trained[None], width, self.data, num_steps=steps,
                                         init_scale=config.trained_init_scale, **common)),
                "broad": _first(_train(key_broad[None], width, self.data, num_steps=config.broad_steps,
                                       init_scale=config.prior_scale, **common)),
            }
        return self.cache[width]


def _to64(tree):
    return jax.tree.map(lambda x: jnp.asarray(np.asarray(x), jnp.float64), tree)


# ---- part "exact" ------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _estimator_terms(group, estimator, k, temperature):
    """jit(fn(key, q, samples) -> per-sample terms) for one estimator and K (cached: regimes share it)."""
    extra = {"temperature": temperature} if estimator == "importance" else {}
    return jax.jit(lambda key, q, samples: orbits.mutual_information_terms(
        key, q, samples, group, num_permutations=k, estimator=estimator, **extra))


def _part_exact(config: Config, posteriors, key):
    rows = []
    for width in config.exact_widths:
        posteriors_d = posteriors(width)
        for regime, q32 in posteriors_d.items():
            with jax.enable_x64(True):
                q = _to64(q32)
                group = PermutationGroup.from_params(q.loc)
                key, key_sample = jax.random.split(key)
                samples = meanfield.sample(key_sample, q, config.num_samples)
                start = time.perf_counter()
                exact = np.asarray(_estimator_terms(group, "exact", None, None)(None, q, samples))
                seconds_exact = (time.perf_counter() - start) / config.num_samples
                exact_mean = float(exact.mean())
                exact_se = float(exact.std(ddof=1) / math.sqrt(exact.size)) if exact.size > 1 else float("nan")
                for k in config.num_permutations:
                    for estimator in ("infonce", "importance"):
                        fn = _estimator_terms(group, estimator, k, config.temperature)
                        terms = np.stack([np.asarray(fn(r, q, samples))
                                          for r in jax.random.split(jax.random.fold_in(key, k), config.num_repeats)])
                        errors = terms - exact[None, :]
                        mean = float(terms.mean())
                        rows.append(dict(
                            part="exact", regime=regime, width=width, estimator=_name(estimator), K=k,
                            exact_mi=exact_mean, exact_se=exact_se, log_order=group.log_order(),
                            estimate=mean, relative_bias=(mean - exact_mean) / exact_mean if exact_mean else float("nan"),
                            spread=float(errors.std()), fraction_of_exact=mean / exact_mean if exact_mean else float("nan"),
                            exact_seconds_per_sample=seconds_exact,
                        ))
    return rows


def _name(estimator):
    return "uniform" if estimator == "infonce" else estimator


# ---- part "wide" -------------------------------------------------------------------------------


def _part_wide(config: Config, posteriors, key):
    rows = []
    for width in config.wide_widths:
        for regime, q in posteriors(width).items():
            group = PermutationGroup.from_params(q.loc)
            key, key_sample = jax.random.split(key)
            samples = meanfield.sample(key_sample, q, config.wide_num_samples)
            for k in config.wide_num_permutations:
                for estimator in ("infonce", "importance"):
                    fn = _estimator_terms(group, estimator, k, config.temperature)
                    start = time.perf_counter()
                    terms = np.asarray(fn(jax.random.fold_in(key, k), q, samples), dtype=np.float64)
                    seconds = time.perf_counter() - start
                    rows.append(dict(
                        part="wide", regime=regime, width=width, estimator=_name(estimator), K=k,
                        estimate=float(terms.mean()),
                        standard_error=float(terms.std(ddof=1) / math.sqrt(terms.size)) if terms.size > 1 else None,
                        log_order=group.log_order(), fraction_of_log_order=float(terms.mean()) / group.log_order(),
                        log_k=math.log(k), seconds=seconds,
                    ))
    return rows


# ---- part "distance" ---------------------------------------------------------------------------


def _part_distance(config: Config, posteriors_of, key):
    rows = []
    for width in sorted(set(config.exact_widths) | set(config.wide_widths)):
        key, key_init = jax.random.split(key)
        posteriors = posteriors_of(width)
        means = {"init": _init_params(key_init, width), **{k: q.loc for k, q in posteriors.items()}}
        group = PermutationGroup.from_params(means["init"])
        bound = diagnostics.theorem_3_1_bound(784, width, 10)
        for name, loc in means.items():
            rows.append(dict(part="distance", regime=name, width=width,
                             distance=float(diagnostics.nearest_equivalent_distance(loc, group)[0]),
                             theorem_bound=bound if math.isfinite(bound) else None,
                             collapsed_units=(diagnostics.collapsed_units(posteriors[name], group, config.prior_scale)[0]
                                              if name in posteriors else None)))
    return rows


# ---- part "train" ------------------------------------------------------------------------------


def _objective_kwargs(method, group, config: Config):
    if method == "mfvi":
        return {}
    if method == "exact":
        return dict(objective="symmetrized_elbo", group=group, estimator="exact")
    kwargs = dict(objective="symmetrized_elbo", group=group, num_permutations=config.train_num_permutations)
    if method == "importance":
        kwargs.update(estimator="importance", proposal_temperature=config.temperature)
        if config.train_score_correction:  # only when set: the default's compiled program stays as it was
            kwargs.update(score_correction=True)
    return kwargs


def _part_train(config: Config, train_all, test, key):
    rows = []
    x_test, y_test = jnp.asarray(test[0]), jnp.asarray(test[1])
    for width in config.train_widths:
        key, key_data = jax.random.split(key)
        data = _subset(train_all, config.train_num_train, int(jax.random.randint(key_data, (), 0, 2**30)))
        group = PermutationGroup.from_params(_init_params(jax.random.key(0), width))
        _, apply_fn = _model(width)
        loglik = likelihoods.categorical(apply_fn)
        steps = config.train_epochs * (config.train_num_train // config.batch_size)
        seeds = jax.random.split(jax.random.fold_in(key, width), config.train_seeds)
        exact = width <= permanent.MAX_WIDTH

        @jax.jit
        @jax.vmap
        def evaluate(key, q):
            key_elbo, key_sample, key_mi, key_pred = jax.random.split(key, 4)
            elbo, _ = jax.lax.map(lambda k: objectives.elbo(
                k, q, data, loglikelihood_fn=loglik, data_size=config.train_num_train,
                prior_scale=config.train_prior_scale, num_samples=1), jax.random.split(key_elbo, config.eval_num_samples))
            samples = meanfield.sample(key_sample, q, config.eval_num_samples)
            mi = orbits.mutual_information_terms(key_mi, q, samples, group,
                                                 num_permutations=config.eval_num_permutations, estimator="importance")
            probs = predict.predictive_probs(key_pred, q, apply_fn, x_test, num_samples=config.predict_num_samples,
                                             chunk_size=math.gcd(config.predict_num_samples, 10))
            out = (jnp.mean(elbo), jnp.mean(mi), predict.nll(probs, y_test), predict.accuracy(probs, y_test))
            if exact:  # the exact I on the same weight samples (permanent; one hidden layer, d <= MAX_WIDTH)
                out += (jnp.mean(orbits.mutual_information_terms(None, q, samples, group, estimator="exact")),)
            return out

        for method in config.train_methods:
            start = time.perf_counter()
            qs = _train(seeds, width, data, num_steps=steps, batch_size=config.batch_size,
                        learning_rate=config.train_learning_rate, prior_scale=config.train_prior_scale,
                        init_scale=config.train_init_scale, objective_kwargs=_objective_kwargs(method, group, config))
            jax.block_until_ready(qs)
            seconds = time.perf_counter() - start
            metrics = jax.device_get(evaluate(jax.vmap(lambda k: jax.random.fold_in(k, 1))(seeds), qs))
            for seed_index in range(config.train_seeds):
                elbo, mi, nll, accuracy, *exact_mi = (float(v[seed_index]) for v in metrics)
                q = jax.tree.map(lambda x: x[seed_index], qs)
                rows.append(dict(
                    part="train", method=method, seed=seed_index, width=width, num_train=config.train_num_train,
                    elbo=elbo, elbo_symmetrized=elbo + mi, mutual_information=mi,
                    mi_fraction=mi / group.log_order(), test_nll=nll, test_accuracy=accuracy,
                    collapsed_units=diagnostics.collapsed_units(q, group, config.train_prior_scale)[0],
                    train_seconds_all_seeds=seconds,
                ))
                if exact_mi:
                    rows[-1].update(exact_mutual_information=exact_mi[0], elbo_symmetrized_exact=elbo + exact_mi[0])
    return rows


# ---- part "overhead" ---------------------------------------------------------------------------


def measure_step_times(width: int = 1024, num_permutations: int = 20, batch_size: int = 100, rounds: int = 3,
                       steps: int = 5, num_samples: int = 1, seed: int = 0) -> dict:
    """Median seconds per training step of MFVI, uniform and importance (784 -> width -> 10).

    Each variant runs ``steps`` steps in one jitted ``lax.scan``; the variants are timed round
    by round, interleaved, so their ratios hold on a shared machine even when absolute times do not.
    """
    model, apply_fn = _model(width)
    params = _init_params(jax.random.key(seed), width)
    group = PermutationGroup.from_params(params)
    loglik = likelihoods.categorical(apply_fn)
    key_x, key_y = jax.random.split(jax.random.key(seed + 1))
    batch = (jax.random.uniform(key_x, (batch_size, 784)), jax.random.randint(key_y, (batch_size,), 0, 10))
    config = Config(train_num_permutations=num_permutations)
    runners = {}
    for method in METHODS:
        algorithm = vi.build(loglik, optax.adam(1e-3), data_size=60_000, num_samples=num_samples, prior_scale=1.0,
                             init_scale=1e-2, **_objective_kwargs(method, group, config))

        def scan(state, key, algorithm=algorithm):
            def body(state, key):
                state, info = algorithm.step(key, state, batch)
                return state, info.objective
            return jax.lax.scan(body, state, jax.random.split(key, steps))

        runner, state = jax.jit(scan), algorithm.init(params)
        jax.block_until_ready(runner(state, jax.random.key(0)))  # compile
        runners[method] = (runner, state)
    times = {method: [] for method in runners}
    for r in range(rounds):
        for method, (runner, state) in runners.items():
            start = time.perf_counter()
            jax.block_until_ready(runner(state, jax.random.key(r + 1)))
            times[method].append((time.perf_counter() - start) / steps)
    median = {method: float(np.median(t)) for method, t in times.items()}
    return dict(width=width, K=num_permutations, batch_size=batch_size, num_samples=num_samples,
                seconds_per_step=median, ratio_to_mfvi={m: median[m] / median["mfvi"] for m in median})


def _part_overhead(config: Config):
    result = measure_step_times(config.overhead_width, config.overhead_num_permutations, config.overhead_batch_size,
                                config.overhead_rounds, config.overhead_steps)
    return [dict(part="overhead", method=m, width=result["width"], K=result["K"], batch_size=result["batch_size"],
                 seconds_per_step=result["seconds_per_step"][m], ratio_to_mfvi=result["ratio_to_mfvi"][m])
            for m in METHODS]


# ---- run ---------------------------------------------------------------------------------------


def run(config: Config) -> Result:
    need_data = set(config.parts) & {"exact", "wide", "distance", "train"}
    key = jax.random.key(config.seed)
    if need_data:
        train_all, test = _load_mnist(config.data_path)
        posteriors = _Posteriors(config, _subset(train_all, config.num_train, config.seed), jax.random.fold_in(key, 99))
    rows = []
    timings = {}
    for part in PARTS:
        if part not in config.parts:
            continue
        start = time.perf_counter()
        part_key = jax.random.fold_in(key, PARTS.index(part))
        if part == "exact":
            rows += _part_exact(config, posteriors, part_key)
        elif part == "wide":
            rows += _part_wide(config, posteriors, part_key)
        elif part == "distance":
            rows += _part_distance(config, posteriors, part_key)
        elif part == "train":
            rows += _part_train(config, train_all, test, part_key)
        else:
            rows += _part_overhead(config)
        timings[part] = time.perf_counter() - start
    return Result(rows=rows, markdown=_markdown(config, rows, timings), figures=_figures(rows))


# ---- reporting ---------------------------------------------------------------------------------


def _mean_se(values):
    values = np.asarray(values, dtype=np.float64)
    se = values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return float(values.mean()), float(se)


_TRAIN_LABEL = {"mfvi": "MFVI", "uniform": "uniform", "importance": "importance", "exact": "exact"}


def _markdown(config: Config, rows, timings) -> str:
    """The report: one section per part that ran."""
    lines = ["# Orbit estimators on MNIST posteriors", "",
             f"One hidden layer (784 -> d -> 10), prior N(0, {config.prior_scale}^2), posteriors trained on "
             f"{config.num_train} MNIST examples (seed {config.seed}). Part timings (s): "
             + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()) + ".", ""]
    for section in (_exact_section, _wide_section, _distance_section, _train_section, _overhead_section):
        lines += section(config, rows)
    return "\n".join(lines)


def _exact_section(config: Config, rows) -> list:
    exact = [r for r in rows if r["part"] == "exact"]
    if not exact:
        return []
    lines = []
    lines += ["## Against the exact I (permanent, float64)", "",
              f"\"trained\": MFVI, {config.trained_epochs} epochs from sigma = {config.trained_init_scale}; "
              f"\"broad\": MFVI started at sigma = prior scale, {config.broad_steps} steps. "
              f"S = {config.num_samples} weight samples, {config.num_repeats} repeats of each estimator on "
              "them. Cells: estimate / exact (spread = std of the per-sample error, nats).", ""]
    ks = config.num_permutations
    lines += ["| regime | d | exact I (nats) | I / log d! | " + " | ".join(
        f"uniform K={k} | importance K={k}" for k in ks) + " |",
              "| --- | --- | --- | --- | " + " | ".join("--- | ---" for _ in ks) + " |"]
    for regime in ("trained", "broad"):
        for width in config.exact_widths:
            cell = {(r["estimator"], r["K"]): r for r in exact if r["regime"] == regime and r["width"] == width}
            if not cell:
                continue
            first = next(iter(cell.values()))
            parts = [f"{cell[(e, k)]['fraction_of_exact']:.3f} ({cell[(e, k)]['spread']:.2g})"
                     for k in ks for e in ("uniform", "importance")]
            lines.append(f"| {regime} | {width} | {first['exact_mi']:.3f} +- {first['exact_se']:.3f} | "
                         f"{first['exact_mi'] / first['log_order']:.3f} | " + " | ".join(parts) + " |")
    lines += [""]
    if 20 in ks:
        lines += ["Target: importance within 10% of exact at K = 20 wherever uniform is off by more than 50%.", ""]
        verdicts = []
        for r in exact:
            if r["K"] != 20 or r["estimator"] != "uniform" or abs(r["relative_bias"]) <= 0.5:
                continue
            imp = next(x for x in exact if x["K"] == 20 and x["estimator"] == "importance"
                       and x["regime"] == r["regime"] and x["width"] == r["width"])
            verdicts.append(abs(imp["relative_bias"]) <= 0.1)
            lines.append(f"- {r['regime']} d={r['width']}: uniform {r['relative_bias']:+.1%}, importance "
                         f"{imp['relative_bias']:+.1%} -> {'met' if verdicts[-1] else 'MISSED'}")
        lines += ["", f"Met in {sum(verdicts)} of {len(verdicts)} cells where uniform is off by > 50%.", ""]
    seconds = [r["exact_seconds_per_sample"] for r in exact if r["width"] == max(config.exact_widths)]
    if seconds:
        lines += [f"Exact permanent at d = {max(config.exact_widths)}: {np.median(seconds):.2f} s per weight "
                  "sample (float64, including compilation of the first call).", ""]
    return lines


def _wide_section(config: Config, rows) -> list:
    wide = [r for r in rows if r["part"] == "wide"]
    if not wide:
        return []
    lines = []
    lines += ["## Wide nets: both lower bounds on I (nats; higher is tighter)", "",
              f"S = {config.wide_num_samples} weight samples; +- standard error over them.", "",
              "| regime | d | log d! | K | log K | uniform | importance | importance / log d! |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for regime in ("trained", "broad"):
        for width in config.wide_widths:
            for k in config.wide_num_permutations:
                u = [r for r in wide if (r["regime"], r["width"], r["K"], r["estimator"]) == (regime, width, k, "uniform")]
                i = [r for r in wide if (r["regime"], r["width"], r["K"], r["estimator"]) == (regime, width, k, "importance")]
                if not (u and i):
                    continue
                u, i = u[0], i[0]
                se = lambda r: f" +- {r['standard_error']:.2f}" if r["standard_error"] is not None else ""  # noqa: E731
                lines.append(f"| {regime} | {width} | {u['log_order']:.1f} | {k} | {math.log(k):.2f} | "
                             f"{u['estimate']:.2f}{se(u)} | {i['estimate']:.2f}{se(i)} | "
                             f"{i['fraction_of_log_order']:.4f} |")
    lines += [""]
    return lines


def _distance_section(config: Config, rows) -> list:
    distance = [r for r in rows if r["part"] == "distance"]
    if not distance:
        return []
    lines = []
    lines += ["## Relative distance to the nearest equivalent mode (Theorem 3.1)", "",
              "min_{g != e} ||mu - g.mu|| / ||mu|| for q's mean mu (exact for one hidden layer: a transposition "
              "of the two closest units), next to the theorem's bound 2 (d_i + d_o + 1 + 1/d) / log(d / 2).", "",
              "| d | init | broad | trained | theorem bound | collapsed units (broad / trained) |",
              "| --- | --- | --- | --- | --- | --- |"]
    for width in sorted({r["width"] for r in distance}):
        cell = {r["regime"]: r for r in distance if r["width"] == width}
        bound = cell["init"]["theorem_bound"]
        lines.append(f"| {width} | {cell['init']['distance']:.4f} | {cell['broad']['distance']:.4f} | "
                     f"{cell['trained']['distance']:.4f} | {'inf' if bound is None else f'{bound:.1f}'} | "
                     f"{cell['broad']['collapsed_units']} / {cell['trained']['collapsed_units']} |")
    lines += [""]
    return lines


def _train_section(config: Config, rows) -> list:
    train = [r for r in rows if r["part"] == "train"]
    if not train:
        return []
    lines = []
    lines += ["## Training with each objective", "",
              f"{config.train_num_train} MNIST training examples, prior N(0, {config.train_prior_scale}^2), "
              f"{config.train_epochs} epochs of batch "
              f"{config.batch_size}, Adam lr {config.train_learning_rate}, sigma starts at "
              f"{config.train_init_scale}, K = {config.train_num_permutations} for both symmetrized objectives, "
              f"{config.train_seeds} seeds paired across methods (mean +- standard error), importance gradient "
              f"{'score-corrected' if config.train_score_correction else 'default (issue #12 fix)'}. "
              "L^G is reported as its lower bound "
              f"L + I_hat with the importance estimator at K = {config.eval_num_permutations} "
              f"({config.eval_num_samples} samples) for every method; test NLL and accuracy on the 10k test "
              f"set from {config.predict_num_samples} weight samples. Values per training example.", ""]
    methods = [m for m in TRAIN_METHODS if m in config.train_methods]
    n = config.train_num_train
    for width in config.train_widths:
        by = {m: sorted((r for r in train if r["method"] == m and r["width"] == width), key=lambda r: r["seed"])
              for m in methods}
        metrics = [("elbo", "L / N", n), ("elbo_symmetrized", "L^G (lower bound) / N", n),
                   ("mi_fraction", "I / log d!", 1), ("test_nll", "test NLL", 1),
                   ("test_accuracy", "test accuracy", 1), ("collapsed_units", "collapsed units", 1)]
        if all("exact_mutual_information" in r for r in by["mfvi"]):
            metrics.insert(2, ("elbo_symmetrized_exact", "L^G (exact I) / N", n))
        lines += [f"### d = {width}", "", "| metric | " + " | ".join(_TRAIN_LABEL[m] for m in methods) + " |",
                  "| --- |" + " --- |" * len(methods)]
        for key, label, div in metrics:
            cells = [f"{mean:.4f} +- {se:.4f}" for mean, se in (_mean_se([r[key] / div for r in by[m]])
                                                              for m in methods)]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        pairs = [(m, "mfvi") for m in methods if m != "mfvi"]
        pairs += [("importance", m) for m in ("uniform", "exact") if "importance" in methods and m in methods]
        lines += ["", "Paired differences (same seeds), mean [95% t interval] (`stats.paired_ci`):", "",
                  "| difference | " + " | ".join(label for _, label, _ in metrics) + " |",
                  "| --- |" + " --- |" * len(metrics)]
        for a, b in pairs:
            cells = []
            for key, _, div in metrics:
                mean, lo, hi = paired_ci([r[key] / div for r in by[b]], [r[key] / div for r in by[a]])
                cells.append(f"{mean:+.4f} [{lo:+.4f}, {hi:+.4f}]")
            lines.append(f"| {_TRAIN_LABEL[a]} - {_TRAIN_LABEL[b]} | " + " | ".join(cells) + " |")
        lines += [""]
    return lines


def _overhead_section(config: Config, rows) -> list:
    overhead = [r for r in rows if r["part"] == "overhead"]
    if not overhead:
        return []
    lines = []
    first = overhead[0]
    lines += ["## Step time", "",
              f"One training step, d = {first['width']}, K = {first['K']}, batch {first['batch_size']}, S = 1; "
              "median over interleaved rounds in one process (ratios are meaningful, absolute times are not).", "",
              "| objective | s / step | ratio to MFVI |", "| --- | --- | --- |"]
    for r in overhead:
        lines.append(f"| {r['method']} | {r['seconds_per_step']:.4f} | {r['ratio_to_mfvi']:.2f} |")
    lines += [""]
    return lines


def _figures(rows):
    figures = {}
    exact = [r for r in rows if r["part"] == "exact"]
    if exact:
        def save_exact(path):
            regimes = [g for g in ("trained", "broad") if any(r["regime"] == g for r in exact)]
            widths = sorted({r["width"] for r in exact})
            size = (5 * len(regimes), 3.8)
            with base.figure(path, 1, len(regimes), figsize=size, squeeze=False, dpi=100) as (fig, axes):
                for ax, regime in zip(axes[0], regimes):
                    for index, width in enumerate(widths):
                        for estimator, style in (("uniform", "--"), ("importance", "-")):
                            pts = sorted((r["K"], r["fraction_of_exact"]) for r in exact
                                         if (r["regime"], r["width"], r["estimator"]) == (regime, width, estimator))
                            if pts:
                                ax.plot(*zip(*pts), style, marker="o", color=f"C{index}", label=f"{estimator} d={width}")
                    ax.axhline(1.0, color="k", lw=0.8)
                    ax.set_xscale("log")
                    ax.set_xlabel("K")
                    ax.set_ylabel("estimate / exact I")
                    ax.set_title(regime)
                axes[0][0].legend(fontsize=7)
        figures["exact.png"] = save_exact
    wide = [r for r in rows if r["part"] == "wide"]
    if wide:
        def save_wide(path):
            regimes = [g for g in ("trained", "broad") if any(r["regime"] == g for r in wide)]
            size = (5 * len(regimes), 3.8)
            with base.figure(path, 1, len(regimes), figsize=size, squeeze=False, dpi=100) as (fig, axes):
                for ax, regime in zip(axes[0], regimes):
                    for index, k in enumerate(sorted({r["K"] for r in wide})):
                        for estimator, style in (("uniform", "--"), ("importance", "-")):
                            pts = sorted((r["width"], r["fraction_of_log_order"]) for r in wide
                                         if (r["regime"], r["K"], r["estimator"]) == (regime, k, estimator))
                            if pts:
                                ax.plot(*zip(*pts), style, marker="o", color=f"C{index}", label=f"{estimator} K={k}")
                    ax.set_xscale("log")
                    ax.set_yscale("log")
                    ax.set_xlabel("width d")
                    ax.set_ylabel("bound on I / log d!")
                    ax.set_title(regime)
                axes[0][0].legend(fontsize=7)
        figures["wide.png"] = save_wide
    distance = [r for r in rows if r["part"] == "distance"]
    if distance:
        def save_distance(path):
            with base.figure(path, figsize=(5, 3.8), dpi=100) as (fig, ax):
                for regime in ("init", "broad", "trained"):
                    pts = sorted((r["width"], r["distance"]) for r in distance if r["regime"] == regime)
                    ax.plot(*zip(*pts), marker="o", label=f"q mean, {regime}")
                pts = sorted((r["width"], r["theorem_bound"]) for r in distance
                             if r["regime"] == "init" and r["theorem_bound"] is not None)
                if pts:
                    ax.plot(*zip(*pts), "k--", label="Theorem 3.1 bound")
                ax.set_xscale("log")
                ax.set_yscale("log")
                ax.set_xlabel("width d")
                ax.set_ylabel("min ||w - g.w|| / ||w||")
                ax.legend(fontsize=7)
        figures["distance.png"] = save_distance
    return figures
