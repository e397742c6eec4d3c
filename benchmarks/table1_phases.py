"""The phases of ``symvi-jax mnist`` (compile, train, evaluate) on two source trees, interleaved.

Each tree runs one ``mnist`` config in a fresh subprocess (``PYTHONPATH=TREE``, persistent compile
cache off, so every run compiles from scratch), base and new alternating ``--repeats`` times; the
medians of each phase's wall seconds and their ratio new / base are printed, and every run's rows
are compared with the first base run's (wall times excepted), so a lever that moved a bit shows.

    PYTHONPATH=.:benchmarks python benchmarks/table1_phases.py --base /path/to/base/tree --repeats 2 \\
        [--config '{"widths": [5, 30]}'] [--new-config '{"eval_workers": 2}']

The default config is ``configs/mnist_table1.yaml`` on 1000 training images for one epoch and 1000
test images: Table 1's programs (widths, methods, 10 seeds in 5 blocks, 1000 draws, K = 1000, 64
samples, level-1 evaluate programs) at a fraction of its training and evaluation.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from mnist_bitwise import compare, with_data_paths

CONFIG = dict(num_train=1000, num_epochs=1, num_test=1000)

_CHILD = """
import json, re, sys, time
from symvi_jax.experiments import base, mnist
overrides = json.loads(sys.argv[1])
config = base.load_config(mnist.Config, "configs/mnist_table1.yaml",
                          {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})
start = time.perf_counter()
result = mnist.run(config)
total = time.perf_counter() - start
compile_s = float(re.search(r"compiling every width's programs ([0-9.]+) s", result.markdown).group(1))
json.dump({"rows": result.rows, "compile": compile_s, "total": total,
           "train": sum(r["train_seconds"] for r in result.rows if r["method"] == config.methods[0] and r["seed"] == 0),
           "evaluate": sum(r["eval_seconds"] for r in result.rows if r["method"] == config.methods[0] and r["seed"] == 0)},
          open(sys.argv[2], "w"))
"""


def run_tree(tree: str, config: dict, out: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(Path(tree).resolve()), SYMVI_JAX_CACHE="off")
    subprocess.run([sys.executable, "-c", _CHILD, json.dumps(config), str(out)], env=env, check=True,
                   cwd=str(Path(tree).resolve()), stderr=subprocess.DEVNULL)
    return json.loads(out.read_text())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True, help="the source tree to compare against")
    p.add_argument("--new", default=".", help="the source tree under test (default: this one)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--config", default=None, help="JSON overrides of the config, both trees")
    p.add_argument("--new-config", default=None, help="JSON overrides for the new tree's runs only")
    p.add_argument("--json", default=None, help="write the runs' phase times here")
    args = p.parse_args(argv)
    config = with_data_paths(dict(CONFIG, **(json.loads(args.config) if args.config else {})))
    new_config = dict(config, **(json.loads(args.new_config) if args.new_config else {}))
    runs = {"base": [], "new": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for label, tree, cfg in (("base", args.base, config), ("new", args.new, new_config)):
                runs[label].append(run_tree(tree, cfg, Path(tmp) / f"{label}{i}.json"))
                print(f"{label} {i}: " + ", ".join(f"{k} {runs[label][-1][k]:.1f} s"
                                                   for k in ("compile", "train", "evaluate", "total")), flush=True)
    reference = runs["base"][0]["rows"]
    differing = {label: [len(compare(reference, r["rows"])) for r in rs] for label, rs in runs.items()}
    print(f"config: {json.dumps(config)}; new only: {args.new_config or '{}'}")
    print("| phase | base s | new s | new / base |\n| --- | --- | --- | --- |")
    for phase in ("compile", "train", "evaluate", "total"):
        b = statistics.median(r[phase] for r in runs["base"])
        n = statistics.median(r[phase] for r in runs["new"])
        print(f"| {phase} | {b:.1f} | {n:.1f} | {n / b:.3f} |")
    print(f"fields differing from the first base run's rows: {differing}")
    if args.json:
        Path(args.json).write_text(json.dumps({"config": config, "new_config": new_config, "differing": differing,
                                               "runs": {k: [{p: r[p] for p in ("compile", "train", "evaluate", "total")}
                                                            for r in rs] for k, rs in runs.items()}}, indent=1))
    return 1 if any(any(d) for d in differing.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
