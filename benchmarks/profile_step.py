"""Where a step's time goes on XLA:CPU: a ``jax.profiler`` trace of (b)'s loop, summed per compiled op.

(b) of issue 15: 784 -> 30 -> 10 ReLU (``--width``), batch 100, one epoch of ``vi.run`` over 3000 random
MNIST-shaped points (30 steps), ``--objective elbo`` or ``symmetrized_elbo`` (K = 20, ``--num-permutations``). The loop
is run 3 times to warm up, then 5 times under the profiler; the trace's complete events are summed
by name and divided by the steps. Times are inflated by tracing (compare within one run), and a
``while`` op's time includes the ops inside it.

    PYTHONPATH=.:benchmarks python benchmarks/profile_step.py --objective symmetrized_elbo [--top 25]

``--table1-width W`` profiles one seed block of the Table 1 train program instead
(``configs/mnist_table1.yaml``'s block of seeds x its 4 methods as lanes, width W, one epoch of the
first 3000 MNIST images), the program the CLI runs ``train_workers`` of at once.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import tempfile

import jax
import jax.numpy as jnp
import optax

from _harness import parser, write_json
from symvi_jax import MLP, PermutationGroup, likelihoods, vi

NUM_POINTS, BATCH, CALLS = 3000, 100, 5


def main():
    p = parser(__doc__.splitlines()[0], "benchmarks/results/cpu/profile_step.json")
    p.add_argument("--objective", default="symmetrized_elbo", choices=("elbo", "symmetrized_elbo"))
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--width", type=int, default=30, help="hidden width of (b)'s net")
    p.add_argument("--num-permutations", type=int, default=20, help="K of the symmetrized objective")
    p.add_argument("--table1-width", type=int, default=None)
    args = p.parse_args()
    loop, steps = (_table1_block(args.table1_width) if args.table1_width
                   else _vi_run_loop(args.objective, args.width, args.num_permutations))
    for _ in range(3):
        jax.block_until_ready(loop())
    with tempfile.TemporaryDirectory() as folder:
        with jax.profiler.trace(folder):
            for _ in range(CALLS):
                jax.block_until_ready(loop())
        events = json.load(gzip.open(glob.glob(f"{folder}/**/*.trace.json.gz", recursive=True)[0]))["traceEvents"]
    steps *= CALLS
    total, count = collections.Counter(), collections.Counter()
    for event in events:
        if event.get("ph") == "X":
            total[event["name"]] += event["dur"]
            count[event["name"]] += 1
    rows = [dict(op=name, us_per_step=us / steps, calls_per_step=count[name] / steps)
            for name, us in total.most_common(args.top)]
    for row in rows:
        print(f"{row['us_per_step']:9.1f} us/step  {row['calls_per_step']:6.1f}/step  {row['op'][:100]}")
    write_json(args.json, {"benchmark": "profile_step", "objective": args.objective, "width": args.width,
                           "num_permutations": args.num_permutations,
                           "table1_width": args.table1_width, "rows": rows, "complete": True})


def _table1_block(width):
    """One seed block of the Table 1 train program (the config's block size x its methods), and its steps."""
    from table1_train import train_setup

    mnist, config, data, seed_keys = train_setup(width, NUM_POINTS)
    block = seed_keys[: config.num_seeds // mnist._seed_blocks(config.num_seeds, config.train_workers)]
    method_ks = [mnist._method_k(m, 20) for m in config.methods]
    train_fn, _, _ = mnist._train_program(config, width, len(data[0]), data[0].shape[1], method_ks)
    program = train_fn.lower(block, *data).compile()
    return (lambda: program(block, *data)), len(data[0]) // config.batch_size


def _vi_run_loop(objective, width=30, num_permutations=20):
    """(b)'s loop: one epoch of ``vi.run`` on NUM_POINTS random MNIST-shaped points, and its steps."""
    model = MLP(features=(width, 10))
    params = model.init(jax.random.key(0), jnp.zeros((1, 784)))["params"]
    loglik = likelihoods.categorical(lambda w, x: model.apply({"params": w}, x))
    data = (jax.random.uniform(jax.random.key(1), (NUM_POINTS, 784)),
            jax.random.randint(jax.random.key(2), (NUM_POINTS,), 0, 10))
    kwargs = {} if objective == "elbo" else dict(group=PermutationGroup.from_params(params),
                                                        num_permutations=num_permutations)
    algorithm = vi.build(loglik, optax.adam(1e-3), data_size=60_000, objective=objective, **kwargs)
    state = algorithm.init(params)
    loop = jax.jit(lambda k, s: vi.run(k, algorithm, s, data, num_epochs=1, batch_size=BATCH))
    key = jax.random.key(3)
    return (lambda: loop(key, state)), NUM_POINTS // BATCH


if __name__ == "__main__":
    main()
