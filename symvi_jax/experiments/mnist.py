"""MNIST / Fashion-MNIST with small MLPs: MFVI vs the symmetrized posterior (SGM), Table 1.

The paper's protocol (Gelberg et al., 2024, Section 5 and Table 1): an MLP with one hidden layer of
width 5, 10, 20 or 30 (relu, softmax likelihood), pixels scaled to [0, 1]; a mean-field Gaussian
q trained for 10 epochs with batch 100 and Adam (lr 1e-3) on the ELBO L (MFVI) or on the
symmetrized bound L^K = L + I^K with K = 5, 10, 20 uniformly drawn permutations (SGM); 10 seeds;
test accuracy of the Bayesian model average of 1000 models drawn from q.

How it runs. For each width, every (method, seed) run is one lane of a single ``jax.jit``-compiled
program (``jax.vmap`` over seeds of ``jax.vmap`` over methods): init, then ``lax.scan`` over
epochs of ``lax.scan`` over ``vi.step`` calls, with the data resident on the device and each
epoch's minibatches taken from a fresh permutation. Seeds are paired across methods: seed i starts
every method from the same initial means and gives them the same minibatches, the same step keys
(common random numbers: the weight noise and permutations are drawn once per seed) and the same
evaluation keys, so SGM - MFVI differences are paired. The train and evaluate programs of all
widths are compiled ahead of time (``compile_workers`` threads) before any of them runs; a width's
seeds train in up to ``train_workers`` equal blocks at once, one thread each (the Table 1 config's 5
blocks of 2 seeds round differently from one call in the last bits; see ``_seed_blocks``), and its
distinct runs are evaluated in calls of ``num_seeds / eval_workers`` runs, ``eval_workers`` at once
(the same bits whatever the split; see ``_eval_block``).
``eval_xla_optimization_level`` (null: XLA's default) compiles the evaluate programs at that XLA
backend optimisation level: at 1 the width-30 program compiled 2.4x faster and ran 1.01x as long
(``benchmarks/table1_opt_level.py``), and rounds differently in the last bits; the Table 1 config uses 1.
Neither breaks the pairing: a seed's methods run as lanes of one program, so where SGM and MFVI
train to the same q (Table 1's width 5) their rows are equal. The train programs keep XLA's default:
at level 1 they ran 6% slower. Each
finished width is saved in ``OUT/checkpoints``; ``--resume`` reads finished widths back.

All methods share one objective, ``L + weight * I^K`` (weight 0 for MFVI, 1 for SGM), where I^K
is the paper's estimator (Theorem 4.3) with the K - 1 permutations drawn uniformly; for MFVI the
term (with K = the largest SGM K) is only read, never differentiated, which gives the saturation
I^K / log K of the estimator along the MFVI trajectory for free. For MLPs the log-density of a
permuted sample needs no gather over all weights: with A_l[i, j] the log-density of unit i's
factor at unit j's weights (incoming weights for the first hidden layer, bias, and outgoing
weights for the last), log q(g^{-1}.w) - log q(w) = sum_l sum_i (A_l[i, h_l(i)] - A_l[i, i]) plus
the exact change of the kernels between two hidden layers, h = g^{-1}. A_l costs one small
matrix product per sample and is independent of K (``orbits.assignment_log_ratios``).

Reported per run: test accuracy, NLL and ECE of the predictive from ``num_eval_samples`` draws;
the final training ELBO L (mean of the minibatch estimates over the last epoch), the symmetrized
estimate L + I^K at K = ``mi_num_permutations`` (a lower bound on L^G), the saturation
I^K / log K per epoch, collapsed units, and for MNIST the AUROC of predictive entropy for telling
the Fashion-MNIST test set from the MNIST test set (and the reverse for Fashion-MNIST).

Predictive (``predictive="local"``, the default): the first layer's pre-activations of an
example are Gaussian under q, a = x mu + b_mu + sqrt(x^2 sigma^2 + sigma_b^2) * eps, so each
draw uses one standard-normal vector eps per hidden unit (shared by all test examples) instead of
a (784 x width) weight draw and a full matrix product; later layers are drawn from q as usual.
Every example's predictive p(y | x) = E_q softmax(f_w(x)) is estimated from ``num_eval_samples``
draws with exactly the same distribution per example as with ``predict.predictive_probs``
(``predictive="weights"``, tens of times slower: a 784 x width product per draw); only the correlation of Monte
Carlo noise between examples differs, which no per-example metric sees.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from symvi_jax import MLP, PermutationGroup, data, diagnostics, likelihoods, meanfield, orbits, predict, vi
from symvi_jax.experiments.stats import paired_ci
from symvi_jax.experiments import base
from symvi_jax.experiments.base import Result
from symvi_jax import objectives

__all__ = ["Config", "run", "summarize", "PAPER_TABLE1", "symmetrized_objective", "local_predictive_probs",
           "unit_statistics"]

#: Table 1 of the paper: MNIST test accuracy (%), mean and std over 10 seeds, by width.
PAPER_TABLE1 = {
    "mfvi": {5: (88.379, 0.023), 10: (93.217, 0.022), 20: (94.836, 0.025), 30: (95.432, 0.023)},
    "sgm5": {5: (88.423, 0.027), 10: (93.221, 0.021), 20: (94.899, 0.035), 30: (95.534, 0.033)},
    "sgm10": {5: (88.405, 0.034), 10: (93.220, 0.023), 20: (94.896, 0.026), 30: (95.540, 0.025)},
    "sgm20": {5: (88.408, 0.026), 10: (93.221, 0.027), 20: (94.905, 0.024), 30: (95.552, 0.023)},
}

_METHOD = re.compile(r"^(mfvi|sgm(\d+))$")

#: ``kl_scale``: "dataset" trains on L = N E_batch[log p(y|x,w)] - KL (the ELBO; per example, the KL
#: counts 1/N); "minibatch" counts the KL once per minibatch, N E_batch[log p] - (N/M)(KL - weight I^K)
#: (per example: E_batch[log p] - (KL - weight I^K)/M), an N/M times heavier prior term.
KL_SCALES = ("dataset", "minibatch")
_NUM_CLASSES = 10


@dataclasses.dataclass(frozen=True)
class Config:
    dataset: str = "mnist"
    data: Optional[str] = None
    ood: bool = True
    ood_data: Optional[str] = None
    widths: tuple[int, ...] = (5, 10, 20, 30)
    num_hidden_layers: int = 1
    methods: tuple[str, ...] = ("mfvi", "sgm5", "sgm10", "sgm20")
    num_epochs: int = 10
    batch_size: int = 100
    learning_rate: float = 1e-3
    num_samples: int = 1
    prior_scale: float = 1.0
    init_scale: float = 1e-2
    init_loc_scale: Optional[float] = None
    kl_scale: str = "dataset"
    num_seeds: int = 10
    seed: int = 0
    num_train: Optional[int] = None
    num_test: Optional[int] = None
    num_eval_samples: int = 1000
    eval_chunk_size: int = 10
    predictive: str = "local"
    mi_num_permutations: int = 1000
    mi_num_samples: int = 64
    collapse_kl: float = 0.05
    compile_workers: int = 1
    train_workers: int = 1
    eval_workers: int = 1
    eval_xla_optimization_level: Optional[int] = None

    def validate(self):
        if self.dataset not in data.DATASETS:
            raise ValueError(f"config key 'dataset' must be one of {list(data.DATASETS)}, got {self.dataset!r}")
        if not self.widths or any(int(w) < 1 for w in self.widths):
            raise ValueError(f"config key 'widths' must be a non-empty list of positive ints, got {self.widths}")
        if not self.methods:
            raise ValueError("config key 'methods' must name at least one method ('mfvi', 'sgmK')")
        for method in self.methods:
            match = _METHOD.match(str(method))
            if match is None or (match.group(2) is not None and int(match.group(2)) < 2):
                raise ValueError(f"config key 'methods' entries must be 'mfvi' or 'sgmK' with K >= 2, got {method!r}")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"config key 'methods' has duplicates: {self.methods}")
        for key in ("num_hidden_layers", "num_epochs", "batch_size", "num_samples", "num_seeds", "num_eval_samples",
                    "eval_chunk_size", "mi_num_permutations", "mi_num_samples", "compile_workers",
                    "train_workers", "eval_workers"):
            if getattr(self, key) < 1:
                raise ValueError(f"config key {key!r} must be >= 1, got {getattr(self, key)}")
        for key in ("learning_rate", "prior_scale", "init_scale", "collapse_kl"):
            value = getattr(self, key)
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"config key {key!r} must be > 0, got {value}")
        if self.num_eval_samples % self.eval_chunk_size:
            raise ValueError(
                f"config key 'eval_chunk_size' ({self.eval_chunk_size}) must divide num_eval_samples "
                f"({self.num_eval_samples})"
            )
        if self.kl_scale not in KL_SCALES:
            raise ValueError(f"config key 'kl_scale' must be one of {KL_SCALES}, got {self.kl_scale!r}")
        if self.predictive not in ("local", "weights"):
            raise ValueError(f"config key 'predictive' must be 'local' or 'weights', got {self.predictive!r}")
        for key in ("num_train", "num_test"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"config key {key!r} must be >= 1 or null (all), got {value}")
        level = self.eval_xla_optimization_level
        if level is not None and (isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 3):
            raise ValueError("config key 'eval_xla_optimization_level' must be null (XLA's default) or an int "
                             f"in 0-3, got {level!r}")
        if self.init_loc_scale is not None and not (math.isfinite(self.init_loc_scale) and self.init_loc_scale >= 0):
            raise ValueError(f"config key 'init_loc_scale' must be >= 0 or null, got {self.init_loc_scale}")
        if self.num_train is not None and self.num_train < self.batch_size:
            raise ValueError(f"config key 'num_train' ({self.num_train}) must be >= batch_size ({self.batch_size})")


# ---- the objective ---------------------------------------------------------------------------------


def symmetrized_objective(
    rng_key,
    q,
    batch,
    *,
    loglikelihood_fn,
    group: PermutationGroup,
    data_size: int,
    prior_scale: float,
    num_samples: int,
    max_permutations: int,
    num_permutations,
    mi_weight,
    kl_weight: float = 1.0,
):
    """L + mi_weight * I^K on one minibatch: MFVI for weight 0, SGM (L^K) for weight 1.

    With ``kl_weight`` c != 1 the value is E_ll - c (KL - mi_weight I^K) (``kl_scale="minibatch"``:
    c = N / M); the returned info keeps the unscaled KL.

    ``objectives.symmetrized_elbo`` with ``orbits.InfoNCE(K, max_permutations=K_max)``: K and the
    weight may be traced, so every method of a width is one program (vmapped over methods).
    """
    return objectives.symmetrized_elbo(
        rng_key, q, batch, loglikelihood_fn=loglikelihood_fn, group=group, data_size=data_size,
        prior_scale=prior_scale, num_samples=num_samples, mi_weight=mi_weight, kl_weight=kl_weight,
        estimator=orbits.InfoNCE(num_permutations, max_permutations=max_permutations),
    )


# ---- predictions -----------------------------------------------------------------------------------


# local_predictive_probs lives in predict and unit_statistics in diagnostics; both names stay
# importable from here.
local_predictive_probs = predict.local_predictive_probs
unit_statistics = diagnostics.unit_statistics


# ---- running -----------------------------------------------------------------------------------------


def _method_k(method: str, default_k: int):
    match = _METHOD.match(method)
    if match.group(2) is None:
        return default_k, 0.0
    return int(match.group(2)), 1.0


def _load(config: Config):
    x_train, y_train, x_test, y_test = data.subset(data.load(config.dataset, config.data), num_train=config.num_train,
                                                   num_test=config.num_test, seed=config.seed)
    ood = None
    if config.ood:
        other = "fashion_mnist" if config.dataset == "mnist" else "mnist"
        ood_images = data.load(other, config.ood_data).x_test
        if config.num_test is not None:
            ood_images = ood_images[: config.num_test]
        ood = (other, data.as_inputs(ood_images))
    return (x_train.reshape(len(x_train), -1), y_train.astype(np.int32),
            data.as_inputs(x_test), y_test.astype(np.int32), ood)


def _train_program(config: Config, width: int, size: int, num_inputs: int, methods):
    """The jitted program that trains every (method, seed) of one width: ``train_fn(keys, x, y)``.

    It returns the final variational parameters with one leading run axis, method-major (run
    r = method r // S, seed r % S), and the per-epoch stats with shape (runs, epochs).
    """
    features = (width,) * config.num_hidden_layers + (_NUM_CLASSES,)
    model = MLP(features=features)

    def apply_fn(p, x):
        return model.apply({"params": p}, x)

    loglik = likelihoods.categorical(apply_fn)
    # shapes only: an eager init compiles its ops one by one (2-2.5 s per width on the 2-core CPU)
    template = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, num_inputs)))["params"])
    group = PermutationGroup.from_params(template)
    max_k = max(k for k, _ in methods)
    kl_weight = 1.0 if config.kl_scale == "dataset" else size / config.batch_size

    def build(num_permutations, mi_weight):  # K and the weight traced: one program for every method
        objective = objectives.SymmetrizedELBO(
            loglik, group, size, orbits.InfoNCE(num_permutations, max_permutations=max_k),
            prior_scale=config.prior_scale, num_samples=config.num_samples, mi_weight=mi_weight, kl_weight=kl_weight)
        return vi.from_objective(objective, optax.adam(config.learning_rate), init_scale=config.init_scale)

    ks = jnp.asarray([k for k, _ in methods], dtype=jnp.int32)
    weights = jnp.asarray([w for _, w in methods], dtype=jnp.float32)

    def one_seed(key, x_all, y_all):
        """Every method from the same start, on the same minibatches, with the same step keys.

        The step key is shared by the methods of a seed (it is not vmapped over them), so the weight
        noise, the permutations and the minibatch are drawn once per seed and broadcast: common
        random numbers, which make the paired SGM - MFVI differences less noisy and the program
        cheaper than drawing them once per run.
        """
        key_init, key_epochs = jax.random.split(key)
        params = model.init(key_init, jnp.zeros((1, x_all.shape[1])))["params"]
        if config.init_loc_scale is not None:  # all means ~ N(0, c^2) instead of flax's lecun-normal init
            leaves, treedef = jax.tree.flatten(params)
            leaf_keys = jax.random.split(jax.random.fold_in(key_init, 1), len(leaves))
            params = jax.tree.unflatten(treedef, [config.init_loc_scale * meanfield.standard_normal(k, x.shape, x.dtype)
                                                  for k, x in zip(leaf_keys, leaves)])
        states = jax.vmap(lambda k, w: build(k, w).init(params))(ks, weights)

        def step(key_step, states, batch):
            x, y = batch
            batch = (x.astype(jnp.float32) / 255.0, y)
            return jax.vmap(lambda state, k, w: build(k, w).step(key_step, state, batch))(states, ks, weights)

        methods_step = vi.VIAlgorithm(init=None, step=step, sample=None)
        states, infos = vi.run_epochs(methods_step, states, (x_all, y_all),
                                      jax.random.split(key_epochs, config.num_epochs), batch_size=config.batch_size)
        stats = {  # infos: (epochs, steps, methods) -> (epochs, methods)
            "elbo": jnp.mean(infos.expected_loglikelihood - infos.kl, axis=1),
            "objective": jnp.mean(infos.objective, axis=1),
            "mutual_information": jnp.mean(infos.mutual_information, axis=1),
            "nonfinite_steps": jnp.sum(~jnp.isfinite(infos.objective), axis=1),
        }
        return states.q, stats  # leaves (methods, ...); stats (epochs, methods)

    def train_fn(keys, x_all, y_all):
        q, stats = jax.vmap(one_seed, in_axes=(0, None, None))(keys, x_all, y_all)
        # (seeds, methods, ...) -> method-major runs: run r = method r // S, seed r % S
        q = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1).reshape((-1,) + x.shape[2:]), q)
        stats = jax.tree.map(lambda x: jnp.transpose(x, (2, 0, 1)).reshape(-1, x.shape[1]), stats)
        return q, stats

    return jax.jit(train_fn), apply_fn, group


def _evaluation_pieces(config: Config, apply_fn, group):
    """The parts of one run's evaluation, each a pure function (benchmarks/table1_eval.py times them).

    ``probs(rng_key, q_run, inputs)``: the predictive from ``num_eval_samples`` draws;
    ``mutual_information(rng_key, q_run)``: the ``mi_num_samples`` terms of I^K at
    K = ``mi_num_permutations``, one weight sample at a time (``lax.map``), the same K - 1
    permutations for all; ``metrics(probs, labels)``: accuracy, NLL, ECE and predictive entropy.
    """
    names = group.layer_names

    def probs(rng_key, q_run, inputs):
        if config.predictive == "local":
            return local_predictive_probs(rng_key, q_run, inputs, num_samples=config.num_eval_samples,
                                          chunk_size=config.eval_chunk_size, layer_names=names)
        return predict.predictive_probs(rng_key, q_run, apply_fn, inputs, num_samples=config.num_eval_samples,
                                        chunk_size=config.eval_chunk_size)

    def mutual_information(rng_key, q_run):
        key_sample, key_perm = jax.random.split(rng_key)
        samples = meanfield.sample(key_sample, q_run, config.mi_num_samples)
        estimator = orbits.InfoNCE(config.mi_num_permutations, max_permutations=config.mi_num_permutations)
        return jax.lax.map(
            lambda w: estimator.terms(key_perm, q_run, jax.tree.map(lambda x: x[None], w), group)[0], samples)

    def metrics(probs, labels):
        return {
            "test_accuracy": predict.accuracy(probs, labels),
            "test_nll": predict.nll(probs, labels),
            "ece": predict.ece(probs, labels),
            "entropy_in": predict.predictive_entropy(probs),
        }

    return probs, mutual_information, metrics


def _evaluate_program(config: Config, apply_fn, group):
    """The jitted program ``evaluate(q, keys, x_test, y_test, ood)``: metrics of every run (lax.map)."""
    names = group.layer_names
    probs_fn, mi_fn, metrics_fn = _evaluation_pieces(config, apply_fn, group)

    def evaluate(q, keys, x_test, y_test, ood):
        return jax.lax.map(lambda args: one(args, x_test, y_test, ood), (q, keys))

    def one(args, x_test, y_test, ood):
        q_run, rng_key = args
        key_pred, key_ood, key_mi = jax.random.split(rng_key, 3)
        out = metrics_fn(probs_fn(key_pred, q_run, x_test), y_test)
        if ood is not None:
            out["entropy_out"] = predict.predictive_entropy(probs_fn(key_ood, q_run, ood))
        terms = mi_fn(key_mi, q_run)
        out["mi_estimate"] = jnp.mean(terms)
        out["mi_estimate_se"] = jnp.std(terms) / jnp.sqrt(config.mi_num_samples)
        out["units"] = unit_statistics(q_run, names, config.prior_scale)
        return out

    return jax.jit(evaluate)


def _compile_programs(config: Config, train, test, ood, methods, seed_keys):
    """Build, lower and compile, ahead of time, the train and evaluate programs of every width.

    Tracing and lowering run one program after the other in this thread, and each lowered program
    is handed at once to ``config.compile_workers`` compiling threads, so the next width traces
    while the last one compiles. The evaluate program's q spec is the train program's output with
    one run taken ``num_seeds`` times, so the train program is traced once. Measured: on the 2-core CPU 4
    compiling threads were slower than one (XLA already uses both cores), while on a 16-core H200
    machine, where the runs take seconds and compiling is most of the wall time, 8 threads brought
    the protocol from 94 s to 56 s. Returns {width: (train, evaluate, group)}.
    """
    spec = lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype)  # noqa: E731
    x_train, y_train = train
    blocks = _seed_blocks(seed_keys.shape[0], config.train_workers)
    block_spec = jax.ShapeDtypeStruct((seed_keys.shape[0] // blocks,) + seed_keys.shape[1:],
                                      seed_keys.dtype)
    data_specs = (spec(x_train), spec(y_train))
    eval_specs = (spec(test[0]), spec(test[1]), None if ood is None else spec(ood))
    level = config.eval_xla_optimization_level
    eval_options = None if level is None else {"xla_backend_optimization_level": level}
    compiling, groups = [], {}
    with ThreadPoolExecutor(max_workers=max(1, min(config.compile_workers, 2 * len(config.widths)))) as pool:
        for width in (int(w) for w in config.widths):
            train_fn, apply_fn, group = _train_program(config, width, int(x_train.shape[0]), int(x_train.shape[1]),
                                                       methods)
            lowered = train_fn.lower(block_spec, *data_specs)
            # the evaluate program takes a block of runs at a time (``_eval_block``, ``_evaluate_distinct``)
            eval_block = _eval_block(seed_keys.shape[0], config.eval_workers)
            q_spec = jax.tree.map(lambda s: jax.ShapeDtypeStruct((eval_block,) + s.shape[1:], s.dtype),
                                  lowered.out_info[0])
            compiling.append(pool.submit(lowered.compile))
            run_keys = jax.ShapeDtypeStruct((jax.tree.leaves(q_spec)[0].shape[0],), seed_keys.dtype)
            lowered = _evaluate_program(config, apply_fn, group).lower(q_spec, run_keys, *eval_specs)
            compiling.append(pool.submit(lowered.compile, compiler_options=eval_options))
            groups[width] = group
        compiled = [future.result() for future in compiling]
    return {width: (compiled[2 * i], compiled[2 * i + 1], group) for i, (width, group) in enumerate(groups.items())}


def _seed_blocks(num_seeds: int, train_workers: int) -> int:
    """How many equal blocks a width's seeds train in: the most, up to ``train_workers``, that divide
    ``num_seeds`` into blocks of at least 2 seeds (1: one call). The block size changes the compiled program,
    which may round differently: 2 blocks of 5 of 10 seeds and 2 blocks of 2 of 4 seeds gave the one-call
    runs bit for bit (``benchmarks/mnist_bitwise.py``, ``benchmarks/train_blocks.py``), but 5 blocks of 2 of
    10 seeds at width 30 (the Table 1 config) did not (last bits; 0.72x the one call's time against 0.81x),
    nor do blocks of one seed (their seed axis of size 1 is squeezed), which are never used. A seed's methods
    are lanes of one block whatever its size, so they stay paired."""
    for blocks in range(min(train_workers, num_seeds // 2), 1, -1):
        if num_seeds % blocks == 0:
            return blocks
    return 1


def _train_blocks(train_fn, seed_keys, data, workers: int, num_methods: int):
    """``train_fn(seed_keys, *data)``, with the seeds split into ``workers`` equal blocks trained at once
    from as many threads and their runs put back method-major (run r = method r // S, seed r % S), as numpy
    arrays (joined on the host, so no small program is compiled per leaf shape).

    Each seed's runs are the same lanes of a program whichever block holds them; whether that program
    rounds as the one call's depends on the block size (``_seed_blocks``). Two blocks
    let XLA:CPU keep both cores busy on the small per-step ops of a width's 40 lanes
    (benchmarks/RESULTS.md, "One width's evaluation, compilation and training step, profiled").
    """
    if workers == 1:
        return jax.device_get(train_fn(seed_keys, *data))
    size = seed_keys.shape[0] // workers
    with ThreadPoolExecutor(max_workers=workers) as pool:
        outs = list(pool.map(lambda i: jax.device_get(train_fn(seed_keys[i * size:(i + 1) * size], *data)),
                             range(workers)))

    def join(*blocks):  # each (methods * size, ...) method-major -> (methods * seeds, ...), on the host
        parts = [np.asarray(x).reshape((num_methods, size) + x.shape[1:]) for x in blocks]
        joined = np.concatenate(parts, axis=1)
        return joined.reshape((-1,) + joined.shape[2:])

    return jax.tree.map(join, *outs)


def _eval_block(num_seeds: int, eval_workers: int) -> int:
    """Runs per call of the evaluate program: ``num_seeds`` split into ``eval_workers`` calls, rounded up,
    and at least 2 where there are 2 seeds or more (a program over one run is the one block size not
    checked to give the same bits).

    The program maps one run at a time (``lax.map``), so each run's metrics are the same bits whatever
    the block: 10 and 5 runs per call gave every field of the Table 1 shapes' 160 rows bit for bit
    (``benchmarks/mnist_bitwise.py``; ``tests/test_experiments_mnist.py`` checks 4 against 2). Two
    calls from two threads overlap the one-core I^K terms of one run with the other's work
    (benchmarks/RESULTS.md, "Tenth stop")."""
    return min(num_seeds, max(2, -(-num_seeds // eval_workers)))


def _evaluate_distinct(evaluate_fn, q, run_keys, data, block: int, workers: int = 1):
    """``evaluate_fn`` on every run, each distinct (q, evaluation key) pair evaluated once.

    Runs whose trained q and evaluation key are equal bit for bit get equal metrics from the
    deterministic evaluate program, so only the first of them is evaluated and the others copy its
    metrics. With common random numbers that is every SGM run whose q equals its seed's MFVI q (all
    of Table 1 at the paper's settings, docs/mnist.md), which cuts its evaluation 4-fold; runs that
    differ by a bit are all evaluated. ``evaluate_fn`` takes ``block`` runs per call (the compiled
    shape); the last call is filled up with copies of the last distinct run. The calls run from
    ``workers`` threads at once. Returns (metrics of every run as numpy arrays, the number of distinct
    runs).
    """
    q = jax.tree.map(np.asarray, jax.device_get(q))  # indexed on the host: no gather program per leaf shape
    leaves = jax.tree.leaves(q)
    key_bits = np.asarray(jax.random.key_data(run_keys))
    sizes = sorted({x.shape[0] for x in leaves})
    if sizes != [key_bits.shape[0]]:
        raise ValueError(f"q must hold one run per evaluation key along its leading axis: {key_bits.shape[0]} keys, "
                         f"leading axes {sizes}")
    first, source = {}, []
    for r in range(key_bits.shape[0]):
        identity = (key_bits[r].tobytes(),) + tuple(x[r].tobytes() for x in leaves)
        source.append(first.setdefault(identity, r))
    distinct = sorted(set(source))
    order = np.asarray(distinct + [distinct[-1]] * (-len(distinct) % block))

    def call(i):
        return jax.device_get(evaluate_fn(jax.tree.map(lambda x: x[order[i:i + block]], q),
                                          run_keys[order[i:i + block]], *data))

    starts = range(0, len(order), block)
    if workers == 1 or len(starts) == 1:
        outs = [call(i) for i in starts]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            outs = list(pool.map(call, starts))
    merged = jax.tree.map(lambda *xs: np.concatenate(xs), *outs)
    position = np.asarray([distinct.index(r) for r in source])
    return jax.tree.map(lambda x: x[position], merged), len(distinct)


def _config_digest(config: Config) -> str:
    """sha256 of every config key that changes a width's results (not ``widths`` or compile threads)."""
    fields = {k: v for k, v in dataclasses.asdict(config).items()
              if k not in ("widths", "compile_workers", "train_workers", "eval_workers")}
    for key, default in (("kl_scale", "dataset"), ("eval_xla_optimization_level", None)):
        if fields[key] == default:  # added later: at its default it leaves the digest (and --resume) as before
            del fields[key]
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def _finished_widths(config: Config, checkpoint_dir: Optional[str], resume: bool) -> dict:
    """{width: (rows, timing)} of the widths a previous run of the same config finished."""
    if not (checkpoint_dir and resume):
        return {}
    finished, digest = {}, _config_digest(config)
    for width in (int(w) for w in config.widths):
        path = Path(checkpoint_dir) / f"width_{width}.json"
        if not path.exists():
            continue
        saved = json.loads(path.read_text())
        if saved.get("config_digest") != digest:
            raise ValueError(f"--resume: {path} was written by a run with another config; use another --out, "
                             "or run without --resume to start over")
        finished[width] = (saved["rows"], tuple(saved["timing"]))
    return finished


def _save_width(checkpoint_dir: Optional[str], config: Config, width: int, rows: list, timing: tuple) -> None:
    """Write one finished width's rows atomically (a temporary file, then ``os.replace``)."""
    if not checkpoint_dir:
        return
    folder = Path(checkpoint_dir)
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / f".width_{width}.json.partial"
    staging.write_text(json.dumps({"config_digest": _config_digest(config), "rows": rows, "timing": list(timing)}))
    os.replace(staging, folder / f"width_{width}.json")


def run(config: Config, *, checkpoint_dir: Optional[str] = None, resume: bool = False) -> Result:
    """The protocol of ``config``. With ``checkpoint_dir`` every finished width is saved there, and with
    ``resume`` (CLI: ``--resume``, into ``OUT/checkpoints``) the widths a previous run of the same config
    finished are read back instead of run again, so a re-run sweep skips finished configurations."""
    start = time.perf_counter()
    x_train, y_train, x_test, y_test, ood = _load(config)
    load_time = time.perf_counter() - start
    finished = _finished_widths(config, checkpoint_dir, resume)
    methods = list(config.methods)
    sgm_ks = [_method_k(m, 0)[0] for m in methods if m != "mfvi"]
    default_k = max(sgm_ks) if sgm_ks else 20
    method_ks = [_method_k(m, default_k) for m in methods]
    seed_keys = jax.random.split(jax.random.key(config.seed), config.num_seeds)
    ood_x = None if ood is None else ood[1]
    t_compile = time.perf_counter()
    todo = dataclasses.replace(config, widths=tuple(w for w in config.widths if int(w) not in finished))
    programs = (_compile_programs(todo, (x_train, y_train), (x_test, y_test), ood_x, method_ks, seed_keys)
                if todo.widths else {})
    compile_time = time.perf_counter() - t_compile
    print(f"[mnist] compiled the programs of {len(programs)} width(s) in {compile_time:.1f} s"
          + (f"; widths {sorted(finished)} read back from {checkpoint_dir}" if finished else ""),
          file=sys.stderr, flush=True)
    device_data = jax.device_put((x_train, y_train, x_test, y_test, ood_x))
    rows, timings = [], []
    for width in config.widths:
        if int(width) in finished:
            width_rows, timing = finished[int(width)]
            rows += width_rows
            timings.append(timing)
            continue
        train_fn, evaluate_fn, group = programs[int(width)]
        t0 = time.perf_counter()
        q, stats = _train_blocks(train_fn, seed_keys, device_data[:2],
                                 _seed_blocks(config.num_seeds, config.train_workers), len(methods))
        stats = jax.device_get(stats)
        t1 = time.perf_counter()
        # evaluation keys paired like the training keys: run r = method r // S, seed r % S gets key r % S
        eval_key = jax.random.fold_in(jax.random.key(config.seed), int(width))
        run_keys = jnp.tile(jax.random.split(eval_key, config.num_seeds), len(methods))
        metrics, num_distinct = _evaluate_distinct(evaluate_fn, q, run_keys, device_data[2:],
                                                   _eval_block(config.num_seeds, config.eval_workers),
                                                   config.eval_workers)
        t2 = time.perf_counter()
        timings.append((int(width), t1 - t0, t2 - t1))
        num_runs = len(methods) * config.num_seeds
        copied = (f" ({num_distinct} distinct runs; the other {num_runs - num_distinct} equal one of them bit for "
                  "bit in q and evaluation key)") if num_distinct < num_runs else ""
        print(f"[mnist] width {width}: trained {num_runs} runs in {t1 - t0:.1f} s, evaluated in {t2 - t1:.1f} s"
              + copied, file=sys.stderr, flush=True)
        width_rows = _width_rows(config, int(width), method_ks, stats, metrics, group, int(len(y_train)),
                                 None if ood is None else ood[0], (t1 - t0, t2 - t1))
        rows += width_rows
        _save_width(checkpoint_dir, config, int(width), width_rows, timings[-1])
    total = time.perf_counter() - start
    markdown = _markdown(config, rows, timings, load_time, compile_time, total)
    return Result(rows=rows, markdown=markdown, figures=_figures(config, rows))


def _width_rows(config: Config, width: int, method_ks, stats, metrics, group, num_train: int, ood_dataset,
                seconds) -> list:
    """One result row per (method, seed) of a width, from its training stats and evaluation metrics."""
    width_rows = []
    for m_index, method in enumerate(config.methods):
        k, weight = method_ks[m_index]
        for seed in range(config.num_seeds):
            r = m_index * config.num_seeds + seed
            elbo = float(stats["elbo"][r, -1])
            mi = float(metrics["mi_estimate"][r])
            row = {
                "dataset": config.dataset,
                "width": width,
                "num_hidden_layers": config.num_hidden_layers,
                "method": method,
                "K": None if method == "mfvi" else k,
                "seed": seed,
                "num_train": num_train,
                "test_accuracy": float(metrics["test_accuracy"][r]),
                "test_nll": float(metrics["test_nll"][r]),
                "ece": float(metrics["ece"][r]),
                "elbo": elbo,
                "elbo_symmetrized": elbo + mi,
                "mi_estimate": mi,
                "mi_estimate_se": float(metrics["mi_estimate_se"][r]),
                "mi_num_permutations": config.mi_num_permutations,
                "log_group_order": group.log_order(),
                "saturation_K": k,
                "saturation": [float(v) / math.log(k) for v in stats["mutual_information"][r]],
                "elbo_per_epoch": [float(v) for v in stats["elbo"][r]],
                "nonfinite_steps": int(np.sum(stats["nonfinite_steps"][r])),
                "train_seconds": seconds[0],
                "eval_seconds": seconds[1],
            }
            for loc_stat, scale_stat in metrics["units"]:
                row.setdefault("unit_mean_sigma", []).append([round(float(v), 4) for v in scale_stat[r]])
                row.setdefault("unit_mean_abs_loc", []).append([round(float(v), 4) for v in loc_stat[r]])
            row["collapsed_units_per_layer"] = _collapsed_per_layer(row, config.collapse_kl)
            row["collapsed_units"] = sum(row["collapsed_units_per_layer"])
            if ood_dataset is not None:
                row["ood_dataset"] = ood_dataset
                row["ood_auroc"] = predict.auroc(metrics["entropy_in"][r], metrics["entropy_out"][r])
            width_rows.append(row)
    return width_rows


# ---- reporting ---------------------------------------------------------------------------------------


def _select(rows, **match):
    return [r for r in rows if all(r[k] == v for k, v in match.items())]


def _mean_std(values):
    values = np.asarray(values, dtype=np.float64)
    return values.mean(), (values.std(ddof=1) if len(values) > 1 else float("nan"))


def _markdown(config: Config, rows, timings, load_time, compile_time, total) -> str:
    """The result page: one function per section."""
    n_train = rows[0]["num_train"] if rows else 0
    depth = config.num_hidden_layers
    lines = [
        f"# {config.dataset}: MFVI vs SGM, {depth} hidden layer{'s' if depth > 1 else ''} "
        f"of width {', '.join(str(int(w)) for w in config.widths)}",
        "",
        f"{n_train} training images, {config.num_epochs} epochs, batch {config.batch_size}, Adam lr "
        f"{config.learning_rate}, S = {config.num_samples}, prior N(0, {config.prior_scale}^2), initial sigma "
        f"{config.init_scale}, KL scaled per {config.kl_scale}, {config.num_seeds} seeds (paired across methods); predictions from "
        f"{config.num_eval_samples} draws ({config.predictive}). Mean +- std over seeds.",
        "",
    ]
    lines += _accuracy_section(config, rows)
    lines += _rows_section(config, rows, n_train)
    lines += _paired_section(config, rows)
    lines += _wall_time_section(config, timings, load_time, compile_time, total)
    nonfinite = sum(r["nonfinite_steps"] for r in rows)
    if nonfinite:
        lines += ["", f"WARNING: {nonfinite} training steps had a non-finite objective."]
    return "\n".join(lines)


def _accuracy_section(config: Config, rows) -> list:
    widths = [int(w) for w in config.widths]
    paper = config.dataset == "mnist" and config.num_hidden_layers == 1 and config.num_train is None
    lines = ["## Test accuracy (%)", "", "| method | " + " | ".join(f"width {w}" for w in widths) + " |",
             "| --- |" + " --- |" * len(widths)]
    for method in config.methods:
        cells = []
        for w in widths:
            mean, std = _mean_std([100 * r["test_accuracy"] for r in _select(rows, method=method, width=w)])
            cell = f"{mean:.3f} +- {std:.3f}"
            if paper and w in PAPER_TABLE1.get(method, {}):
                pm, ps = PAPER_TABLE1[method][w]
                cell += f" (paper {pm:.3f} +- {ps:.3f})"
            cells.append(cell)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def _rows_section(config: Config, rows, n_train) -> list:
    lines = ["", "## Per row", "",
             "| width | method | accuracy % | NLL | ECE | L / N | (L + I^K) / N | I^K (K = "
             f"{config.mi_num_permutations}) | I^K / log K, epochs 1 .. {config.num_epochs} | collapsed units |"
             + (" OOD AUROC |" if config.ood else ""),
             "| --- |" + " --- |" * (9 + (1 if config.ood else 0))]
    for w in [int(w) for w in config.widths]:
        for method in config.methods:
            sel = _select(rows, method=method, width=w)
            if sel:
                lines.append(_row_line(w, method, sel, n_train))
    return lines


def _row_line(w, method, sel, n_train) -> str:
    fmt = {}
    for key, scale in (("test_accuracy", 100), ("test_nll", 1), ("ece", 1), ("elbo", 1 / n_train),
                       ("elbo_symmetrized", 1 / n_train), ("mi_estimate", 1), ("collapsed_units", 1),
                       ("ood_auroc", 1)):
        if key in sel[0]:
            fmt[key] = _mean_std([scale * r[key] for r in sel])
    sat = np.mean([r["saturation"] for r in sel], axis=0)
    shown = sat if len(sat) <= 10 else sat[np.linspace(0, len(sat) - 1, 10).round().astype(int)]
    line = (f"| {w} | {method} | {fmt['test_accuracy'][0]:.3f} +- {fmt['test_accuracy'][1]:.3f} | "
            f"{fmt['test_nll'][0]:.4f} +- {fmt['test_nll'][1]:.4f} | {fmt['ece'][0]:.4f} | "
            f"{fmt['elbo'][0]:.4f} | {fmt['elbo_symmetrized'][0]:.4f} | {fmt['mi_estimate'][0]:.3f} | "
            f"{' '.join(f'{v:.2f}' for v in shown)} (K = {sel[0]['saturation_K']}) | "
            f"{fmt['collapsed_units'][0]:.1f} |")
    if "ood_auroc" in fmt:
        line += f" {fmt['ood_auroc'][0]:.4f} +- {fmt['ood_auroc'][1]:.4f} |"
    return line


def _paired_section(config: Config, rows) -> list:
    methods = list(config.methods)
    if "mfvi" not in methods or len(methods) == 1:
        return []
    lines = ["", "## SGM - MFVI, paired by seed (mean [95% t-interval])", "",
             "| width | method | accuracy (pp) | NLL | ECE | collapsed units |", "| --- | --- | --- | --- | --- | --- |"]
    for w in [int(w) for w in config.widths]:
        base = sorted(_select(rows, method="mfvi", width=w), key=lambda r: r["seed"])
        for method in methods:
            if method == "mfvi":
                continue
            other = sorted(_select(rows, method=method, width=w), key=lambda r: r["seed"])
            cells = []
            for key, scale, digits in (("test_accuracy", 100, 3), ("test_nll", 1, 4), ("ece", 1, 4),
                                       ("collapsed_units", 1, 2)):
                m, lo, hi = paired_ci([scale * r[key] for r in base], [scale * r[key] for r in other])
                cells.append(f"{m:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]")
            lines.append(f"| {w} | {method} | " + " | ".join(cells) + " |")
    return lines


def _wall_time_section(config: Config, timings, load_time, compile_time, total) -> list:
    lines = ["", "## Wall time", "", f"Data loading {load_time:.1f} s; compiling every width's programs "
             f"{compile_time:.1f} s ({config.compile_workers} threads); total {total:.1f} s "
             f"({jax.device_count()} {jax.devices()[0].platform} device(s)).", "",
             "| width | train (s) | evaluate (s) |", "| --- | --- | --- |"]
    lines += [f"| {w} | {a:.1f} | {b:.1f} |" for w, a, b in timings]
    lines += ["", f"Collapsed unit: KL(N(m, v^2) \\|\\| N(0, s^2)) < {config.collapse_kl} nats, with m and v the mean "
              "\\|mu\\| and mean sigma of its incoming weights and bias (a unit at the prior scores 0, a trained MNIST "
              "unit ~1). L is the mean minibatch ELBO over the last epoch; I^K at the final q from "
              f"{config.mi_num_samples} draws."]
    return lines


def _figures(config: Config, rows):
    def accuracy_plot(path):
        widths = [int(w) for w in config.widths]
        with base.figure(path, 1, 2, figsize=(9, 3.5), dpi=100) as (fig, axes):
            for method in config.methods:
                for ax, key, scale in ((axes[0], "test_accuracy", 100), (axes[1], "test_nll", 1)):
                    stats = [_mean_std([scale * r[key] for r in _select(rows, method=method, width=w)]) for w in widths]
                    ax.errorbar(widths, [m for m, _ in stats], yerr=[s for _, s in stats], marker="o", capsize=3,
                                label=method)
            if config.dataset == "mnist" and config.num_hidden_layers == 1 and config.num_train is None:
                for method in config.methods:
                    if method in PAPER_TABLE1:
                        ws = [w for w in widths if w in PAPER_TABLE1[method]]
                        axes[0].plot(ws, [PAPER_TABLE1[method][w][0] for w in ws], "x", color="gray")
                axes[0].plot([], [], "x", color="gray", label="paper")
            axes[0].set(xlabel="width", ylabel="test accuracy (%)")
            axes[1].set(xlabel="width", ylabel="test NLL")
            axes[0].legend(fontsize=8)

    def saturation_plot(path):
        with base.figure(path, figsize=(5, 3.5), dpi=100) as (fig, ax):
            for w in config.widths:
                for method in config.methods:
                    sel = _select(rows, method=method, width=int(w))
                    if sel:
                        sat = np.mean([r["saturation"] for r in sel], axis=0)
                        ax.plot(np.arange(1, len(sat) + 1), sat, label=f"{method}, width {w}")
            ax.set(xlabel="epoch", ylabel="I^K / log K (epoch mean)", ylim=(0, 1.05))
            ax.legend(fontsize=6, ncol=2)

    return {"accuracy_vs_width.png": accuracy_plot, "saturation.png": saturation_plot}


def _collapsed_per_layer(row, collapse_kl: float) -> list:
    """Units whose incoming-weight summary (mean |mu| = m s, mean sigma = v s) is within
    ``collapse_kl`` nats per weight of the prior: log(1 / v) + (v^2 + m^2) / 2 - 1/2 < collapse_kl."""
    counts = []
    for sig, loc in zip(row["unit_mean_sigma"], row["unit_mean_abs_loc"]):
        v, m = np.asarray(sig, dtype=np.float64), np.asarray(loc, dtype=np.float64)
        kl = -np.log(v) + (v ** 2 + m ** 2) / 2 - 0.5
        counts.append(int(np.sum(kl < collapse_kl)))
    return counts


def summarize(paths, *, collapse_kl: float = 0.05) -> str:
    """One markdown table of SGM - MFVI over several ``results.json`` files (e.g. the regimes).

    Per (file, width, SGM method): paired differences of test accuracy and NLL with 95%
    t-intervals, collapsed units (recounted from the stored per-unit statistics with
    ``collapse_kl``, see ``_collapsed_per_layer``) for both methods, the final-epoch saturation
    I^K / log K of both, and the largest difference between paired runs' per-unit statistics
    (0 means SGM trained to the same posterior as MFVI).

    Example: ``python -c "from symvi_jax.experiments import mnist; print(mnist.summarize(['out/x/results.json']))"``
    """
    import json
    from pathlib import Path

    lines = ["| run | width | method | seeds | accuracy MFVI % | SGM - MFVI accuracy (pp) | SGM - MFVI NLL | "
             "SGM - MFVI L / N | collapsed MFVI / SGM | I^K / log K, epoch 1 -> last, MFVI / SGM | "
             "max \\|unit stat diff\\| |",
             "| --- |" + " --- |" * 10]
    for path in paths:
        payload = json.loads(Path(path).read_text())
        rows = payload["rows"]
        label = Path(path).parent.name
        for width in sorted({r["width"] for r in rows}):
            base = sorted(_select(rows, method="mfvi", width=width), key=lambda r: r["seed"])
            if not base:
                continue
            for method in sorted({r["method"] for r in rows} - {"mfvi"}, key=lambda m: int(m[3:])):
                other = sorted(_select(rows, method=method, width=width), key=lambda r: r["seed"])
                acc = paired_ci([100 * r["test_accuracy"] for r in base], [100 * r["test_accuracy"] for r in other])
                nll = paired_ci([r["test_nll"] for r in base], [r["test_nll"] for r in other])
                elbo = paired_ci([r["elbo"] / r["num_train"] for r in base], [r["elbo"] / r["num_train"] for r in other])
                c_base = np.mean([sum(_collapsed_per_layer(r, collapse_kl)) for r in base])
                c_other = np.mean([sum(_collapsed_per_layer(r, collapse_kl)) for r in other])
                sat_base = np.mean([r["saturation"] for r in base], axis=0)[[0, -1]]
                sat_other = np.mean([r["saturation"] for r in other], axis=0)[[0, -1]]
                diff = max(float(np.max(np.abs(np.asarray(a[key][0]) - np.asarray(b[key][0]))))
                           for a, b in zip(base, other) for key in ("unit_mean_sigma", "unit_mean_abs_loc"))
                lines.append(
                    f"| {label} | {width} | {method} | {len(base)} | "
                    f"{np.mean([100 * r['test_accuracy'] for r in base]):.3f} | "
                    f"{acc[0]:+.3f} [{acc[1]:+.3f}, {acc[2]:+.3f}] | {nll[0]:+.4f} [{nll[1]:+.4f}, {nll[2]:+.4f}] | "
                    f"{elbo[0]:+.4f} [{elbo[1]:+.4f}, {elbo[2]:+.4f}] | "
                    f"{c_base:.1f} / {c_other:.1f} | {sat_base[0]:.3f} -> {sat_base[1]:.3f} / "
                    f"{sat_other[0]:.3f} -> {sat_other[1]:.3f} | {diff:.4f} |"
                )
    return "\n".join(lines)
