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

Both functions have the signature ``fn(rng_key, q, batch, **config) -> (value, ObjectiveInfo)``;
``vi.build`` binds the configuration once.
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable, Mapping, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from symvi_jax import _checks
from symvi_jax import likelihoods, meanfield, orbits
from symvi_jax.meanfield import MeanFieldState
from symvi_jax.symmetry import WeightSymmetry, as_symmetry
from symvi_jax.types import Array, ArrayTree, PRNGKey

__all__ = ["ObjectiveInfo", "elbo", "symmetrized_elbo", "check_prior_invariant", "OBJECTIVES", "KL_ESTIMATORS"]


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
    for name, value in (("kl_weight", kl_weight), ("likelihood_temperature", likelihood_temperature)):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) or not (
            np.isfinite(value) and value > 0
        ):
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def _proposal_temperature(proposal_temperature, temperature, stacklevel: int = 3):
    """Resolve ``proposal_temperature`` and its deprecated alias ``temperature``."""
    if temperature is None:
        return proposal_temperature
    if proposal_temperature is not None:
        raise ValueError(
            "pass proposal_temperature only; temperature is its deprecated alias, got both "
            f"(proposal_temperature={proposal_temperature!r}, temperature={temperature!r})"
        )
    warnings.warn(
        "temperature= is deprecated: use proposal_temperature= (it tempers the importance proposal over "
        "permutations; likelihood_temperature= and kl_weight= temper the posterior)",
        DeprecationWarning,
        stacklevel=stacklevel,
    )
    return temperature


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
    """The standard ELBO L, or with tempering L_{T,beta} (see the module docstring).

    Args:
      rng_key: randomness for the S weight draws.
      q: the mean-field state.
      batch: ``(inputs, targets)`` passed to ``loglikelihood_fn``.
      loglikelihood_fn: ``(params, batch) -> Array[M]``, e.g. ``likelihoods.categorical(apply_fn)``.
      data_size: N, the number of training points; the minibatch sum is scaled by N / M.
      prior_scale: s > 0 of the isotropic Gaussian prior.
      num_samples: S.
      kl_estimator: ``"closed_form"`` (default) or ``"monte_carlo"`` on the same S draws; the
        latter makes ``elbo + I`` equal the Monte Carlo ELBO of q^G sample by sample.
      kl_weight: beta in (0, inf), the weight of the KL term (1: the ELBO).
      likelihood_temperature: T in (0, inf); the likelihood term is divided by T (1: the ELBO;
        T < 1: a cold posterior).
      hyper: the point-estimated hyperparameters (``VIState.hyper``), or None: the likelihood's
        (``"log_noise_precision"`` for ``gaussian(..., learn_noise=True)``, which then needs it)
        and ``"log_prior_scale"`` (s = exp(log s) replaces ``prior_scale``). Differentiate with
        respect to it for type-II maximum likelihood.
    """
    _checks.positive_int(data_size, "data_size")
    _checks.positive_int(num_samples, "num_samples")
    _check_tempering(kl_weight, likelihood_temperature)
    loglikelihood_fn, prior_scale = _bind_hyper(loglikelihood_fn, prior_scale, hyper)
    samples = meanfield.sample(rng_key, q, num_samples)
    expected_ll = _expected_loglikelihood(loglikelihood_fn, samples, batch, data_size)
    kl = _kl(q, samples, prior_scale, kl_estimator)
    value = expected_ll / likelihood_temperature - kl_weight * kl  # exact at T = beta = 1 (x / 1 = 1 * x = x)
    zero = jnp.zeros_like(value)
    return value, ObjectiveInfo(value, expected_ll, kl, zero, zero)


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
) -> tuple[Array, ObjectiveInfo]:
    """L^K = L + I^K, the ELBO of the symmetrized posterior q^G (see the module docstring).

    Args:
      group: the network's ``WeightSymmetry`` (e.g. ``infer_symmetry`` or
        ``PermutationGroup.from_params``); the prior must be invariant under it.
      estimator: the estimator of I(g; w), a value (``orbits.InfoNCE(K)``, ``orbits.Exact()``,
        ``orbits.Importance(K, ...)``) or a name in ``orbits.ESTIMATORS`` with the conveniences
        below (``orbits.as_estimator``).
      num_permutations: K for a named ``"infonce"`` or ``"importance"``; None for ``"exact"``.
      proposal_temperature: the proposal's tempering for ``estimator="importance"`` (None: 1).
      temperature: deprecated alias of ``proposal_temperature`` (a ``DeprecationWarning``).
      kl_weight, likelihood_temperature: beta and T of the tempered L^K_{T,beta}, as in :func:`elbo`.
      score_correction: ``estimator="importance"`` only: add the score-function term that makes
        the gradient unbiased for any proposal (``orbits.importance_terms``).
      chunk_size: ``lax.map`` chunk size over group elements (None: vmap).
      kl_estimator, hyper: as in :func:`elbo` (a learned prior scale must be one scalar per leaf,
        so that it stays invariant).
      Other arguments as in :func:`elbo`.

    Raises:
      ValueError: if the prior is not G-invariant (then KL(q^G || p) != KL(q || p) - I and the
        bound does not hold), or on a bad K, S or estimator.
    """
    _checks.positive_int(data_size, "data_size")
    _checks.positive_int(num_samples, "num_samples")
    _check_tempering(kl_weight, likelihood_temperature)
    proposal_temperature = _proposal_temperature(proposal_temperature, temperature)
    loglikelihood_fn, prior_scale = _bind_hyper(loglikelihood_fn, prior_scale, hyper)
    check_prior_invariant(as_symmetry(group), prior_scale)
    estimator = orbits.as_estimator(estimator, num_permutations=num_permutations, temperature=proposal_temperature,
                                    score_correction=score_correction, group=group)
    key_sample, key_perm = jax.random.split(rng_key)
    samples = meanfield.sample(key_sample, q, num_samples)
    expected_ll = _expected_loglikelihood(loglikelihood_fn, samples, batch, data_size)
    kl = _kl(q, samples, prior_scale, kl_estimator)
    terms = orbits.mutual_information_terms(key_perm, q, samples, group, estimator=estimator, chunk_size=chunk_size)
    mutual_information = jnp.mean(terms)
    value = expected_ll / likelihood_temperature - kl_weight * kl + kl_weight * mutual_information
    log_order = jnp.asarray(group.log_order(), dtype=value.dtype)
    return value, ObjectiveInfo(value, expected_ll, kl, mutual_information, log_order)


#: Objectives by name, for configs and the CLI.
OBJECTIVES: dict[str, Callable] = {"elbo": elbo, "symmetrized_elbo": symmetrized_elbo}
