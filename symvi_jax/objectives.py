"""Variational objectives: the ELBO L and the symmetrized ELBO L^K of Gelberg et al. (2024).

For a minibatch B of size M from N points, S reparameterised draws w_s ~ q and an isotropic
Gaussian prior N(0, s^2 I):

    L   = (N / M) (1/S) sum_s sum_{n in B} log p(y_n | x_n, w_s) - KL(q || N(0, s^2 I))
    L^K = L + I^K,

where I^K is an estimate of I(g; w) from ``orbits`` on the *same* S draws (Theorem 4.1:
L^G = L + I(g; w); Theorem 4.3: L^K <= L^G with uniform permutations). The KL is closed form.

Tempering (both default to 1, the plain objectives above): a likelihood temperature T and a KL
weight beta, each in (0, inf), give

    L_{T,beta}   = (1/T) (N / M) (1/S) sum_s sum_B log p(y | x, w_s) - beta KL(q || p),
    L^K_{T,beta} = (1/T) (N / M) (1/S) sum_s sum_B log p(y | x, w_s) - beta (KL(q || p) - I^K),

so beta weighs KL(q^G || p) = KL(q || p) - I for the symmetrized objective. T < 1 is the "cold
posterior" p(D | w)^(1/T) p(w) (Wenzel et al., 2020); beta is the beta-VAE-style weight
(Higgins et al., 2017). Both have the same maximiser as T = 1 with KL weight beta T: they differ
only in the scale of the objective and its gradients. ``ObjectiveInfo`` reports the unweighted
terms; its ``objective`` is the weighted value. (``proposal_temperature`` is unrelated: it
tempers the importance proposal over permutations, see ``orbits``.)

Each objective is a frozen value, its settings checked once when it is built:
``ELBO(loglikelihood_fn, data_size, ...)`` and ``SymmetrizedELBO(loglikelihood_fn, group, data_size,
estimator, ...)``, called as ``objective(rng_key, q, batch, hyper=None) -> (value, ObjectiveInfo)``
and trained by ``vi.from_objective(objective, optimizer)``. The functions ``elbo`` and
``symmetrized_elbo`` (``fn(rng_key, q, batch, **settings)``) build the value and call it.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, ClassVar, Mapping, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from symvi_jax import _checks
from symvi_jax import likelihoods, meanfield, orbits, prng
from symvi_jax.meanfield import MeanFieldState
from symvi_jax.symmetry import WeightSymmetry, as_symmetry
from symvi_jax.types import Array, ArrayTree, PRNGKey

__all__ = ["ObjectiveInfo", "ELBO", "SymmetrizedELBO", "elbo", "symmetrized_elbo", "check_prior_invariant",
           "OBJECTIVES", "KL_ESTIMATORS"]


class ObjectiveInfo(NamedTuple):
    """What an objective evaluation is made of.

    Fields:
      objective: the value returned (L for ``elbo``, L^K for ``symmetrized_elbo``).
      expected_loglikelihood: (N/M) E_q sum_B log p(y | x, w), Monte Carlo over S draws.
      kl: KL(q || prior), closed form.
      mutual_information: the estimate of I(g; w) added to L (0 for the plain ELBO).
      log_group_order: log|G| (0 for the plain ELBO), the ceiling of I.
    """

    objective: Array
    expected_loglikelihood: Array
    kl: Array
    mutual_information: Array
    log_group_order: Array


def check_prior_invariant(group: WeightSymmetry, prior_scale) -> None:
    """Raise ``ValueError`` unless a per-leaf prior-scale tree is invariant under ``group``.

    Scalar leaves (one scale per leaf) are invariant; array leaves must give every unit of a
    factor the same scales, otherwise KL(q^G || p) != KL(q || p) - I and L^G is not a bound.
    """
    if all(jnp.ndim(leaf) == 0 for leaf in jax.tree.leaves(prior_scale)):
        return  # one scale per leaf (also a learned one, traced): every unit of a leaf shares it
    if not group.is_invariant(prior_scale):
        raise ValueError(
            "prior_scale is not invariant under the group: every unit of a factor must share its prior "
            "scales, otherwise the symmetrized ELBO is not a bound"
        )


def _check_tempering(kl_weight, likelihood_temperature) -> None:
    """kl_weight (beta) and likelihood_temperature (T): finite numbers > 0."""
    _checks.positive_float(kl_weight, "kl_weight")
    _checks.positive_float(likelihood_temperature, "likelihood_temperature")


def _proposal_temperature(proposal_temperature, temperature, stacklevel: int = 3):
    """Resolve ``proposal_temperature`` and its deprecated alias ``temperature``."""
    return _checks.deprecated_alias(
        proposal_temperature, temperature, "proposal_temperature", "temperature",
        "it tempers the importance proposal over permutations; likelihood_temperature= and kl_weight= temper "
        "the posterior", stacklevel=stacklevel)


def _bind_hyper(loglikelihood_fn, prior_scale, hyper):
    """The likelihood as ``(params, batch) -> Array[M]`` and the prior scale, with ``hyper`` applied.

    A likelihood with ``hyper_init`` (``likelihoods.gaussian(..., learn_noise=True)``) is called as
    ``loglikelihood_fn(params, batch, hyper)``; ``hyper["log_prior_scale"]``, when present,
    replaces ``prior_scale`` by s = exp(log s).
    """
    if hyper is not None and hyper != () and not isinstance(hyper, Mapping):
        raise ValueError(f"hyper must be None or a dict of hyperparameters (VIState.hyper), got {type(hyper).__name__}")
    hyper = dict(hyper or {})
    if getattr(loglikelihood_fn, "hyper_init", None) is not None:
        for name in loglikelihood_fn.hyper_init:
            likelihoods.hyper_value(hyper, name)  # a clear error when the caller forgot hyper=
        loglikelihood_fn = functools.partial(loglikelihood_fn, hyper=hyper)
    if "log_prior_scale" in hyper:
        prior_scale = jax.tree.map(jnp.exp, hyper["log_prior_scale"])
    return loglikelihood_fn, prior_scale


def _expected_loglikelihood(loglikelihood_fn, samples, batch, data_size) -> Array:
    if jax.tree.leaves(samples)[0].shape[0] == 1:
        # S = 1: call the network directly; a vmap over a unit axis costs XLA a batched matmul
        per_example = loglikelihood_fn(jax.tree.map(lambda x: x[0], samples), batch)[None]
    else:
        per_example = jax.vmap(lambda w: loglikelihood_fn(w, batch))(samples)  # (S, M)
    if per_example.ndim != 2:
        raise ValueError(
            "loglikelihood_fn must return one value per example (shape (M,)), got shape "
            f"{per_example.shape[1:]}"
        )
    return data_size * jnp.mean(per_example)


KL_ESTIMATORS = ("closed_form", "monte_carlo")


def _kl(q, samples, prior_scale, kl_estimator) -> Array:
    """KL(q || N(0, s^2 I)): closed form, or (1/S) sum_s [log q(w_s) - log N(w_s; 0, s^2 I)]."""
    if kl_estimator == "closed_form":
        return meanfield.kl_to_normal(q, prior_scale)
    if kl_estimator == "monte_carlo":
        prior = meanfield.normal(jax.tree.map(jnp.zeros_like, q.loc), prior_scale)
        return jnp.mean(meanfield.log_prob(q, samples) - meanfield.log_prob(prior, samples))
    raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {kl_estimator!r}")


def _check_settings(objective) -> None:
    """The settings every objective value shares (each a ValueError naming the field)."""
    _checks.positive_int(objective.data_size, "data_size")
    _checks.positive_int(objective.num_samples, "num_samples")
    _checks.positive(objective.prior_scale, "prior_scale")
    if not isinstance(objective.kl_estimator, str) or objective.kl_estimator not in KL_ESTIMATORS:
        raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {objective.kl_estimator!r}")
    _check_tempering(objective.kl_weight, objective.likelihood_temperature)
    if not isinstance(objective.learn_prior_scale, bool):
        raise ValueError(f"learn_prior_scale must be True or False, got {objective.learn_prior_scale!r}")


def _check_loglikelihood_fn(loglikelihood_fn) -> None:
    if not callable(loglikelihood_fn):
        raise ValueError(f"loglikelihood_fn must be callable (params, batch) -> Array[M], got "
                         f"{type(loglikelihood_fn).__name__}")


def _hyper_init(objective) -> dict:
    """The point-estimated hyperparameters' initial values: the likelihood's, and log s if learned."""
    hyper = dict(getattr(objective.loglikelihood_fn, "hyper_init", None) or {})
    if objective.learn_prior_scale:
        hyper["log_prior_scale"] = jax.tree.map(lambda s: np.log(np.asarray(s, dtype=np.float64)),
                                                objective.prior_scale)
    return hyper


@dataclasses.dataclass(frozen=True, eq=False)
class ELBO:
    """The ELBO L, or the tempered L_{T,beta} (module docstring), with its settings bound and checked once.

    ``value, info = objective(rng_key, q, batch, hyper=None)``; ``vi.from_objective(objective, optimizer)``
    trains it.

    Fields:
      loglikelihood_fn: ``(params, batch) -> Array[M]``, e.g. ``likelihoods.categorical(apply_fn)``.
      data_size: N, the number of training points; the minibatch sum is scaled by N / M.
      prior_scale: s > 0 of the N(0, s^2 I) prior: one number, or a tree shaped like the params whose
        leaves are numbers or arrays.
      num_samples: S, weight draws per call.
      kl_estimator: ``"closed_form"`` or ``"monte_carlo"`` on the same S draws; the latter makes
        ``elbo + I`` equal the Monte Carlo ELBO of q^G sample by sample.
      kl_weight: beta in (0, inf), the weight of the KL term (1: the ELBO).
      likelihood_temperature: T in (0, inf); the likelihood term is divided by T (T < 1: a cold posterior).
      learn_prior_scale: learn s by type-II maximum likelihood: :attr:`hyper_init` then holds
        ``"log_prior_scale"`` (log s, shaped like ``prior_scale``).

    ``hyper`` (``VIState.hyper``) holds the learned hyperparameters: the likelihood's
    (``"log_noise_precision"`` for ``gaussian(..., learn_noise=True)``, which then needs it) and
    ``"log_prior_scale"`` (s = exp(log s) replaces ``prior_scale``). The value is not hashable
    by content (it holds a function and arrays): close over it, do not pass it as a static argument.
    """

    loglikelihood_fn: Callable[[ArrayTree, object], Array]
    data_size: int
    prior_scale: Union[float, ArrayTree] = 1.0
    num_samples: int = 1
    kl_estimator: str = "closed_form"
    kl_weight: float = 1.0
    likelihood_temperature: float = 1.0
    learn_prior_scale: bool = False
    #: The symmetry the objective averages over: none for the ELBO (``VIAlgorithm.group``).
    group: ClassVar[None] = None

    def __post_init__(self):
        _check_settings(self)
        _check_loglikelihood_fn(self.loglikelihood_fn)

    @property
    def hyper_init(self) -> dict:
        """The initial ``VIState.hyper``: the likelihood's ``hyper_init`` and log s when it is learned."""
        return _hyper_init(self)

    def __call__(self, rng_key: PRNGKey, q: MeanFieldState, batch, hyper: Optional[ArrayTree] = None
                 ) -> tuple[Array, ObjectiveInfo]:
        loglikelihood_fn, prior_scale = _bind_hyper(self.loglikelihood_fn, self.prior_scale, hyper)
        samples = meanfield.sample(rng_key, q, self.num_samples)
        expected_ll = _expected_loglikelihood(loglikelihood_fn, samples, batch, self.data_size)
        kl = _kl(q, samples, prior_scale, self.kl_estimator)
        # exact at T = beta = 1 (x / 1 = 1 * x = x)
        value = expected_ll / self.likelihood_temperature - self.kl_weight * kl
        zero = jnp.zeros_like(value)
        return value, ObjectiveInfo(value, expected_ll, kl, zero, zero)


@dataclasses.dataclass(frozen=True, eq=False)
class SymmetrizedELBO:
    """L^K = L + I^K, the ELBO of the symmetrized posterior q^G, with its settings bound and checked once.

    With tempering and a weight lambda on I^K (module docstring):

        L^K_{T,beta,lambda} = (1/T) E_ll - beta (KL(q || p) - lambda I^K).

    Fields (the others as in :class:`ELBO`):
      group: the network's ``WeightSymmetry`` (``infer_symmetry``, ``PermutationGroup.from_params``),
        non-trivial (|G| > 1); the prior must be invariant under it.
      estimator: the estimator of I(g; w), a value: ``orbits.InfoNCE(K)``, ``orbits.Exact()`` or
        ``orbits.Importance(K, ...)`` (``orbits.as_estimator`` builds one from a name).
      chunk_size: ``lax.map`` chunk size over group elements (None: vmap).
      mi_weight: lambda >= 0; 1 is L^K and 0 the ELBO, with I^K still reported but held out of the
        gradient. It may be traced (one program for MFVI and SGM runs, vmapped), as may K with
        ``orbits.InfoNCE(K, max_permutations=K_max)``; a traced 0 still runs I^K's backward pass
        (times 0), a number 0 does not (0.49x the traced 0's step time at width 30,
        ``benchmarks/mi_weight_zero.py``).
      learn_prior_scale: as in :class:`ELBO`; every learned scale must be one number per leaf, so
        that the prior stays invariant.

    Raises ``ValueError`` when built: a group that is not a ``WeightSymmetry`` or is trivial, a
    prior that is not G-invariant (then KL(q^G || p) != KL(q || p) - I and the bound fails), an
    estimator that is not a value, or a bad setting.
    """

    loglikelihood_fn: Callable[[ArrayTree, object], Array]
    group: WeightSymmetry
    data_size: int
    estimator: orbits.Estimator
    prior_scale: Union[float, ArrayTree] = 1.0
    num_samples: int = 1
    chunk_size: Optional[int] = None
    kl_estimator: str = "closed_form"
    kl_weight: float = 1.0
    likelihood_temperature: float = 1.0
    mi_weight: Union[float, Array] = 1.0
    learn_prior_scale: bool = False

    def __post_init__(self):
        _check_settings(self)
        _check_mi_weight(self.mi_weight)
        if self.chunk_size is not None:
            _checks.positive_int(self.chunk_size, "chunk_size")
        if not isinstance(self.estimator, (orbits.InfoNCE, orbits.Exact, orbits.Importance)):
            raise ValueError("estimator must be an orbits.InfoNCE / Exact / Importance value (orbits.as_estimator "
                             f"builds one from a name), got {self.estimator!r}")
        _check_group(self.group)
        check_prior_invariant(self.group, self.prior_scale)
        if self.learn_prior_scale:
            _check_learnable_invariant(self.prior_scale)
        _check_loglikelihood_fn(self.loglikelihood_fn)

    @property
    def hyper_init(self) -> dict:
        """See :attr:`ELBO.hyper_init`."""
        return _hyper_init(self)

    def __call__(self, rng_key: PRNGKey, q: MeanFieldState, batch, hyper: Optional[ArrayTree] = None
                 ) -> tuple[Array, ObjectiveInfo]:
        loglikelihood_fn, prior_scale = _bind_hyper(self.loglikelihood_fn, self.prior_scale, hyper)
        if prior_scale is not self.prior_scale:  # a learned scale, from hyper
            check_prior_invariant(self.group, prior_scale)
        key_sample, key_perm = prng.split(rng_key)
        samples = meanfield.sample(key_sample, q, self.num_samples)
        expected_ll = _expected_loglikelihood(loglikelihood_fn, samples, batch, self.data_size)
        kl = _kl(q, samples, prior_scale, self.kl_estimator)
        terms = self.estimator.terms(key_perm, q, samples, self.group, chunk_size=self.chunk_size)
        mutual_information = jnp.mean(terms)
        weighted = _weighted_information(mutual_information, self.mi_weight)
        # beta = 1 keeps the plain sum (x / 1 = 1 * x = x, bitwise the untempered L^K)
        penalty = kl - weighted if self.kl_weight != 1.0 else None
        value = (expected_ll / self.likelihood_temperature - kl + weighted if penalty is None
                 else expected_ll / self.likelihood_temperature - self.kl_weight * penalty)
        log_order = jnp.asarray(self.group.log_order(), dtype=value.dtype)
        return value, ObjectiveInfo(value, expected_ll, kl, mutual_information, log_order)


def _check_group(group) -> None:
    """A non-trivial ``WeightSymmetry``."""
    as_symmetry(group)
    if group.order() == 1:
        raise ValueError(
            "group is trivial (|G| = 1): there is nothing to symmetrize, and L^G = L. If it came from "
            "PermutationGroup.from_params on a partitioned tree, take it from the full params (and pass the "
            "held-out leaves as frozen=); use objective='elbo' for a network without symmetry"
        )


def _check_learnable_invariant(prior_scale) -> None:
    """A learned prior scale for the symmetrized objective: one number per leaf (it stays invariant)."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(prior_scale)[0]:
        if jnp.ndim(leaf) != 0:
            raise ValueError(
                f"prior_scale: leaf {jax.tree_util.keystr(path) or '(root)'} is an array of shape "
                f"{jnp.shape(leaf)}; learn_prior_scale=True with objective='symmetrized_elbo' takes one "
                "number per leaf (a learned array of scales follows q, which the group does not leave "
                "invariant, so the prior would stop being invariant)"
            )


def elbo(
    rng_key: PRNGKey,
    q: MeanFieldState,
    batch,
    *,
    loglikelihood_fn: Callable[[ArrayTree, object], Array],
    data_size: int,
    prior_scale: Union[float, ArrayTree] = 1.0,
    num_samples: int = 1,
    kl_estimator: str = "closed_form",
    kl_weight: float = 1.0,
    likelihood_temperature: float = 1.0,
    hyper: Optional[ArrayTree] = None,
) -> tuple[Array, ObjectiveInfo]:
    """``ELBO(...)(rng_key, q, batch, hyper)``: L, or L_{T,beta}, in one call (settings as :class:`ELBO`'s fields).

    ``batch`` is passed to ``loglikelihood_fn``; ``hyper`` as in :class:`ELBO`. Differentiate
    with respect to ``hyper`` for type-II maximum likelihood.
    """
    objective = ELBO(loglikelihood_fn, data_size, prior_scale=prior_scale, num_samples=num_samples,
                     kl_estimator=kl_estimator, kl_weight=kl_weight, likelihood_temperature=likelihood_temperature)
    return objective(rng_key, q, batch, hyper)


def symmetrized_elbo(
    rng_key: PRNGKey,
    q: MeanFieldState,
    batch,
    *,
    loglikelihood_fn: Callable[[ArrayTree, object], Array],
    group: WeightSymmetry,
    data_size: int,
    prior_scale: Union[float, ArrayTree] = 1.0,
    num_samples: int = 1,
    num_permutations: Optional[int] = None,
    estimator: Union[str, orbits.Estimator] = "infonce",
    chunk_size: Optional[int] = None,
    kl_estimator: str = "closed_form",
    temperature: Optional[float] = None,
    kl_weight: float = 1.0,
    likelihood_temperature: float = 1.0,
    proposal_temperature: Optional[float] = None,
    score_correction: bool = False,
    hyper: Optional[ArrayTree] = None,
    mi_weight=1.0,
) -> tuple[Array, ObjectiveInfo]:
    """``SymmetrizedELBO(...)(rng_key, q, batch, hyper)``: L^K = L + I^K in one call.

    Settings as :class:`SymmetrizedELBO`'s fields, except ``estimator``, which may also be a name
    in ``orbits.ESTIMATORS`` with these conveniences (``orbits.as_estimator``):

    Args:
      num_permutations: K for a named ``"infonce"`` or ``"importance"``; None for ``"exact"``.
      proposal_temperature: the proposal's tempering for ``estimator="importance"`` (None: 1).
      temperature: deprecated alias of ``proposal_temperature`` (a ``DeprecationWarning``).
      score_correction: ``estimator="importance"`` only: add the score-function term that makes
        the gradient unbiased for any proposal (``orbits.importance_terms``).
    """
    proposal_temperature = _proposal_temperature(proposal_temperature, temperature)
    estimator = orbits.as_estimator(estimator, num_permutations=num_permutations, temperature=proposal_temperature,
                                    score_correction=score_correction, group=group)
    objective = SymmetrizedELBO(
        loglikelihood_fn, group, data_size, estimator, prior_scale=prior_scale, num_samples=num_samples,
        chunk_size=chunk_size, kl_estimator=kl_estimator, kl_weight=kl_weight,
        likelihood_temperature=likelihood_temperature, mi_weight=mi_weight)
    return objective(rng_key, q, batch, hyper)


def _check_mi_weight(mi_weight) -> None:
    """A concrete mi_weight must be a finite number >= 0 (a traced one is the caller's to keep so)."""
    if isinstance(mi_weight, jax.core.Tracer):
        return
    value = np.asarray(mi_weight)
    if isinstance(mi_weight, (bool, np.bool_)) or value.ndim != 0 or not np.issubdtype(value.dtype, np.number) or not (
            np.isfinite(value) and value >= 0):
        raise ValueError(f"mi_weight must be a finite number >= 0, got {mi_weight!r}")


def _weighted_information(mutual_information, mi_weight):
    """lambda I^K; lambda = 0 holds I^K out of the gradient (its value may be non-finite)."""
    if isinstance(mi_weight, (int, float)) and mi_weight == 1:
        return mutual_information
    if isinstance(mi_weight, (int, float)) and mi_weight == 0:  # the same value; no backward pass through I^K
        return jax.lax.stop_gradient(0.0 * mutual_information)
    return jnp.where(mi_weight > 0, mi_weight * mutual_information, jax.lax.stop_gradient(0.0 * mutual_information))


#: Objectives by name, for configs and the CLI.
OBJECTIVES: dict[str, Callable] = {"elbo": elbo, "symmetrized_elbo": symmetrized_elbo}
