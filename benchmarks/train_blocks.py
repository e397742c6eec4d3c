"""The Table 1 train program at one width with its seeds in 1, 2 or 5 blocks (``train_workers``),
one thread per block: training time (interleaved medians) and whether the runs equal the one call's.

    PYTHONPATH=.:benchmarks python benchmarks/train_blocks.py --width 30 --repeats 5

The program of ``configs/mnist_table1.yaml`` (10 seeds x 4 methods) on the first ``--num-train``
MNIST training images for one epoch.
"""

from __future__ import annotations

import jax
import numpy as np

from _harness import interleaved_medians, markdown_table, parser, write_json
from table1_train import train_setup

WORKERS = (1, 2, 5)


def main():
    p = parser(__doc__.splitlines()[0], "benchmarks/results/cpu/train_blocks.json")
    p.add_argument("--width", type=int, default=30)
    p.add_argument("--num-train", type=int, default=3000)
    args = p.parse_args()
    mnist, config, data, seeds = train_setup(args.width, args.num_train)
    methods = [mnist._method_k(m, 20) for m in config.methods]
    fns, outputs = {}, {}
    for workers in WORKERS:
        train_fn = mnist._train_program(config, args.width, data[0].shape[0], data[0].shape[1], methods)[0]
        compiled = train_fn.lower(seeds[: config.num_seeds // workers], *data).compile()
        fns[workers] = (lambda c=compiled, w=workers: mnist._train_blocks(c, seeds, data, w, len(methods)))
        outputs[workers] = jax.device_get(fns[workers]())
    medians = interleaved_medians(fns, repeats=args.repeats, warmup=0)
    rows = []
    for workers in WORKERS:
        equal = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(outputs[1]), jax.tree.leaves(outputs[workers])))
        rows.append([workers, config.num_seeds // workers, f"{medians[workers]:.2f}",
                     f"{medians[workers] / medians[1]:.2f}", "yes" if equal else "no"])
    print(markdown_table(["blocks", "seeds per block", "wall s", "/ one call", "q and stats bitwise the one call's"],
                         rows))
    write_json(args.json, {"width": args.width, "num_train": args.num_train, "rows": rows, "complete": True})


if __name__ == "__main__":
    main()
