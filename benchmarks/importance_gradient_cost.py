"""What does the issue #12 gradient cost per training step? (784 -> 1024 -> 10, K = 20, S = 1)

Times, interleaved round by round in one process, a jitted ``lax.scan`` of training steps for MFVI
and three importance-weighted variants: the estimator before issue #12 (the identity's log r(e | w)
stopped, emulated with ``importance_gradient.identity_stopped``), the default now (log r(e | w)
differentiated through the Sinkhorn proposal) and ``score_correction=True``.

    PYTHONPATH=. python benchmarks/importance_gradient_cost.py [--width 1024] [--batch-size 100 1000]

Prints a markdown table of median seconds per step and the ratio to MFVI.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import importance_gradient as ig
from symvi_jax import MLP, PermutationGroup, likelihoods, vi


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--num-permutations", type=int, default=20)
    parser.add_argument("--batch-size", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)
    model = MLP(features=(args.width, 10))
    params = model.init(jax.random.key(0), jnp.zeros((1, 784)))["params"]
    group = PermutationGroup.from_params(params)
    loglik = likelihoods.categorical(lambda p, x: model.apply({"params": p}, x))
    print("| batch | variant | s/step | / MFVI |")
    print("| --- | --- | --- | --- |")
    for batch_size in args.batch_size:
        key_x, key_y = jax.random.split(jax.random.key(1))
        batch = (jax.random.uniform(key_x, (batch_size, 784)), jax.random.randint(key_y, (batch_size,), 0, 10))

        def runner(**options):
            algorithm = vi.build(loglik, optax.adam(1e-3), data_size=60_000, init_scale=1e-2, **options)

            def scan(state, key):
                def body(state, key):
                    state, info = algorithm.step(key, state, batch)
                    return state, info.objective

                return jax.lax.scan(body, state, jax.random.split(key, args.steps))

            run, state = jax.jit(scan), algorithm.init(params)
            jax.block_until_ready(run(state, jax.random.key(0)))  # compile while any patch is active
            return run, state

        importance = dict(objective="symmetrized_elbo", group=group, num_permutations=args.num_permutations,
                          estimator="importance")
        runners = {"MFVI": runner()}
        with ig.identity_stopped():
            runners["importance, before issue #12"] = runner(**importance)
        runners["importance, default"] = runner(**importance)
        runners["importance, score-corrected"] = runner(**importance, score_correction=True)
        times = {name: [] for name in runners}
        for r in range(args.rounds):
            for name, (run, state) in runners.items():
                start = time.perf_counter()
                jax.block_until_ready(run(state, jax.random.key(r + 1)))
                times[name].append((time.perf_counter() - start) / args.steps)
        median = {name: float(np.median(t)) for name, t in times.items()}
        for name, seconds in median.items():
            print(f"| {batch_size} | {name} | {seconds:.4f} | {seconds / median['MFVI']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
