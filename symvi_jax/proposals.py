"""An equivariant proposal over permutations that matches the units of w to q's factors.

The importance-weighted orbit bound (``orbits``, ``estimator="importance"``) needs a distribution
r(h | w) over G with an exact, cheap probability mass function that is *equivariant*,

    r(g | h.w) = r(h^{-1} g | w)   for all g, h in G.

We draw the inverse element sigma = h^{-1}, an *assignment* of units to slots: slot i of sigma.w
holds unit sigma[i] of w (the gather convention of ``PermutationGroup.act``), and the orbit term of
h is q(h^{-1}.w) = q(sigma.w). Layer by layer, from the input side:

1. Compatibilities. L[i, j] = A[i, j] / T with A[i, j] the log density of slot i's factor at unit
   j (``permanent.unit_log_density_matrix``): incoming column (its rows already gathered by the
   assignment drawn for the layer below), bias, and for the last hidden layer the outgoing row
   (the layers above are not drawn yet). T > 0 is the tempering. Each row is shifted to max 0
   and clipped below at ``LOG_FLOOR`` so that every unit keeps a little mass; this keeps the
   weights finite and positive in float32 and changes nothing that matters (e^-30 ~ 1e-13).
2. Balancing. E = exp(L) is Sinkhorn-balanced (rows and columns rescaled alternately,
   ``num_iterations`` times, in the linear domain: two matrix-vector products per iteration).
   Only the column scaling v survives: the row scaling cancels within each row below.
3. Sequential draw. Slots i = 0, 1, ... in order each pick a unit among those still free with
   probability proportional to F[i, j] = E[i, j] v_j, so

       r(sigma_l | w, sigma_{<l}) = prod_i F[i, sigma[i]] / sum_{k >= i} F[i, sigma[k]].

Every step treats units (columns) symmetrically and slots are q's own, unpermuted factors, so the
proposal is equivariant: relabelling the units of w relabels the draws. With
``num_iterations = 0`` it picks straight from A, which PAPER.md's probe found over-confident.

For a G-invariant q every row of A is the same, the balanced matrix is uniform and r is uniform
on G; for a q whose copies do not overlap, A is close to a permutation matrix and r concentrates
on the assignment that undoes the relabelling.

Cost per weight sample and layer of width d with C weights per unit: one (d, 2C) x (2C, d)
matrix product, one d^2 exponential, 2 ``num_iterations`` matrix-vector products, and for each
drawn assignment a scan over the d slots of O(d) work each.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from symvi_jax import _checks
from symvi_jax import prng, units
from symvi_jax.meanfield import MeanFieldState
from symvi_jax.symmetry import WeightSymmetry, as_symmetry, leaf_paths
from symvi_jax.types import Array, ArrayTree, Permutation, PRNGKey

__all__ = [
    "SINKHORN_ITERATIONS",
    "LOG_FLOOR",
    "check_group",
    "check_settings",
    "balanced_log_weights",
    "layer_log_weights",
    "sample_assignment",
    "assignment_log_prob",
    "sample",
    "log_prob",
]

#: Default number of Sinkhorn iterations (each: one row and one column rescaling).
SINKHORN_ITERATIONS = 10

#: Compatibilities are clipped at (row max + LOG_FLOOR): every free unit keeps relative weight >= e^-30.
LOG_FLOOR = -30.0


def check_settings(temperature, num_iterations) -> None:
    """The proposal's settings: ``temperature`` a finite number > 0, ``num_iterations`` an int >= 0."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.floating)) or not (
        math.isfinite(temperature) and temperature > 0
    ):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if not _checks.is_int(num_iterations) or num_iterations < 0:
        raise ValueError(f"num_iterations (Sinkhorn) must be an int >= 0, got {num_iterations!r}")


def balanced_log_weights(
    log_a: Array, *, temperature: float = 1.0, num_iterations: int = SINKHORN_ITERATIONS
) -> Array:
    """log F from a compatibility matrix A (slots x units): steps 1-2 of the module docstring.

    Each row's maximum is 0 and its minimum is at least ``2 * LOG_FLOOR``.
    """
    logits = log_a / temperature
    if num_iterations:
        # A per-unit constant (e.g. -||eps_j||^2 / 2, tens of nats in wide layers) changes neither the
        # balanced matrix nor the permanent; remove it before clipping so the clip sees interactions.
        logits = logits - jnp.max(logits, axis=0, keepdims=True)
    logits = logits - jnp.max(logits, axis=1, keepdims=True)
    logits = jnp.maximum(logits, LOG_FLOOR)
    log_v = jnp.zeros(logits.shape[1], logits.dtype)
    if num_iterations:
        weights = jnp.exp(logits)

        def body(_, v):
            u = 1.0 / (weights @ v)
            v = 1.0 / (weights.T @ u)
            return v / jnp.max(v)  # a common factor of v changes nothing; this keeps it bounded

        v = jax.lax.fori_loop(0, num_iterations, body, jnp.ones(logits.shape[1], logits.dtype))
        log_v = jnp.log(v)
    log_f = logits + log_v[None, :]
    # Clip again so that exp(log F) stays a normal float32 (e^-60 ~ 1e-26) and every row keeps
    # positive mass on every free unit; the pmf is that of the clipped weights.
    return jnp.maximum(log_f - jnp.max(log_f, axis=1, keepdims=True), 2 * LOG_FLOOR)


def _drawn_members(group: WeightSymmetry, factor: int, params: ArrayTree) -> tuple:
    """Factor ``factor``'s present members whose leaf no later factor touches (drawn in factor order)."""
    present = leaf_paths(units.unwrap(params))
    by_leaf = group.members_by_leaf()
    return tuple(
        m for m in group.factors[factor].members
        if m.path in present and all(index <= factor for index, _ in by_leaf[m.path])
        and sum(1 for index, _ in by_leaf[m.path] if index == factor) == 1
    )


def layer_log_weights(
    q: MeanFieldState,
    params: ArrayTree,
    group: WeightSymmetry,
    layer: int,
    incoming_perm=None,
    *,
    temperature: float = 1.0,
    num_iterations: int = SINKHORN_ITERATIONS,
    drawn: Optional[Mapping[int, Array]] = None,
) -> Array:
    """log F for factor ``layer`` of the weight sample ``params`` (see the module docstring).

    The compatibilities use the factor's units in every leaf that no later factor touches, with
    the leaves first moved by the assignments already ``drawn`` for earlier factors (for a Dense
    chain: each unit's incoming column with its rows gathered by the layer below, its bias, and for
    the last hidden layer its outgoing row). ``incoming_perm`` is the Dense-chain spelling of
    ``drawn={layer - 1: incoming_perm}``. A factor with no such leaf gets the uniform proposal.
    """
    if incoming_perm is not None:
        drawn = {**(drawn or {}), layer - 1: incoming_perm}
    members = _drawn_members(group, layer, params)
    if not members:
        d = group.factors[layer].size
        return jnp.zeros((d, d), dtype=jnp.result_type(*jax.tree.leaves(params)))
    log_a, _ = units.unit_log_density_matrices(q, params, group, layer, members, others=drawn)
    return balanced_log_weights(log_a, temperature=temperature, num_iterations=num_iterations)


def assignment_log_prob(log_f: Array, assignment: Array) -> Array:
    """log r(sigma | .) = sum_i [log F[i, sigma_i] - log sum_{k >= i} F[i, sigma_k]] (vectorised)."""
    gathered = jnp.take(log_f, assignment, axis=1)  # [i, k] = log F[i, sigma_k]
    d = log_f.shape[0]
    later = jnp.arange(d)[None, :] >= jnp.arange(d)[:, None]
    denominators = jax.nn.logsumexp(jnp.where(later, gathered, -jnp.inf), axis=1)
    return jnp.sum(jnp.diagonal(gathered) - denominators)


def sample_assignment(rng_key: PRNGKey, log_f: Array) -> tuple[Array, Array]:
    """One sequential draw (step 3): returns (sigma, log r(sigma)).

    Each step picks a block of about sqrt(d) units by their total free weight, then a unit in the
    block, so a step costs O(d) adds and O(sqrt(d)) cumulative sums; both picks are exact
    inverse-CDF draws, so the unit's probability is F[i, j] / sum_free F[i, :].
    """
    d = log_f.shape[0]
    block = max(1, math.isqrt(d - 1) + 1) if d > 1 else 1
    num_blocks = -(-d // block)
    padded = num_blocks * block
    weights = jnp.pad(jnp.exp(log_f), ((0, 0), (0, padded - d)))
    free = jnp.pad(jnp.ones(d, log_f.dtype), (0, padded - d))
    uniforms = jax.random.uniform(rng_key, (d, 2), dtype=log_f.dtype)
    positions = jnp.arange(block)
    block_positions = jnp.arange(num_blocks)

    def pick(masses, u, index):
        # first index whose cumulative mass exceeds u * total; never a zero-mass index
        cumulative = jnp.cumsum(masses)
        chosen = jnp.sum(cumulative <= u * cumulative[-1])
        last_positive = jnp.max(jnp.where(masses > 0, index, 0))
        return jnp.minimum(chosen, last_positive)

    def body(free, xs):
        row, u = xs
        masses = row * free
        per_block = masses.reshape(num_blocks, block)
        block_masses = jnp.sum(per_block, axis=1)
        b = pick(block_masses, u[0], block_positions)
        within = pick(per_block[b], u[1], positions)
        j = b * block + within
        log_p = jnp.log(masses[j]) - jnp.log(jnp.sum(block_masses))
        return free.at[j].set(0.0), (j.astype(jnp.int32), log_p)

    _, (assignment, log_ps) = jax.lax.scan(body, free, (weights, uniforms))
    return assignment, jnp.sum(log_ps)


def check_group(group: WeightSymmetry, params: ArrayTree) -> None:
    """A group the proposal can draw from: a ``WeightSymmetry`` with factors and no sign flips."""
    as_symmetry(group)
    if not group.factors:
        raise ValueError("the group has no factor to permute")
    flips = [f.name for f in group.factors if f.sign_flips]
    if flips:
        raise ValueError(
            f"the importance proposal draws permutations only; factors {flips} have sign flips. Use "
            "estimator='infonce' or 'exact' for groups with sign flips"
        )


def _check_first(group: WeightSymmetry, first_log_weights) -> None:
    if first_log_weights is None:
        return
    d = group.factors[0].size
    if jnp.shape(first_log_weights) != (d, d):
        raise ValueError(f"first_log_weights must be factor 0's log F of shape ({d}, {d}), got "
                         f"{jnp.shape(first_log_weights)}")


def sample(
    rng_key: PRNGKey,
    q: MeanFieldState,
    params: ArrayTree,
    group: WeightSymmetry,
    num_samples: int,
    *,
    temperature: float = 1.0,
    num_iterations: int = SINKHORN_ITERATIONS,
    first_log_weights: Optional[Array] = None,
) -> tuple[Permutation, Array]:
    """``num_samples`` i.i.d. assignments sigma ~ r(. | w) and their log-probabilities.

    Args:
      rng_key: randomness for the draws.
      q: the mean-field state whose factors define the slots.
      params: one (unbatched) weight sample w.
      group: the network's permutation group.
      num_samples: how many assignments.
      temperature: T > 0; compatibilities are divided by T before balancing.
      num_iterations: Sinkhorn iterations (0: unbalanced).
      first_log_weights: factor 0's log F (:func:`layer_log_weights` of the same inputs), if the
        caller has it already (``orbits.importance_terms`` shares it with :func:`log_prob`).

    Returns:
      ``(assignments, log_probs)``: a group element per layer with a leading axis of
      ``num_samples`` (the element h of the orbit term q(h^{-1}.w) is its inverse), and
      log r(sigma | w) of each, shape ``(num_samples,)``.

    The draws are not differentiable; wrap the inputs in ``stop_gradient`` when tracing gradients.
    """
    check_group(group, params)
    check_settings(temperature, num_iterations)
    _checks.positive_int(num_samples, "num_samples")
    _check_first(group, first_log_weights)

    def one(key):
        keys = prng.split(key, len(group.factors))
        drawn, total = {}, 0.0
        for layer in range(len(group.factors)):
            if layer == 0 and first_log_weights is not None:
                log_f = first_log_weights
            else:
                log_f = layer_log_weights(q, params, group, layer, temperature=temperature,
                                          num_iterations=num_iterations, drawn=drawn)
            sigma, log_p = sample_assignment(keys[layer], log_f)
            drawn[layer] = sigma
            total = total + log_p
        return tuple(drawn[layer] for layer in range(len(group.factors))), total

    # Layer 0's weights do not depend on the key, so vmap computes them once for all draws.
    return jax.vmap(one)(prng.split(rng_key, num_samples))


def log_prob(
    q: MeanFieldState,
    params: ArrayTree,
    group: WeightSymmetry,
    assignment: Permutation,
    *,
    temperature: float = 1.0,
    num_iterations: int = SINKHORN_ITERATIONS,
    first_log_weights: Optional[Array] = None,
) -> Array:
    """log r(sigma | w) of one assignment (e.g. ``group.identity()``); see :func:`sample`.

    Differentiable in ``q`` and ``params`` for a fixed assignment (the Sinkhorn iterations are a
    fixed-length ``fori_loop``; clipped entries have zero derivative, as in the clipped pmf), which
    ``orbits.importance_terms`` uses for the identity term and for ``score_correction``.
    """
    check_group(group, params)
    check_settings(temperature, num_iterations)
    if len(assignment) != len(group.factors):
        raise ValueError(f"assignment must have one index array per factor ({len(group.factors)}), got {len(assignment)}")
    _check_first(group, first_log_weights)
    total, drawn = 0.0, {}
    for layer, sigma in enumerate(assignment):
        if layer == 0 and first_log_weights is not None:
            log_f = first_log_weights
        else:
            log_f = layer_log_weights(q, params, group, layer, temperature=temperature,
                                      num_iterations=num_iterations, drawn=drawn)
        total = total + assignment_log_prob(log_f, sigma)
        drawn[layer] = sigma
    return total
