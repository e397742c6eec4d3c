"""A small CNN on MNIST / Fashion-MNIST with its channel symmetry read off the network.

The model is two stride-2 3x3 convolutions with ``channels`` output channels (ReLU) and a dense
head on the flattened ``[7, 7, C]`` feature map. Its group is ``infer_symmetry(apply_fn, params,
x)``: one factor per convolution's channels (the second one reaches the head as a sub-axis of the
flattened features), |G| = prod_l C_l!. Every method trains the same network from the same
initial q with the same keys per seed via ``vi.run``; every method draws its weights with the same
key stream (common random numbers), so a paired difference measures the method:

* ``mfvi`` -- the ELBO L;
* ``sgm`` -- L + I^K with the paper's InfoNCE bound over K uniform group elements;
* ``importance`` -- L + the importance-weighted bound with the equivariant Sinkhorn proposal.

Reported per method and seed: test accuracy, NLL and ECE of the predictive (``num_eval_samples``
draws), I_f / log C_f! per factor (exact, by the permanent of the factor's channel matrix, with the
other factor fixed; ``diagnostics.layer_mutual_information``), channels collapsed to the prior
(KL below ``collapse_kl`` nats), and paired 95% CIs of each method minus MFVI.

    symvi-jax cnn --config configs/cnn.yaml --out out/cnn [--dataset fashion_mnist]
"""

from __future__ import annotations

import dataclasses
import time
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from symvi_jax import data, diagnostics, infer_symmetry, likelihoods, objectives, predict, vi
from symvi_jax.experiments.base import Result
from symvi_jax.experiments.stats import paired_ci

__all__ = ["Config", "CNN", "run"]

METHODS = ("mfvi", "sgm", "importance")
_NUM_CLASSES = 10


@dataclasses.dataclass(frozen=True)
class Config:
    dataset: str = "mnist"
    data: Optional[str] = None
    seed: int = 0
    num_train: Optional[int] = 10_000
    num_test: Optional[int] = 2_000
    channels: tuple[int, ...] = (8, 16)
    methods: tuple[str, ...] = METHODS
    num_permutations: int = 20
    num_seeds: int = 3
    num_epochs: int = 3
    batch_size: int = 100
    learning_rate: float = 1e-3
    init_scale: float = 0.01
    prior_scale: float = 1.0
    num_eval_samples: int = 20
    num_mi_samples: int = 8
    collapse_kl: float = 1.0

    def validate(self) -> None:
        if self.dataset not in ("mnist", "fashion_mnist"):
            raise ValueError(f"config key 'dataset' must be 'mnist' or 'fashion_mnist', got {self.dataset!r}")
        unknown = [m for m in self.methods if m not in METHODS]
        if not self.methods or unknown:
            raise ValueError(f"config key 'methods' must be a non-empty subset of {METHODS}, got {self.methods}")
        if not self.channels or any(c < 1 for c in self.channels):
            raise ValueError(f"config key 'channels' must be a non-empty list of positive ints, got {self.channels}")
        for key in ("num_permutations", "num_seeds", "num_epochs", "batch_size", "num_eval_samples",
                    "num_mi_samples"):
            if getattr(self, key) < 1:
                raise ValueError(f"config key {key!r} must be a positive int, got {getattr(self, key)}")
        for key in ("learning_rate", "init_scale", "prior_scale", "collapse_kl"):
            if not getattr(self, key) > 0:
                raise ValueError(f"config key {key!r} must be > 0, got {getattr(self, key)}")


class CNN(nn.Module):
    """Stride-2 3x3 convolutions with ReLU, then a dense head on the flattened feature map."""

    channels: Sequence[int] = (8, 16)
    num_classes: int = _NUM_CLASSES

    @nn.compact
    def __call__(self, x):
        for c in self.channels:
            x = nn.relu(nn.Conv(int(c), (3, 3), strides=(2, 2), padding="SAME")(x))
        return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


def _load(config: Config):
    x_train, y_train, x_test, y_test = data.subset(data.load(config.dataset, config.data), num_train=config.num_train,
                                                   num_test=config.num_test, seed=config.seed)
    images = lambda x: data.as_inputs(x).reshape(len(x), 28, 28, 1)  # noqa: E731
    return images(x_train), y_train.astype(np.int32), images(x_test), y_test.astype(np.int32)


def _algorithm(config: Config, method: str, apply_fn, group, size: int):
    loglik = likelihoods.categorical(apply_fn)
    common = dict(data_size=size, init_scale=config.init_scale, prior_scale=config.prior_scale)
    if method == "mfvi":
        # Common random numbers: the symmetrized objectives draw their weights with split(key)[0],
        # so MFVI does too; a paired difference then measures the method, not the noise stream.
        def paired_elbo(rng_key, q, batch):
            return objectives.elbo(jax.random.split(rng_key)[0], q, batch, loglikelihood_fn=loglik,
                                   data_size=size, prior_scale=config.prior_scale)

        return vi.build(loglik, optax.adam(config.learning_rate), objective=paired_elbo, data_size=size,
                        init_scale=config.init_scale)
    estimator = "infonce" if method == "sgm" else "importance"
    return vi.build(loglik, optax.adam(config.learning_rate), objective="symmetrized_elbo", group=group,
                    num_permutations=config.num_permutations, estimator=estimator, **common)


def _evaluator(config: Config, apply_fn, x_test, y_test):
    """One jitted program: q, key -> accuracy, NLL and ECE of the predictive on the test set."""
    chunk = next(c for c in range(min(config.num_eval_samples, 10), 0, -1) if config.num_eval_samples % c == 0)
    labels = jnp.asarray(y_test)

    @jax.jit
    def metrics(q, key):
        probs = predict.predictive_probs(key, q, apply_fn, jnp.asarray(x_test), num_samples=config.num_eval_samples,
                                         chunk_size=chunk)
        return predict.accuracy(probs, labels), predict.nll(probs, labels), predict.ece(probs, labels)

    def evaluate(q, key) -> dict:
        accuracy, nll, ece = metrics(q, key)
        return dict(test_accuracy=float(accuracy), test_nll=float(nll), test_ece=float(ece))

    return evaluate


def _diagnostics(config: Config, group):
    """One jitted program for every seed of a method: I_f per factor and the collapsed channels.

    ``states.q`` (seeds leading), per-seed keys -> (``LayerMutualInformation`` per seed, counts
    ``(seeds, factors)``), vmapped over the seeds instead of run per seed op by op.
    """
    def one(q, key):
        layers = diagnostics.layer_mutual_information(key, q, group, num_samples=config.num_mi_samples)
        return layers, diagnostics.collapsed_unit_counts(q, group, config.prior_scale, threshold=config.collapse_kl)

    return jax.jit(jax.vmap(one))


def run(config: Config) -> Result:
    start = time.perf_counter()
    x_train, y_train, x_test, y_test = _load(config)
    model = CNN(tuple(config.channels))
    apply_fn = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
    params = model.init(jax.random.key(config.seed), jnp.asarray(x_train[:1]))["params"]
    group, report = infer_symmetry(apply_fn, params, jnp.asarray(x_train[:8]), return_report=True)
    train = (jnp.asarray(x_train), jnp.asarray(y_train))
    seed_keys = jax.random.split(jax.random.key(config.seed + 1), config.num_seeds)
    evaluate = _evaluator(config, apply_fn, x_test, y_test)
    diagnose = _diagnostics(config, group)
    # every seed's evaluation and diagnostic keys, split the same way as one seed at a time
    keys_eval, keys_mi = jnp.moveaxis(jax.vmap(lambda k: jax.random.split(jax.random.fold_in(k, 7)))(seed_keys), 1, 0)
    rows, timings = [], {}
    for method in config.methods:
        algorithm = _algorithm(config, method, apply_fn, group, len(y_train))
        state = algorithm.init(params)
        trainer = jax.jit(jax.vmap(lambda k: vi.run(k, algorithm, state, train, num_epochs=config.num_epochs,
                                                    batch_size=config.batch_size)))
        began = time.perf_counter()
        states, infos = jax.block_until_ready(trainer(seed_keys))
        timings[method] = time.perf_counter() - began
        layers, collapsed = jax.device_get(diagnose(states.q, keys_mi))
        q_host = jax.device_get(states.q)  # one seed's q is then a host slice, not an eager op
        for seed in range(config.num_seeds):
            q = jax.tree.map(lambda x: x[seed], q_host)
            rows.append(dict(
                dataset=config.dataset, method=method, seed=seed, num_train=len(y_train),
                final_objective_per_example=float(infos.objective[seed, -1].mean()) / len(y_train),
                final_mutual_information=float(infos.mutual_information[seed, -1].mean()),
                factor_names=[f.name for f in group.factors], factor_sizes=list(group.sizes),
                mi_per_factor=[float(v) for v in layers.mutual_information[seed]],
                mi_fraction_per_factor=[float(v) for v in layers.fraction[seed]],
                collapsed_channels=[int(v) for v in collapsed[seed]],
                **evaluate(q, keys_eval[seed]),
            ))
    total = time.perf_counter() - start
    return Result(rows=rows, markdown=_markdown(config, group, report, rows, timings, total))


def _markdown(config: Config, group, report, rows, timings, total) -> str:
    lines = [f"# CNN on {config.dataset}: channels {list(config.channels)}, inferred group", "",
             f"{config.num_train} training images, {config.num_test} test images, {config.num_epochs} epochs, "
             f"batch {config.batch_size}, K = {config.num_permutations}, {config.num_seeds} seeds; "
             f"wall time {total:.0f} s (training: " + ", ".join(f"{m} {t:.0f} s" for m, t in timings.items()) + ").",
             "", "Inferred factors:", ""]
    for f in group.factors:
        lines.append(f"- `{f.name}`: {f.size} channels, members {[tuple(m) for m in f.members]}")
    lines += ["", f"log|G| = {group.log_order():.2f}", "", str(report), "",
              "| method | accuracy % | NLL | ECE | I_f / log C_f! | collapsed channels |", "| --- | --- | --- | --- | --- | --- |"]
    for method in config.methods:
        sel = [r for r in rows if r["method"] == method]
        acc = np.array([100 * r["test_accuracy"] for r in sel])
        nll = np.array([r["test_nll"] for r in sel])
        ece = np.array([r["test_ece"] for r in sel])
        frac = np.array([r["mi_fraction_per_factor"] for r in sel])
        coll = np.array([r["collapsed_channels"] for r in sel])
        lines.append(f"| {method} | {acc.mean():.2f} +- {acc.std():.2f} | {nll.mean():.4f} | {ece.mean():.4f} | "
                     f"{', '.join(f'{v:.3f}' for v in frac.mean(0))} | {', '.join(f'{v:.1f}' for v in coll.mean(0))} |")
    if "mfvi" in config.methods and len(config.methods) > 1:
        lines += ["", "Paired differences against MFVI (mean [95% CI] over seeds):", "",
                  "| method | accuracy pp | NLL | ECE |", "| --- | --- | --- | --- |"]
        base = [r for r in rows if r["method"] == "mfvi"]
        for method in config.methods:
            if method == "mfvi":
                continue
            other = [r for r in rows if r["method"] == method]
            cells = []
            for key, scale in (("test_accuracy", 100.0), ("test_nll", 1.0), ("test_ece", 1.0)):
                m, lo, hi = paired_ci([scale * r[key] for r in base], [scale * r[key] for r in other])
                cells.append(f"{m:+.4f} [{lo:+.4f}, {hi:+.4f}]")
            lines.append(f"| {method} - mfvi | " + " | ".join(cells) + " |")
    return "\n".join(lines)
