"""Sums over permutation orbits: the symmetrized density q^G and estimators of I(g; w).

The symmetrized posterior of Gelberg et al. (2024, Section 4) is

    q^G(w) = (1/|G|) sum_{g in G} q(g^{-1}.w),

and Theorem 4.1 gives L^G = L + I(g; w) with I(g; w) = H(q^G) - H(q) = E_{w~q}[log q(w) - log q^G(w)].

Estimators of I (``estimator=``), each returning one term per weight sample w_s ~ q whose mean
estimates I:

* ``"infonce"`` -- the paper's Theorem 4.3. With g_1..g_{K-1} drawn uniformly from G, shared by
  all S samples,

      t_s = log q(w_s) - log[(1/K) (q(w_s) + sum_{j<K} q(g_j^{-1}.w_s))]   (<= log K).

  E[t_s] = H^K - H(q) = I^K <= min(I, log K). We subtract the Monte Carlo log q(w_s) rather than
  the closed-form H(q): both have the same expectation, but this form has zero variance when q is
  G-invariant (every term equals log q(w_s), so t_s = 0) and when the copies do not overlap
  (t_s = log K), where the closed form would carry the O(dim w) variance of log q(w_s).
* ``"exact"`` -- t_s = log q(w_s) - log q^G(w_s) with q^G enumerated over all of G; only the
  expectation over w is Monte Carlo.

Everything that runs over group elements is vmapped; pass ``chunk_size`` to run it through
``jax.lax.map`` in chunks of that many elements instead, which bounds memory.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from symvi_jax import meanfield
from symvi_jax.meanfield import MeanFieldState
from symvi_jax.symmetry import PermutationGroup
from symvi_jax.types import Array, ArrayTree, Permutation, PRNGKey

__all__ = [
    "ESTIMATORS",
    "orbit_log_probs",
    "symmetrized_log_prob",
    "mutual_information",
    "mutual_information_terms",
]


def map_over(fn: Callable, xs, chunk_size: Optional[int] = None):
    """``vmap(fn)(xs)``, or ``lax.map(fn, xs, batch_size=chunk_size)`` when a chunk size is given."""
    if chunk_size is None:
        return jax.vmap(fn)(xs)
    if not isinstance(chunk_size, (int, np.integer)) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size must be None or a positive int, got {chunk_size!r}")
    return jax.lax.map(fn, xs, batch_size=int(chunk_size))


def orbit_log_probs(
    q: MeanFieldState,
    params: ArrayTree,
    elements: Permutation,
    group: PermutationGroup,
    *,
    chunk_size: Optional[int] = None,
) -> Array:
    """log q(g_k^{-1}.w) for every element g_k stacked in ``elements`` (leading axis K)."""

    def one(g):
        return meanfield.log_prob(q, group.act(group.inverse(g), params))

    return map_over(one, elements, chunk_size)


def symmetrized_log_prob(
    q: MeanFieldState,
    params: ArrayTree,
    group: PermutationGroup,
    *,
    chunk_size: Optional[int] = None,
) -> Array:
    """Exact log q^G(w) = logsumexp_g log q(g^{-1}.w) - log|G|, enumerating G.

    Since g -> g^{-1} is a bijection of G, the sum is taken as sum_g q(g.w), which saves inverting
    every enumerated element.

    Raises:
      ValueError: if G is too large to enumerate (see ``PermutationGroup.elements``).
    """
    log_terms = map_over(lambda g: meanfield.log_prob(q, group.act(g, params)), group.elements(), chunk_size)
    return jax.nn.logsumexp(log_terms) - group.log_order()


# ---- estimators: fn(rng_key, q, samples, group, *, num_permutations, chunk_size) -> Array[S] --------


def _infonce_terms(rng_key, q, samples, group, *, num_permutations, chunk_size):
    k = num_permutations
    log_q = meanfield.log_prob(q, samples)  # (S,)
    if k == 1:
        return jnp.zeros_like(log_q)
    elements = group.sample(rng_key, k - 1)  # shared by every weight sample

    def per_sample(w):
        return orbit_log_probs(q, w, elements, group, chunk_size=chunk_size)

    others = jax.vmap(per_sample)(samples)  # (S, K-1)
    log_mean = jax.nn.logsumexp(jnp.concatenate([log_q[:, None], others], axis=1), axis=1) - jnp.log(k)
    return log_q - log_mean


def _exact_terms(rng_key, q, samples, group, *, num_permutations, chunk_size):
    del rng_key
    order = group.order()
    if num_permutations is not None and num_permutations != order:
        raise ValueError(
            f"estimator='exact' enumerates all |G| = {order} elements; num_permutations must be None "
            f"(or {order}), got {num_permutations}"
        )
    log_q = meanfield.log_prob(q, samples)
    log_qg = jax.vmap(lambda w: symmetrized_log_prob(q, w, group, chunk_size=chunk_size))(samples)
    return log_q - log_qg


#: Estimators of I(g; w) by name; each maps (rng_key, q, samples, group, *, num_permutations,
#: chunk_size) to one term per weight sample.
ESTIMATORS: dict[str, Callable] = {
    "infonce": _infonce_terms,
    "exact": _exact_terms,
}


def _check_estimator(estimator: str, num_permutations) -> None:
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {sorted(ESTIMATORS)}, got {estimator!r}")
    if estimator != "exact" and (
        not isinstance(num_permutations, (int, np.integer)) or isinstance(num_permutations, bool) or num_permutations < 1
    ):
        raise ValueError(f"num_permutations (K) must be a positive int, got {num_permutations!r}")


def mutual_information_terms(
    rng_key: PRNGKey,
    q: MeanFieldState,
    samples: ArrayTree,
    group: PermutationGroup,
    *,
    num_permutations: Optional[int],
    estimator: str = "infonce",
    chunk_size: Optional[int] = None,
) -> Array:
    """Per-sample terms t_s (see the module docstring) for weight samples with a leading axis S.

    The objectives call this with the same samples they use for the likelihood.
    """
    _check_estimator(estimator, num_permutations)
    if not group.widths:  # no hidden layer: G is trivial and I(g; w) = 0
        return jnp.zeros(jax.tree.leaves(samples)[0].shape[:1])
    return ESTIMATORS[estimator](
        rng_key, q, samples, group, num_permutations=num_permutations, chunk_size=chunk_size
    )


def mutual_information(
    rng_key: PRNGKey,
    q: MeanFieldState,
    group: PermutationGroup,
    *,
    num_samples: int,
    num_permutations: Optional[int] = None,
    estimator: str = "infonce",
    chunk_size: Optional[int] = None,
) -> Array:
    """Monte Carlo estimate of I(g; w) under q^G(g, w) = q(g^{-1}.w) / |G|, from S draws of q.

    Args:
      rng_key: randomness for the weight samples and the permutations.
      q: the mean-field state.
      group: the permutation group of the network.
      num_samples: S, weight samples w_s ~ q.
      num_permutations: K (the identity counts as one of them) for ``"infonce"``; must be None
        for ``"exact"``.
      estimator: one of ``ESTIMATORS``.
      chunk_size: chunk size for ``lax.map`` over group elements; None vmaps all at once.
    """
    if not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
        raise ValueError(f"num_samples (S) must be a positive int, got {num_samples!r}")
    _check_estimator(estimator, num_permutations)
    key_sample, key_perm = jax.random.split(rng_key)
    samples = meanfield.sample(key_sample, q, num_samples)
    terms = mutual_information_terms(
        key_perm, q, samples, group, num_permutations=num_permutations, estimator=estimator, chunk_size=chunk_size
    )
    return jnp.mean(terms)
