"""Is the gradient of the importance-weighted orbit bound unbiased? (issue #12)

Question: averaged over the proposal's draws, with the weight samples w fixed (common
reparameterisation noise), does the gradient of ``orbits.importance_terms`` equal

* the gradient of the exact I(g; w) = E_w[log q(w) - log q^G(w)] when the proposal is the exact
  posterior r(sigma | w) = q(sigma.w) / sum_tau q(tau.w) (swapped in for the Sinkhorn proposal), and
* the gradient of the bound E[t] itself, for the library's (inexact) Sinkhorn proposal, when
  ``score_correction=True``?

Both references are exact on tiny nets (float64): I by ``orbits.mutual_information_terms(...,
estimator="exact")`` (the permanent for one hidden layer, enumeration for two), E[t] by enumerating
every tuple of K - 1 draws with its probability under the proposal's pmf. "before" is the estimator
as it was before issue #12, emulated by stopping the gradient of the identity's log r(e | w).

    PYTHONPATH=. python benchmarks/importance_gradient.py [--num-keys 512] [--out out/benchmarks/importance_gradient.json]

Prints, per case, the projected ratio <mean gradient, reference> / |reference|^2 with its Monte
Carlo standard error, and the gradient variance over draws (trace of the covariance). The helpers
are also used by ``tests/test_importance_gradient_float64.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from symvi_jax import MLP, PermutationGroup, meanfield, orbits, proposals

#: the tiny nets: (in_features, hidden widths + output)
NETS = {"one hidden layer (3)": (1, (3, 1)), "two hidden layers (3, 2)": (1, (3, 2, 1))}


def overlapping_q(seed: int, in_features: int, features: tuple, loc_scale: float = 0.5, scale: float = 0.5):
    """A float64 q whose permuted copies overlap (0 < I < log|G|), and the net's group."""
    keys = jax.random.split(jax.random.key(seed), 4)
    params = MLP(features=tuple(features)).init(keys[0], jnp.zeros((1, in_features)))["params"]
    params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
    leaves, tree = jax.tree.flatten(params)
    loc = jax.tree.unflatten(tree, [loc_scale * jax.random.normal(k, x.shape, jnp.float64)
                                    for k, x in zip(jax.random.split(keys[1], len(leaves)), leaves)])
    q = meanfield.init(loc, init_scale=scale)
    raw_leaves = jax.tree.leaves(q.raw_scale)
    raw = jax.tree.unflatten(tree, [r + 0.3 * jax.random.normal(k, r.shape, jnp.float64)
                                    for k, r in zip(jax.random.split(keys[2], len(raw_leaves)), raw_leaves)])
    return meanfield.MeanFieldState(loc, raw), PermutationGroup.from_params(params)


# ---- proposals swapped in for proposals.sample / proposals.log_prob ------------------------------


def _exact_logits(q, params, group):
    """log q(sigma.w) - log q(w) for every element sigma of G (enumerated)."""
    return orbits.assignment_log_ratios(q, params, group.elements(), group)


def exact_sample(rng_key, q, params, group, num_samples, **config):
    """sigma ~ q(sigma.w) / sum_tau q(tau.w), the exact posterior over assignments."""
    del config
    logits = _exact_logits(q, params, group)
    index = jax.random.categorical(rng_key, logits, shape=(num_samples,))
    assignments = tuple(e[index] for e in group.elements())
    return assignments, logits[index] - jax.nn.logsumexp(logits)


def exact_log_prob(q, params, group, assignment, **config):
    del config
    own = orbits.assignment_log_ratios(q, params, tuple(a[None] for a in assignment), group)[0]
    return own - jax.nn.logsumexp(_exact_logits(q, params, group))


@contextlib.contextmanager
def patched_proposal(sample=None, log_prob=None):
    """Swap ``proposals.sample`` / ``log_prob`` while tracing (``importance_terms`` looks them up)."""
    saved = proposals.sample, proposals.log_prob
    proposals.sample, proposals.log_prob = sample or saved[0], log_prob or saved[1]
    try:
        yield
    finally:
        proposals.sample, proposals.log_prob = saved


def exact_posterior_proposal():
    return patched_proposal(exact_sample, exact_log_prob)


def identity_stopped(exact: bool = False):
    """The estimator before issue #12: the identity's log r(e | w) enters as a constant."""
    base = exact_log_prob if exact else proposals.log_prob

    def log_prob(*args, **kwargs):
        return jax.lax.stop_gradient(base(*args, **kwargs))

    return patched_proposal(exact_sample if exact else None, log_prob)


# ---- gradients -------------------------------------------------------------------------------------


def exact_gradient(q, group, key_w, num_samples):
    """d/dq of (1/S) sum_s [log q(w_s) - log q^G(w_s)], w_s = loc + scale eps_s with eps_s fixed."""

    def value(q):
        samples = meanfield.sample(key_w, q, num_samples)
        return jnp.mean(orbits.mutual_information_terms(key_w, q, samples, group, num_permutations=None,
                                                        estimator="exact"))

    return ravel_pytree(jax.jit(jax.grad(value))(q))[0]


def bound_gradient(q, group, key_w, num_samples, num_permutations, temperature=1.0):
    """d/dq of E_sigma[(1/S) sum_s t_s] for the Sinkhorn proposal: every (K-1)-tuple of draws enumerated."""
    elements = group.elements()
    n, k = group.order(), num_permutations
    tuples = jnp.asarray(np.array(list(itertools.product(range(n), repeat=k - 1)), dtype=np.int32).reshape(-1, k - 1))
    config = dict(temperature=temperature)

    def per_sample(q, w):
        log_r = jax.vmap(lambda a: proposals.log_prob(q, w, group, a, **config))(elements)  # (|G|,)
        log_w_all = orbits.assignment_log_ratios(q, w, elements, group) - log_r
        log_w0 = -proposals.log_prob(q, w, group, group.identity(), **config)
        log_w = jnp.concatenate([jnp.full((tuples.shape[0], 1), log_w0), log_w_all[tuples]], axis=1)
        terms = group.log_order() + math.log(k) - jax.nn.logsumexp(log_w, axis=1)
        return jnp.sum(jnp.exp(jnp.sum(log_r[tuples], axis=1)) * terms)

    def value(q):
        samples = meanfield.sample(key_w, q, num_samples)
        return jnp.mean(jax.vmap(lambda w: per_sample(q, w))(samples))

    return ravel_pytree(jax.jit(jax.grad(value))(q))[0]


def estimator_gradients(q, group, key_w, num_samples, num_permutations, keys, **options):
    """The gradient of (1/S) sum_s t_s for every key in ``keys`` (same w_s), flattened: (num_keys, P).

    Traced afresh on each call, so that a ``patched_proposal`` around the call takes effect.
    """

    def value(q, key):
        samples = meanfield.sample(key_w, q, num_samples)
        return jnp.mean(orbits.importance_terms(key, q, samples, group, num_permutations=num_permutations, **options))

    grads = jax.jit(jax.vmap(jax.grad(value), in_axes=(None, 0)))(q, keys)
    return jax.vmap(lambda g: ravel_pytree(g)[0])(grads)


def compare(grads, reference):
    """Projected ratio with its Monte Carlo standard error, and the total variance over draws."""
    grads, reference = np.asarray(grads), np.asarray(reference)
    ratios = grads @ reference / (reference @ reference)
    n = grads.shape[0]
    return dict(
        ratio=float(ratios.mean()),
        ratio_se=float(ratios.std(ddof=1) / math.sqrt(n)),
        variance=float(np.sum(grads.var(axis=0, ddof=1))),
        reference_norm2=float(reference @ reference),
    )


def within_monte_carlo_error(grads, reference, z: float = 4.5, rounding: float = 1e-9):
    """Per coordinate: |mean - reference| <= z SE + rounding * max|reference| (float64 rounding floor).

    Returns the largest |mean - reference| / (z SE + floor), which is <= 1 when every coordinate agrees.
    """
    grads, reference = np.asarray(grads), np.asarray(reference)
    se = grads.std(axis=0, ddof=1) / math.sqrt(grads.shape[0])
    allowed = z * se + rounding * np.max(np.abs(reference))
    return float(np.max(np.abs(grads.mean(axis=0) - reference) / allowed))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-keys", type=int, default=512)
    parser.add_argument("--num-samples", type=int, default=4)
    parser.add_argument("--out", default="out/benchmarks/importance_gradient.json")
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    keys = jax.random.split(jax.random.key(1), args.num_keys)
    key_w = jax.random.key(2)
    rows = []

    def row(net, proposal, k, variant, grads, reference, target):
        stats = compare(grads, reference)
        rows.append(dict(net=net, proposal=proposal, K=k, variant=variant, target=target, **stats))
        print(f"| {net} | {proposal} | {k} | {variant} | {target} | {stats['ratio']:.3f} +- {stats['ratio_se']:.3f} "
              f"| {stats['variance']:.4g} |", flush=True)

    print("| net | proposal | K | gradient | reference | ratio +- SE | variance (trace) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for net, (in_features, features) in NETS.items():
        q, group = overlapping_q(0, in_features, features)
        exact = exact_gradient(q, group, key_w, args.num_samples)
        for k in (1, 2, 4, 8):
            with identity_stopped(exact=True):
                row(net, "exact posterior", k, "before", estimator_gradients(q, group, key_w, args.num_samples, k, keys),
                    exact, "grad I")
            with exact_posterior_proposal():
                row(net, "exact posterior", k, "default", estimator_gradients(q, group, key_w, args.num_samples, k, keys),
                    exact, "grad I")
        for k in (1, 2, 4, 8):
            with identity_stopped():
                row(net, "Sinkhorn T=1", k, "before", estimator_gradients(q, group, key_w, args.num_samples, k, keys),
                    exact, "grad I")
            row(net, "Sinkhorn T=1", k, "default", estimator_gradients(q, group, key_w, args.num_samples, k, keys),
                exact, "grad I")
        for temperature in (1.0, 3.0):
            for k in (2, 3):
                bound = bound_gradient(q, group, key_w, args.num_samples, k, temperature)
                for variant, correction in (("default", False), ("score-corrected", True)):
                    grads = estimator_gradients(q, group, key_w, args.num_samples, k, keys, temperature=temperature,
                                                score_correction=correction)
                    row(net, f"Sinkhorn T={temperature:g}", k, variant, grads, bound, "grad E[t]")
        for k in (8, 20):  # the variance the score correction adds at the K used for training
            for variant, correction in (("default", False), ("score-corrected", True)):
                grads = estimator_gradients(q, group, key_w, args.num_samples, k, keys, score_correction=correction)
                row(net, "Sinkhorn T=1", k, variant, grads, exact, "grad I")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(benchmark="importance_gradient", jax=jax.__version__, num_keys=args.num_keys,
                                   num_samples=args.num_samples, rows=rows), indent=1))


if __name__ == "__main__":
    main()
