"""Mean-field and symmetrized variational inference: ``build -> (init, step, sample)`` and ``fit``.

One step takes reparameterised gradients of an objective from ``objectives`` (the ELBO L, or the
symmetrized L^K of Gelberg et al., 2024) and applies an optax update to the variational
parameters (mu, rho):

    (value, info), grads = value_and_grad(-objective)(q);  q <- optax update(grads).

The kernels are pure and not jitted: jit ``step`` once at the outermost scope (or use :func:`fit`,
which jits an epoch of ``lax.scan`` steps internally). Seeds and chains are vmapped by the user
over ``init``/``step``.

Example:
  >>> import jax, jax.numpy as jnp, optax
  >>> from symvi_jax import MLP, PermutationGroup, likelihoods, vi
  >>> model = MLP(features=(4, 3))
  >>> params = model.init(jax.random.key(0), jnp.zeros((1, 2)))["params"]
  >>> loglik = likelihoods.categorical(lambda p, x: model.apply({"params": p}, x))
  >>> algo = vi.build(loglik, optax.adam(1e-2), data_size=8, objective="symmetrized_elbo",
  ...                 group=PermutationGroup.from_params(params), num_permutations=5)
  >>> state = algo.init(params)
  >>> batch = (jnp.ones((8, 2)), jnp.zeros(8, dtype=jnp.int32))
  >>> state, info = jax.jit(algo.step)(jax.random.key(1), state, batch)
  >>> info.mutual_information.shape
  ()
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Callable, Mapping, NamedTuple, Optional, Protocol, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from symvi_jax import _checks, _optional, meanfield, objectives, orbits
from symvi_jax.meanfield import MeanFieldState
from symvi_jax.symmetry import PermutationGroup, WeightSymmetry, as_symmetry, check_held_out
from symvi_jax.types import Array, ArrayTree, PRNGKey

__all__ = [
    "VIState",
    "VIInfo",
    "VIAlgorithm",
    "NonFiniteError",
    "build",
    "init",
    "step",
    "sample",
    "run",
    "fit",
]


class VIState(NamedTuple):
    """What the next step needs: the variational parameters and the optimiser state."""

    params: MeanFieldState
    opt_state: optax.OptState


class VIInfo(NamedTuple):
    """Per-step diagnostics (see ``objectives.ObjectiveInfo``) plus the gradient's global norm.

    ``grad_norm`` is NaN when the algorithm was built with ``track_grad_norm=False``.

    ``skipped`` is True for a step whose objective, gradient or updated parameters were not finite
    and whose update was therefore not applied (only with ``build(..., skip_nonfinite=True)``;
    always False otherwise). ``history.skipped.sum()`` counts them.
    """

    objective: Array
    expected_loglikelihood: Array
    kl: Array
    mutual_information: Array
    log_group_order: Array
    grad_norm: Array
    skipped: Array = False


class InitFn(Protocol):
    def __call__(self, params: ArrayTree) -> VIState: ...


class StepFn(Protocol):
    def __call__(self, rng_key: PRNGKey, state: VIState, batch: Any) -> tuple[VIState, VIInfo]: ...


class SampleFn(Protocol):
    def __call__(self, rng_key: PRNGKey, state: VIState, num_samples: int) -> ArrayTree: ...


class VIAlgorithm(NamedTuple):
    """The public triple, as in blackjax: ``init(params)``, ``step(rng_key, state, batch)``,
    ``sample(rng_key, state, num_samples)``.

    ``build`` also records the ``data_size`` N it scaled the likelihood by and the
    ``loglikelihood_fn``, so that :func:`fit` can check its data against both before training,
    and the ``group`` of the symmetrized objective, whose invariance fit checks on the first
    inputs when the likelihood exposes its ``apply_fn`` (None when unknown, e.g. a record built
    by hand; fit then skips those checks).
    """

    init: InitFn
    step: StepFn
    sample: SampleFn
    data_size: Optional[int] = None
    loglikelihood_fn: Optional[Callable[[ArrayTree, Any], Array]] = None
    group: Optional[WeightSymmetry] = None


class NonFiniteError(FloatingPointError):
    """Raised by :func:`fit` when the objective or its gradient stops being finite."""


ObjectiveFn = Callable[[PRNGKey, MeanFieldState, Any], tuple[Array, objectives.ObjectiveInfo]]


def build(
    loglikelihood_fn: Callable[[ArrayTree, Any], Array],
    optimizer: optax.GradientTransformation,
    *,
    data_size: int,
    objective: Union[str, ObjectiveFn] = "elbo",
    group: Optional[WeightSymmetry] = None,
    num_samples: int = 1,
    num_permutations: Optional[int] = None,
    estimator: Union[str, orbits.Estimator] = "infonce",
    prior_scale: Union[float, ArrayTree] = 1.0,
    init_scale: float = 1e-2,
    chunk_size: Optional[int] = None,
    skip_nonfinite: bool = False,
    track_grad_norm: bool = True,
    temperature: Optional[float] = None,
    kl_weight: float = 1.0,
    likelihood_temperature: float = 1.0,
    proposal_temperature: Optional[float] = None,
    frozen: Optional[ArrayTree] = None,
    score_correction: bool = False,
) -> VIAlgorithm:
    """Bind a likelihood, an optimiser and the objective's configuration once.

    Args:
      loglikelihood_fn: ``(params, batch) -> Array[M]`` per-example log-likelihoods
        (``likelihoods.categorical`` / ``likelihoods.gaussian``).
      optimizer: any optax ``GradientTransformation``.
      data_size: N, the training-set size (minibatch sums are scaled by N / M).
      objective: ``"elbo"`` (MFVI), ``"symmetrized_elbo"`` (L^K; needs ``group``) or a callable
        ``(rng_key, q, batch) -> (value, ObjectiveInfo)`` used as it is.
      group: the weight-space symmetry (``infer_symmetry``, ``WeightSymmetry.from_axes`` or
        ``PermutationGroup.from_params``), for the symmetrized objective. Take it from the full
        params; ``init`` checks it against the shapes of the params it is given.
      num_samples: S, weight samples per step.
      estimator: the estimator of I(g; w) for the symmetrized objective: a value
        (``orbits.InfoNCE(K)``, ``orbits.Exact()``, ``orbits.Importance(K, proposal_temperature=...,
        score_correction=...)``), or a name in ``orbits.ESTIMATORS`` with ``num_permutations``,
        ``proposal_temperature`` and ``score_correction`` as conveniences (``orbits.as_estimator``
        builds the value once).
      num_permutations: K for a named ``"infonce"`` or ``"importance"`` (the identity is one of the K).
      prior_scale: s of the isotropic N(0, s^2 I) prior.
      init_scale: initial sigma of every weight. The default 1e-2 starts q close to a
        deterministic network, as is usual for Bayes-by-backprop-style BNNs; the paper leaves it
        unstated.
      chunk_size: ``lax.map`` chunk size over group elements; None vmaps them all.
      skip_nonfinite: if True, a step whose objective, gradient norm or updated parameters are
        not finite returns the state unchanged and sets ``info.skipped`` (like numpyro's
        ``SVI.stable_update``); :func:`fit` then counts such steps instead of raising. If False
        (the default) the update is applied as it is and :func:`fit` raises ``NonFiniteError``.
      track_grad_norm: report the gradient's global norm in ``info.grad_norm``. The extra pass
        over the gradient stops XLA from fusing it into the optimiser update; at width 1024 on a
        CPU it costs about 10% of a step (``benchmarks/peers.py``). With False it is NaN.
      proposal_temperature: the proposal's tempering for ``estimator="importance"`` (None: 1).
      temperature: deprecated alias of ``proposal_temperature`` (a ``DeprecationWarning``).
      kl_weight: beta in (0, inf), the weight of KL(q || p) (of KL(q^G || p) = KL - I for the
        symmetrized objective); 1 is the ELBO.
      likelihood_temperature: T in (0, inf); the likelihood term is divided by T, so T < 1 is a
        cold posterior p(D | w)^(1/T) p(w). See ``objectives`` for the tempered objectives.
      frozen: the leaves held out of q with ``nets.partition`` (fixed, not inferred). A group
        that moves one of them must leave it invariant; ``init`` checks that, and refuses a group
        that moves a leaf that is neither in the params nor in ``frozen``.
      score_correction: for ``estimator="importance"``: add the score-function term that makes
        the gradient unbiased for any proposal (``orbits.importance_terms``).
    """
    proposal_temperature = objectives._proposal_temperature(proposal_temperature, temperature)
    objectives._check_tempering(kl_weight, likelihood_temperature)
    tempering = dict(kl_weight=kl_weight, likelihood_temperature=likelihood_temperature)
    if not callable(loglikelihood_fn):
        raise ValueError(f"loglikelihood_fn must be callable (params, batch) -> Array[M], got {type(loglikelihood_fn).__name__}")
    if not hasattr(optimizer, "init") or not hasattr(optimizer, "update"):
        raise ValueError(f"optimizer must be an optax GradientTransformation, got {type(optimizer).__name__}")
    if callable(objective):
        if kl_weight != 1.0 or likelihood_temperature != 1.0:
            raise ValueError("kl_weight and likelihood_temperature apply to objective='elbo' or 'symmetrized_elbo'; "
                             "a callable objective weighs its own terms")
        objective_fn = objective
    elif objective == "elbo":
        if group is not None or num_permutations is not None:
            raise ValueError("objective='elbo' takes no group or num_permutations; use objective='symmetrized_elbo'")
        objective_fn = functools.partial(
            objectives.elbo,
            loglikelihood_fn=loglikelihood_fn,
            data_size=data_size,
            prior_scale=prior_scale,
            num_samples=num_samples,
            **tempering,
        )
    elif objective == "symmetrized_elbo":
        if group is None:
            raise ValueError("objective='symmetrized_elbo' needs group= (infer_symmetry(apply_fn, params, x) or "
                             "PermutationGroup.from_params(params))")
        objective_fn = functools.partial(
            objectives.symmetrized_elbo,
            loglikelihood_fn=loglikelihood_fn,
            group=group,
            data_size=data_size,
            prior_scale=prior_scale,
            num_samples=num_samples,
            estimator=orbits.as_estimator(estimator, num_permutations=num_permutations,
                                          temperature=proposal_temperature, score_correction=score_correction,
                                          group=group),
            chunk_size=chunk_size,
            **tempering,
        )
    else:
        raise ValueError(f"objective must be 'elbo', 'symmetrized_elbo' or a callable, got {objective!r}")
    # Validate the configuration eagerly, before anything is traced.
    _check_config(objective, data_size, num_samples, prior_scale, init_scale, group, chunk_size, proposal_temperature,
                  score_correction)
    for name, flag in (("skip_nonfinite", skip_nonfinite), ("track_grad_norm", track_grad_norm)):
        if not isinstance(flag, bool):
            raise ValueError(f"{name} must be True or False, got {flag!r}")

    def init_fn(params: ArrayTree) -> VIState:
        if group is not None and objective == "symmetrized_elbo":
            check_held_out(group, params, frozen)
        return init(params, optimizer, init_scale=init_scale)

    def step_fn(rng_key: PRNGKey, state: VIState, batch: Any) -> tuple[VIState, VIInfo]:
        return step(rng_key, state, batch, objective_fn=objective_fn, optimizer=optimizer,
                    skip_nonfinite=skip_nonfinite, track_grad_norm=track_grad_norm)

    def sample_fn(rng_key: PRNGKey, state: VIState, num_samples: int) -> ArrayTree:
        return sample(rng_key, state, num_samples)

    return VIAlgorithm(init_fn, step_fn, sample_fn, data_size, loglikelihood_fn,
                       group if objective == "symmetrized_elbo" else None)


def _check_config(objective, data_size, num_samples, prior_scale, init_scale, group, chunk_size, temperature=None,
                  score_correction=False):
    _checks.positive_int(data_size, "data_size")
    _checks.positive_int(num_samples, "num_samples")
    _checks.positive(prior_scale, "prior_scale")
    _checks.positive(init_scale, "init_scale")
    if chunk_size is not None:
        _checks.positive_int(chunk_size, "chunk_size")
    if objective == "symmetrized_elbo":
        as_symmetry(group)
        if group.order() == 1:
            raise ValueError(
                "group is trivial (|G| = 1): there is nothing to symmetrize, and L^G = L. If it came from "
                "PermutationGroup.from_params on a partitioned tree, take it from the full params (and pass the "
                "held-out leaves as frozen=); use objective='elbo' for a network without symmetry"
            )
        objectives.check_prior_invariant(group, prior_scale)
    elif temperature is not None:
        raise ValueError("temperature applies to objective='symmetrized_elbo' with estimator='importance' only")
    elif score_correction is not False:
        raise ValueError("score_correction applies to objective='symmetrized_elbo' with estimator='importance' only")


def init(params: ArrayTree, optimizer: optax.GradientTransformation, *, init_scale: float) -> VIState:
    """q = N(params, init_scale^2 I) and a fresh optimiser state."""
    q = meanfield.init(params, init_scale=init_scale)
    return VIState(params=q, opt_state=optimizer.init(q))


def step(
    rng_key: PRNGKey,
    state: VIState,
    batch: Any,
    *,
    objective_fn: ObjectiveFn,
    optimizer: optax.GradientTransformation,
    skip_nonfinite: bool = False,
    track_grad_norm: bool = True,
) -> tuple[VIState, VIInfo]:
    """One optax update along the reparameterisation gradient of ``objective_fn``.

    With ``skip_nonfinite`` the update is dropped (the old state is returned, ``info.skipped`` is
    True) when the objective, the gradient norm or any updated parameter is not finite.
    """

    def loss_fn(q):
        value, info = objective_fn(rng_key, q, batch)
        return -value, info

    (_, info), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = VIState(params=params, opt_state=opt_state)
    if track_grad_norm:
        grad_norm = optax.tree.norm(grads)
    else:
        grad_norm = jnp.full((), jnp.nan, dtype=info.objective.dtype)
    if skip_nonfinite:
        # a non-finite gradient makes the optax update, hence the parameters, non-finite too
        finite = jnp.isfinite(info.objective) & _all_finite(params)
        new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
        skipped = ~finite
    else:
        skipped = jnp.zeros((), dtype=bool)
    return new_state, VIInfo(
        objective=info.objective,
        expected_loglikelihood=info.expected_loglikelihood,
        kl=info.kl,
        mutual_information=info.mutual_information,
        log_group_order=info.log_group_order,
        grad_norm=grad_norm,
        skipped=skipped,
    )


def _all_finite(tree: ArrayTree) -> Array:
    """True if every inexact leaf of ``tree`` is finite (a scalar bool)."""
    checks = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    return jnp.all(jnp.stack(checks)) if checks else jnp.asarray(True)


def sample(rng_key: PRNGKey, state: VIState, num_samples: int) -> ArrayTree:
    """``num_samples`` weight draws from q (predictions from q and q^G agree; PAPER.md, Section 4)."""
    return meanfield.sample(rng_key, state.params, num_samples)


def run(
    rng_key: PRNGKey,
    algorithm: VIAlgorithm,
    state: VIState,
    data: Any,
    *,
    num_epochs: int,
    batch_size: int,
) -> tuple[VIState, VIInfo]:
    """``num_epochs`` passes over ``data`` in shuffled minibatches: a pure ``lax.scan``, no host work.

    The key schedule is :func:`fit`'s: epoch e uses ``key_e = fold_in(rng_key, e)``, its
    data order is ``permutation(split(key_e)[0], N)`` (the last incomplete minibatch is dropped)
    and step i of the epoch uses ``split(split(key_e)[1], N // batch_size)[i]``. It is not jitted:
    jit it, or ``jax.jit(jax.vmap(...))`` it over seeds, at the outermost scope. Use :func:`fit`
    for validation of the data, checkpoints, a progress bar and ``NonFiniteError``.

    Returns:
      The final state and the per-step ``VIInfo`` stacked to shape ``(num_epochs, N // batch_size)``.
    """
    _checks.positive_int(num_epochs, "num_epochs")
    _checks.positive_int(batch_size, "batch_size")
    size = jax.tree.leaves(data)[0].shape[0]
    if batch_size > size:
        raise ValueError(f"batch_size ({batch_size}) must not exceed the number of examples ({size})")
    num_batches = size // batch_size

    def epoch(state, epoch_key):
        key_order, key_steps = jax.random.split(epoch_key)
        order = jax.random.permutation(key_order, size)[: num_batches * batch_size].reshape(num_batches, batch_size)

        def one_step(state, xs):
            index, step_key = xs
            batch = jax.tree.map(lambda x: jnp.take(x, index, axis=0), data)
            return algorithm.step(step_key, state, batch)

        return jax.lax.scan(one_step, state, (order, jax.random.split(key_steps, num_batches)))

    epoch_keys = jax.vmap(lambda e: jax.random.fold_in(rng_key, e))(jnp.arange(num_epochs))
    return jax.lax.scan(epoch, state, epoch_keys)


def fit(
    rng_key: PRNGKey,
    algorithm: VIAlgorithm,
    state: VIState,
    data: tuple,
    *,
    num_epochs: int,
    batch_size: int,
    progress_bar: Optional[bool] = None,
    checkpoint_dir: Optional[Union[str, os.PathLike]] = None,
    checkpoint_every: Optional[int] = None,
    resume: bool = False,
    checkpoint_metadata: Optional[Mapping[str, Any]] = None,
    allow_data_size_mismatch: bool = False,
) -> tuple[VIState, VIInfo]:
    """Train for ``num_epochs`` passes over ``data`` in shuffled minibatches, optionally checkpointed.

    Randomness is a pure function of ``rng_key``: epoch e uses ``key_e = fold_in(rng_key, e)``,
    its data order is ``permutation(split(key_e)[0], N)`` (the last incomplete minibatch is
    dropped, so every step has the same shapes) and step i of the epoch uses
    ``split(split(key_e)[1], N // batch_size)[i]``. Epoch e does not depend on ``num_epochs``, so
    the first E epochs of a longer run are exactly an E-epoch run. The steps run inside one
    jit-compiled ``lax.while_loop`` over a range of steps of an epoch, with the data resident on
    the device; it is compiled once and reused for every epoch, every range and every
    ``num_epochs``. This helper jits internally.

    Checks before training (nothing is compiled or written when one fails):

    * ``data_size``: the algorithm scales each minibatch sum by N / M with the N given to
      :func:`build`; if N differs from ``len(data)`` the likelihood is silently over- or
      under-weighted against the KL (N = 60000 on 400 points weights it 150x). This is refused
      unless ``allow_data_size_mismatch=True``, which is meant for a deliberate mismatch, e.g.
      ``data`` is one shard of a larger training set of size N, or an intended reweighting (a
      likelihood temperature says that more plainly).
    * The likelihood's own ``check_batch(params, data)``, when it has one (every builder in
      ``symvi_jax.likelihoods`` does), on the whole data set with the mean of q: labels outside the
      network's classes would give a NaN or a wrong objective under jit, not an error.

    Checkpoints: with ``checkpoint_dir`` the state, the key, the number of steps done and the
    history so far are saved (``symvi_jax.checkpoint``, atomic) every ``checkpoint_every`` steps
    (default: once per epoch, also mid-epoch if it does not divide the epoch) and after the last
    step. ``resume=True`` continues from the latest checkpoint there: since the data order and
    the step keys depend only on ``(rng_key, epoch)``, the resumed run executes exactly the steps
    the uninterrupted run would have, and the final state and history are bitwise identical on
    the same machine (``tests/test_checkpoint.py``). A finished run is returned without training,
    so a sweep that re-runs every configuration with ``resume=True`` skips the finished ones.
    Resuming with a larger ``num_epochs`` extends the run (a finished one included): the result
    is bitwise the run that had asked for that many epochs from the start. A smaller
    ``num_epochs`` is accepted while the checkpoint has not passed it.

    Args:
      rng_key: randomness for shuffling and for every step.
      algorithm: from :func:`build`.
      state: from ``algorithm.init``. When resuming, only its structure, shapes and dtypes are
        used (as the template the checkpoint is read into).
      data: ``(inputs, targets)`` arrays with the same leading size N (numeric, finite).
      num_epochs, batch_size: positive ints, ``batch_size <= N``.
      progress_bar: show a tqdm bar over epochs. None (the default): show one if tqdm is
        installed (the ``progress`` extra); True requires it.
      checkpoint_dir: folder for the checkpoints of this run (one run per folder).
      checkpoint_every: save every this many steps (a positive int; needs ``checkpoint_dir``).
      resume: continue from the latest checkpoint in ``checkpoint_dir`` if there is one. If it
        holds checkpoints and ``resume`` is False, fit refuses to start rather than mix two runs.
        (The CLI's ``--resume`` sets it.)
      checkpoint_metadata: a JSON-serialisable dict saved with every checkpoint (e.g. the
        experiment's config); resuming with a different one is refused.
      allow_data_size_mismatch: accept ``algorithm.data_size != len(data)`` (see above).

    Returns:
      The final state and the per-step ``VIInfo`` stacked to shape ``(num_epochs, N // batch_size)``.

    Raises:
      NonFiniteError: naming the first step whose objective, gradient or updated parameters were
        not finite (unless the algorithm was built with ``skip_nonfinite=True``, which skips and
        counts such steps in ``info.skipped``). Training stops there; ``err.state`` is the state
        before that step, ``err.step`` its number (0-based, counted over all epochs).
      ValueError: on bad arguments or data (a ``data_size`` other than ``len(data)``, labels the
        likelihood rejects), or a checkpoint that belongs to another run (a different key, data,
        batch size or ``checkpoint_metadata``, or one already past ``num_epochs``).
    """
    _checks.positive_int(num_epochs, "num_epochs")
    _checks.positive_int(batch_size, "batch_size")
    if progress_bar is not None and not isinstance(progress_bar, bool):
        raise ValueError(f"progress_bar must be True, False or None, got {progress_bar!r}")
    if progress_bar is None:
        progress_bar = _optional.available("tqdm")
    if not isinstance(algorithm, VIAlgorithm):
        raise ValueError(f"algorithm must be a VIAlgorithm from vi.build, got {type(algorithm).__name__}")
    _checks.rng_key(rng_key)
    size = _checks.finite_data(data)
    if batch_size > size:
        raise ValueError(f"batch_size ({batch_size}) must not exceed the number of examples ({size})")
    num_batches = size // batch_size
    total_steps = num_epochs * num_batches
    if checkpoint_dir is None:
        for name, value in (("checkpoint_every", checkpoint_every), ("checkpoint_metadata", checkpoint_metadata)):
            if value is not None:
                raise ValueError(f"{name} needs checkpoint_dir")
        if resume:
            raise ValueError("resume=True needs checkpoint_dir")
    else:
        if checkpoint_every is None:
            checkpoint_every = num_batches
        _checks.positive_int(checkpoint_every, "checkpoint_every")
        if not isinstance(resume, bool):
            raise ValueError(f"resume must be True or False, got {resume!r}")
        if checkpoint_metadata is not None and not isinstance(checkpoint_metadata, Mapping):
            raise ValueError(f"checkpoint_metadata must be a dict, got {type(checkpoint_metadata).__name__}")
        checkpoint_metadata = _jsonable(checkpoint_metadata, "checkpoint_metadata")
    if not isinstance(allow_data_size_mismatch, bool):
        raise ValueError(f"allow_data_size_mismatch must be True or False, got {allow_data_size_mismatch!r}")
    if not allow_data_size_mismatch:
        _check_data_size(algorithm.data_size, size, batch_size)
    data = jax.tree.map(jnp.asarray, data)
    _check_likelihood_data(algorithm.loglikelihood_fn, state, data)
    _check_group_invariance(algorithm, state, data)
    # Abstract evaluation on the whole data set: shape checks, and label-range checks on the
    # concrete (closed-over) targets, without computing anything. Its info shapes size the history.
    _, info_shapes = jax.eval_shape(lambda s: algorithm.step(rng_key, s, data), state)
    history = jax.tree.map(lambda s: np.zeros((num_epochs, num_batches) + s.shape, s.dtype), info_shapes)

    # The per-epoch buffer for the info of each step, filled in by _run_steps.
    info_buffer = jax.tree.map(lambda s: np.zeros((num_batches,) + s.shape, s.dtype), info_shapes)
    run_steps = functools.partial(_run_steps, algorithm, batch_size)

    done = 0
    checkpointer = None
    fit_record = None
    try:
        if checkpoint_dir is not None:
            from symvi_jax import checkpoint

            checkpointer = checkpoint.Checkpointer(checkpoint_dir)
            fit_record = {
                "num_epochs": num_epochs,
                "batch_size": batch_size,
                "num_examples": size,
                "steps_per_epoch": num_batches,
                "total_steps": total_steps,
                "data_sha256": _checks.data_digest(data),
                "epoch_keys": _EPOCH_KEYS,
            }
            config = checkpoint_metadata
            latest = checkpointer.latest_step()
            if latest is not None:
                if not resume:
                    raise ValueError(
                        f"checkpoint_dir {checkpoint_dir} already holds checkpoints (latest step {latest}); "
                        "pass resume=True (CLI: --resume) to continue or extend that run, or use an empty "
                        "directory (CLI: another --out)"
                    )
                state, history, done = _resume(checkpointer, state, history, rng_key, fit_record, config)

        bar = None
        if progress_bar:
            tqdm = _optional.require("tqdm.auto", extra="progress", feature="vi.fit(progress_bar=True)").tqdm
            bar = tqdm(total=num_epochs, initial=done // num_batches, desc="fit", unit="epoch")
        try:
            while done < total_steps:
                epoch, start = divmod(done, num_batches)
                stop = num_batches
                if checkpointer is not None:
                    stop = min(stop, start + checkpoint_every - done % checkpoint_every)
                state, bad_step, infos = run_steps(state, rng_key, data, info_buffer, start, stop, epoch)
                infos = jax.device_get(infos)
                for buffer, values in zip(jax.tree.leaves(history), jax.tree.leaves(infos)):
                    buffer[epoch, start:stop] = values[start:stop]
                bad_step = int(bad_step)
                if bad_step >= 0:
                    error = NonFiniteError(
                        f"the objective, its gradient or the updated parameters became non-finite at step "
                        f"{bad_step} (epoch {epoch}); the last finite state is attached as err.state "
                        "(build(..., skip_nonfinite=True) skips such steps instead)"
                    )
                    error.state = state
                    error.step = bad_step
                    raise error
                done = epoch * num_batches + stop
                if checkpointer is not None and (done % checkpoint_every == 0 or done == total_steps):
                    checkpointer.save(checkpoint.TrainingCheckpoint(
                        state, rng_key, done, history, {"fit": fit_record, "config": config}
                    ))
                if bar is not None and stop == num_batches:
                    bar.update(1)
                    bar.set_postfix(objective=f"{float(np.mean(history.objective[epoch])):.4g}",
                                    skipped=int(np.sum(history.skipped[: epoch + 1])) if hasattr(history, "skipped") else 0)
        finally:
            if bar is not None:
                bar.close()
    finally:
        if checkpointer is not None:
            checkpointer.close()
    return state, jax.tree.map(jnp.asarray, history)


#: How epoch keys derive from fit's rng_key; recorded in checkpoints, since runs saved with
#: another rule (``split(rng_key, num_epochs)[e]`` before extending runs was possible) differ.
_EPOCH_KEYS = "fold_in(rng_key, epoch)"


@functools.partial(jax.jit, static_argnums=(0, 1))
def _run_steps(algorithm, batch_size, state, rng_key, data, infos, start, stop, epoch):
    """Steps ``start .. stop - 1`` of epoch ``epoch`` (see :func:`fit`), stopping at the first non-finite one.

    Compiled once per (algorithm, batch_size, shapes), reused for every epoch, range and run length.
    """
    size = jax.tree.leaves(data)[0].shape[0]
    num_batches = size // batch_size
    epoch_key = jax.random.fold_in(rng_key, epoch)
    key_order, key_steps = jax.random.split(epoch_key)
    order = jax.random.permutation(key_order, size)[: num_batches * batch_size].reshape(num_batches, batch_size)
    step_keys = jax.random.split(key_steps, num_batches)

    def cond(carry):
        index, _, bad_step, _ = carry
        return (index < stop) & (bad_step < 0)

    def body(carry):
        index, state, bad_step, infos = carry
        batch = jax.tree.map(lambda x: jnp.take(x, order[index], axis=0), data)
        new_state, info = algorithm.step(step_keys[index], state, batch)
        finite = jnp.isfinite(info.objective) & _all_finite(new_state.params)
        finite = finite | jnp.asarray(getattr(info, "skipped", False))  # a skipped step kept the old state
        state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
        bad_step = jnp.where(finite, bad_step, epoch * num_batches + index)
        infos = jax.tree.map(lambda buffer, x: buffer.at[index].set(x), infos, info)
        return index + 1, state, bad_step, infos

    carry = (jnp.asarray(start), state, jnp.asarray(-1), infos)
    _, state, bad_step, infos = jax.lax.while_loop(cond, body, carry)
    return state, bad_step, infos


def _check_data_size(data_size: Optional[int], size: int, batch_size: int) -> None:
    """Refuse an algorithm whose likelihood scale N / M was built for another number of examples."""
    if data_size is None or data_size == size:
        return
    raise ValueError(
        f"data_size mismatch: the algorithm was built with data_size={data_size} but data holds {size} "
        f"examples, so each minibatch log-likelihood would be scaled by {data_size}/{batch_size} instead of "
        f"{size}/{batch_size} ({data_size / size:.3g}x the weight of the data against the KL). Build with "
        f"data_size={size}, or pass allow_data_size_mismatch=True to fit if the mismatch is deliberate "
        "(e.g. data is one shard of a larger training set)"
    )


def _check_likelihood_data(loglikelihood_fn, state, data) -> None:
    """Run the likelihood's eager ``check_batch`` on the whole data set, with the mean of q."""
    check = getattr(loglikelihood_fn, "check_batch", None)
    if check is None:
        return
    params = getattr(getattr(state, "params", None), "loc", None)
    if params is None:
        return  # not a mean-field VIState: the abstract evaluation below still checks shapes
    check(params, data)


def _check_group_invariance(algorithm: VIAlgorithm, state, data) -> None:
    """f(g.w) == f(w) on the first inputs, at the mean of q, before the first step (``WeightSymmetry.check``)."""
    apply_fn = getattr(algorithm.loglikelihood_fn, "apply_fn", None)
    params = getattr(getattr(state, "params", None), "loc", None)
    if algorithm.group is None or apply_fn is None or params is None or not isinstance(data, (tuple, list)):
        return
    inputs = jax.tree.map(lambda x: x[:8], data[0])
    try:
        algorithm.group.check(apply_fn, params, inputs)
    except ValueError as err:
        raise ValueError(f"group: {err} (checked by vi.fit before the first step)") from None


def _jsonable(value, name):
    if value is None:
        return None
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be JSON-serialisable with finite numbers: {err}") from None


#: Fit-record entries that may change on resume: the run's length (resume extends or shortens it).
_RUN_LENGTH = ("num_epochs", "total_steps")

_START_AFRESH = "; to start a new run use an empty checkpoint_dir (CLI: another --out, without --resume)"


def _resume(checkpointer, state, history, rng_key, fit_record, config):
    """Restore the latest checkpoint after checking that it belongs to this run.

    The run may be longer than the checkpointed one (it is extended) or shorter, as long as the
    checkpoint has not passed its last step; the history is copied into this run's buffer.
    """
    step = checkpointer.latest_step()
    saved = checkpointer.read_metadata(step)["user"]
    saved_fit = saved.get("fit", {})
    changed = sorted(k for k in fit_record if k not in _RUN_LENGTH and saved_fit.get(k) != fit_record[k])
    if changed:
        detail = ", ".join(f"{k}: saved {saved_fit.get(k)!r}, now {fit_record[k]!r}" for k in changed)
        raise ValueError(
            f"cannot resume from {checkpointer.directory}: the run differs from the checkpointed one ({detail})"
            + _START_AFRESH
        )
    if saved.get("config") != config:
        raise ValueError(
            f"cannot resume from {checkpointer.directory}: checkpoint_metadata differs from the checkpointed "
            f"run's (saved {saved.get('config')!r}, now {config!r})" + _START_AFRESH
        )
    if step > fit_record["total_steps"]:
        steps_per_epoch = fit_record["steps_per_epoch"]
        raise ValueError(
            f"cannot resume from {checkpointer.directory}: its checkpoint is at step {step}, past the "
            f"{fit_record['total_steps']} steps of num_epochs={fit_record['num_epochs']}; resume with "
            f"num_epochs >= {-(-step // steps_per_epoch)}" + _START_AFRESH
        )
    saved_epochs = saved_fit.get("num_epochs", fit_record["num_epochs"])
    saved_history = jax.tree.map(lambda h: np.zeros((saved_epochs,) + h.shape[1:], h.dtype), history)
    restored = checkpointer.restore(state, history=saved_history, step=step)
    saved_key, _ = _checks.key_to_data(restored.rng_key)
    given_key, _ = _checks.key_to_data(rng_key)
    if not np.array_equal(saved_key, given_key):
        raise ValueError(
            f"cannot resume from {checkpointer.directory}: rng_key differs from the checkpointed run's key"
            + _START_AFRESH
        )
    kept = min(saved_epochs, fit_record["num_epochs"])
    for buffer, values in zip(jax.tree.leaves(history), jax.tree.leaves(restored.history)):
        buffer[:kept] = np.asarray(values)[:kept]
    return restored.state, history, int(restored.step)

