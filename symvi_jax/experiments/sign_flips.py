"""How much of I(g; w) comes from sign flips and how much from permutations, on tanh nets.

A one-hidden-layer tanh net x -> tanh(x W_1 + b_1) W_2 + b_2 is invariant under permuting its d
hidden units and under flipping any unit's sign (tanh is odd), so its group is the signed
permutations, |G| = 2^d d!, against d! for permutations alone. Both orbit sums are permanents
(``permanent``; with flips B[i, j] = logaddexp(A[i, j], A^-[i, j])), so both I's are exact up to
the Monte Carlo average over w ~ q.

For each width the net is trained with MFVI (``vi.run``) on ``num_train`` generated regression
points, y = sin(2x) + noise, from an init of scale ``init_scale``; then, on the same S draws of q,

    I_perm = E_q[log q(w) - log q^{S_d}(w)],   I_signed = E_q[log q(w) - log q^{G}(w)],

and the part due to flips is I_signed - I_perm (<= d log 2). Both are reported at the initial q
and at the trained q, with their Monte Carlo standard errors.

    symvi-jax sign-flips --config configs/sign_flips.yaml --out out/sign_flips
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax

from symvi_jax import WeightSymmetry, likelihoods, meanfield, orbits, vi
from symvi_jax.experiments.base import Result

__all__ = ["Config", "run", "groups"]


@dataclasses.dataclass(frozen=True)
class Config:
    seed: int = 0
    widths: tuple[int, ...] = (3, 5, 8)
    num_train: int = 20
    noise_scale: float = 0.3
    num_epochs: int = 2000
    learning_rate: float = 0.01
    init_scale: float = 0.3
    prior_scale: float = 1.0
    num_mi_samples: int = 256

    def validate(self) -> None:
        if not self.widths or any(w < 1 or w > 12 for w in self.widths):
            raise ValueError(f"config key 'widths' must be ints in [1, 12] (exact permanents), got {self.widths}")
        for key in ("num_train", "num_epochs", "num_mi_samples"):
            if getattr(self, key) < 1:
                raise ValueError(f"config key {key!r} must be a positive int, got {getattr(self, key)}")
        for key in ("noise_scale", "learning_rate", "init_scale", "prior_scale"):
            if not getattr(self, key) > 0:
                raise ValueError(f"config key {key!r} must be > 0, got {getattr(self, key)}")


def _init(rng_key, width: int) -> dict:
    k1, k2 = jax.random.split(rng_key)
    return {"w1": jax.random.normal(k1, (1, width)), "b1": jnp.zeros((width,)),
            "w2": jax.random.normal(k2, (width, 1)) / math.sqrt(width), "b2": jnp.zeros((1,))}


def _apply(params, x):
    return jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


def groups(params) -> tuple[WeightSymmetry, WeightSymmetry]:
    """(permutations only, signed permutations) of the hidden units, checked against the net."""
    axes = {"hidden": [("w1", 1), ("b1", 0), ("w2", 0)]}
    return WeightSymmetry.from_axes(params, axes), WeightSymmetry.from_axes(params, axes, sign_flips=["hidden"])


def _mi(rng_key, q, group, num_samples):
    samples = meanfield.sample(rng_key, q, num_samples)
    terms = orbits.mutual_information_terms(rng_key, q, samples, group, num_permutations=None, estimator="exact")
    return float(jnp.mean(terms)), float(jnp.std(terms) / math.sqrt(num_samples))


def run(config: Config) -> Result:
    key = jax.random.key(config.seed)
    key_data, key_noise, key_init, key_train, key_mi = jax.random.split(key, 5)
    x = jax.random.uniform(key_data, (config.num_train, 1), minval=-2.0, maxval=2.0)
    y = jnp.sin(2.0 * x) + config.noise_scale * jax.random.normal(key_noise, x.shape)
    rows = []
    for width in config.widths:
        params = _init(jax.random.fold_in(key_init, width), width)
        plain, signed = groups(params)
        signed.check(_apply, _perturbed(params), x)
        algorithm = vi.build(likelihoods.gaussian(_apply, noise_precision=1.0 / config.noise_scale**2),
                             optax.adam(config.learning_rate), data_size=config.num_train,
                             init_scale=config.init_scale, prior_scale=config.prior_scale)
        state = algorithm.init(params)
        trained, _ = jax.jit(lambda k, s: vi.run(k, algorithm, s, (x, y), num_epochs=config.num_epochs,
                                                 batch_size=config.num_train))(key_train, state)
        for stage, q in (("init", state.q), ("trained", trained.q)):
            key_stage = jax.random.fold_in(key_mi, width)
            i_perm, se_perm = _mi(key_stage, q, plain, config.num_mi_samples)
            i_signed, se_signed = _mi(key_stage, q, signed, config.num_mi_samples)
            rows.append(dict(width=width, stage=stage, mi_permutations=i_perm, se_permutations=se_perm,
                             mi_signed=i_signed, se_signed=se_signed, mi_from_flips=i_signed - i_perm,
                             log_order_permutations=plain.log_order(), log_order_signed=signed.log_order()))
    return Result(rows=rows, markdown=_markdown(config, rows))


def _perturbed(params):
    """Biases off zero, so that check() can see a wrong flip claim."""
    return jax.tree.map(lambda p: p + 0.3, params)


def _markdown(config: Config, rows) -> str:
    lines = ["# Sign flips vs permutations in I(g; w), tanh nets with one hidden layer", "",
             f"MFVI on {config.num_train} points (y = sin 2x + N(0, {config.noise_scale}^2)), {config.num_epochs} "
             f"full-batch steps, init scale {config.init_scale}; exact I by the permanent over "
             f"{config.num_mi_samples} draws of q (+- one standard error).", "",
             "| width | q | I_perm | log d! | I_signed | log 2^d d! | I_signed - I_perm | d log 2 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(
            f"| {r['width']} | {r['stage']} | {r['mi_permutations']:.4f} +- {r['se_permutations']:.4f} | "
            f"{r['log_order_permutations']:.3f} | {r['mi_signed']:.4f} +- {r['se_signed']:.4f} | "
            f"{r['log_order_signed']:.3f} | {r['mi_from_flips']:.4f} | {r['width'] * math.log(2):.3f} |")
    return "\n".join(lines)
