"""Bitwise check of a program change: one small ``symvi_jax.experiments.mnist`` config run on two
source trees, every result row compared exactly (wall-time fields excepted).

    PYTHONPATH=. python benchmarks/mnist_bitwise.py --base /work/main          # base tree vs this one

Each tree runs in its own subprocess (``PYTHONPATH=TREE``, persistent compile cache off) on the
real MNIST / Fashion-MNIST files, with a config small enough for a minute on two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CONFIG = dict(widths=(3, 5), methods=("mfvi", "sgm3", "sgm5"), num_seeds=2, num_train=500, num_test=300,
              num_epochs=2, num_eval_samples=100, eval_chunk_size=10, mi_num_permutations=50, mi_num_samples=8,
              ood=True)
_TIMING = {"train_seconds", "eval_seconds"}

_CHILD = """
import json, sys
from symvi_jax.experiments import mnist
import symvi_jax
config = mnist.Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(sys.argv[1]).items()})
result = mnist.run(config)
json.dump({"module": symvi_jax.__file__, "rows": result.rows}, open(sys.argv[2], "w"))
"""


def run_tree(tree: str, config: dict, out: Path, xla_flags: str = "") -> dict:
    env = dict(os.environ, PYTHONPATH=str(Path(tree).resolve()), SYMVI_JAX_CACHE="off")
    if xla_flags:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + xla_flags).strip()
    # run outside both trees: ``python -c`` puts the working directory ahead of PYTHONPATH
    subprocess.run([sys.executable, "-c", _CHILD, json.dumps(config), str(out)], env=env, check=True,
                   cwd=str(out.parent))
    return json.loads(out.read_text())


def with_data_paths(config: dict) -> dict:
    """``config`` with ``data`` and ``ood_data`` set, where unset, to the MNIST and Fashion-MNIST files found
    from here, by absolute path (so that runs in other trees and directories read the same files)."""
    from symvi_jax import data

    for key, name in (("data", "mnist"), ("ood_data", "fashion_mnist")):
        found = [path for path in data.default_search_paths(name) if path.exists()]
        if config.get(key) is None and found:
            config[key] = str(found[0].resolve())
    return config


def compare(base_rows: list, new_rows: list) -> list:
    """The (row index, key, base, new) of every field that differs (timings excepted)."""
    if len(base_rows) != len(new_rows):
        return [(None, "number of rows", len(base_rows), len(new_rows))]
    diffs = []
    for i, (a, b) in enumerate(zip(base_rows, new_rows)):
        for key in sorted((set(a) | set(b)) - _TIMING):
            if a.get(key) != b.get(key):
                diffs.append((i, key, a.get(key), b.get(key)))
    return diffs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True, help="the source tree to compare against (e.g. /work/main)")
    p.add_argument("--new", default=".", help="the source tree under test (default: this one)")
    p.add_argument("--config", default=None, help="JSON overrides of the small config")
    p.add_argument("--new-xla-flags", default="", help="XLA_FLAGS added for the new tree's run only")
    p.add_argument("--new-config", default=None, help="JSON overrides for the new tree's run only")
    args = p.parse_args(argv)
    config = with_data_paths(dict(CONFIG, **(json.loads(args.config) if args.config else {})))
    with tempfile.TemporaryDirectory() as tmp:
        base = run_tree(args.base, config, Path(tmp) / "base.json")
        new_config = dict(config, **(json.loads(args.new_config) if args.new_config else {}))
        new = run_tree(args.new, new_config, Path(tmp) / "new.json", args.new_xla_flags)
    print(f"base: {base['module']}\nnew:  {new['module']} {args.new_xla_flags} {args.new_config or ''}\nconfig: {json.dumps(config)}")
    diffs = compare(base["rows"], new["rows"])
    for i, key, a, b in diffs[:20]:
        print(f"row {i} {key}: base {a!r} new {b!r}")
    print(f"{len(base['rows'])} rows, {len(diffs)} differing fields" + (" (bitwise identical)" if not diffs else ""))
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
