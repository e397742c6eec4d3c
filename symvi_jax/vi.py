"""Mean-field and symmetrized variational inference: ``from_objective -> (init, step, sample)`` and ``run``.

One step takes reparameterised gradients of an objective value from ``objectives`` (``ELBO``, the
ELBO L, or ``SymmetrizedELBO``, the symmetrized L^K of Gelberg et al., 2024) and applies an optax
update to the variational parameters (mu, rho):

    (value, info), grads = value_and_grad(-objective)(q);  q <- optax update(grads).

Hyperparameters (a learned noise precision, ``likelihoods.gaussian(..., learn_noise=True)``, or
prior scale, ``learn_prior_scale=True``) are point estimates in ``VIState.hyper``,
updated by the same optax update on the same objective: (q, hyper) <- update(grad_(q, hyper)).

``from_objective(objective, optimizer)`` binds an objective value; ``build(loglikelihood_fn,
optimizer, data_size=..., objective="elbo" | "symmetrized_elbo", ...)`` is the keyword convenience
that builds the value first. The kernels are pure and not jitted: jit ``step`` once at the
outermost scope (or use :func:`fit`, which jits an epoch of ``lax.scan`` steps internally). Seeds
and chains are vmapped by the user over ``init``/``step``.

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

import warnings
from typing import Any, Callable, NamedTuple, Optional, Protocol, Union

import jax
import jax.numpy as jnp
import optax

from symvi_jax import _checks, meanfield, objectives, orbits, prng
from symvi_jax.meanfield import MeanFieldState
from symvi_jax.symmetry import WeightSymmetry, check_held_out
from symvi_jax.types import Array, ArrayTree, PRNGKey

__all__ = [
    "VIState",
    "VIInfo",
    "VIAlgorithm",
    "NonFiniteError",
    "build",
    "from_objective",
    "init",
    "step",
    "sample",
    "hyperparameters",
    "run",
    "run_epochs",
    "run_steps",
    "fit",
]


class _VIStateFields(NamedTuple):
    q: MeanFieldState
    opt_state: optax.OptState
    hyper: ArrayTree = ()


_MISSING = object()


class VIState(_VIStateFields):
    """What the next step needs: q, the optimiser state and the point-estimated hyperparameters.

    Fields:
      q: the variational parameters (a ``meanfield.MeanFieldState``).
      opt_state: the optax state, of ``optimizer.init(q)`` when ``hyper`` is empty and of
        ``optimizer.init((q, hyper))`` otherwise.
      hyper: hyperparameters in unconstrained space (``{"log_noise_precision": ...,
        "log_prior_scale": ...}``), trained by the same optimiser on the same objective (type-II
        maximum likelihood); ``()`` when there is none. They are not part of q: the group never
        moves them and ``sample`` ignores them. :func:`hyperparameters` gives their constrained values.

    ``state.params`` and ``VIState(params=...)`` are the deprecated spellings of ``q`` (a
    ``DeprecationWarning``). The class is a NamedTuple (a JAX pytree rebuilt positionally).
    """

    __slots__ = ()

    def __new__(cls, q=_MISSING, opt_state=_MISSING, hyper=(), *, params=_MISSING):
        if params is not _MISSING:
            if q is not _MISSING:
                raise ValueError("VIState takes q (its deprecated name params is an alias): pass only q")
            warnings.warn("VIState(params=...) is deprecated: use VIState(q=...)", DeprecationWarning, stacklevel=2)
            q = params
        if q is _MISSING or opt_state is _MISSING:
            raise TypeError("VIState needs q and opt_state")
        return super().__new__(cls, q, opt_state, hyper)

    @property
    def params(self) -> MeanFieldState:
        """Deprecated alias of :attr:`q` (the variational parameters, not network weights)."""
        warnings.warn("VIState.params is deprecated: use VIState.q (the variational parameters)", DeprecationWarning,
                      stacklevel=2)
        return self.q


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

    ``from_objective`` and ``build`` also record the ``data_size`` N it scaled the likelihood by and the
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


ObjectiveFn = Callable[[PRNGKey, MeanFieldState, Any], tuple[Array, objectives.ObjectiveInfo]]

#: ``build``'s keywords that configure the objective, with their defaults.
_OBJECTIVE_KEYWORDS = dict(group=None, num_samples=1, num_permutations=None, estimator="infonce", prior_scale=1.0,
                           chunk_size=None, temperature=None, kl_weight=1.0, likelihood_temperature=1.0,
                           proposal_temperature=None, score_correction=False, learn_prior_scale=False)


def from_objective(
    objective: ObjectiveFn,
    optimizer: optax.GradientTransformation,
    *,
    init_scale: float = 1e-2,
    frozen: Optional[ArrayTree] = None,
    skip_nonfinite: bool = False,
    track_grad_norm: bool = True,
) -> VIAlgorithm:
    """Bind an objective value and an optimiser once: ``init``, ``step`` (ascent on the objective), ``sample``.

    Args:
      objective: an ``objectives.ELBO`` or ``objectives.SymmetrizedELBO`` value, or any callable
        ``(rng_key, q, batch[, hyper]) -> (value, ObjectiveInfo)``. Its attributes, where it has
        them, fill the record: ``hyper_init`` (the initial ``VIState.hyper``), ``group``,
        ``data_size``, ``loglikelihood_fn`` and ``prior_scale`` (checked against the params by ``init``).
      optimizer: any optax ``GradientTransformation``.
      init_scale, frozen, skip_nonfinite, track_grad_norm: as in :func:`build`.
    """
    if not callable(objective):
        raise ValueError("objective must be an objectives.ELBO / SymmetrizedELBO value or a callable "
                         f"(rng_key, q, batch[, hyper]) -> (value, info), got {type(objective).__name__}")
    return _algorithm(objective, optimizer, init_scale=init_scale, frozen=frozen, skip_nonfinite=skip_nonfinite,
                      track_grad_norm=track_grad_norm, hyper_init=getattr(objective, "hyper_init", None) or {},
                      data_size=getattr(objective, "data_size", None),
                      loglikelihood_fn=getattr(objective, "loglikelihood_fn", None),
                      prior_scale=getattr(objective, "prior_scale", None))


def _algorithm(objective, optimizer, *, init_scale, frozen, skip_nonfinite, track_grad_norm, hyper_init, data_size,
               loglikelihood_fn, prior_scale) -> VIAlgorithm:
    """The ``VIAlgorithm`` of :func:`from_objective`, its record's fields given explicitly."""
    if not hasattr(optimizer, "init") or not hasattr(optimizer, "update"):
        raise ValueError(f"optimizer must be an optax GradientTransformation, got {type(optimizer).__name__}")
    _checks.positive(init_scale, "init_scale")
    for name, flag in (("skip_nonfinite", skip_nonfinite), ("track_grad_norm", track_grad_norm)):
        if not isinstance(flag, bool):
            raise ValueError(f"{name} must be True or False, got {flag!r}")
    group = getattr(objective, "group", None)

    def init_fn(params: ArrayTree) -> VIState:
        if group is not None:
            check_held_out(group, params, frozen)
        if prior_scale is not None:
            _checks.prior_scale(prior_scale, params)
        return init(params, optimizer, init_scale=init_scale, hyper=hyper_init)

    def step_fn(rng_key: PRNGKey, state: VIState, batch: Any) -> tuple[VIState, VIInfo]:
        return step(rng_key, state, batch, objective_fn=objective, optimizer=optimizer,
                    skip_nonfinite=skip_nonfinite, track_grad_norm=track_grad_norm)

    def sample_fn(rng_key: PRNGKey, state: VIState, num_samples: int) -> ArrayTree:
        return sample(rng_key, state, num_samples)

    return VIAlgorithm(init_fn, step_fn, sample_fn, data_size, loglikelihood_fn, group)


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
    learn_prior_scale: bool = False,
) -> VIAlgorithm:
    """Bind a likelihood, an optimiser and the objective's configuration once: the keyword convenience.

    It builds one objective value from its keywords (``objective="elbo"``: ``objectives.ELBO``;
    ``"symmetrized_elbo"``: ``objectives.SymmetrizedELBO`` with ``orbits.as_estimator``) and
    returns ``from_objective(value, optimizer, init_scale=, frozen=, skip_nonfinite=,
    track_grad_norm=)``.

    Args:
      loglikelihood_fn: ``(params, batch) -> Array[M]`` per-example log-likelihoods
        (``likelihoods.categorical`` / ``likelihoods.gaussian``).
      optimizer: any optax ``GradientTransformation``.
      data_size: N, the training-set size (minibatch sums are scaled by N / M).
      objective: ``"elbo"`` (MFVI), ``"symmetrized_elbo"`` (L^K; needs ``group``), an objective
        value (``objectives.ELBO`` / ``SymmetrizedELBO``, built with this ``loglikelihood_fn`` and
        ``data_size``; the objective's keywords below must then be left at their defaults), or a
        callable ``(rng_key, q, batch) -> (value, ObjectiveInfo)`` used as it is.
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
      prior_scale: s of the N(0, s^2 I) prior: one number, or a tree shaped like the params
        whose leaves are numbers or arrays (one scale per leaf or per weight; ``init`` checks the
        structure). For the symmetrized objective it must be invariant under the group.
      learn_prior_scale: learn s by empirical Bayes (type-II maximum likelihood):
        ``state.hyper["log_prior_scale"]`` holds log s with the structure of ``prior_scale``
        (its initial value). For the symmetrized objective every learned scale must be one
        number per leaf (an array-valued one would not stay invariant).
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
    settings = dict(group=group, num_samples=num_samples, num_permutations=num_permutations, estimator=estimator,
                    prior_scale=prior_scale, chunk_size=chunk_size, temperature=temperature, kl_weight=kl_weight,
                    likelihood_temperature=likelihood_temperature, proposal_temperature=proposal_temperature,
                    score_correction=score_correction, learn_prior_scale=learn_prior_scale)
    options = dict(init_scale=init_scale, frozen=frozen, skip_nonfinite=skip_nonfinite,
                   track_grad_norm=track_grad_norm)
    if isinstance(objective, (objectives.ELBO, objectives.SymmetrizedELBO)):
        _check_objective_value(objective, loglikelihood_fn, data_size, settings)
        return from_objective(objective, optimizer, **options)
    if callable(objective):
        _check_callable_objective(loglikelihood_fn, data_size, settings)
        return _algorithm(objective, optimizer, **options, hyper_init={}, data_size=data_size,
                          loglikelihood_fn=loglikelihood_fn, prior_scale=prior_scale)
    return from_objective(_objective_value(objective, loglikelihood_fn, data_size, **settings), optimizer, **options)


def _objective_value(objective, loglikelihood_fn, data_size, *, group, num_samples, num_permutations, estimator,
                     prior_scale, chunk_size, temperature, kl_weight, likelihood_temperature, proposal_temperature,
                     score_correction, learn_prior_scale):
    """The objective value that :func:`build`'s keywords describe: the one place its string keywords are read."""
    proposal_temperature = _checks.deprecated_alias(
        proposal_temperature, temperature, "proposal_temperature", "temperature",
        "it tempers the importance proposal over permutations; likelihood_temperature= and kl_weight= temper "
        "the posterior", stacklevel=3)
    common = dict(prior_scale=prior_scale, num_samples=num_samples, kl_weight=kl_weight,
                  likelihood_temperature=likelihood_temperature, learn_prior_scale=learn_prior_scale)
    if objective == "elbo":
        if group is not None or num_permutations is not None:
            raise ValueError("objective='elbo' takes no group or num_permutations; use objective='symmetrized_elbo'")
        if proposal_temperature is not None:
            raise ValueError("temperature applies to objective='symmetrized_elbo' with estimator='importance' only")
        if score_correction is not False:
            raise ValueError("score_correction applies to objective='symmetrized_elbo' with estimator='importance' "
                             "only")
        if chunk_size is not None:  # accepted (and unused) by the ELBO, as before
            _checks.positive_int(chunk_size, "chunk_size")
        return objectives.ELBO(loglikelihood_fn, data_size, **common)
    if objective == "symmetrized_elbo":
        if group is None:
            raise ValueError("objective='symmetrized_elbo' needs group= (infer_symmetry(apply_fn, params, x) or "
                             "PermutationGroup.from_params(params))")
        estimator = orbits.as_estimator(estimator, num_permutations=num_permutations, temperature=proposal_temperature,
                                        score_correction=score_correction, group=group)
        return objectives.SymmetrizedELBO(loglikelihood_fn, group, data_size, estimator, chunk_size=chunk_size,
                                          **common)
    raise ValueError(f"objective must be 'elbo', 'symmetrized_elbo', an objectives.ELBO / SymmetrizedELBO value or a "
                     f"callable, got {objective!r}")


def _check_objective_value(objective, loglikelihood_fn, data_size, settings) -> None:
    """``build(objective=value)``: the value holds the objective's settings, so build's must be left unset."""
    changed = [name for name, value in settings.items() if not _is_default(value, _OBJECTIVE_KEYWORDS[name])]
    if changed:
        raise ValueError(f"objective={type(objective).__name__}(...) is a value: set {', '.join(changed)} as its "
                         "fields, not as build's keywords (or call vi.from_objective(objective, optimizer))")
    if loglikelihood_fn is not objective.loglikelihood_fn or data_size != objective.data_size:
        raise ValueError(f"objective={type(objective).__name__}(...) was built with another loglikelihood_fn or "
                         f"data_size (data_size={objective.data_size}) than build's (data_size={data_size}); "
                         "pass the same ones, or call vi.from_objective(objective, optimizer)")


def _is_default(value, default) -> bool:
    return value is default or (type(value) is type(default) and value == default)


def _check_callable_objective(loglikelihood_fn, data_size, settings) -> None:
    """``build(objective=callable)``: the callable weighs its own terms and learns no hyperparameter."""
    if not callable(loglikelihood_fn):
        raise ValueError("loglikelihood_fn must be callable (params, batch) -> Array[M], got "
                         f"{type(loglikelihood_fn).__name__}")
    _checks.positive_float(settings["kl_weight"], "kl_weight")
    _checks.positive_float(settings["likelihood_temperature"], "likelihood_temperature")
    if settings["kl_weight"] != 1.0 or settings["likelihood_temperature"] != 1.0:
        raise ValueError("kl_weight and likelihood_temperature apply to objective='elbo' or 'symmetrized_elbo'; "
                         "a callable objective weighs its own terms")
    _checks.positive_int(data_size, "data_size")
    _checks.positive_int(settings["num_samples"], "num_samples")
    _checks.positive(settings["prior_scale"], "prior_scale")
    if settings["chunk_size"] is not None:
        _checks.positive_int(settings["chunk_size"], "chunk_size")
    if settings["proposal_temperature"] is not None or settings["temperature"] is not None:
        raise ValueError("temperature applies to objective='symmetrized_elbo' with estimator='importance' only")
    if settings["score_correction"] is not False:
        raise ValueError("score_correction applies to objective='symmetrized_elbo' with estimator='importance' only")
    if not isinstance(settings["learn_prior_scale"], bool):
        raise ValueError(f"learn_prior_scale must be True or False, got {settings['learn_prior_scale']!r}")
    if settings["learn_prior_scale"] or getattr(loglikelihood_fn, "hyper_init", None):
        raise ValueError("learned hyperparameters (learn_noise=True, learn_prior_scale=True) need objective='elbo' "
                         "or 'symmetrized_elbo'; a callable objective is called as (rng_key, q, batch)")


def init(params: ArrayTree, optimizer: optax.GradientTransformation, *, init_scale: float,
         hyper: Optional[ArrayTree] = ()) -> VIState:
    """q = N(params, init_scale^2 I), the hyperparameters ``hyper`` and a fresh optimiser state.

    The optimiser state is ``optimizer.init(q)`` when ``hyper`` is empty (as without
    hyperparameters) and ``optimizer.init((q, hyper))`` otherwise. ``hyper``'s leaves are cast to
    the params' floating dtype.
    """
    q = meanfield.init(params, init_scale=init_scale)
    if not jax.tree.leaves(hyper):
        return VIState(q=q, opt_state=optimizer.init(q))
    dtype = jnp.result_type(*[x for x in jax.tree.leaves(q.loc) if jnp.issubdtype(jnp.result_type(x), jnp.floating)])
    hyper = jax.tree.map(lambda h: jnp.asarray(h, dtype=dtype), hyper)
    return VIState(q=q, opt_state=optimizer.init((q, hyper)), hyper=hyper)


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

    With hyperparameters (``state.hyper`` not empty) the gradient is taken with respect to
    ``(q, hyper)`` jointly and ``objective_fn`` is called with ``hyper=state.hyper``.

    With ``skip_nonfinite`` the update is dropped (the old state is returned, ``info.skipped`` is
    True) when the objective, the gradient norm or any updated parameter is not finite.
    """

    learned = bool(jax.tree.leaves(state.hyper))

    def loss_fn(trainable):
        if learned:
            q, hyper = trainable
            value, info = objective_fn(rng_key, q, batch, hyper=hyper)
        else:
            value, info = objective_fn(rng_key, trainable, batch)
        return -value, info

    trainable = (state.q, state.hyper) if learned else state.q
    (_, info), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
    updates, opt_state = optimizer.update(grads, state.opt_state, trainable)
    params = optax.apply_updates(trainable, updates)
    q, hyper = params if learned else (params, state.hyper)
    new_state = VIState(q=q, opt_state=opt_state, hyper=hyper)
    if track_grad_norm:
        # the barrier hands the norm the materialised gradient; without it XLA recomputes the gradient
        # into the norm's fusions (benchmarks/RESULTS.md, "Levers")
        grad_norm = optax.tree.norm(jax.lax.optimization_barrier(grads))
    else:
        grad_norm = jnp.full((), jnp.nan, dtype=info.objective.dtype)
    if skip_nonfinite:
        # a non-finite gradient makes the optax update, hence the parameters, non-finite too
        finite = jnp.isfinite(info.objective) & _checks.all_finite(params)
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


def sample(rng_key: PRNGKey, state: VIState, num_samples: int) -> ArrayTree:
    """``num_samples`` weight draws from q (predictions from q and q^G agree; PAPER.md, Section 4)."""
    return meanfield.sample(rng_key, state.q, num_samples)


def hyperparameters(state: VIState) -> dict:
    """The constrained values of ``state.hyper``: each ``"log_<name>"`` entry as ``"<name>": exp(.)``.

    E.g. ``{"noise_precision": tau, "prior_scale": s}`` (s with the structure of ``prior_scale``);
    ``{}`` when nothing is learned.
    """
    if not isinstance(state, VIState):
        raise ValueError(f"state must be a vi.VIState, got {type(state).__name__}")
    values = {}
    for name, value in dict(state.hyper or {}).items():
        if name.startswith("log_"):
            name, value = name[len("log_"):], jax.tree.map(jnp.exp, value)
        values[name] = value
    return values


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

    The key schedule is :func:`fit`'s (``symvi_jax.training``): epoch e uses
    ``key_e = fold_in(rng_key, e)`` and then :func:`run_epochs`'s schedule within the epoch. It is
    not jitted: jit it, or ``jax.jit(jax.vmap(...))`` it over seeds, at the outermost scope. Use
    :func:`fit` for validation of the data, checkpoints, a progress bar and ``NonFiniteError``.

    Returns:
      The final state and the per-step ``VIInfo`` stacked to shape ``(num_epochs, N // batch_size)``.
    """
    _checks.positive_int(num_epochs, "num_epochs")
    epoch_keys = jax.vmap(lambda e: jax.random.fold_in(rng_key, e))(jnp.arange(num_epochs))
    return run_epochs(algorithm, state, data, epoch_keys, batch_size=batch_size)


def run_epochs(algorithm: VIAlgorithm, state: VIState, data: Any, epoch_keys: PRNGKey, *,
               batch_size: int) -> tuple[VIState, VIInfo]:
    """One shuffled pass over ``data`` per key of ``epoch_keys`` (shape ``(E,)``): a pure ``lax.scan``.

    Epoch e with key ``key_e`` visits the examples in the order ``permutation(split(key_e)[0], N)``
    (the last incomplete minibatch is dropped, so every step has the same shapes) and step i uses
    ``split(split(key_e)[1], N // batch_size)[i]``. :func:`run` derives the epoch keys from one key;
    this function takes them as data, for a schedule of one's own. ``algorithm`` needs only a
    ``step`` (a ``vmap`` of several algorithms' steps over a stacked state serves as well).

    Returns:
      The final state and the per-step infos stacked to shape ``(E, N // batch_size)``.
    """
    _checks.positive_int(batch_size, "batch_size")
    size = jax.tree.leaves(data)[0].shape[0]
    if batch_size > size:
        raise ValueError(f"batch_size ({batch_size}) must not exceed the number of examples ({size})")
    num_batches = size // batch_size

    def epoch(state, epoch_key):
        key_order, key_steps = prng.split(epoch_key)
        order = prng.permutation(key_order, size)[: num_batches * batch_size].reshape(num_batches, batch_size)

        def one_step(state, xs):
            index, step_key = xs
            batch = jax.tree.map(lambda x: jnp.take(x, index, axis=0), data)
            return algorithm.step(step_key, state, batch)

        return jax.lax.scan(one_step, state, (order, prng.split(key_steps, num_batches)))

    return jax.lax.scan(epoch, state, epoch_keys)


def run_steps(algorithm: VIAlgorithm, state: VIState, data: Any, step_keys: PRNGKey, *,
              batch_size: int) -> tuple[VIState, VIInfo]:
    """One step per key of ``step_keys`` (shape ``(T,)``), each on its own random minibatch: a ``lax.scan``.

    Step t with key ``key_t`` splits it into ``key_batch, key_step``, draws ``batch_size`` distinct
    examples with ``jax.random.choice(key_batch, N, (batch_size,), replace=False)`` and calls
    ``algorithm.step(key_step, state, batch)``. Minibatches are independent across steps (an
    example may come back before every other one has been seen), the scheme of stochastic-gradient
    MCMC samplers; :func:`run_epochs` visits every example once per epoch instead.

    Returns:
      The final state and the per-step infos stacked to shape ``(T,)``.
    """
    _checks.positive_int(batch_size, "batch_size")
    size = jax.tree.leaves(data)[0].shape[0]
    if batch_size > size:
        raise ValueError(f"batch_size ({batch_size}) must not exceed the number of examples ({size})")

    def one_step(state, step_key):
        key_batch, key_step = prng.split(step_key)
        index = jax.random.choice(key_batch, size, (batch_size,), replace=False)
        batch = jax.tree.map(lambda x: jnp.take(x, index, axis=0), data)
        return algorithm.step(key_step, state, batch)

    return jax.lax.scan(one_step, state, step_keys)


# fit, its checks, checkpoints and resume live in symvi_jax.training; vi.fit and
# vi.NonFiniteError stay importable from here. Imported last: training imports this module's names.
from symvi_jax.training import NonFiniteError, fit  # noqa: E402
