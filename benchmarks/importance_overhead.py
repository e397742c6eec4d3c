"""Step time of the importance-weighted symmetrized ELBO against the standard ELBO.

Question: how much does ``estimator="importance"`` cost per training step on a one-hidden-layer
MNIST-sized MLP (784 -> width -> 10), next to plain MFVI and the paper's uniform estimator at the
same K? All steps are jitted and timed in the same process, interleaved round by round, so the
ratios hold even on a shared machine; absolute times do not.

    PYTHONPATH=. python benchmarks/importance_overhead.py [--width 1024] [--num-permutations 20]
        [--batch-size 100] [--rounds 5] [--steps 10] [--out out/benchmarks/importance_overhead.json]

Prints a table and writes JSON with the median step time of each variant and the ratios.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from symvi_jax import MLP, PermutationGroup, likelihoods, vi

__all__ = ["measure", "main"]


def measure(width: int = 1024, num_permutations: int = 20, batch_size: int = 100, rounds: int = 5,
            steps: int = 10, num_samples: int = 1, in_features: int = 784, seed: int = 0,
            variants=None) -> dict:
    """Median seconds per step of each variant (a jitted ``lax.scan`` of ``steps`` steps)."""
    model = MLP(features=(width, 10))
    params = model.init(jax.random.key(seed), jnp.zeros((1, in_features)))["params"]
    group = PermutationGroup.from_params(params)
    loglik = likelihoods.categorical(lambda p, x: model.apply({"params": p}, x))
    key_x, key_y = jax.random.split(jax.random.key(seed + 1))
    batch = (jax.random.uniform(key_x, (batch_size, in_features)),
             jax.random.randint(key_y, (batch_size,), 0, 10))
    common = dict(data_size=60_000, num_samples=num_samples, prior_scale=1.0, init_scale=1e-2)
    variants = variants or {
        "elbo": dict(),
        "uniform": dict(objective="symmetrized_elbo", group=group, num_permutations=num_permutations),
        "importance": dict(objective="symmetrized_elbo", group=group, num_permutations=num_permutations,
                           estimator="importance"),
    }
    runners = {}
    for name, kwargs in variants.items():
        algorithm = vi.build(loglik, optax.adam(1e-3), **common, **kwargs)

        def run(state, key, algorithm=algorithm):
            def body(state, key):
                state, info = algorithm.step(key, state, batch)
                return state, info.objective
            return jax.lax.scan(body, state, jax.random.split(key, steps))

        runner = jax.jit(run)
        state = algorithm.init(params)
        jax.block_until_ready(runner(state, jax.random.key(0)))  # compile
        runners[name] = (runner, state)
    times = {name: [] for name in runners}
    for r in range(rounds):
        for name, (runner, state) in runners.items():
            start = time.perf_counter()
            jax.block_until_ready(runner(state, jax.random.key(r + 1)))
            times[name].append((time.perf_counter() - start) / steps)
    median = {name: float(np.median(t)) for name, t in times.items()}
    return {
        "width": width, "num_permutations": num_permutations, "batch_size": batch_size, "num_samples": num_samples,
        "steps": steps, "rounds": rounds, "backend": jax.default_backend(),
        "seconds_per_step": median,
        "ratio_to_elbo": {name: median[name] / median["elbo"] for name in median},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--num-permutations", type=int, default=20)
    parser.add_argument("--batch-size", type=int, nargs="+", default=[100])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", default="out/benchmarks/importance_overhead.json")
    args = parser.parse_args(argv)
    results = []
    print("| width | K | batch | ELBO s/step | uniform s/step | importance s/step | uniform / ELBO | importance / ELBO |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for batch_size in args.batch_size:
        result = measure(args.width, args.num_permutations, batch_size, args.rounds, args.steps)
        results.append(result)
        t, r = result["seconds_per_step"], result["ratio_to_elbo"]
        print(f"| {args.width} | {args.num_permutations} | {batch_size} | {t['elbo']:.4f} | {t['uniform']:.4f} | "
              f"{t['importance']:.4f} | {r['uniform']:.2f} | {r['importance']:.2f} |", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
