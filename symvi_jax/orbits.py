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

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from symvi_jax import meanfield, permanent, proposals
from symvi_jax.meanfield import MeanFieldState
from symvi_jax.symmetry import PermutationGroup
from symvi_jax.types import Array, ArrayTree, Permutation, PRNGKey

__all__ = [
    "ESTIMATORS",
    "TEMPERED_ESTIMATORS",
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
    if not isinstance(chunk_size, (int, np.integer)) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size must be None or a positive int, got {chunk_size!r}")
    return jax.lax.map(fn, xs, batch_size=int(chunk_size))


def _own_blocks(tree: ArrayTree, group: PermutationGroup, layer: int) -> bool:
    """Whether hidden layer ``layer`` has leaves that move with its permutation alone."""
    names, last = group.layer_names, group.num_hidden_layers - 1
    inner = tree["params"] if set(tree) == {"params"} else tree
    lower, upper = inner.get(names[layer], {}), inner.get(names[layer + 1], {})
    return (layer == 0 and "kernel" in lower) or "bias" in lower or (layer == last and "kernel" in upper)


def assignment_log_ratios(
    q: MeanFieldState,
    params: ArrayTree,
    assignments: Permutation,
    group: PermutationGroup,
    *,
    chunk_size: Optional[int] = None,
) -> Array:
    """log q(sigma_k.w) - log q(w) for every stacked element sigma_k (leading axis K).

    No permuted copy of w is formed for the leaves that move with one layer's permutation alone:
    hidden layer l's bias, and the incoming kernel columns of the first hidden layer and the
    outgoing rows of the last. Their contribution is a sum over slots of a d_l x d_l matrix
    A_l[i, j] = log f_i(u_j) (the density of slot i's factor at unit j; ``permanent``), built with
    one matrix product,

        log q(sigma.w) - log q(w) = sum_l sum_i (A_l[i, sigma_l(i)] - A_l[i, i])
                                    + sum_{kernels W between two hidden layers} [log q_W(W[sigma_{l-1}][:, sigma_l]) - log q_W(W)],

    and only the kernels between two hidden layers are gathered once per element (vmapped, or
    ``lax.map`` in chunks of ``chunk_size``). Everything not moved by G cancels.
    """
    names = group.layer_names
    sigma_tree = meanfield.scale(q)
    total = 0.0
    for layer in range(group.num_hidden_layers):
        if not _own_blocks(params, group, layer):
            continue
        blocks = dict(incoming=layer == 0, outgoing=layer == group.num_hidden_layers - 1)
        x = permanent.unit_features(params, group, layer, **blocks)
        loc = permanent.unit_features(q.loc, group, layer, **blocks)
        scale = permanent.unit_features(sigma_tree, group, layer, **blocks)
        log_a = permanent._density_matrix(x, loc, scale)
        delta = log_a - jnp.diag(log_a)[:, None]  # A[i, j] - A[i, i]
        slots = jnp.arange(log_a.shape[0])
        total = total + jnp.sum(delta[slots, assignments[layer]], axis=-1)
    inner_w = params["params"] if set(params) == {"params"} else params
    inner_m = q.loc["params"] if set(q.loc) == {"params"} else q.loc
    inner_s = sigma_tree["params"] if set(sigma_tree) == {"params"} else sigma_tree
    for layer in range(1, group.num_hidden_layers):  # Dense_layer joins hidden layers layer-1 and layer
        name = names[layer]
        if "kernel" not in inner_w.get(name, {}):
            continue
        kernel, loc, scale = inner_w[name]["kernel"], inner_m[name]["kernel"], inner_s[name]["kernel"]

        def moved(rows, cols, kernel=kernel, loc=loc, scale=scale):
            permuted = jnp.take(jnp.take(kernel, rows, axis=0), cols, axis=1)
            return -0.5 * jnp.sum(jnp.square((permuted - loc) / scale) - jnp.square((kernel - loc) / scale))

        total = total + map_over(lambda pair: moved(*pair), (assignments[layer - 1], assignments[layer]), chunk_size)
    return total


def orbit_log_probs(
    q: MeanFieldState,
    params: ArrayTree,
    elements: Permutation,
    group: PermutationGroup,
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
    ratios = assignment_log_ratios(q, params, group.elements(), group, chunk_size=chunk_size)
    return meanfield.log_prob(q, params) + jax.nn.logsumexp(ratios) - group.log_order()


# ---- estimators: fn(rng_key, q, samples, group, *, num_permutations, chunk_size) -> Array[S] --------


def _infonce_terms(rng_key, q, samples, group, *, num_permutations, chunk_size):
    """t_s = log K - logsumexp(0, log q(g_j^{-1}.w_s) - log q(w_s), j < K), the g_j shared by all s."""
    k = num_permutations
    num_samples = jax.tree.leaves(samples)[0].shape[0]
    if k == 1:
        return jnp.zeros((num_samples,), dtype=jax.tree.leaves(samples)[0].dtype)
    # g_j uniform makes sigma_j = g_j^{-1} uniform too, so sigma_j is drawn directly (no inverse);
    # the same K - 1 elements serve every weight sample
    assignments = group.sample(rng_key, k - 1)

    def per_sample(w):
        return assignment_log_ratios(q, w, assignments, group, chunk_size=chunk_size)

    ratios = jax.vmap(per_sample)(samples)  # (S, K-1)
    return jnp.log(k) - jax.nn.logsumexp(jnp.concatenate([jnp.zeros_like(ratios[:, :1]), ratios], axis=1), axis=1)


def uses_permanent(group: PermutationGroup) -> bool:
    """Whether ``estimator="exact"`` takes the permanent path: one hidden layer, width <= MAX_WIDTH."""
    return group.num_hidden_layers == 1 and group.widths[0] <= permanent.MAX_WIDTH


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
    if uses_permanent(group):
        one = lambda w: permanent.symmetrized_log_prob(q, w, group)  # noqa: E731
        if group.widths[0] <= _PERMANENT_VMAP_WIDTH and chunk_size is None:
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
    group: PermutationGroup,
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
        # log weights relative to q(w_s), log|G| and K: t_s = log|G| + log K - logsumexp(log_w)
        log_w = jnp.reshape(-proposals.log_prob(q, w, group, group.identity(), **config), (1,))
        if k == 1:
            return group.log_order() - log_w[0]
        w_fixed = jax.lax.stop_gradient(w)
        assignments, log_r = proposals.sample(key, q_fixed, w_fixed, group, k - 1, **config)
        if score_correction:
            log_r = jax.vmap(lambda a: proposals.log_prob(q, w, group, a, **config))(assignments)
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

    keys = jax.random.split(rng_key, num_samples)
    return jax.vmap(per_sample)(keys, samples)


def _importance_terms(rng_key, q, samples, group, *, num_permutations, chunk_size, temperature=None,
                      score_correction=False):
    if temperature is None:
        temperature = 1.0
    return importance_terms(rng_key, q, samples, group, num_permutations=num_permutations, chunk_size=chunk_size,
                            temperature=temperature, score_correction=score_correction)


#: Estimators of I(g; w) by name; each maps (rng_key, q, samples, group, *, num_permutations,
#: chunk_size) to one term per weight sample. Estimators with a tunable proposal also take
#: ``temperature`` (passed only when the caller sets it).
ESTIMATORS: dict[str, Callable] = {
    "infonce": _infonce_terms,
    "exact": _exact_terms,
    "importance": _importance_terms,
}

#: The estimators that accept ``temperature``.
TEMPERED_ESTIMATORS = ("importance",)


def _check_estimator(estimator: str, num_permutations, temperature=None) -> None:
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {sorted(ESTIMATORS)}, got {estimator!r}")
    if estimator != "exact" and (
        not isinstance(num_permutations, (int, np.integer)) or isinstance(num_permutations, bool) or num_permutations < 1
    ):
        raise ValueError(f"num_permutations (K) must be a positive int, got {num_permutations!r}")
    if temperature is not None:
        if estimator not in TEMPERED_ESTIMATORS:
            raise ValueError(
                f"temperature only applies to estimator in {TEMPERED_ESTIMATORS}, got estimator={estimator!r}"
            )
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.floating)) or not (
            np.isfinite(temperature) and temperature > 0
        ):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")


def _check_score_correction(estimator: str, score_correction) -> None:
    if not isinstance(score_correction, bool):
        raise ValueError(f"score_correction must be True or False, got {score_correction!r}")
    if score_correction and estimator != "importance":
        raise ValueError(f"score_correction applies to estimator='importance' only, got estimator={estimator!r}")


def mutual_information_terms(
    rng_key: PRNGKey,
    q: MeanFieldState,
    samples: ArrayTree,
    group: PermutationGroup,
    *,
    num_permutations: Optional[int],
    estimator: str = "infonce",
    chunk_size: Optional[int] = None,
    temperature: Optional[float] = None,
    score_correction: bool = False,
) -> Array:
    """Per-sample terms t_s (see the module docstring) for weight samples with a leading axis S.

    The objectives call this with the same samples they use for the likelihood. ``temperature``
    is the proposal's tempering for ``"importance"`` (None: its default, 1);
    ``score_correction`` adds the score-function term to its gradient (``importance_terms``).
    """
    _check_estimator(estimator, num_permutations, temperature)
    _check_score_correction(estimator, score_correction)
    if not group.widths:  # no hidden layer: G is trivial and I(g; w) = 0
        return jnp.zeros(jax.tree.leaves(samples)[0].shape[:1])
    extra = {} if temperature is None else {"temperature": temperature}
    if score_correction:
        extra["score_correction"] = True
    return ESTIMATORS[estimator](
        rng_key, q, samples, group, num_permutations=num_permutations, chunk_size=chunk_size, **extra
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
        ``"importance"``; must be None for ``"exact"``.
      estimator: one of ``ESTIMATORS``.
      chunk_size: chunk size for ``lax.map`` over group elements; None vmaps all at once.
      temperature: the proposal's tempering, ``"importance"`` only (None: 1).
      score_correction: ``"importance"`` only: make the gradient unbiased for any proposal
        (``importance_terms``).
    """
    if not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
        raise ValueError(f"num_samples (S) must be a positive int, got {num_samples!r}")
    _check_estimator(estimator, num_permutations, temperature)
    _check_score_correction(estimator, score_correction)
    key_sample, key_perm = jax.random.split(rng_key)
    samples = meanfield.sample(key_sample, q, num_samples)
    terms = mutual_information_terms(
        key_perm, q, samples, group, num_permutations=num_permutations, estimator=estimator, chunk_size=chunk_size,
        temperature=temperature, score_correction=score_correction,
    )
    return jnp.mean(terms)
