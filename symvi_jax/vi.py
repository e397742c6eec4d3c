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
from typing import Any, Callable, NamedTuple, Optional, Protocol, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from symvi_jax import meanfield, objectives, orbits
from symvi_jax.meanfield import MeanFieldState
from symvi_jax.symmetry import PermutationGroup
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
    "fit",
]


class VIState(NamedTuple):
    """What the next step needs: the variational parameters and the optimiser state."""

    params: MeanFieldState
    opt_state: optax.OptState


class VIInfo(NamedTuple):
    """Per-step diagnostics (see ``objectives.ObjectiveInfo``) plus the gradient's global norm."""

    objective: Array
    expected_loglikelihood: Array
    kl: Array
    mutual_information: Array
    log_group_order: Array
    grad_norm: Array


class InitFn(Protocol):
    def __call__(self, params: ArrayTree) -> VIState: ...


class StepFn(Protocol):
    def __call__(self, rng_key: PRNGKey, state: VIState, batch: Any) -> tuple[VIState, VIInfo]: ...


class SampleFn(Protocol):
    def __call__(self, rng_key: PRNGKey, state: VIState, num_samples: int) -> ArrayTree: ...


class VIAlgorithm(NamedTuple):
    """The public triple, as in blackjax: ``init(params)``, ``step(rng_key, state, batch)``,
    ``sample(rng_key, state, num_samples)``."""

    init: InitFn
    step: StepFn
    sample: SampleFn


class NonFiniteError(FloatingPointError):
    """Raised by :func:`fit` when the objective or its gradient stops being finite."""


ObjectiveFn = Callable[[PRNGKey, MeanFieldState, Any], tuple[Array, objectives.ObjectiveInfo]]


def build(
    loglikelihood_fn: Callable[[ArrayTree, Any], Array],
    optimizer: optax.GradientTransformation,
    *,
    data_size: int,
    objective: Union[str, ObjectiveFn] = "elbo",
    group: Optional[PermutationGroup] = None,
    num_samples: int = 1,
    num_permutations: Optional[int] = None,
    estimator: str = "infonce",
    prior_scale: Union[float, ArrayTree] = 1.0,
    init_scale: float = 1e-2,
    chunk_size: Optional[int] = None,
    temperature: Optional[float] = None,
) -> VIAlgorithm:
    """Bind a likelihood, an optimiser and the objective's configuration once.

    Args:
      loglikelihood_fn: ``(params, batch) -> Array[M]`` per-example log-likelihoods
        (``likelihoods.categorical`` / ``likelihoods.gaussian``).
      optimizer: any optax ``GradientTransformation``.
      data_size: N, the training-set size (minibatch sums are scaled by N / M).
      objective: ``"elbo"`` (MFVI), ``"symmetrized_elbo"`` (L^K; needs ``group``) or a callable
        ``(rng_key, q, batch) -> (value, ObjectiveInfo)`` used as it is.
      group: the permutation group, for the symmetrized objective.
      num_samples: S, weight samples per step.
      num_permutations: K for the ``"infonce"`` estimator (the identity is one of the K).
      estimator: a name in ``orbits.ESTIMATORS``.
      prior_scale: s of the isotropic N(0, s^2 I) prior.
      init_scale: initial sigma of every weight. The default 1e-2 starts q close to a
        deterministic network, as is usual for Bayes-by-backprop-style BNNs; the paper leaves it
        unstated.
      chunk_size: ``lax.map`` chunk size over group elements; None vmaps them all.
      temperature: the proposal's tempering for ``estimator="importance"`` (None: 1).
    """
    if not hasattr(optimizer, "init") or not hasattr(optimizer, "update"):
        raise ValueError(f"optimizer must be an optax GradientTransformation, got {type(optimizer).__name__}")
    if callable(objective):
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
        )
    elif objective == "symmetrized_elbo":
        if group is None:
            raise ValueError("objective='symmetrized_elbo' needs group=PermutationGroup.from_params(params)")
        objective_fn = functools.partial(
            objectives.symmetrized_elbo,
            loglikelihood_fn=loglikelihood_fn,
            group=group,
            data_size=data_size,
            prior_scale=prior_scale,
            num_samples=num_samples,
            num_permutations=num_permutations,
            estimator=estimator,
            chunk_size=chunk_size,
            temperature=temperature,
        )
    else:
        raise ValueError(f"objective must be 'elbo', 'symmetrized_elbo' or a callable, got {objective!r}")
    # Validate the configuration eagerly, before anything is traced.
    _check_config(objective, data_size, num_samples, num_permutations, estimator, prior_scale, init_scale, group,
                  temperature)

    def init_fn(params: ArrayTree) -> VIState:
        return init(params, optimizer, init_scale=init_scale)

    def step_fn(rng_key: PRNGKey, state: VIState, batch: Any) -> tuple[VIState, VIInfo]:
        return step(rng_key, state, batch, objective_fn=objective_fn, optimizer=optimizer)

    def sample_fn(rng_key: PRNGKey, state: VIState, num_samples: int) -> ArrayTree:
        return sample(rng_key, state, num_samples)

    return VIAlgorithm(init_fn, step_fn, sample_fn)


def _check_config(objective, data_size, num_samples, num_permutations, estimator, prior_scale, init_scale, group,
                  temperature=None):
    objectives._check_positive_int(data_size, "data_size")
    objectives._check_positive_int(num_samples, "num_samples")
    meanfield._check_positive(prior_scale, "prior_scale")
    meanfield._check_positive(init_scale, "init_scale")
    if objective == "symmetrized_elbo":
        orbits._check_estimator(estimator, num_permutations, temperature)
    elif temperature is not None:
        raise ValueError("temperature applies to objective='symmetrized_elbo' with estimator='importance' only")


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
) -> tuple[VIState, VIInfo]:
    """One optax update along the reparameterisation gradient of ``objective_fn``."""

    def loss_fn(q):
        value, info = objective_fn(rng_key, q, batch)
        return -value, info

    (_, info), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = VIState(params=params, opt_state=opt_state)
    return new_state, VIInfo(*info, grad_norm=optax.global_norm(grads))


def sample(rng_key: PRNGKey, state: VIState, num_samples: int) -> ArrayTree:
    """``num_samples`` weight draws from q (predictions from q and q^G agree; PAPER.md, Section 4)."""
    return meanfield.sample(rng_key, state.params, num_samples)


def fit(
    rng_key: PRNGKey,
    algorithm: VIAlgorithm,
    state: VIState,
    data: tuple,
    *,
    num_epochs: int,
    batch_size: int,
    progress_bar: bool = True,
) -> tuple[VIState, VIInfo]:
    """Train for ``num_epochs`` passes over ``data`` in shuffled minibatches.

    Each epoch is one jit-compiled ``lax.scan`` over its steps with the data resident on the
    device; the epoch function is compiled once and reused (the last incomplete minibatch of each
    epoch is dropped, so every step has the same shapes). This helper jits internally.

    Args:
      rng_key: randomness for shuffling and for every step.
      algorithm: from :func:`build`.
      state: from ``algorithm.init``.
      data: ``(inputs, targets)`` arrays with the same leading size N.
      num_epochs, batch_size: positive ints, ``batch_size <= N``.
      progress_bar: show a tqdm bar over epochs.

    Returns:
      The final state and the per-step ``VIInfo`` stacked to shape ``(num_epochs, N // batch_size)``.

    Raises:
      NonFiniteError: naming the first step whose objective or gradient was not finite. The state
        returned in the exception (``err.state``) is the last finite one.
    """
    objectives._check_positive_int(num_epochs, "num_epochs")
    objectives._check_positive_int(batch_size, "batch_size")
    leaves = jax.tree.leaves(data)
    if not leaves:
        raise ValueError("data must hold (inputs, targets) arrays")
    size = int(np.shape(leaves[0])[0])
    if any(int(np.shape(x)[0]) != size for x in leaves):
        raise ValueError(f"data arrays disagree on the number of examples: {[np.shape(x)[0] for x in leaves]}")
    if size == 0:
        raise ValueError("data is empty")
    if batch_size > size:
        raise ValueError(f"batch_size ({batch_size}) must not exceed the number of examples ({size})")
    data = jax.tree.map(jnp.asarray, data)
    # Abstract evaluation on the whole data set: shape checks, and label-range checks on the
    # concrete (closed-over) targets, without computing anything.
    jax.eval_shape(lambda s: algorithm.step(rng_key, s, data), state)

    num_batches = size // batch_size

    @jax.jit
    def run_epoch(state, key, data, first_step):
        key_order, key_steps = jax.random.split(key)
        order = jax.random.permutation(key_order, size)[: num_batches * batch_size].reshape(num_batches, batch_size)

        def body(carry, xs):
            state, bad_step = carry
            index, key_step, step_number = xs
            batch = jax.tree.map(lambda x: jnp.take(x, index, axis=0), data)
            new_state, info = algorithm.step(key_step, state, batch)
            finite = jnp.isfinite(info.objective) & jnp.isfinite(info.grad_norm)
            state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
            bad_step = jnp.where((bad_step < 0) & ~finite, step_number, bad_step)
            return (state, bad_step), info

        steps = first_step + jnp.arange(num_batches)
        (state, bad_step), infos = jax.lax.scan(
            body, (state, jnp.asarray(-1)), (order, jax.random.split(key_steps, num_batches), steps)
        )
        return state, bad_step, infos

    history = []
    epochs = range(num_epochs)
    bar = None
    if progress_bar:
        from tqdm.auto import tqdm

        bar = tqdm(epochs, desc="fit", unit="epoch")
        epochs = bar
    for epoch, key in zip(epochs, jax.random.split(rng_key, num_epochs)):
        state, bad_step, infos = run_epoch(state, key, data, epoch * num_batches)
        history.append(infos)
        bad_step = int(bad_step)
        if bad_step >= 0:
            if bar is not None:
                bar.close()
            error = NonFiniteError(
                f"the objective or its gradient became non-finite at step {bad_step} (epoch {epoch}); "
                "the last finite state is attached as err.state"
            )
            error.state = state
            error.step = bad_step
            raise error
        if bar is not None:
            bar.set_postfix(objective=f"{float(jnp.mean(infos.objective)):.4g}")
    history = jax.tree.map(lambda *xs: jnp.stack(xs), *history)
    return state, history
