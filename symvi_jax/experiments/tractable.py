"""The paper's tractable BNN (Tables 2 and 3, Figure 4) against an exact grid and an HMC reference.

Gelberg et al. (2024, Section 5): f(x) = ReLU(w1 x) + ReLU(w2 x), two hidden units without
biases and output weights fixed to 1, on y = alpha |x| with x ~ U[-10, 10]. The posterior over
(w1, w2) has two mirror modes near (alpha, -alpha) and (-alpha, alpha), swapped by the group
G = S_2 of hidden-unit permutations. Methods, trained on the same data and from the same initial
means per seed: MFVI (the ELBO L) and SGM (L^K with K = 2 uniform permutations).

Reported per (alpha, method, seed):

* ``test_mse`` of the predictive mean over ``num_predictive_samples`` draws of q (Table 2);
* ``elbo`` L / N and ``elbo_symmetrized`` L^G / N = (L + I) / N, exact by enumerating G, both on
  the same ``num_eval_samples`` draws; ``elbo_symmetrized_k`` the paper's estimate L^K with
  K = ``num_eval_permutations`` (Table 3);
* from the exact posterior on a grid (float64; ``symvi_jax.posterior_grid``): ``log_normaliser``
  log Z, ``kl_to_posterior`` KL(q || p) and ``kl_symmetrized_to_posterior`` KL(q^G || p), and
  ``elbo_grid`` = log Z - KL(q || p), the ELBO without Monte Carlo error;
* where q's mean sits: ``mode_axis_position`` t = (mu1 - mu2) / (2 alpha), +-1 at the modes and
  0 at their midpoint, and ``off_axis`` o = (mu1 + mu2) / (2 alpha), 0 on the line through the
  modes and 0.5 at (alpha/2, alpha/2), where both units serve x > 0 and x < 0 goes unfitted.
  ``interpolation`` = (1 - |t|) / 2 is the Section 3 measure (0 on a mode, 0.5 midway).

The HMC reference (``symvi_jax.hmc``, NUTS, symmetrized by random swaps) runs on the posterior
of seed ``figure_seed`` for each alpha and is compared with the grid by total variation.

``sensitivity`` lists variants of the unstated settings (``"key=value,key=value"``); each is
trained and evaluated like the main setting but without the grid and HMC references (its
I(g; w) = KL(q || p) - KL(q^G || p) comes from exact enumeration), and summarised in a table of
the conclusions.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import yaml
from jax.flatten_util import ravel_pytree

from symvi_jax import MLP, PermutationGroup, likelihoods, meanfield, nets, objectives, orbits, posterior_grid, predict, vi
from symvi_jax.experiments import base
from symvi_jax.experiments.base import Result
from symvi_jax.meanfield import MeanFieldState

__all__ = ["Config", "Problem", "problem", "make_data", "log_posterior_fn", "run", "PAPER_TEST_MSE", "PAPER_ELBO"]

METHODS = ("mfvi", "sgm")
METHOD_LABELS = {"mfvi": "MFVI", "sgm": "SGM"}

#: Table 2 of the paper: test MSE, mean and std over 10 seeds, per alpha.
PAPER_TEST_MSE = {
    "mfvi": {0.05: (0.11, 0.22), 0.1: (0.12, 0.16), 0.15: (0.13, 0.15), 0.2: (0.18, 0.19)},
    "sgm": {0.05: (0.09, 0.19), 0.1: (0.09, 0.17), 0.15: (0.10, 0.15), 0.2: (0.12, 0.16)},
}
#: Table 3 of the paper: normalised training ELBO L and L^G (K = 500, 1000 weight samples).
PAPER_ELBO = {
    ("mfvi", "elbo"): {0.05: -0.022, 0.1: -0.025, 0.15: -0.032, 0.2: -0.042},
    ("mfvi", "elbo_symmetrized"): {0.05: -0.009, 0.1: -0.013, 0.15: -0.021, 0.2: -0.031},
    ("sgm", "elbo"): {0.05: -0.023, 0.1: -0.029, 0.15: -0.035, 0.2: -0.043},
    ("sgm", "elbo_symmetrized"): {0.05: -0.004, 0.1: -0.007, 0.15: -0.012, 0.2: -0.019},
}

_TUNABLE = ("noise_precision", "prior_scale", "init_scale", "init_loc_scale", "num_samples", "num_epochs",
            "learning_rate", "num_permutations", "batch_size", "num_seeds")


@dataclasses.dataclass(frozen=True)
class Config:
    alphas: tuple[float, ...] = (0.05, 0.1, 0.15, 0.2)
    # The paper leaves these four unstated; see docs/tractable.md for the choice and the sweep.
    noise_precision: float = 1.0
    prior_scale: float = 1.0
    init_scale: float = 0.048587  # softplus(-3): bayesian-torch's default rho = -3
    init_loc_scale: float = 0.1   # bayesian-torch's default: mu ~ N(0, 0.1^2)
    # The paper's protocol.
    num_train: int = 100
    num_test: int = 100
    batch_size: int = 10
    num_epochs: int = 10
    learning_rate: float = 5e-3
    num_samples: int = 1
    num_permutations: int = 2
    num_seeds: int = 10
    num_predictive_samples: int = 1000
    num_eval_samples: int = 1000
    num_eval_permutations: int = 500
    # The exact reference.
    grid_points: int = 300
    grid_width: float = 10.0
    kl_grid_points: int = 121
    # The HMC reference (one posterior per alpha: seed figure_seed).
    hmc_chains: int = 4
    hmc_warmup: int = 1000
    hmc_samples: int = 2000
    tv_bin_factor: int = 10
    figure_seed: int = 0
    sensitivity: tuple[str, ...] = ()
    seed: int = 0

    def validate(self):
        if not self.alphas:
            raise ValueError("config key 'alphas' must list at least one alpha")
        for alpha in self.alphas:
            if not math.isfinite(alpha) or alpha <= 0:
                raise ValueError(f"config key 'alphas' must hold numbers > 0, got {alpha}")
        for key in ("noise_precision", "prior_scale", "init_scale", "learning_rate", "grid_width"):
            value = getattr(self, key)
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"config key {key!r} must be > 0, got {value}")
        if not math.isfinite(self.init_loc_scale) or self.init_loc_scale < 0:
            raise ValueError(f"config key 'init_loc_scale' must be >= 0, got {self.init_loc_scale}")
        for key in ("num_train", "num_test", "batch_size", "num_epochs", "num_samples", "num_permutations",
                    "num_seeds", "num_predictive_samples", "num_eval_samples", "num_eval_permutations",
                    "hmc_chains", "hmc_warmup", "hmc_samples", "tv_bin_factor"):
            if getattr(self, key) < 1:
                raise ValueError(f"config key {key!r} must be >= 1, got {getattr(self, key)}")
        if self.num_train % self.batch_size:
            raise ValueError(
                f"config key 'batch_size' must divide num_train ({self.num_train}), got {self.batch_size}"
            )
        if self.grid_points < 10 or self.grid_points % self.tv_bin_factor:
            raise ValueError(
                f"config key 'grid_points' must be >= 10 and a multiple of tv_bin_factor ({self.tv_bin_factor}), "
                f"got {self.grid_points}"
            )
        if self.kl_grid_points < 11:
            raise ValueError(f"config key 'kl_grid_points' must be >= 11, got {self.kl_grid_points}")
        if not 0 <= self.figure_seed < self.num_seeds:
            raise ValueError(f"config key 'figure_seed' must lie in [0, num_seeds = {self.num_seeds}), got {self.figure_seed}")
        for entry in self.sensitivity:
            parse_variant(entry)


def parse_variant(entry: str) -> dict:
    """``"init_scale=0.1,noise_precision=10"`` -> ``{"init_scale": 0.1, "noise_precision": 10.0}``."""
    overrides = {}
    types = {f.name: f.type for f in dataclasses.fields(Config)}
    for part in str(entry).split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in _TUNABLE:
            raise ValueError(
                f"config key 'sensitivity' entries must be 'key=value[,key=value]' with keys in {list(_TUNABLE)}, "
                f"got {entry!r}"
            )
        parsed = yaml.safe_load(value)
        overrides[key] = int(parsed) if types[key] == "int" else float(parsed)
    return overrides


# ---- the model ------------------------------------------------------------------------------------


class Problem(NamedTuple):
    """The tractable BNN built from the library's pieces.

    Fields:
      apply_fn: ``(trainable params, x (n, 1)) -> (n, 1)``; the frozen output kernel is ones.
      loglikelihood_fn: per-example Gaussian log-likelihood with the given noise precision.
      group: ``PermutationGroup`` of the full network (|G| = 2).
      template: the trainable params tree (``{"Dense_0": {"kernel": (1, 2)}}``), zeros.
      unravel: 2-vector (w1, w2) -> trainable params tree.
      frozen: the held-out output kernel (ones), invariant under the group; pass it to
        ``vi.build(..., frozen=)`` so that ``init`` can check that.
    """

    apply_fn: Callable
    loglikelihood_fn: Callable
    group: PermutationGroup
    template: dict
    unravel: Callable
    frozen: dict


def problem(noise_precision: float) -> Problem:
    """f(x) = ReLU(w1 x) + ReLU(w2 x): ``MLP(features=(2, 1), use_bias=False)`` with ``Dense_1`` frozen to 1."""
    model = MLP(features=(2, 1), use_bias=False)
    params = model.init(jax.random.key(0), jnp.zeros((1, 1)))["params"]
    group = PermutationGroup.from_params(params)
    trainable, frozen = nets.partition(params, ["Dense_1"])
    frozen = jax.tree.map(jnp.ones_like, frozen)  # output weights fixed to 1

    def apply_fn(p, x):
        return model.apply({"params": nets.combine(p, frozen)}, x)

    template = jax.tree.map(jnp.zeros_like, trainable)
    _, unravel = ravel_pytree(template)
    loglik = likelihoods.gaussian(apply_fn, noise_precision=noise_precision)
    return Problem(apply_fn, loglik, group, template, unravel, frozen)


def make_data(rng_key, alpha, num_points: int):
    """x ~ U[-10, 10] (shape (n, 1)) and y = alpha |x| (shape (n,)), in float32 whether or not x64 is on."""
    x = jax.random.uniform(rng_key, (num_points, 1), minval=-10.0, maxval=10.0, dtype=jnp.float32)
    return x, (alpha * jnp.abs(x[:, 0])).astype(jnp.float32)


def log_posterior_fn(prob: Problem, prior_scale: float, data) -> Callable:
    """params -> log p(Y | X, w) + log N(w; 0, s^2 I), the unnormalised log posterior."""

    def logdensity_fn(params):
        prior = meanfield.normal(jax.tree.map(jnp.zeros_like, params), prior_scale)
        return jnp.sum(prob.loglikelihood_fn(params, data)) + meanfield.log_prob(prior, params)

    return logdensity_fn


def _posterior_std(config: Config) -> float:
    """Approximate posterior std of one weight: 1 / sqrt(tau E[sum_{x>0} x^2] + 1/s^2), E x^2 = 100/3."""
    return 1.0 / math.sqrt(config.noise_precision * config.num_train / 2 * 100.0 / 3.0 + config.prior_scale ** -2)


def _grid(config: Config, alpha: float) -> posterior_grid.Grid:
    half = alpha + config.grid_width * _posterior_std(config)
    return posterior_grid.make_grid((-half, -half), (half, half), config.grid_points)


# ---- training and evaluation ------------------------------------------------------------------


def _seed_keys(config: Config):
    keys = jax.random.split(jax.random.key(config.seed), config.num_seeds)
    return jax.vmap(lambda k: jnp.stack(jax.random.split(k, 4)))(keys)  # data train, data test, init, steps


def _train(config: Config) -> dict:
    """Both methods on all alphas x seeds, vmapped in one jit; numpy arrays (A, seeds, ...) per method.

    Per seed, MFVI and SGM see the same data, initial means and step keys; the evaluation is
    compiled once and vmapped over the two fitted q's.
    """
    prob = problem(config.noise_precision)
    common = dict(data_size=config.num_train, num_samples=config.num_samples, prior_scale=config.prior_scale,
                  init_scale=config.init_scale)
    algorithms = {
        "mfvi": vi.build(prob.loglikelihood_fn, optax.adam(config.learning_rate), **common),
        "sgm": vi.build(prob.loglikelihood_fn, optax.adam(config.learning_rate), objective="symmetrized_elbo",
                        group=prob.group, num_permutations=config.num_permutations, frozen=prob.frozen, **common),
    }
    steps_per_epoch = config.num_train // config.batch_size
    n = config.num_train

    def fit(algorithm, train, loc, key_epochs):
        def epoch(state, key):
            key_order, key_steps = jax.random.split(key)
            order = jax.random.permutation(key_order, n).reshape(steps_per_epoch, config.batch_size)

            def body(state, xs):
                index, key_step = xs
                batch = jax.tree.map(lambda a: jnp.take(a, index, axis=0), train)
                state, info = algorithm.step(key_step, state, batch)
                return state, info.objective

            return jax.lax.scan(body, state, (order, jax.random.split(key_steps, steps_per_epoch)))

        state, trace = jax.lax.scan(epoch, algorithm.init(loc), jax.random.split(key_epochs, config.num_epochs))
        return state.q, trace[-1, -1]

    def evaluate(q, train, test, key_pred, key_eval, key_perm, alpha):
        x_test, y_test = test
        mean = predict.predictive_mean(key_pred, q, prob.apply_fn, x_test,
                                       num_samples=config.num_predictive_samples,
                                       chunk_size=math.gcd(config.num_predictive_samples, 100))
        # L and the exact L^G = L + I on the same draws; L^K with K = num_eval_permutations, again on
        # those draws (symmetrized_elbo samples with the first half of split(key_eval)).
        value, info = objectives.symmetrized_elbo(
            key_eval, q, train, loglikelihood_fn=prob.loglikelihood_fn, group=prob.group, data_size=n,
            prior_scale=config.prior_scale, num_samples=config.num_eval_samples, estimator="exact",
        )
        samples = meanfield.sample(jax.random.split(key_eval)[0], q, config.num_eval_samples)
        terms_k = orbits.mutual_information_terms(key_perm, q, samples, prob.group,
                                                  num_permutations=config.num_eval_permutations)
        elbo = value - info.mutual_information
        loc = q.loc["Dense_0"]["kernel"][0]
        return dict(
            test_mse=predict.mse(mean, y_test),
            elbo=elbo / n,
            elbo_symmetrized=value / n,
            elbo_symmetrized_k=(elbo + jnp.mean(terms_k)) / n,
            mutual_information=info.mutual_information,
            loc=loc,
            scale=meanfield.scale(q)["Dense_0"]["kernel"][0],
            mode_axis_position=(loc[0] - loc[1]) / (2 * alpha),
            off_axis=(loc[0] + loc[1]) / (2 * alpha),
        )

    def one(keys, alpha):
        key_train, key_test, key_init, key_run = keys
        train = make_data(key_train, alpha, config.num_train)
        test = make_data(key_test, alpha, config.num_test)
        loc = jax.tree.map(lambda p: config.init_loc_scale * jax.random.normal(key_init, p.shape), prob.template)
        key_epochs, key_pred, key_eval, key_perm = jax.random.split(key_run, 4)
        fitted = [fit(algorithms[m], train, loc, key_epochs) for m in METHODS]
        qs = jax.tree.map(lambda *xs: jnp.stack(xs), *[q for q, _ in fitted])
        out = jax.vmap(evaluate, in_axes=(0,) + (None,) * 6)(qs, train, test, key_pred, key_eval, key_perm, alpha)
        out["final_objective"] = jnp.stack([value for _, value in fitted]) / n
        return out

    alphas = jnp.asarray(config.alphas)
    per_alpha = jax.vmap(one, in_axes=(0, None))  # seeds
    fn = jax.jit(jax.vmap(per_alpha, in_axes=(None, 0)))  # alphas
    out = {k: np.asarray(v) for k, v in jax.device_get(fn(_seed_keys(config), alphas)).items()}
    return {m: {k: v[:, :, i] for k, v in out.items()} for i, m in enumerate(METHODS)}


def _reference(config: Config, fits: dict) -> dict:
    """Grid posterior per (alpha, seed) and the KLs of every fit, in float64."""
    with jax.enable_x64(True):
        prob = problem(config.noise_precision)
        grids = [_grid(config, a) for a in config.alphas]
        grid_x = jnp.stack([g.x for g in grids])
        grid_y = jnp.stack([g.y for g in grids])
        f64 = lambda a: jnp.asarray(a, jnp.float64)  # noqa: E731

        def one(keys, alpha, gx, gy, locs, scales):
            x, y = make_data(keys[0], alpha, config.num_train)
            data = (f64(x), f64(y))
            logpost = log_posterior_fn(prob, config.prior_scale, data)
            logdensity_fn = lambda w: logpost(prob.unravel(w))  # noqa: E731
            post = posterior_grid.evaluate(logdensity_fn, posterior_grid.Grid(gx, gy), chunk_size=16)
            masses = jnp.exp(posterior_grid.log_cell_masses(post))
            edge = jnp.sum(masses) - jnp.sum(masses[1:-1, 1:-1])
            out = dict(log_normaliser=post.log_normaliser, edge_mass=edge)
            for method in METHODS:
                loc, scale = locs[method], scales[method]
                q = MeanFieldState(prob.unravel(loc), prob.unravel(meanfield.inverse_softplus_scale(scale)))
                grid = posterior_grid.gaussian_grid(loc, scale, config.kl_grid_points)
                log_q = lambda w: meanfield.log_prob(q, prob.unravel(w))  # noqa: E731
                log_qg = lambda w: orbits.symmetrized_log_prob(q, prob.unravel(w), prob.group)  # noqa: E731
                kl, mass = posterior_grid.kl_to_posterior(log_q, logdensity_fn, post.log_normaliser, grid,
                                                          chunk_size=16)
                # E_{q^G} h = E_q h for G-invariant h (the posterior is invariant), so q's grid suffices.
                integral, _ = posterior_grid.integrate(log_q, lambda w: log_qg(w) - logdensity_fn(w), grid,
                                                       chunk_size=16)
                out[f"{method}/kl_to_posterior"] = kl
                out[f"{method}/kl_symmetrized_to_posterior"] = integral + post.log_normaliser * mass
                out[f"{method}/q_mass_on_grid"] = mass
            return out, post.log_density

        # One (alpha, seed) at a time under lax.map: the grids are large, and vmapping every
        # dataset at once would hold all their intermediates in memory together.
        num_alphas, num_seeds = len(config.alphas), config.num_seeds
        flat = lambda a: a.reshape((num_alphas * num_seeds,) + a.shape[2:])  # noqa: E731
        seed_keys = _seed_keys(config)
        xs = (
            jnp.tile(seed_keys, (num_alphas,) + (1,) * (seed_keys.ndim - 1)),
            jnp.repeat(f64(jnp.asarray(config.alphas)), num_seeds),
            jnp.repeat(grid_x, num_seeds, axis=0),
            jnp.repeat(grid_y, num_seeds, axis=0),
            {m: flat(f64(fits[m]["loc"])) for m in METHODS},
            {m: flat(f64(fits[m]["scale"])) for m in METHODS},
        )
        out, log_density = jax.jit(lambda xs: jax.lax.map(lambda x: one(*x), xs))(xs)
        out = {k: np.asarray(v).reshape(num_alphas, num_seeds) for k, v in jax.device_get(out).items()}
        out["log_density_figure"] = np.asarray(log_density).reshape(
            (num_alphas, num_seeds) + log_density.shape[1:])[:, config.figure_seed]
        out["grid_x"], out["grid_y"] = np.asarray(grid_x), np.asarray(grid_y)
    return out


def _hmc_reference(config: Config, reference: dict) -> dict:
    """NUTS on the posterior of ``figure_seed`` for every alpha, symmetrized, and TV against the grid."""
    from symvi_jax import hmc  # here, not at the top: demo imports this module for problem() only

    prob = problem(config.noise_precision)
    keys = _seed_keys(config)[config.figure_seed]

    def one(alpha, key):
        data = make_data(keys[0], alpha, config.num_train)
        logdensity_fn = log_posterior_fn(prob, config.prior_scale, data)
        key_init, key_run, key_sym = jax.random.split(key, 3)
        init = jax.tree.map(
            lambda p: config.prior_scale * jax.random.normal(key_init, (config.hmc_chains,) + p.shape), prob.template
        )
        positions, info = hmc.sample(key_run, logdensity_fn, init, num_warmup=config.hmc_warmup,
                                     num_samples=config.hmc_samples)
        symmetric = hmc.symmetrize(key_sym, positions, prob.group)
        return positions["Dense_0"]["kernel"][..., 0, :], symmetric["Dense_0"]["kernel"][..., 0, :], info

    alpha_keys = jax.random.split(jax.random.fold_in(jax.random.key(config.seed), 1), len(config.alphas))
    raw, symmetric, info = jax.jit(jax.vmap(one))(jnp.asarray(config.alphas), alpha_keys)
    raw, symmetric = np.asarray(raw), np.asarray(symmetric)  # (A, chains, samples, 2)

    factor = config.tv_bin_factor
    num_draws = config.hmc_chains * config.hmc_samples

    @jax.jit
    def distances(gx, gy, log_density, log_normaliser, samples, key):
        post = posterior_grid.GridPosterior(posterior_grid.Grid(gx, gy), log_density, log_normaliser)
        tv = posterior_grid.total_variation(samples, post, factor)
        exact = jax.vmap(lambda k: posterior_grid.sample(k, post, num_draws))(jax.random.split(key, 5))
        floor = jnp.mean(jax.vmap(lambda x: posterior_grid.total_variation(x, post, factor))(exact))
        return tv, floor

    with jax.enable_x64(True):
        tv, floor = jax.vmap(distances, in_axes=(0, 0, 0, 0, 0, None))(
            jnp.asarray(reference["grid_x"]), jnp.asarray(reference["grid_y"]),
            jnp.asarray(reference["log_density_figure"]),
            jnp.asarray(reference["log_normaliser"][:, config.figure_seed]),
            jnp.asarray(symmetric.reshape(len(config.alphas), -1, 2), jnp.float64),
            jax.random.key(config.seed + 7),
        )
    out = {"raw": raw, "symmetric": symmetric, "tv": np.asarray(tv).tolist(), "tv_floor": np.asarray(floor).tolist(),
           "rhat": [], "ess": [], "both_modes_chains": [], "acceptance": np.asarray(info.acceptance_rate),
           "divergent": np.asarray(info.num_divergent)}
    import blackjax
    for i in range(len(config.alphas)):
        # Convergence on G-invariant statistics (the sorted weights), per chain.
        sorted_w = np.sort(raw[i], axis=-1)
        out["rhat"].append(max(float(blackjax.diagnostics.potential_scale_reduction(sorted_w[..., k]))
                               for k in range(2)))
        out["ess"].append(min(float(blackjax.diagnostics.effective_sample_size(sorted_w[..., k]))
                              for k in range(2)))
        upper = raw[i][..., 0] > raw[i][..., 1]
        out["both_modes_chains"].append(int(np.sum(upper.any(axis=1) & (~upper).any(axis=1))))
    return out


def _evaluate(config: Config, with_references: bool) -> dict:
    """Train and evaluate; with the grid and HMC references for the main setting only."""
    result = {"fits": _train(config), "reference": None}
    if with_references:
        result["reference"] = _reference(config, result["fits"])
        result["hmc"] = _hmc_reference(config, result["reference"])
    return result


# ---- reporting ------------------------------------------------------------------------------------


_ROW_KEYS = ("test_mse", "elbo", "elbo_symmetrized", "elbo_symmetrized_k", "mutual_information",
             "final_objective", "mode_axis_position", "off_axis")


def _rows(config: Config, evaluation: dict, variant: str = "") -> list:
    fits, ref = evaluation["fits"], evaluation["reference"]
    rows = []
    for i, alpha in enumerate(config.alphas):
        for method in METHODS:
            for seed in range(config.num_seeds):
                f = fits[method]
                row = {"variant": variant or "main", "alpha": alpha, "method": method, "seed": seed}
                row.update({k: float(f[k][i, seed]) for k in _ROW_KEYS})
                row["interpolation"] = (1.0 - abs(row["mode_axis_position"])) / 2.0
                row["loc"] = [float(v) for v in f["loc"][i, seed]]
                row["scale"] = [float(v) for v in f["scale"][i, seed]]
                if ref is None:  # sensitivity variants: no grid reference
                    rows.append(row)
                    continue
                row["log_normaliser"] = float(ref["log_normaliser"][i, seed])
                row["kl_to_posterior"] = float(ref[f"{method}/kl_to_posterior"][i, seed])
                row["kl_symmetrized_to_posterior"] = float(ref[f"{method}/kl_symmetrized_to_posterior"][i, seed])
                row["elbo_grid"] = (row["log_normaliser"] - row["kl_to_posterior"]) / config.num_train
                row["q_mass_on_grid"] = float(ref[f"{method}/q_mass_on_grid"][i, seed])
                row["posterior_edge_mass"] = float(ref["edge_mass"][i, seed])
                rows.append(row)
    return rows


def _select(rows, **match):
    return [r for r in rows if all(r[k] == v for k, v in match.items())]


def _values(rows, key, **match):
    return np.array([r[key] for r in _select(rows, **match)], dtype=np.float64)


def _fmt(values, digits=3, std=True):
    if std:
        return f"{values.mean():.{digits}f} +- {values.std(ddof=1) if len(values) > 1 else 0.0:.{digits}f}"
    return f"{values.mean():.{digits}f}"


def _placement(row) -> str:
    t, o = abs(row["mode_axis_position"]), abs(row["off_axis"])
    if o >= 0.25:
        return "same_sign"
    if t < 0.5:
        return "between"
    return "mode"


def _paired(rows, key, alpha):
    """SGM - MFVI per seed: mean and its standard error."""
    d = _values(rows, key, alpha=alpha, method="sgm") - _values(rows, key, alpha=alpha, method="mfvi")
    return d.mean(), d.std(ddof=1) / math.sqrt(len(d)) if len(d) > 1 else float("nan")


def _conclusions(config: Config, rows) -> dict:
    """The claims the issue asks to show, evaluated on these rows (per alpha)."""
    out = {}
    for alpha in config.alphas:
        mfvi = _select(rows, alpha=alpha, method="mfvi")
        sgm = _select(rows, alpha=alpha, method="sgm")
        out[alpha] = dict(
            n=len(mfvi),
            mfvi_same=sum(_placement(r) == "same_sign" for r in mfvi),
            sgm_same=sum(_placement(r) == "same_sign" for r in sgm),
            mfvi_between=sum(_placement(r) == "between" for r in mfvi),
            sgm_between=sum(_placement(r) == "between" for r in sgm),
            mfvi_interp=np.mean([r["interpolation"] for r in mfvi]),
            sgm_interp=np.mean([r["interpolation"] for r in sgm]),
            mse=_paired(rows, "test_mse", alpha),
            elbo_g=_paired(rows, "elbo_symmetrized", alpha),
            # I(g; w) = KL(q || p) - KL(q^G || p): on the grid where it was computed, else by enumeration.
            kl_gap_min=min(r["kl_to_posterior"] - r["kl_symmetrized_to_posterior"] if "kl_to_posterior" in r
                           else r["mutual_information"] for r in mfvi + sgm),
        )
    return out


def _markdown(config: Config, rows, evaluation, sensitivity) -> str:
    n = config.num_seeds
    alphas = config.alphas
    header = "| | " + " | ".join(f"a = {a:g}" for a in alphas) + " |"
    rule = "| --- |" + " --- |" * len(alphas)
    lines = [
        "# The tractable BNN: MFVI vs SGM against the exact posterior (Tables 2 and 3, Figure 4)",
        "",
        f"f(x) = ReLU(w1 x) + ReLU(w2 x) on y = a|x|, x ~ U[-10, 10], N = {config.num_train} train / "
        f"{config.num_test} test. Adam lr {config.learning_rate:g}, batch {config.batch_size}, "
        f"{config.num_epochs} epochs ({config.num_epochs * config.num_train // config.batch_size} steps), "
        f"S = {config.num_samples} weight sample(s) per step, SGM with K = {config.num_permutations}. "
        f"Unstated in the paper, chosen here: noise precision tau = {config.noise_precision:g}, prior N(0, "
        f"{config.prior_scale:g}^2), initial sigma = {config.init_scale:g}, initial means ~ N(0, "
        f"{config.init_loc_scale:g}^2). {n} seeds (mean +- std, as in the paper); MFVI and SGM share data and "
        "initial means per seed.",
        "",
        "## Table 2: test MSE (predictive mean of "
        f"{config.num_predictive_samples} draws of q)",
        "",
        header,
        rule,
    ]
    for method in METHODS:
        ours = [_fmt(_values(rows, "test_mse", alpha=a, method=method)) for a in alphas]
        paper = [("%.2f +- %.2f" % PAPER_TEST_MSE[method][a]) if a in PAPER_TEST_MSE[method] else "-" for a in alphas]
        lines.append(f"| {METHOD_LABELS[method]} (ours) | " + " | ".join(ours) + " |")
        lines.append(f"| {METHOD_LABELS[method]} (paper) | " + " | ".join(paper) + " |")
    diffs = [_paired(rows, "test_mse", a) for a in alphas]
    lines.append("| SGM - MFVI, paired (mean +- s.e.) | " + " | ".join(f"{m:+.3f} +- {s:.3f}" for m, s in diffs) + " |")
    lines += [
        "",
        "## Table 3: normalised training ELBO",
        "",
        f"L / N and L^G / N = (L + I(g; w)) / N on the {config.num_train} training points, from "
        f"{config.num_eval_samples} draws of q (mean over seeds). 'exact' enumerates G = S_2; 'K = "
        f"{config.num_eval_permutations}' is the paper's estimator L^K on the same draws; 'grid' is "
        "(log Z - KL(q || p)) / N by numerical integration (no Monte Carlo error). Our log-likelihood keeps "
        f"the Gaussian constant 0.5 log(tau / 2 pi) = {0.5 * math.log(config.noise_precision / (2 * math.pi)):.3f} "
        "per point.",
        "",
        header,
        rule,
    ]
    for method in METHODS:
        label = METHOD_LABELS[method]
        rows_spec = [
            (f"{label}, L (ours)", "elbo"),
            (f"{label}, L (ours, grid)", "elbo_grid"),
            (f"{label}, L (paper)", ("paper", "elbo")),
            (f"{label}, L^G (ours, exact)", "elbo_symmetrized"),
            (f"{label}, L^G (ours, K = {config.num_eval_permutations})", "elbo_symmetrized_k"),
            (f"{label}, L^G (paper, K = 500)", ("paper", "elbo_symmetrized")),
            (f"{label}, (L^G - L) (ours)", "gap"),
        ]
        for text, key in rows_spec:
            if isinstance(key, tuple):
                cells = [f"{PAPER_ELBO[(method, key[1])][a]:.3f}" if a in PAPER_ELBO[(method, key[1])] else "-"
                         for a in alphas]
            elif key == "gap":
                cells = [f"{(_values(rows, 'elbo_symmetrized', alpha=a, method=method) - _values(rows, 'elbo', alpha=a, method=method)).mean():.4f}"
                         for a in alphas]
            else:
                cells = [f"{_values(rows, key, alpha=a, method=method).mean():.4f}" for a in alphas]
            lines.append(f"| {text} | " + " | ".join(cells) + " |")
    diffs = [_paired(rows, "elbo_symmetrized", a) for a in alphas]
    lines.append("| L^G: SGM - MFVI, paired (mean +- s.e.) | " + " | ".join(f"{m:+.4f} +- {s:.4f}" for m, s in diffs) + " |")
    lines.append("| bound: max (L^G - L) = log 2 / N | " + " | ".join(f"{math.log(2) / config.num_train:.4f}" for _ in alphas) + " |")

    lines += [
        "",
        "## Against the exact posterior (grid, float64)",
        "",
        f"log Z from a {config.grid_points}^2 grid over the box +-(a + {config.grid_width:g} posterior std); "
        f"KL(q || p) = E_q[log q - log p~] + log Z and KL(q^G || p) on a {config.kl_grid_points}^2 grid adapted "
        "to q. Mean +- std over seeds.",
        "",
        header,
        rule,
    ]
    for method in METHODS:
        label = METHOD_LABELS[method]
        for text, key in ((f"{label}: KL(q \\|\\| p)", "kl_to_posterior"),
                          (f"{label}: KL(q^G \\|\\| p)", "kl_symmetrized_to_posterior")):
            lines.append(f"| {text} | " + " | ".join(_fmt(_values(rows, key, alpha=a, method=method))
                                                     for a in alphas) + " |")
    for method in METHODS:
        cells = []
        for a in alphas:
            d = (_values(rows, "kl_to_posterior", alpha=a, method=method)
                 - _values(rows, "kl_symmetrized_to_posterior", alpha=a, method=method))
            cells.append(f"{d.min():.3f} / {d.mean():.3f}")
        lines.append(f"| {METHOD_LABELS[method]}: KL(q) - KL(q^G), min / mean over seeds | " + " | ".join(cells) + " |")
    worst_mass = min(abs(r["q_mass_on_grid"]) for r in rows)
    worst_edge = max(r["posterior_edge_mass"] for r in rows)
    z = []
    for r in rows:
        z.append(abs(r["elbo"] - r["elbo_grid"]))
    lines += [
        "",
        f"Checks: posterior mass in the outermost ring of grid cells <= {worst_edge:.1e}; q's mass on its KL "
        f"grid >= {worst_mass:.6f}; |L_MC - L_grid| / N <= {max(z):.4f} (Monte Carlo error of L over "
        f"{config.num_eval_samples} draws).",
        "",
        "## Where q's mean sits",
        "",
        "t = (mu1 - mu2) / (2a) is +-1 at the modes (a, -a), (-a, a) and 0 at their midpoint; o = (mu1 + mu2) / "
        "(2a) is 0 on the line through the modes. A run counts as 'between' if |t| < 0.5 and |o| < 0.25, "
        "'same sign' if |o| >= 0.25 (both units on one side of 0: the fit leaves one half of the data "
        "unexplained), 'mode' otherwise. 'interpolation' is (1 - |t|) / 2 (Section 3's measure: 0 on a "
        "mode, 0.5 midway).",
        "",
        header,
        rule,
    ]
    for method in METHODS:
        sel = {a: _select(rows, alpha=a, method=method) for a in alphas}
        counts = [
            "/".join(str(sum(_placement(r) == c for r in sel[a])) for c in ("between", "mode", "same_sign"))
            for a in alphas
        ]
        lines.append(f"| {METHOD_LABELS[method]}: between / mode / same sign | " + " | ".join(counts) + " |")
        lines.append(f"| {METHOD_LABELS[method]}: interpolation | "
                     + " | ".join(_fmt(_values(rows, "interpolation", alpha=a, method=method)) for a in alphas) + " |")
        lines.append(f"| {METHOD_LABELS[method]}: mean sigma of q | "
                     + " | ".join(f"{np.mean([np.mean(r['scale']) for r in sel[a]]):.4f}" for a in alphas) + " |")

    if "hmc" in evaluation:
        h = evaluation["hmc"]
        lines += [
            "",
            "## HMC reference",
            "",
            f"BlackJAX NUTS, {config.hmc_chains} chains started from the prior, {config.hmc_warmup} window-adaptation "
            f"steps and {config.hmc_samples} draws each, every draw swapped with probability 1/2; on the "
            f"posterior of seed {config.figure_seed}. TV is the total variation between the HMC draws and the grid "
            f"on {config.grid_points // config.tv_bin_factor}^2 bins; 'floor' is the TV of as many exact i.i.d. "
            "draws from the grid (mean of 5), i.e. what TV is for a perfect sampler. R-hat and ESS on the sorted "
            "weights (invariant under G), before symmetrization.",
            "",
            header,
            rule,
            "| TV(HMC, grid) | " + " | ".join(f"{v:.4f}" for v in h["tv"]) + " |",
            "| TV floor (i.i.d. grid draws) | " + " | ".join(f"{v:.4f}" for v in h["tv_floor"]) + " |",
            "| max R-hat | " + " | ".join(f"{v:.3f}" for v in h["rhat"]) + " |",
            "| min ESS | " + " | ".join(f"{v:.0f}" for v in h["ess"]) + " |",
            "| mean acceptance | " + " | ".join(f"{np.mean(v):.2f}" for v in h["acceptance"]) + " |",
            "| divergences | " + " | ".join(f"{int(np.sum(v))}" for v in h["divergent"]) + " |",
            "| chains visiting both modes | " + " | ".join(f"{v}/{config.hmc_chains}" for v in h["both_modes_chains"]) + " |",
        ]

    lines += ["", "## Do the conclusions hold?", ""]
    lines += _conclusion_table(config, [("main", _conclusions(config, rows))] + sensitivity)
    return "\n".join(lines)


def _conclusion_table(config: Config, entries) -> list:
    lines = [
        "Per setting and a: runs whose mean sits between the modes and runs stuck with both units on one "
        "side (MFVI / SGM, of n seeds); SGM - MFVI in test MSE and in L^G / N, paired by seed (mean +- s.e.; "
        "'*' where |mean| > 2 s.e.); the smallest I(g; w) = KL(q || p) - KL(q^G || p) over all runs of the "
        "setting (on the grid for 'main', by exact enumeration for the variants). The paper's claims are: "
        "MFVI between the modes at small a and SGM not; d test MSE < 0 and d L^G > 0 at every a; I > 0.",
        "",
        "| setting | a | n | between MFVI / SGM | same sign MFVI / SGM | d test MSE | d L^G / N | min I |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def cell(pair, digits):
        mean, se = pair
        star = "*" if abs(mean) > 2 * se else ""
        return f"{mean:+.{digits}f} +- {se:.{digits}f}{star}"

    for name, per_alpha in entries:
        for alpha, c in per_alpha.items():
            lines.append(
                f"| {name} | {alpha:g} | {c['n']} | {c['mfvi_between']} / {c['sgm_between']} | "
                f"{c['mfvi_same']} / {c['sgm_same']} | {cell(c['mse'], 4)} | {cell(c['elbo_g'], 4)} | "
                f"{c['kl_gap_min']:.3f} |"
            )
    lines += ["", "Summary per setting: at how many of the a values SGM has the lower mean test MSE and the higher "
              "mean L^G (significant ones in brackets), and the 'between' counts summed over a.", "",
              "| setting | SGM lower MSE | SGM higher L^G | between MFVI / SGM |", "| --- | --- | --- | --- |"]
    for name, per_alpha in entries:
        cs = list(per_alpha.values())
        lower = sum(c["mse"][0] < 0 for c in cs)
        lower_sig = sum(c["mse"][0] < -2 * c["mse"][1] for c in cs)
        higher = sum(c["elbo_g"][0] > 0 for c in cs)
        higher_sig = sum(c["elbo_g"][0] > 2 * c["elbo_g"][1] for c in cs)
        between = f"{sum(c['mfvi_between'] for c in cs)} / {sum(c['sgm_between'] for c in cs)}"
        lines.append(f"| {name} | {lower}/{len(cs)} ({lower_sig}) | {higher}/{len(cs)} ({higher_sig}) | {between} |")
    return lines


# ---- figures -------------------------------------------------------------------------------------


def _figure4(config: Config, rows, evaluation) -> Callable[[str], None]:
    def save(path):
        ref = evaluation["reference"]
        hmc_out = evaluation.get("hmc")
        num = len(config.alphas)
        with base.figure(path, num, 3, figsize=(11, 3.4 * num), squeeze=False, dpi=90) as (fig, axes):
            for i, alpha in enumerate(config.alphas):
                gx, gy = ref["grid_x"][i], ref["grid_y"][i]
                log_post = ref["log_density_figure"][i]
                post = np.exp(log_post - log_post.max())
                xx, yy = np.meshgrid(gx, gy, indexing="ij")
                ax = axes[i, 0]
                ax.contourf(xx, yy, post, levels=np.linspace(0.01, 1, 12), cmap="Greys")
                if hmc_out is not None:
                    pts = hmc_out["symmetric"][i].reshape(-1, 2)
                    pts = pts[np.random.default_rng(0).permutation(len(pts))[:600]]
                    ax.scatter(pts[:, 0], pts[:, 1], s=1, color="tab:red", alpha=0.35, label="HMC (symmetrized)")
                    ax.legend(loc="upper right", fontsize=7)
                ax.set_title(f"a = {alpha:g}: exact posterior (grid)")
                for j, method in enumerate(METHODS, start=1):
                    ax = axes[i, j]
                    ax.contour(xx, yy, post, levels=6, colors="grey", linewidths=0.6)
                    row = _select(rows, alpha=alpha, method=method, seed=config.figure_seed)[0]
                    loc, scale = np.array(row["loc"]), np.array(row["scale"])
                    log_q = -0.5 * (((xx - loc[0]) / scale[0]) ** 2 + ((yy - loc[1]) / scale[1]) ** 2)
                    ax.contourf(xx, yy, np.exp(log_q), levels=np.linspace(0.05, 1, 8), cmap="Blues", alpha=0.8)
                    if method == "sgm":  # the swapped copy: q^G is the average of the two
                        log_s = -0.5 * (((xx - loc[1]) / scale[1]) ** 2 + ((yy - loc[0]) / scale[0]) ** 2)
                        ax.contour(xx, yy, np.exp(log_s), levels=np.linspace(0.05, 1, 4), colors="tab:blue",
                                   linestyles="dashed", linewidths=0.8)
                    ax.plot(*loc, "o", color="tab:blue", ms=3)
                    ax.set_title(f"{METHOD_LABELS[method]}: q" + (" (dashed: swapped copy)" if method == "sgm" else ""))
                for ax in axes[i]:
                    ax.plot([alpha, -alpha], [-alpha, alpha], "x", color="black", ms=6)
                    ax.set_xlim(gx[0], gx[-1])
                    ax.set_ylim(gy[0], gy[-1])
                    ax.set_aspect("equal")
                    ax.set_xlabel("w1")
                    ax.set_ylabel("w2")
            fig.suptitle(f"Figure 4 (seed {config.figure_seed}): x = the modes (a, -a), (-a, a)")

    return save


# ---- entry point ---------------------------------------------------------------------------------


def run(config: Config) -> Result:
    evaluation = _evaluate(config, with_references=True)
    rows = _rows(config, evaluation)
    sensitivity = []
    for entry in config.sensitivity:
        variant = dataclasses.replace(config, **parse_variant(entry), sensitivity=())
        variant.validate()
        variant_rows = _rows(variant, _evaluate(variant, with_references=False), variant=entry)
        rows += variant_rows
        sensitivity.append((entry, _conclusions(variant, variant_rows)))
    main_rows = _select(rows, variant="main")
    markdown = _markdown(config, main_rows, evaluation, sensitivity)
    h = evaluation["hmc"]
    for i, alpha in enumerate(config.alphas):
        rows.append({"variant": "main", "alpha": alpha, "method": "hmc", "seed": config.figure_seed,
                     "total_variation": h["tv"][i], "total_variation_floor": h["tv_floor"][i],
                     "rhat": h["rhat"][i], "ess": h["ess"][i],
                     "acceptance_rate": float(np.mean(h["acceptance"][i])),
                     "num_divergent": int(np.sum(h["divergent"][i])),
                     "chains_visiting_both_modes": h["both_modes_chains"][i]})
    return Result(rows=rows, markdown=markdown, figures={"figure4.png": _figure4(config, main_rows, evaluation)})
