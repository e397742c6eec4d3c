"""Bitwise check of a program change across the experiments: small CLI runs on two source trees,
every ``results.json`` row compared exactly (wall times, the fields named ``*seconds*``, excepted).

    PYTHONPATH=. python benchmarks/cli_bitwise.py --base /path/to/base/tree [--only demo,tractable]

Each tree runs every command in its own subprocess (``PYTHONPATH=TREE``, persistent compile cache
off). The commands are the test suite's quick settings, scaled so that each takes seconds to a
minute on two cores; ``mnist_bitwise.py`` checks the mnist experiment at its own shapes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from mnist_bitwise import compare

MNIST = str((Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist.npz").resolve())
COMMANDS = {
    "demo": ["demo", "--num-seeds", "2", "--num-steps", "300", "--num-eval-samples", "50"],
    "tractable": ["tractable", "--config", "configs/tractable.yaml", "--alphas", "[0.05, 0.2]", "--num-seeds", "2",
                  "--num-predictive-samples", "50", "--num-eval-samples", "50", "--num-eval-permutations", "8",
                  "--grid-points", "60", "--kl-grid-points", "41", "--hmc-chains", "2", "--hmc-warmup", "30",
                  "--hmc-samples", "40", "--tv-bin-factor", "6", "--sensitivity", "[]"],
    "estimators": ["estimators", "--parts", "[exact, distance, train]", "--num-train", "200", "--batch-size", "50",
                   "--trained-epochs", "1", "--broad-steps", "2", "--exact-widths", "[3]", "--num-permutations", "[2]",
                   "--num-samples", "2", "--num-repeats", "1", "--wide-widths", "[]", "--train-widths", "[6]",
                   "--data-path", MNIST],
    "sign-flips": ["sign-flips", "--widths", "[3, 5]", "--num-epochs", "200", "--num-mi-samples", "16"],
    "regression": ["regression", "--config", "configs/regression.yaml", "--num-seeds", "2", "--num-epochs", "20"],
    "cnn": ["cnn", "--config", "configs/cnn.yaml", "--data", MNIST, "--num-train", "200", "--num-test", "50",
            "--channels", "[2, 3]", "--num-epochs", "1", "--batch-size", "50", "--num-seeds", "2",
            "--num-permutations", "3", "--num-eval-samples", "2", "--num-mi-samples", "2", "--methods", "[mfvi, sgm]"],
    "train": ["train", "--num-train", "96", "--num-test", "64", "--hidden", "[4]", "--num-epochs", "3",
              "--batch-size", "12", "--num-eval-samples", "20"],
}


def _drop_times(rows):
    """The rows without their wall-time fields (``train_seconds``, ``exact_seconds_per_sample``, ...)."""
    return [{k: v for k, v in row.items() if "seconds" not in k} if isinstance(row, dict) else row for row in rows]


def run_tree(tree: str, argv: list, out: Path) -> list:
    env = dict(os.environ, PYTHONPATH=str(Path(tree).resolve()), SYMVI_JAX_CACHE="off")
    subprocess.run([sys.executable, "-m", "symvi_jax", *argv, "--out", str(out)], env=env, check=True,
                   cwd=str(Path(tree).resolve()), stdout=subprocess.DEVNULL)
    return _drop_times(json.loads((out / "results.json").read_text())["rows"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True, help="the source tree to compare against")
    p.add_argument("--new", default=".", help="the source tree under test (default: this one)")
    p.add_argument("--only", default=None, help="comma-separated subset of: " + ", ".join(COMMANDS))
    args = p.parse_args(argv)
    names = args.only.split(",") if args.only else list(COMMANDS)
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            base = run_tree(args.base, COMMANDS[name], Path(tmp) / f"{name}_base")
            new = run_tree(args.new, COMMANDS[name], Path(tmp) / f"{name}_new")
            diffs = compare(base, new)
            for i, key, a, b in diffs[:10]:
                print(f"  {name} row {i} {key}: base {a!r} new {b!r}")
            print(f"{name}: {len(base)} rows, {len(diffs)} differing fields" + (" (bitwise identical)" if not diffs else ""),
                  flush=True)
            failed += bool(diffs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
