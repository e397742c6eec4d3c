"""Dense-chain step time before and after a change, both versions interleaved in one process.

The package as it was at ``--base`` (default: the last commit before ``WeightSymmetry``) is
extracted with ``git archive`` into a temporary folder and imported as ``symvi_jax_base``; the
working tree's ``symvi_jax`` is the "after". For each cell (hidden widths, K, batch) the four
jitted steps (base/new x standard/symmetrized, S = 1, Adam, InfoNCE) run round-robin, and the
table reports medians and the ratios new / base.

    PYTHONPATH=.:benchmarks python benchmarks/regression.py [--base REV] [--nets 30 1024]
        [--ks 20] [--batches 100] [--estimator infonce] [--repeats 30]
        [--json benchmarks/results/cpu/regression.json]
"""

from __future__ import annotations

import importlib
import io
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from _harness import interleaved_medians, markdown_table, parser, write_json
from step_time import make_step

BASE = "1b6cfb8"  # main before WeightSymmetry landed
NETS = {"30": (30,), "1024": (1024,), "30x30": (30, 30), "256x256": (256, 256)}


def import_base(rev: str, folder: Path):
    """Extract ``symvi_jax`` at ``rev`` as the package ``symvi_jax_base`` and import it."""
    archive = subprocess.run(["git", "archive", rev, "symvi_jax"], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    (folder / "symvi_jax").rename(folder / "symvi_jax_base")
    for path in (folder / "symvi_jax_base").rglob("*.py"):
        path.write_text(path.read_text().replace("symvi_jax", "symvi_jax_base"))
    sys.path.insert(0, str(folder))
    return importlib.import_module("symvi_jax_base")


def program_stats(compiled) -> dict:
    """What XLA compiled: HLO lines, fusions, flops and bytes accessed (timing-free evidence)."""
    text = compiled.as_text()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return dict(hlo_lines=len(text.splitlines()), fusions=text.count("fusion("), flops=cost.get("flops"),
                bytes_accessed=cost.get("bytes accessed"))


def main():
    p = parser(__doc__.splitlines()[0], "benchmarks/results/cpu/regression.json")
    p.add_argument("--base", default=BASE, help="the revision to compare against")
    p.add_argument("--nets", nargs="+", choices=list(NETS), default=["30", "1024", "30x30"])
    p.add_argument("--ks", nargs="+", type=int, default=[20])
    p.add_argument("--batches", nargs="+", type=int, default=[100])
    p.add_argument("--estimator", default="infonce", choices=["infonce", "importance"],
                   help="the symmetrized step's estimator of I")
    args = p.parse_args()
    import symvi_jax as new

    with tempfile.TemporaryDirectory() as tmp:
        base = import_base(args.base, Path(tmp))
        rows, records = [], []
        for net in args.nets:
            for batch_size in args.batches:
                for k in args.ks:
                    fns, programs = {}, {}
                    for label, package in (("base", base), ("new", new)):
                        for kind, objective, kk in (("standard", "elbo", None), ("symmetrized", "symmetrized_elbo", k)):
                            name = f"{label} {kind}"
                            fns[name], programs[name] = make_step(NETS[net], batch_size, objective, kk,
                                                                  estimator=args.estimator, package=package,
                                                                  compiled=True)
                    times = interleaved_medians(fns, repeats=args.repeats)
                    record = dict(net=net, batch=batch_size, k=k, base=args.base, estimator=args.estimator,
                                  **{name.replace(" ", "_") + "_ms": 1e3 * t for name, t in times.items()},
                                  **{name.replace(" ", "_") + "_program": program_stats(p) for name, p in programs.items()})
                    record["standard_new_over_base"] = times["new standard"] / times["base standard"]
                    record["symmetrized_new_over_base"] = times["new symmetrized"] / times["base symmetrized"]
                    records.append(record)
                    rows.append([net, batch_size, k] + [f"{1e3 * times[n]:.3f}" for n in fns]
                                + [f"{record['standard_new_over_base']:.3f}", f"{record['symmetrized_new_over_base']:.3f}"])
                    write_json(args.json, {"benchmark": "regression", "rows": records, "complete": False})
    header = ["net", "batch", "K", "base std ms", "base sym ms", "new std ms", "new sym ms", "std new/base",
              "sym new/base"]
    print(markdown_table(header, rows))
    print()
    stats_rows = [[r["net"], r["batch"], r["k"], kind] + [f"{r[f'{label}_{kind}_program'][field]:.4g}"
                                                           for field in ("flops", "bytes_accessed", "fusions")
                                                           for label in ("base", "new")]
                  for r in records for kind in ("standard", "symmetrized")]
    print(markdown_table(["net", "batch", "K", "step", "base flops", "new flops", "base bytes", "new bytes",
                          "base fusions", "new fusions"], stats_rows))
    write_json(args.json, {"benchmark": "regression", "rows": records, "complete": True})


if __name__ == "__main__":
    main()
