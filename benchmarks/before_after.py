"""Issue 15's loops and the Table 1 training program, before and after a change, in one process.

The package at ``--base`` is imported as ``symvi_jax_base`` (``regression.import_base``); the
working tree's ``symvi_jax`` is the "after". Each contender is one compiled program, built the
same way from either package:

  (a) 2000 scanned MFVI steps of ``scan_steps.py`` (2-16-2 tanh, 400 points, Adam);
  (b) one epoch of ``vi.run`` on 784-30-10, batch 100, standard and symmetrized (K = 20);
  (t1) one seed block of ``mnist._train_program`` as ``configs/mnist_table1.yaml`` runs it
       (its block of seeds x 4 methods as lanes, one epoch of the first ``--num-train`` MNIST images).

The programs run round-robin (interleaved medians); the table gives new / base and whether the
outputs are bit for bit equal. ``--new-first`` builds and times the new program first in each
round; on the 2-core VM a ratio moved by up to +-9% between runs and orders (ninth stop: the Table 1
block, whose two programs have the same loops, read 0.94-1.09), so quote a change from several runs.

    PYTHONPATH=.:benchmarks python benchmarks/before_after.py --base HEAD [--width 30] [--repeats 7] [--new-first]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from _harness import interleaved_medians, markdown_table, parser, write_json
from regression import import_base
from table1_train import train_setup


def _scanned(step, state, batch, num_steps):
    def loop(key, state):
        def body(state, k):
            state, info = step(k, state, batch)
            return state, info.objective
        return jax.lax.scan(body, state, jax.random.split(key, num_steps))

    program = jax.jit(loop).lower(jax.random.key(3), state).compile()
    return lambda: program(jax.random.key(3), state)


def small_mfvi(pkg):
    model = pkg.MLP(features=(16, 2), activation=jnp.tanh)
    params = model.init(jax.random.key(0), jnp.zeros((1, 2)))["params"]
    x = jax.random.normal(jax.random.key(1), (400, 2))
    batch = (x, (x[:, 0] * x[:, 1] > 0).astype(jnp.int32))
    loglik = pkg.likelihoods.categorical(lambda p, x: model.apply({"params": p}, x))
    algorithm = pkg.vi.build(loglik, optax.adam(1e-2), data_size=400)
    return _scanned(algorithm.step, algorithm.init(params), batch, 2000)


def epoch(pkg, objective):
    model = pkg.MLP(features=(30, 10))
    params = model.init(jax.random.key(0), jnp.zeros((1, 784)))["params"]
    loglik = pkg.likelihoods.categorical(lambda p, x: model.apply({"params": p}, x))
    data = (jax.random.uniform(jax.random.key(1), (30_000, 784)),
            jax.random.randint(jax.random.key(2), (30_000,), 0, 10))
    kwargs = dict(group=pkg.PermutationGroup.from_params(params), num_permutations=20) if objective != "elbo" else {}
    algorithm = pkg.vi.build(loglik, optax.adam(1e-3), data_size=60_000, objective=objective, **kwargs)
    state = algorithm.init(params)
    program = jax.jit(lambda k, s: pkg.vi.run(k, algorithm, s, data, num_epochs=1, batch_size=100)).lower(
        jax.random.key(3), state).compile()
    return lambda: program(jax.random.key(3), state)


def table1_block(pkg, width, num_train):
    _, config, data, seed_keys = train_setup(width, num_train)
    mnist = pkg.experiments.mnist
    method_ks = [mnist._method_k(m, 20) for m in config.methods]
    train_fn, _, _ = mnist._train_program(config, width, len(data[0]), data[0].shape[1], method_ks)
    block = seed_keys[: config.num_seeds // mnist._seed_blocks(config.num_seeds, config.train_workers)]
    program = train_fn.lower(block, *data).compile()
    return lambda: program(block, *data)


def main():
    p = parser(__doc__.splitlines()[0], "benchmarks/results/cpu/before_after.json")
    p.add_argument("--base", default="HEAD", help="the revision to compare against")
    p.add_argument("--width", type=int, default=30)
    p.add_argument("--num-train", type=int, default=3000)
    p.add_argument("--new-first", action="store_true", help="build and time the new program first in each round")
    args = p.parse_args()
    import symvi_jax as new
    import symvi_jax.experiments.mnist  # noqa: F401

    with tempfile.TemporaryDirectory() as tmp:
        base = import_base(args.base, Path(tmp))
        import symvi_jax_base.experiments.mnist  # noqa: F401

        makers = {"(a) MFVI, 2000 steps": small_mfvi,
                  "(b) standard, 300 steps": lambda pkg: epoch(pkg, "elbo"),
                  "(b) symmetrized, 300 steps": lambda pkg: epoch(pkg, "symmetrized_elbo"),
                  f"(t1) width {args.width}, one seed block x 4 methods": lambda pkg: table1_block(pkg, args.width,
                                                                                            args.num_train)}
        contenders, equal = {}, {}
        order = (("new", new), ("base", base)) if args.new_first else (("base", base), ("new", new))
        for name, make in makers.items():
            for label, pkg in order:
                contenders[(name, label)] = make(pkg)
            outs = [jax.device_get(contenders[(name, v)]()) for v in ("base", "new")]
            equal[name] = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[1])))
        times = interleaved_medians(contenders, repeats=3 if args.quick else args.repeats)
    records = [dict(program=name, base_s=times[(name, "base")], new_s=times[(name, "new")],
                    ratio=times[(name, "new")] / times[(name, "base")], bitwise_equal=equal[name]) for name in makers]
    print(markdown_table(["program", "base ms", "new ms", "new / base", "outputs bitwise equal"],
                         [[r["program"], f"{1e3 * r['base_s']:.1f}", f"{1e3 * r['new_s']:.1f}", f"{r['ratio']:.3f}",
                           "yes" if r["bitwise_equal"] else "no"] for r in records]))
    write_json(args.json, {"benchmark": "before_after", "base": args.base, "width": args.width, "new_first": args.new_first,
                           "num_train": args.num_train, "rows": records, "complete": True})


if __name__ == "__main__":
    main()
