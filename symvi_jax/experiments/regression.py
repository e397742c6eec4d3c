"""Learned noise on 1-D regression: type-II ML against the true noise sd, and predictive interval coverage.

For each of ``num_seeds`` data seeds, ``num_train`` points x ~ U(-2, 2), y = sin(2x) + N(0,
``noise_sd``^2) train a 1 -> ``width`` -> 1 tanh MLP with MFVI (``objective="elbo"``) and with
symmetrized VI (``"symmetrized_elbo"``, InfoNCE with K = ``num_permutations``, the group from
``infer_symmetry``). The noise precision tau is a point estimate trained with q on the same
objective (``likelihoods.gaussian(..., learn_noise=True)``); both methods run as one
``jax.jit(jax.vmap(vi.run))`` over the seeds. Reported:

* the learned noise sd 1 / sqrt(tau) against the true ``noise_sd``: mean over seeds with a 95%
  t-interval (``experiments.stats.mean_ci``);
* on ``num_test`` fresh points per seed, the coverage of the central 50/90/95% intervals of the
  moment-matched Gaussian predictive N(m(x), v(x)), v = Var_q[f_w(x)] + 1/tau
  (``predict.predictive_mean_and_std`` with ``noise_std`` = the learned sd), its RMSE and NLL.

    symvi-jax regression --config configs/regression.yaml --out out/regression
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from symvi_jax import MLP, infer_symmetry, likelihoods, predict, vi
from symvi_jax.experiments.base import Result
from symvi_jax.experiments.stats import mean_ci, paired_ci

__all__ = ["Config", "run", "make_data", "LEVELS", "METHODS"]

LEVELS = (0.5, 0.9, 0.95)
METHODS = ("elbo", "symmetrized_elbo")


@dataclasses.dataclass(frozen=True)
class Config:
    num_seeds: int = 10
    num_train: int = 1024
    num_test: int = 1000
    noise_sd: float = 0.3
    width: int = 8
    num_epochs: int = 500
    batch_size: int = 256
    learning_rate: float = 0.01
    initial_noise_precision: float = 1.0
    num_permutations: int = 4
    num_predictive_samples: int = 200

    def validate(self) -> None:
        for key in ("num_seeds", "num_train", "num_test", "width", "num_epochs", "batch_size", "num_permutations",
                    "num_predictive_samples"):
            if getattr(self, key) < 1:
                raise ValueError(f"config key {key!r} must be a positive int, got {getattr(self, key)}")
        if self.num_seeds < 2:
            raise ValueError(f"config key 'num_seeds' must be >= 2 for a t-interval, got {self.num_seeds}")
        if self.batch_size > self.num_train:
            raise ValueError(f"config key 'batch_size' ({self.batch_size}) must not exceed num_train ({self.num_train})")
        for key in ("noise_sd", "learning_rate", "initial_noise_precision"):
            if not getattr(self, key) > 0:
                raise ValueError(f"config key {key!r} must be > 0, got {getattr(self, key)}")


def make_data(rng_key, num_examples: int, noise_sd: float):
    """x ~ U(-2, 2), y = sin(2x) + noise_sd * eps, eps ~ N(0, 1); x of shape (M, 1), y of shape (M,)."""
    key_x, key_noise = jax.random.split(rng_key)
    x = jax.random.uniform(key_x, (num_examples, 1), minval=-2.0, maxval=2.0)
    return x, jnp.sin(2.0 * x[:, 0]) + noise_sd * jax.random.normal(key_noise, (num_examples,))


def _model(config: Config):
    model = MLP(features=(config.width, 1), activation=jnp.tanh)
    return model, (lambda p, x: model.apply({"params": p}, x))


def _train(config: Config, objective: str, seed_keys, train):
    """One method over every seed: ``jax.jit(jax.vmap(init + vi.run))``, one compilation."""
    model, apply_fn = _model(config)
    params = model.init(jax.random.key(0), jnp.zeros((1, 1)))["params"]
    loglik = likelihoods.gaussian(apply_fn, noise_precision=config.initial_noise_precision, learn_noise=True)
    kwargs = {}
    if objective == "symmetrized_elbo":
        kwargs = dict(group=infer_symmetry(apply_fn, params, train[0][0, :4]), num_permutations=config.num_permutations)
    algorithm = vi.build(loglik, optax.adam(config.learning_rate), data_size=config.num_train, objective=objective,
                         **kwargs)

    def one_seed(rng_key, data):
        key_init, key_run = jax.random.split(rng_key)
        state = algorithm.init(model.init(key_init, jnp.zeros((1, 1)))["params"])
        return vi.run(key_run, algorithm, state, data, num_epochs=config.num_epochs, batch_size=config.batch_size)

    return jax.jit(jax.vmap(one_seed))(seed_keys, train)


def _evaluate(config: Config, rng_key, state, test) -> dict:
    """Learned noise sd, and the test RMSE, NLL and interval coverage of the Gaussian predictive."""
    _, apply_fn = _model(config)
    noise_sd = float(1.0 / jnp.sqrt(vi.hyperparameters(state)["noise_precision"]))
    mean, std = predict.predictive_mean_and_std(rng_key, state.q, apply_fn, test[0], noise_std=noise_sd,
                                                num_samples=config.num_predictive_samples)
    row = dict(learned_noise_sd=noise_sd, rmse=float(jnp.sqrt(predict.mse(mean[:, 0], test[1]))),
               nll=float(predict.gaussian_nll(mean, std, test[1])))
    for level in LEVELS:
        lower, upper = predict.central_interval(mean, std, level=level)
        row[f"coverage_{int(round(100 * level))}"] = float(predict.interval_coverage(lower, upper, test[1]))
    return row


def run(config: Config) -> Result:
    seeds = jnp.arange(config.num_seeds)
    data_keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(1), s))(seeds)
    train = jax.vmap(lambda k: make_data(jax.random.fold_in(k, 0), config.num_train, config.noise_sd))(data_keys)
    test = jax.vmap(lambda k: make_data(jax.random.fold_in(k, 1), config.num_test, config.noise_sd))(data_keys)
    train_keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(2), s))(seeds)
    rows = []
    for objective in METHODS:
        states, infos = _train(config, objective, train_keys, train)
        for seed in range(config.num_seeds):
            state = jax.tree.map(lambda x: x[seed], states)
            row = _evaluate(config, jax.random.fold_in(jax.random.key(3), seed), state,
                            jax.tree.map(lambda x: x[seed], test))
            sample_sd = float(jnp.std(train[1][seed] - jnp.sin(2.0 * train[0][seed, :, 0]), ddof=1))
            rows.append(dict(method=objective, seed=seed, true_noise_sd=config.noise_sd, sample_noise_sd=sample_sd,
                             final_objective=float(jnp.mean(infos.objective[seed, -1])), **row))
    return Result(rows=rows, markdown=_markdown(config, rows))


def _summary(rows, key: str, digits: int = 3) -> str:
    mean, low, high = mean_ci([r[key] for r in rows])
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _markdown(config: Config, rows) -> str:
    lines = [
        "# Learned noise on 1-D regression: MFVI and symmetrized VI", "",
        f"{config.num_seeds} data seeds; {config.num_train} training points x ~ U(-2, 2), y = sin 2x + "
        f"N(0, {config.noise_sd}^2); a 1 -> {config.width} -> 1 tanh MLP; Adam({config.learning_rate}), "
        f"{config.num_epochs} epochs of batch {config.batch_size}; the noise precision learned from "
        f"{config.initial_noise_precision} (sd {config.initial_noise_precision ** -0.5:.3g}). Symmetrized VI: "
        f"InfoNCE with K = {config.num_permutations}, group from infer_symmetry. Coverage on {config.num_test} "
        f"test points per seed, Gaussian predictive with {config.num_predictive_samples} draws of q plus the learned "
        "noise. Mean over seeds [95% t-interval].", "",
        "| method | learned noise sd | sample sd of the true noise | learned - sample (paired) | test RMSE | "
        "test NLL | 50% | 90% | 95% |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for method in METHODS:
        sub = [r for r in rows if r["method"] == method]
        diff = "{:.4f} [{:.4f}, {:.4f}]".format(*paired_ci([r["sample_noise_sd"] for r in sub],
                                                            [r["learned_noise_sd"] for r in sub]))
        cells = [_summary(sub, k, digits=4) for k in ("learned_noise_sd", "sample_noise_sd")] + [diff]
        cells += [_summary(sub, k) for k in ("rmse", "nll", "coverage_50", "coverage_90", "coverage_95")]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", f"True noise sd: {config.noise_sd}; the sample sd is that of the noise actually drawn for the "
              "training set. Coverage columns: the fraction of test targets inside the central 50/90/95% "
              "predictive intervals."]
    return "\n".join(lines)
