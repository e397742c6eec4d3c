"""Step time of the importance-weighted symmetrized ELBO against the standard ELBO (MFVI).

Question: how much does ``estimator="importance"`` cost per training step on a one-hidden-layer
MNIST-sized MLP (784 -> width -> 10), next to plain MFVI and the paper's uniform estimator at the
same K? Each variant runs a jitted ``lax.scan`` of steps; the variants are timed round by round,
interleaved, in one process, so the ratios hold on a shared machine even when absolute times do
not (``symvi_jax.experiments.estimators.measure_step_times``).

    PYTHONPATH=. python benchmarks/importance_overhead.py [--width 1024] [--num-permutations 20]
        [--batch-size 100 1000] [--rounds 3] [--steps 5] [--out out/benchmarks/importance_overhead.json]

Prints a markdown table and writes the results as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax

from symvi_jax.experiments.estimators import measure_step_times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--num-permutations", type=int, default=20)
    parser.add_argument("--batch-size", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
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
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
