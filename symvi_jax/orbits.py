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
* ``"exact"`` -- t_s = log q(w_s) - log q^G(w_s) with q^G computed exactly; only the
  expectation over w is Monte Carlo. For one hidden layer of width <= ``permanent.MAX_WIDTH``
  the orbit sum is the permanent of the unit-compatibility matrix (``permanent``), computed by a
  dynamic programme over subsets; otherwise G is enumerated (small groups only).
* ``"importance"`` -- the importance-weighted bound. The K-1 elements are drawn per weight sample
  from an equivariant proposal r(h | w) (``proposals``: Sinkhorn-balanced, slot-by-slot
  matching of the units of w to q's factors, tempered by ``temperature``), the identity is kept
  as the positive term and every term is weighted by (1/|G|) / r:

      t_s = log q(w_s) - log[(1/K) (q(w_s) / (|G| r(e|w_s)) + sum_{k<K} q(h_k^{-1}.w_s) / (|G| r(h_k|w_s)))].

  With uniform r this is ``"infonce"``. Why E[t_s] <= I, and its gradients: docs/estimators.md, section 2.

Everything that runs over group elements is vmapped; pass ``chunk_size`` to run it through
``jax.lax.map`` in chunks of that many elements instead, which bounds memory.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from symvi_jax import _checks, meanfield, permanent, prng, proposals, units
from symvi_jax.meanfield import MeanFieldState
from symvi_jax.symmetry import WeightSymmetry, decode_signed, move_units, split_variables, as_symmetry, leaf_paths
from symvi_jax.types import Array, ArrayTree, Permutation, PRNGKey

__all__ = [
    "ESTIMATORS",
    "Estimator",
    "Exact",
    "Importance",
    "InfoNCE",
    "as_estimator",
    "importance_terms",
    "uses_permanent",
    "assignment_log_ratios",
    "orbit_log_probs",
    "symmetrized_log_prob",
    "mutual_information",
    "mutual_information_terms",
]


def map_over(fn: Callable, xs, chunk_size: Optional[int] = None):
    """``vmap(fn)(xs)``, or ``lax.map(fn, xs, batch_size=chunk_size)`` when a chunk size is given."""
    if chunk_size is None:
        return jax.vmap(fn)(xs)
    if not _checks.is_int(chunk_size) or chunk_size < 1:
        raise ValueError(f"chunk_size must be None or a positive int, got {chunk_size!r}")
    return jax.lax.map(fn, xs, batch_size=int(chunk_size))


def _gathered_log_ratio(leaf, loc, scale, entries, elements, group: WeightSymmetry) -> Array:
    """log q_leaf(g.w) - log q_leaf(w) for one leaf moved by several factors, one element ``elements``."""
    moved = leaf
    for (index, member), v in zip(entries, elements):
        p, s = decode_signed(v) if group.factors[index].sign_flips else (v, None)
        moved = move_units(moved, member, group.factors[index].size, p, s)
    return -0.5 * jnp.sum(jnp.square((moved - loc) / scale) - jnp.square((leaf - loc) / scale))


def assignment_log_ratios(
    q: MeanFieldState,
    params: ArrayTree,
    assignments: Permutation,
    group: WeightSymmetry,
    *,
    chunk_size: Optional[int] = None,
    method: str = "gather",
) -> Array:
    """log q(sigma_k.w) - log q(w) for every stacked element sigma_k (leading axis K).

    No moved copy of w is formed for the leaves that move with one factor alone (``units``: a
    hidden layer's bias, the first layer's kernel columns, the last layer's kernel rows). Their
    contribution is a sum over slots of A_f[i, j] = log f_i(u_j) (and A^-_f for sign flips),

        log q(sigma.w) - log q(w) = sum_f sum_i (A^{s_i}_f[i, p_f(i)] - A_f[i, i])
                                    + sum_{leaves moved by several factors} [log q_leaf(sigma.w) - log q_leaf(w)],

    each difference A[i, j] - A[i, i] = -1/2 sum_c (x_j - x_i)(x_j + x_i - 2 m_i) / s_i^2 formed
    from the units' differences (``method="gather"``, ``units.assignment_log_ratio_terms``:
    accurate in float32 for near-identical units, O(K d C), or O(d^2 C) where d is small against
    K) or read off the d x d unit matrix built with one matrix product (``method="matmul"``,
    O(d^2 C), the path before; it cancels
    terms of size ((x - c) / s)^2, docs/estimators.md section 2.1). Only the leaves moved by
    several factors (Dense kernels between two hidden layers) are gathered once per element
    (vmapped, or ``lax.map`` in chunks of ``chunk_size``). Everything not moved by G cancels.
    """
    sigma_tree = meanfield.scale(q)
    lay = units.layout(group, params)
    total = 0.0
    for index, members in enumerate(lay.single):
        if not members:
            continue
        total = total + units.unit_assignment_log_ratios(q, params, group, index, assignments[index], members,
                                                         method=method)
    if lay.multi:
        inner_w, inner_m, inner_s = (leaf_paths(split_variables(group, t)[0]) for t in (params, q.loc, sigma_tree))
        for path, entries in lay.multi:
            leaf, loc, scale = inner_w[path], inner_m[path], inner_s[path]
            elements = tuple(assignments[index] for index, _ in entries)
            total = total + map_over(
                lambda els, leaf=leaf, loc=loc, scale=scale, entries=entries: _gathered_log_ratio(
                    leaf, loc, scale, entries, els, group),
                elements, chunk_size)
    return total


def orbit_log_probs(
    q: MeanFieldState,
    params: ArrayTree,
    elements: Permutation,
    group: WeightSymmetry,
    *,
    chunk_size: Optional[int] = None,
) -> Array:
    """log q(g_k^{-1}.w) for every element g_k stacked in ``elements`` (leading axis K).

    Computed as log q(w) + ``assignment_log_ratios`` at sigma_k = g_k^{-1}.
    """
    ratios = assignment_log_ratios(q, params, group.inverse(elements), group, chunk_size=chunk_size)
    return meanfield.log_prob(q, params) + ratios


def symmetrized_log_prob(
    q: MeanFieldState,
    params: ArrayTree,
    group: WeightSymmetry,
    *,
    chunk_size: Optional[int] = None,
) -> Array:
    """Exact log q^G(w) = logsumexp_g log q(g^{-1}.w) - log|G|, enumerating G.

    Since g -> g^{-1} is a bijection of G, the sum is taken as sum_g q(g.w), which saves inverting
    every enumerated element.

    Raises:
      ValueError: if G is too large to enumerate (see ``WeightSymmetry.elements``).
    """
    ratios = assignment_log_ratios(q, params, group.elements(), group, chunk_size=chunk_size)
    return meanfield.log_prob(q, params) + jax.nn.logsumexp(ratios) - group.log_order()


# ---- estimators: fn(rng_key, q, samples, group, *, num_permutations, chunk_size) -> Array[S] --------


def _infonce_terms(rng_key, q, samples, group, *, num_permutations, chunk_size, max_permutations=None):
    """t_s = log K - logsumexp(0, log q(g_j^{-1}.w_s) - log q(w_s), j < K), the g_j shared by all s.

    With ``max_permutations``, K_max - 1 elements are drawn and the first K - 1 are used, so K may
    be traced (K as data, e.g. vmapped over runs of one program).
    """
    k = num_permutations if max_permutations is None else max_permutations
    num_samples = jax.tree.leaves(samples)[0].shape[0]
    if k == 1:
        return jnp.zeros((num_samples,), dtype=jax.tree.leaves(samples)[0].dtype)
    # g_j uniform makes sigma_j = g_j^{-1} uniform too, so sigma_j is drawn directly (no inverse);
    # the same K - 1 elements serve every weight sample
    assignments = group.sample(rng_key, k - 1)

    def per_sample(w):
        return assignment_log_ratios(q, w, assignments, group, chunk_size=chunk_size)

    ratios = jax.vmap(per_sample)(samples)  # (S, K-1)
    if max_permutations is None:
        log_k = jnp.log(k)
    else:
        ratios = jnp.where((jnp.arange(k - 1) < num_permutations - 1)[None, :], ratios, -jnp.inf)
        log_k = jnp.log(jnp.asarray(num_permutations, ratios.dtype))
    return log_k - jax.nn.logsumexp(jnp.concatenate([jnp.zeros_like(ratios[:, :1]), ratios], axis=1), axis=1)


def uses_permanent(group: WeightSymmetry, params: Optional[ArrayTree] = None) -> bool:
    """Whether ``estimator="exact"`` takes the permanent path.

    It does when no leaf of ``params`` (default: every leaf the group names) is moved by two
    factors, so q(sigma.w) factorises over each factor's units, and every factor has at most
    ``permanent.MAX_WIDTH`` units: a Dense chain with one hidden layer, or any net whose factors
    touch disjoint leaves.
    """
    if not group.factors or any(d > permanent.MAX_WIDTH for d in group.sizes):
        return False
    if params is None:
        return all(len(entries) == 1 for entries in group.members_by_leaf().values())
    return not units.layout(group, params).multi


#: The permanent's DP holds 2^d values per sample; above this width the samples are mapped one
#: chunk at a time (``chunk_size``, default 1) instead of all at once.
_PERMANENT_VMAP_WIDTH = 12


def _exact_terms(rng_key, q, samples, group, *, num_permutations, chunk_size):
    del rng_key
    order = group.order()
    if num_permutations is not None and num_permutations != order:
        raise ValueError(
            f"estimator='exact' sums over all |G| = {order} elements; num_permutations must be None "
            f"(or {order}), got {num_permutations}"
        )
    log_q = meanfield.log_prob(q, samples)
    if uses_permanent(group, q.loc):
        one = lambda w: permanent.symmetrized_log_prob(q, w, group)  # noqa: E731
        if max(group.sizes) <= _PERMANENT_VMAP_WIDTH and chunk_size is None:
            log_qg = jax.vmap(one)(samples)
        else:
            log_qg = jax.lax.map(one, samples, batch_size=chunk_size or 1)
    else:
        log_qg = jax.vmap(lambda w: symmetrized_log_prob(q, w, group, chunk_size=chunk_size))(samples)
    return log_q - log_qg


def importance_terms(
    rng_key: PRNGKey,
    q: MeanFieldState,
    samples: ArrayTree,
    group: WeightSymmetry,
    *,
    num_permutations: int,
    chunk_size: Optional[int] = None,
    temperature: float = 1.0,
    num_iterations: int = proposals.SINKHORN_ITERATIONS,
    score_correction: bool = False,
) -> Array:
    """Per-sample terms of the importance-weighted bound on I(g; w) (``estimator="importance"``).

    For each weight sample w_s, K-1 assignments sigma_k = h_k^{-1} are drawn from the proposal
    r(. | w_s) of ``proposals`` and

        t_s = log q(w_s) - [logsumexp_{k=0}^{K-1} (log q(sigma_k.w_s) - log|G| - log r(sigma_k | w_s)) - log K],

    with sigma_0 = e the positive term, its r(e | w_s) evaluated exactly. For an equivariant r,
    E[t_s] <= I(g; w), with equality when r is the exact posterior of g given w; K = 1 gives
    t_s = log|G| + log r(e | w_s). Proof and gradients: docs/estimators.md, section 2.

    Gradients. The draws are discrete and made from ``stop_gradient`` inputs. log r(e | w_s) of
    the identity term is differentiated (through the Sinkhorn proposal), the proposed draws'
    log r(sigma_k | w_s) are constants: this gradient is unbiased for the gradient of I when r is
    the exact posterior, is the paper's gradient when r is uniform, and is biased for any other
    r. With ``score_correction`` the proposed draws' log r is differentiated too and the
    score-function term with a leave-one-out (VIMCO) baseline is added: the gradient is then
    unbiased for the gradient of E[t_s] for any r, at more cost (and, at small K, more variance).
    The value is the same either way.

    Args:
      rng_key: randomness for the proposals (one stream per weight sample).
      q: the mean-field state.
      samples: weight samples with a leading axis S.
      group: the permutation group.
      num_permutations: K, counting the identity.
      chunk_size: ``lax.map`` chunk size over the K-1 proposed elements (None: vmap).
      temperature: the proposal's tempering T > 0 (``proposals``).
      num_iterations: Sinkhorn iterations of the proposal.
      score_correction: add the score-function term (see above).
    """
    k = num_permutations
    q_fixed = jax.lax.stop_gradient(q)
    num_samples = jax.tree.leaves(samples)[0].shape[0]
    config = dict(temperature=temperature, num_iterations=num_iterations)

    def per_sample(key, w):
        # factor 0's proposal weights do not depend on earlier draws: build them once, live, and
        # share them between log r(e | w), the draws (as constants) and the score correction
        proposals.check_group(group, w)
        first = proposals.layer_log_weights(q, w, group, 0, **config)
        # log weights relative to q(w_s), log|G| and K: t_s = log|G| + log K - logsumexp(log_w)
        log_w = jnp.reshape(-proposals.log_prob(q, w, group, group.identity(), first_log_weights=first, **config), (1,))
        if k == 1:
            return group.log_order() - log_w[0]
        w_fixed = jax.lax.stop_gradient(w)
        assignments, log_r = proposals.sample(key, q_fixed, w_fixed, group, k - 1,
                                              first_log_weights=jax.lax.stop_gradient(first), **config)
        if score_correction:
            log_r = jax.vmap(lambda a: proposals.log_prob(q, w, group, a, first_log_weights=first, **config))(
                assignments)
        log_w = jnp.concatenate([log_w, assignment_log_ratios(q, w, assignments, group, chunk_size=chunk_size) - log_r])
        term = group.log_order() + jnp.log(k) - jax.nn.logsumexp(log_w)
        if not score_correction:
            return term
        # learning signal of draw k: phi - b_k, with b_k = phi after replacing log W_k by the mean
        # of the other K - 1 log weights (none of which depends on sigma_k)
        fixed = jax.lax.stop_gradient(log_w)
        others = (jnp.sum(fixed) - fixed) / (k - 1)
        left_out = jnp.where(jnp.eye(k, dtype=bool), others[:, None], fixed[None, :])
        signal = jax.nn.logsumexp(fixed) - jax.nn.logsumexp(left_out, axis=1)
        score = jnp.sum(signal[1:] * log_r)
        return term - (score - jax.lax.stop_gradient(score))

    keys = prng.split(rng_key, num_samples)
    return jax.vmap(per_sample)(keys, samples)


def _importance_terms(rng_key, q, samples, group, *, num_permutations, chunk_size, temperature=None,
                      score_correction=False):
    if temperature is None:
        temperature = 1.0
    return importance_terms(rng_key, q, samples, group, num_permutations=num_permutations, chunk_size=chunk_size,
                            temperature=temperature, score_correction=score_correction)


#: Estimators of I(g; w) by name; each maps (rng_key, q, samples, group, *, num_permutations,
#: chunk_size) to one term per weight sample. ``"importance"`` also takes ``temperature``.
ESTIMATORS: dict[str, Callable] = {
    "infonce": _infonce_terms,
    "exact": _exact_terms,
    "importance": _importance_terms,
}


def __getattr__(name):
    if name == "TEMPERED_ESTIMATORS":  # deprecated: the estimator values carry their own settings
        return _checks.deprecated_name(__name__, name, ("importance",),
                                       "only orbits.Importance takes a proposal_temperature")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclasses.dataclass(frozen=True)
class InfoNCE:
    """The paper's InfoNCE bound over K uniform group elements (the identity is one of the K).

    ``max_permutations`` (optional) makes K data: K_max - 1 elements are drawn and the first K - 1
    used, so ``num_permutations`` may then be a traced integer in [1, K_max] (one compiled program
    for every K, e.g. vmapped over runs; K = 1 gives 0).
    """

    num_permutations: Any
    max_permutations: Optional[int] = None
    name: ClassVar[str] = "infonce"

    def __post_init__(self):
        if self.max_permutations is None:
            _checks.positive_int(self.num_permutations, "num_permutations (K)")
            return
        _checks.positive_int(self.max_permutations, "max_permutations (K_max)")
        if not isinstance(self.num_permutations, jax.core.Tracer):
            k = np.asarray(self.num_permutations)
            if k.ndim != 0 or not np.issubdtype(k.dtype, np.integer) or not 1 <= int(k) <= self.max_permutations:
                raise ValueError(f"num_permutations (K) must be an integer in [1, max_permutations = "
                                 f"{self.max_permutations}], got {self.num_permutations!r}")

    def terms(self, rng_key, q, samples, group, *, chunk_size=None) -> Array:
        return _infonce_terms(rng_key, q, samples, group, num_permutations=self.num_permutations,
                              chunk_size=chunk_size, max_permutations=self.max_permutations)


@dataclasses.dataclass(frozen=True)
class Exact:
    """log q(w_s) - log q^G(w_s) with q^G exact (the permanent, or enumeration of small groups)."""

    name: ClassVar[str] = "exact"

    def terms(self, rng_key, q, samples, group, *, chunk_size=None) -> Array:
        return _exact_terms(rng_key, q, samples, group, num_permutations=None, chunk_size=chunk_size)


@dataclasses.dataclass(frozen=True)
class Importance:
    """The importance-weighted bound with the Sinkhorn proposal (:func:`importance_terms`).

    Fields: K, the proposal's tempering, its Sinkhorn iterations, and whether the gradient gets
    the score-function correction that makes it unbiased for any proposal.
    """

    num_permutations: int
    proposal_temperature: float = 1.0
    num_iterations: int = proposals.SINKHORN_ITERATIONS
    score_correction: bool = False
    name: ClassVar[str] = "importance"

    def __post_init__(self):
        _checks.positive_int(self.num_permutations, "num_permutations (K)")
        temperature = self.proposal_temperature
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.integer, np.floating)) or not (
            np.isfinite(temperature) and temperature > 0
        ):
            raise ValueError(f"proposal_temperature must be a finite number > 0, got {temperature!r}")
        if not _checks.is_int(self.num_iterations) or self.num_iterations < 0:
            raise ValueError(f"num_iterations (Sinkhorn) must be an int >= 0, got {self.num_iterations!r}")
        if not isinstance(self.score_correction, bool):
            raise ValueError(f"score_correction must be True or False, got {self.score_correction!r}")

    def terms(self, rng_key, q, samples, group, *, chunk_size=None) -> Array:
        return importance_terms(rng_key, q, samples, group, num_permutations=self.num_permutations,
                                chunk_size=chunk_size, temperature=self.proposal_temperature,
                                num_iterations=self.num_iterations, score_correction=self.score_correction)


#: An estimator of I(g; w): a frozen, hashable value, validated when built.
Estimator = Union[InfoNCE, Exact, Importance]


def as_estimator(
    estimator: Union[str, Estimator] = "infonce",
    *,
    num_permutations: Optional[int] = None,
    temperature: Optional[float] = None,
    score_correction: bool = False,
    group: Optional[WeightSymmetry] = None,
) -> Estimator:
    """The estimator value for ``estimator``: returned as it is if it is one, else built from its name.

    The one place where the string conveniences (``estimator="importance", num_permutations=K,
    temperature=T``) become a value; everything downstream takes the value. With a value, the
    conveniences must be left unset (they are its fields). ``group``, if given, checks that
    ``num_permutations`` for ``"exact"`` is None or |G|.
    """
    if isinstance(estimator, (InfoNCE, Exact, Importance)):
        if num_permutations is not None or temperature is not None or score_correction is not False:
            raise ValueError(
                f"estimator={estimator!r} is a value: set num_permutations, the temperature and "
                "score_correction as its fields, not as separate arguments"
            )
        return estimator
    if not isinstance(estimator, str) or estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {sorted(ESTIMATORS)} or an orbits.InfoNCE / Exact / Importance "
                         f"value, got {estimator!r}")
    if temperature is not None and estimator != "importance":
        raise ValueError(f"temperature only applies to estimator='importance', got estimator={estimator!r}")
    if not isinstance(score_correction, bool):
        raise ValueError(f"score_correction must be True or False, got {score_correction!r}")
    if score_correction and estimator != "importance":
        raise ValueError(f"score_correction applies to estimator='importance' only, got estimator={estimator!r}")
    if estimator == "infonce":
        return InfoNCE(num_permutations)
    if estimator == "importance":
        return Importance(num_permutations, 1.0 if temperature is None else temperature,
                          score_correction=score_correction)
    order = None if group is None else as_symmetry(group).order()
    if order is not None and num_permutations is not None and num_permutations != order:
        raise ValueError(
            f"estimator='exact' sums over all |G| = {order} elements; num_permutations must be None "
            f"(or {order}), got {num_permutations}"
        )
    return Exact()


def mutual_information_terms(
    rng_key: PRNGKey,
    q: MeanFieldState,
    samples: ArrayTree,
    group: WeightSymmetry,
    *,
    num_permutations: Optional[int] = None,
    estimator: Union[str, Estimator] = "infonce",
    chunk_size: Optional[int] = None,
    temperature: Optional[float] = None,
    score_correction: bool = False,
) -> Array:
    """Per-sample terms t_s (see the module docstring) for weight samples with a leading axis S.

    The objectives call this with the same samples they use for the likelihood. ``estimator`` is
    a value (``InfoNCE(K)``, ``Exact()``, ``Importance(K, ...)``) or a name with
    ``num_permutations``, ``temperature`` and ``score_correction`` (see :func:`as_estimator`).
    """
    as_symmetry(group)
    estimator = as_estimator(estimator, num_permutations=num_permutations, temperature=temperature,
                             score_correction=score_correction, group=group)
    if not group.factors:  # nothing to permute: G is trivial and I(g; w) = 0
        return jnp.zeros(jax.tree.leaves(samples)[0].shape[:1])
    return estimator.terms(rng_key, q, samples, group, chunk_size=chunk_size)


def mutual_information(
    rng_key: PRNGKey,
    q: MeanFieldState,
    group: WeightSymmetry,
    *,
    num_samples: int,
    num_permutations: Optional[int] = None,
    estimator: Union[str, Estimator] = "infonce",
    chunk_size: Optional[int] = None,
    temperature: Optional[float] = None,
    score_correction: bool = False,
) -> Array:
    """Monte Carlo estimate of I(g; w) under q^G(g, w) = q(g^{-1}.w) / |G|, from S draws of q.

    Args:
      rng_key: randomness for the weight samples and the permutations.
      q: the mean-field state.
      group: the permutation group of the network.
      num_samples: S, weight samples w_s ~ q.
      num_permutations: K (the identity counts as one of them) for ``"infonce"`` and
        ``"importance"``; must be None for ``"exact"`` and for an estimator value.
      estimator: an estimator value (``InfoNCE(K)``, ``Exact()``, ``Importance(K, ...)``) or one
        of the names in ``ESTIMATORS`` (built into a value by :func:`as_estimator`).
      chunk_size: chunk size for ``lax.map`` over group elements; None vmaps all at once.
      temperature: the proposal's tempering, ``"importance"`` only (None: 1).
      score_correction: ``"importance"`` only: make the gradient unbiased for any proposal
        (``importance_terms``).
    """
    _checks.positive_int(num_samples, "num_samples (S)")
    estimator = as_estimator(estimator, num_permutations=num_permutations, temperature=temperature,
                             score_correction=score_correction, group=group)
    key_sample, key_perm = prng.split(rng_key)
    samples = meanfield.sample(key_sample, q, num_samples)
    terms = mutual_information_terms(key_perm, q, samples, group, estimator=estimator, chunk_size=chunk_size)
    return jnp.mean(terms)
