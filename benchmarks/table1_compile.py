"""Compile time of one width's Table 1 programs (train and evaluate), base revision against the
working tree, interleaved, each compile from a fresh lowering (no persistent cache).

    PYTHONPATH=.:benchmarks python benchmarks/table1_compile.py --width 30 --repeats 2 --base HEAD

Reports lowering and compile wall seconds, compile process-CPU seconds (the CPU is shared: CPU
seconds are the steadier figure), and the size of the compiled programs (HLO lines, fusions, while
loops). ``--jax-config NAME=VALUE`` lowers and compiles the working tree's programs with a JAX
setting changed (the base's with it as it is): with ``--base HEAD`` that measures the setting alone.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import jax

from _harness import markdown_table, parser, write_json
from regression import import_base
from table1_eval import setup


def lowerings(package, width: int, runs: int = 40):
    """The train and evaluate programs of one width of configs/mnist_table1.yaml, lowered."""
    mnist, config, apply_fn, group, q, keys, data = setup(package, width, runs)
    x_train, y_train, *_ = mnist._load(config)
    methods = [mnist._method_k(m, 20) for m in config.methods]
    spec = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype)  # noqa: E731
    seed_keys = jax.random.split(jax.random.key(config.seed), config.num_seeds)

    def train():  # a fresh program each time: jax caches the compilation of one jitted function
        train_fn, _, _ = mnist._train_program(config, width, len(x_train), x_train.shape[1], methods)
        return train_fn.lower(spec(seed_keys), spec(x_train), spec(y_train))

    return {
        "train": train,
        "evaluate": lambda: mnist._evaluate_program(config, apply_fn, group).lower(q, keys, *data),
    }


def _setting(item: str):
    """``NAME=VALUE`` -> (NAME, VALUE as an int, float or bool where it reads as one)."""
    name, _, text = item.partition("=")
    for convert in (int, float):
        try:
            return name, convert(text)
        except ValueError:
            pass
    return name, {"true": True, "false": False}.get(text.lower(), text)


def main():
    p = parser(__doc__.splitlines()[0], "benchmarks/results/cpu/table1_compile.json")
    p.add_argument("--width", type=int, default=30)
    p.add_argument("--base", default="HEAD", help="the revision to compare against")
    p.add_argument("--programs", nargs="+", default=["train", "evaluate"], choices=["train", "evaluate"])
    p.add_argument("--jax-config", action="append", default=[], metavar="NAME=VALUE",
                   help="a JAX setting for the working tree's programs only, e.g. jax_traceback_in_locations_limit=0")
    args = p.parse_args()
    import symvi_jax as new

    changed = dict(_setting(item) for item in args.jax_config)
    settings = {"base": {name: getattr(jax.config, name) for name in changed}, "new": changed}

    with tempfile.TemporaryDirectory() as tmp:
        base = import_base(args.base, Path(tmp))
        lowers = {label: lowerings(pkg, args.width) for label, pkg in (("base", base), ("new", new))}
        seconds = {(label, prog): [] for label in lowers for prog in args.programs}
        sizes = {}
        for _ in range(args.repeats):
            for prog in args.programs:
                for label in lowers:
                    for name, value in settings[label].items():
                        jax.config.update(name, value)
                    start = time.perf_counter()
                    lowered = lowers[label][prog]()
                    t0, c0 = time.perf_counter(), os.times()
                    compiled = lowered.compile()
                    t1, c1 = time.perf_counter(), os.times()
                    seconds[(label, prog)].append((t1 - t0, c1.user + c1.system - c0.user - c0.system, t0 - start))
                    text = compiled.as_text()
                    sizes[(label, prog)] = (len(text.splitlines()), text.count("fusion("), text.count(" while("))
                    print(label, prog, f"{t1 - t0:.1f} s wall, {c1.user + c1.system - c0.user - c0.system:.1f} s CPU",
                          flush=True)
    rows, record = [], dict(width=args.width, base=args.base, jax_config=args.jax_config,
                            load_average=os.getloadavg(), programs={})
    for (label, prog), values in seconds.items():
        wall = statistics.median(v[0] for v in values)
        cpu = statistics.median(v[1] for v in values)
        lower = statistics.median(v[2] for v in values)
        lines, fusions, whiles = sizes[(label, prog)]
        rows.append([prog, label, f"{lower:.1f}", f"{wall:.1f}", f"{cpu:.1f}", lines, fusions, whiles])
        record["programs"][f"{label} {prog}"] = dict(wall_s=[v[:2] for v in values], lower_s=[v[2] for v in values],
                                                     hlo_lines=lines, fusions=fusions, whiles=whiles)
    print(markdown_table(["program", "tree", "lower wall s", "compile wall s", "compile CPU s", "HLO lines", "fusions",
                          "while loops"], rows))
    print(f"load average {os.getloadavg()}")
    write_json(args.json, record)


if __name__ == "__main__":
    main()
