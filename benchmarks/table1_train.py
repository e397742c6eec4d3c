"""Training time per run-step inside the Table 1 program (``mnist._train_program``) at one width.

The program of ``configs/mnist_table1.yaml`` (10 seeds x the four methods as vmapped lanes) on the
first ``--num-train`` MNIST training images for one epoch, against the same program with one
method (MFVI alone, SGM20 alone: 10 lanes), and against the four-method program run as two
halves of the seeds from two threads (outputs checked bit for bit). Per run-step = wall seconds
/ (runs x steps). Interleaved medians; process-CPU seconds alongside (the CPU is shared).

    PYTHONPATH=.:benchmarks python benchmarks/table1_train.py --width 30 --num-train 3000 --repeats 3
"""

from __future__ import annotations

import os
import threading

import jax
import numpy as np

from _harness import markdown_table, parser, write_json
from table1_eval import _timed


def train_setup(width: int, num_train: int):
    """configs/mnist_table1.yaml at one width on the first ``num_train`` MNIST images for one epoch: the
    mnist module, the config, the training data on the device and the seed keys."""
    from symvi_jax.experiments import base, mnist

    overrides = {"widths": (width,), "num_train": num_train, "num_epochs": 1}
    config = base.load_config(mnist.Config, "configs/mnist_table1.yaml", overrides)
    x_train, y_train, *_ = mnist._load(config)
    return mnist, config, jax.device_put((x_train, y_train)), jax.random.split(jax.random.key(config.seed),
                                                                               config.num_seeds)


def main():
    p = parser(__doc__.splitlines()[0], "benchmarks/results/cpu/table1_train.json")
    p.add_argument("--width", type=int, default=30)
    p.add_argument("--num-train", type=int, default=3000)
    args = p.parse_args()
    mnist, config, data, seed_keys = train_setup(args.width, args.num_train)
    x_train = data[0]
    steps = len(x_train) // config.batch_size
    contenders, runs, outputs = {}, {}, {}
    for label, methods in (("Table 1 program, 4 methods", config.methods), ("MFVI alone", ("mfvi",)),
                           ("SGM20 alone", ("sgm20",))):
        method_ks = [mnist._method_k(m, 20) for m in methods]
        train_fn, _, _ = mnist._train_program(config, args.width, len(x_train), x_train.shape[1], method_ks)
        program = train_fn.lower(seed_keys, *data).compile()
        contenders[label] = lambda program=program: program(seed_keys, *data)
        runs[label] = len(methods) * config.num_seeds
        if label.startswith("Table 1"):
            outputs[label] = jax.device_get(program(seed_keys, *data))
            half = train_fn.lower(seed_keys[:5], *data).compile()

            def two_threads(half=half):
                out = [None, None]

                def go(i):
                    out[i] = jax.block_until_ready(half(seed_keys[5 * i:5 * i + 5], *data))

                threads = [threading.Thread(target=go, args=(i,)) for i in range(2)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                return out

            name = "Table 1 program, two threads x 5 seeds"
            contenders[name], runs[name] = two_threads, runs[label]
            halves = jax.device_get(two_threads())
            # runs are method-major: (methods * seeds); put the halves' seeds back side by side
            m = len(methods)
            joined = jax.tree.map(
                lambda a, b: np.concatenate([np.asarray(a).reshape((m, 5) + a.shape[1:]),
                                             np.asarray(b).reshape((m, 5) + b.shape[1:])], axis=1).reshape(
                    (m * 10,) + a.shape[1:]), halves[0], halves[1])
            outputs[name] = joined
    ref = outputs["Table 1 program, 4 methods"]
    same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(ref),
                                                      jax.tree.leaves(outputs["Table 1 program, two threads x 5 seeds"])))
    load = os.getloadavg()
    times = _timed(contenders, args.repeats)
    rows, record = [], dict(width=args.width, steps=steps, load_average=load, halves_bitwise_equal=same, rows={})
    for name, (wall, cpu) in times.items():
        per = 1e3 * wall / (runs[name] * steps)
        rows.append([name, runs[name], f"{wall:.2f}", f"{cpu:.2f}", f"{per:.3f}"])
        record["rows"][name] = dict(runs=runs[name], wall_s=wall, cpu_s=cpu, ms_per_run_step=per)
    print(markdown_table(["program", "runs", f"wall s ({steps} steps)", "CPU s", "ms per run-step"], rows))
    print(f"two threads x 5 seeds bitwise equal to one program: {same}; load average {load} -> {os.getloadavg()}")
    write_json(args.json, record)


if __name__ == "__main__":
    main()
