"""One width's Table 1 programs compiled with XLA's default options and with others (a backend
optimisation level, ``mnist.Config.xla_optimization_level``, or any XLA compiler option): compile
time, run time and whether the outputs are equal.

    PYTHONPATH=.:benchmarks python benchmarks/table1_opt_level.py --width 30 --level 1 --repeats 3
    PYTHONPATH=.:benchmarks python benchmarks/table1_opt_level.py --width 30 --option xla_cpu_use_fusion_emitters=false

The train program runs the config's 10 seeds in the ``train_workers: 2`` block of 5 on the first
``--num-train`` MNIST images for one epoch; the evaluate program evaluates ``--runs`` untrained runs
on the real test sets (1000 draws, K = 1000). Compiles and runs are interleaved (default, level,
default, ...); medians, with process-CPU seconds for the compiles.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time

import jax
import numpy as np

from _harness import interleaved_medians, markdown_table, parser, write_json
from table1_eval import setup


def programs(width: int, runs: int, num_train: int):
    """{name: (a function lowering a fresh program, its arguments)} for the train and evaluate programs of
    one width (fresh: jax keeps the compilation of a lowered program)."""
    import symvi_jax

    mnist, config, apply_fn, group, q, keys, data = setup(symvi_jax, width, runs)
    x_train, y_train, *_ = mnist._load(config)
    train = jax.device_put((x_train[:num_train], y_train[:num_train]))
    methods = [mnist._method_k(m, 20) for m in config.methods]
    seeds = jax.random.split(jax.random.key(config.seed), config.num_seeds)[: config.num_seeds // 2]
    one_epoch = dataclasses.replace(config, num_epochs=1)
    def train_program():
        return mnist._train_program(one_epoch, width, num_train, x_train.shape[1], methods)[0].lower(seeds, *train)

    def evaluate_program():
        return mnist._evaluate_program(config, apply_fn, group).lower(q, keys, *data)

    return {"train": (train_program, (seeds, *train)), "evaluate": (evaluate_program, (q, keys, *data))}


def _parse_option(text: str):
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise SystemExit(f"--option must be NAME=VALUE, got {text!r}")
    if value.lower() in ("true", "false"):
        return name, value.lower() == "true"
    try:
        return name, int(value)
    except ValueError:
        return name, value


def main():
    p = parser(__doc__.splitlines()[0], "benchmarks/results/cpu/table1_opt_level.json")
    p.add_argument("--width", type=int, default=30)
    p.add_argument("--level", type=int, default=1, help="the XLA backend optimisation level to compare")
    p.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                   help="an XLA compiler option to compare instead of --level (repeatable; true/false/ints parsed)")
    p.add_argument("--runs", type=int, default=4, help="runs the evaluate program evaluates")
    p.add_argument("--num-train", type=int, default=3000)
    args = p.parse_args()
    if args.option:
        other = dict(_parse_option(o) for o in args.option)
        label = ", ".join(args.option)
    else:
        other, label = {"xla_backend_optimization_level": args.level}, f"level {args.level}"
    options = {"default": None, label: other}
    rows, record = [], dict(width=args.width, options=other, load_average_start=os.getloadavg(), programs={})
    for name, (lower, call_args) in programs(args.width, args.runs, args.num_train).items():
        compile_s = {label: [] for label in options}
        compiled = {}
        for _ in range(args.repeats):
            for label, opts in options.items():
                lowered = lower()
                t0, c0 = time.perf_counter(), os.times()
                compiled[label] = lowered.compile(compiler_options=opts)
                t1, c1 = time.perf_counter(), os.times()
                compile_s[label].append((t1 - t0, c1.user + c1.system - c0.user - c0.system))
        outputs = {label: jax.device_get(c(*call_args)) for label, c in compiled.items()}
        diffs = [float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)), initial=0.0))
                 for a, b in zip(*(jax.tree.leaves(o) for o in outputs.values()))]
        equal = max(diffs) == 0.0
        run_s = interleaved_medians({label: (lambda c=c: c(*call_args)) for label, c in compiled.items()},
                                    repeats=args.repeats, warmup=0)
        for label in options:
            wall = statistics.median(v[0] for v in compile_s[label])
            cpu = statistics.median(v[1] for v in compile_s[label])
            rows.append([name, label, f"{wall:.1f}", f"{cpu:.1f}", f"{run_s[label]:.2f}",
                         "yes" if equal else f"no (max difference {max(diffs):.2g})"])
            record["programs"][f"{name} {label}"] = dict(compile_s=compile_s[label], run_s=run_s[label],
                                                         outputs_bitwise_equal=equal, max_difference=max(diffs))
        print("\n".join(" ".join(r) for r in rows[-2:]), flush=True)
    print(markdown_table(["program", "compiled with", "compile wall s", "compile CPU s", "run s",
                          "outputs bitwise equal"], rows))
    record["load_average_end"] = os.getloadavg()
    print(f"load average {record['load_average_end']}")
    write_json(args.json, record)


if __name__ == "__main__":
    main()
