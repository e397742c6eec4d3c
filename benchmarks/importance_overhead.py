"""Step time of the importance-weighted symmetrized ELBO against the standard ELBO (MFVI).

Question: how much does ``estimator="importance"`` cost per training step on a one-hidden-layer
MNIST-sized MLP (784 -> width -> 10), next to plain MFVI and the paper's uniform estimator at the
same K? Each variant runs a jitted ``lax.scan`` of steps; the variants are timed round by round,
interleaved, in one process, so the ratios hold on a shared machine even when absolute times do
not (``symvi_jax.experiments.estimators.measure_step_times``).

    PYTHONPATH=. python benchmarks/importance_overhead.py [--width 1024] [--num-permutations 20]
        [--batch-size 100 1000] [--rounds 3] [--steps 5] [--breakdown]
        [--out out/benchmarks/importance_overhead.json]

Prints a markdown table and writes the results as JSON. ``--breakdown`` also times the pieces of
the importance estimator for one weight sample: the proposal's weights (compatibility matrix by one
matrix product + Sinkhorn), drawing K-1 assignments, log r(e | w), and the K-1 orbit terms
log q(sigma_k.w) with their gradient (the part the uniform estimator shares).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from symvi_jax import MLP, PermutationGroup, meanfield, proposals
from symvi_jax.experiments.estimators import measure_step_times


def breakdown(width: int, num_permutations: int, rounds: int = 5) -> dict:
    """Median milliseconds of each piece of the importance estimator for one weight sample."""
    params = MLP(features=(width, 10)).init(jax.random.key(0), jnp.zeros((1, 784)))["params"]
    group = PermutationGroup.from_params(params)
    q = meanfield.init(params, init_scale=1e-2)
    w = meanfield.sample(jax.random.key(1), q)
    sigmas = group.sample(jax.random.key(2), num_permutations - 1)
    weights = jnp.linspace(0.1, 1.0, num_permutations - 1)

    def orbit_terms(q, w):
        return jnp.sum(weights * jax.vmap(lambda s: meanfield.log_prob(q, group.act(s, w)))(sigmas))

    pieces = {
        "proposal weights (A + Sinkhorn)": jax.jit(lambda q, w: proposals.layer_log_weights(q, w, group, 0)),
        "proposal weights + draw K-1": jax.jit(
            lambda q, w: proposals.sample(jax.random.key(0), q, w, group, num_permutations - 1)),
        "proposal weights + log r(e|w)": jax.jit(lambda q, w: proposals.log_prob(q, w, group, group.identity())),
        "K-1 orbit terms, value": jax.jit(orbit_terms),
        "K-1 orbit terms, value and gradient": jax.jit(jax.value_and_grad(orbit_terms, argnums=(0, 1))),
        "one log q(w), value and gradient": jax.jit(jax.value_and_grad(meanfield.log_prob, argnums=(0, 1))),
    }
    for fn in pieces.values():
        jax.block_until_ready(fn(q, w))
    times = {name: [] for name in pieces}
    for _ in range(rounds):
        for name, fn in pieces.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(q, w))
            times[name].append(time.perf_counter() - start)
    return {name: 1000 * float(np.median(t)) for name, t in times.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--num-permutations", type=int, default=20)
    parser.add_argument("--batch-size", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--breakdown", action="store_true", help="also time the estimator's pieces")
    parser.add_argument("--out", default="out/benchmarks/importance_overhead.json")
    args = parser.parse_args(argv)
    results = []
    print(f"backend: {jax.default_backend()}, devices: {jax.devices()}")
    print("| width | K | batch | MFVI s/step | uniform s/step | importance s/step | uniform / MFVI | importance / MFVI |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for batch_size in args.batch_size:
        result = measure_step_times(args.width, args.num_permutations, batch_size, args.rounds, args.steps)
        results.append(result)
        t, r = result["seconds_per_step"], result["ratio_to_mfvi"]
        print(f"| {args.width} | {args.num_permutations} | {batch_size} | {t['mfvi']:.4f} | {t['uniform']:.4f} | "
              f"{t['importance']:.4f} | {r['uniform']:.2f} | {r['importance']:.2f} |", flush=True)
    payload = {"step_times": results}
    if args.breakdown:
        pieces = breakdown(args.width, args.num_permutations, args.rounds)
        payload["breakdown_ms"] = pieces
        print(f"\n| piece (d = {args.width}, K = {args.num_permutations}, one weight sample) | ms |")
        print("| --- | --- |")
        for name, ms in pieces.items():
            print(f"| {name} | {ms:.1f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
