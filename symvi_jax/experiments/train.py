"""Train an MLP with vi.fit on generated data, checkpointed, resumable with --resume (no download).

The data are Gaussian blobs: ``num_classes`` class means drawn from N(0, separation^2 I) in
``num_features`` dimensions and points around them with unit noise, generated from ``seed``.
The model is an MLP with hidden widths ``hidden``; the objective is the ELBO (MFVI) or the
symmetrized ELBO L^K (SGM). Training is ``vi.fit``: shuffled minibatches, checkpoints of the whole
training state into ``OUT/checkpoints`` every ``checkpoint_every`` steps (default: once per
epoch) and after the last step.

``symvi-jax train --out DIR --resume`` continues from the latest checkpoint in ``DIR/checkpoints``
after a crash or a kill; the final state and the metrics are bitwise identical to an
uninterrupted run of the same config on the same machine (``tests/test_train.py`` kills a run with
SIGKILL to check). A finished run is not trained again. Reported: the final training objective
per example, test accuracy / NLL / ECE of the predictive with ``num_eval_samples`` draws, the
number of skipped non-finite steps, and sha256 digests of the final state and of the history
(equal digests mean bitwise-equal arrays).
"""

from __future__ import annotations

import dataclasses
import math
import sys
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from symvi_jax import MLP, _checks, PermutationGroup, likelihoods, orbits, predict, vi
from symvi_jax.experiments.base import Result, to_jsonable

__all__ = ["Config", "run", "make_data"]

OBJECTIVES = ("elbo", "symmetrized_elbo")


@dataclasses.dataclass(frozen=True)
class Config:
    seed: int = 0
    num_train: int = 256
    num_test: int = 256
    num_features: int = 4
    num_classes: int = 3
    separation: float = 2.0
    hidden: tuple[int, ...] = (8,)
    objective: str = "symmetrized_elbo"
    estimator: str = "infonce"
    num_permutations: Optional[int] = 4
    num_samples: int = 2
    num_epochs: int = 20
    batch_size: int = 32
    learning_rate: float = 0.01
    init_scale: float = 0.01
    prior_scale: float = 1.0
    skip_nonfinite: bool = False
    checkpoint_every: Optional[int] = None
    num_eval_samples: int = 100

    def validate(self):
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"config key 'seed' must be in [0, 2**32), got {self.seed}")
        for key in ("num_train", "num_test", "num_features", "num_samples", "num_epochs", "batch_size",
                    "num_eval_samples"):
            if getattr(self, key) < 1:
                raise ValueError(f"config key {key!r} must be >= 1, got {getattr(self, key)}")
        if self.num_classes < 2:
            raise ValueError(f"config key 'num_classes' must be >= 2, got {self.num_classes}")
        for key in ("separation", "learning_rate", "init_scale", "prior_scale"):
            value = getattr(self, key)
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"config key {key!r} must be finite and > 0, got {value}")
        if not self.hidden or any(width < 1 for width in self.hidden):
            raise ValueError(f"config key 'hidden' must be a non-empty list of positive widths, got {list(self.hidden)}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"config key 'objective' must be one of {list(OBJECTIVES)}, got {self.objective!r}")
        if self.estimator not in orbits.ESTIMATORS:
            raise ValueError(f"config key 'estimator' must be one of {sorted(orbits.ESTIMATORS)}, got {self.estimator!r}")
        if self.num_permutations is not None and self.num_permutations < 1:
            raise ValueError(f"config key 'num_permutations' must be >= 1 or null, got {self.num_permutations}")
        if self.batch_size > self.num_train:
            raise ValueError(f"config key 'batch_size' ({self.batch_size}) must not exceed num_train ({self.num_train})")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise ValueError(f"config key 'checkpoint_every' must be >= 1 or null, got {self.checkpoint_every}")


def make_data(rng_key, config: Config):
    """The Gaussian-blob problem: ``(train, test)``, each ``(inputs float32[n, D], labels int32[n])``."""
    key_means, key_train, key_test = jax.random.split(rng_key, 3)
    means = config.separation * jax.random.normal(key_means, (config.num_classes, config.num_features))

    def points(key, num):
        key_labels, key_noise = jax.random.split(key)
        labels = jax.random.randint(key_labels, (num,), 0, config.num_classes)
        return means[labels] + jax.random.normal(key_noise, (num, config.num_features)), labels

    return points(key_train, config.num_train), points(key_test, config.num_test)


def run(config: Config, *, checkpoint_dir: Optional[str] = None, resume: bool = False) -> Result:
    """Train and evaluate; checkpoints go to ``checkpoint_dir`` (the CLI passes ``OUT/checkpoints``)."""
    key_data, key_init, key_fit, key_eval = jax.random.split(jax.random.key(config.seed), 4)  # noqa: RUF059
    # Everything outside vi.fit is jitted too: eager op-by-op dispatch compiles every op separately.
    train, test = jax.jit(make_data, static_argnums=1)(key_data, config)

    model = MLP(features=(*config.hidden, config.num_classes))
    params = jax.jit(model.init)(key_init, jnp.zeros((1, config.num_features)))["params"]
    apply_fn = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
    kwargs = {}
    if config.objective == "symmetrized_elbo":
        kwargs = dict(group=PermutationGroup.from_params(params), num_permutations=config.num_permutations,
                      estimator=config.estimator)
    algorithm = vi.build(
        likelihoods.categorical(apply_fn),
        optax.adam(config.learning_rate),
        data_size=config.num_train,
        objective=config.objective,
        num_samples=config.num_samples,
        prior_scale=config.prior_scale,
        init_scale=config.init_scale,
        skip_nonfinite=config.skip_nonfinite,
        **kwargs,
    )
    fit_kwargs = {}
    if checkpoint_dir is not None:
        from symvi_jax import checkpoint

        step = checkpoint.latest_step(checkpoint_dir) if resume else None
        if step is not None:
            print(f"train: resuming from the checkpoint at step {step} in {checkpoint_dir}", file=sys.stderr)
        # num_epochs is left out of the metadata: --resume with more epochs extends the run (vi.fit).
        metadata = {k: v for k, v in to_jsonable(config).items() if k != "num_epochs"}
        fit_kwargs = dict(checkpoint_dir=checkpoint_dir, checkpoint_every=config.checkpoint_every, resume=resume,
                          checkpoint_metadata=metadata)
    elif resume:
        raise ValueError("resume=True needs a checkpoint_dir")
    state, history = vi.fit(key_fit, algorithm, jax.jit(algorithm.init)(params), train,
                            num_epochs=config.num_epochs, batch_size=config.batch_size, progress_bar=False,
                            **fit_kwargs)

    @jax.jit
    def evaluate(key, q, inputs, labels):
        probs = predict.predictive_probs(key, q, apply_fn, inputs, num_samples=config.num_eval_samples)
        return dict(accuracy=predict.accuracy(probs, labels), nll=predict.nll(probs, labels),
                    ece=predict.ece(probs, labels))

    metrics = jax.device_get(evaluate(key_eval, state.q, *test))
    row = {
        "objective": config.objective,
        "final_objective_per_example": float(np.mean(history.objective[-1])) / config.num_train,
        "test_accuracy": float(metrics["accuracy"]),
        "test_nll": float(metrics["nll"]),
        "test_ece": float(metrics["ece"]),
        "num_steps": int(history.objective.size),
        "num_skipped": int(np.sum(history.skipped)),
        "state_sha256": _checks.data_digest(state),
        "history_sha256": _checks.data_digest(history),
    }
    lines = [
        f"# train: {config.objective} on {config.num_classes} Gaussian blobs in {config.num_features} dimensions",
        "",
        f"MLP hidden widths {list(config.hidden)}, {config.num_epochs} epochs of minibatches of {config.batch_size} "
        f"({row['num_steps']} Adam steps, lr {config.learning_rate}), S = {config.num_samples}, seed {config.seed}.",
        "",
        "| final objective / N | test accuracy | test NLL | test ECE | skipped steps | state sha256 |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| {row['final_objective_per_example']:.4f} | {row['test_accuracy']:.4f} | {row['test_nll']:.4f} | "
        f"{row['test_ece']:.4f} | {row['num_skipped']} | `{row['state_sha256'][:16]}` |",
    ]
    return Result(rows=[row], markdown="\n".join(lines))
