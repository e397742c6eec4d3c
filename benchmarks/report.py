"""Markdown tables of saved benchmark results, the ones quoted in benchmarks/RESULTS.md.

Reads a results folder written by the benchmark scripts (every ``*.json`` whose ``benchmark`` is
step_time, peers or orbit_throughput) and prints one table per file. Where a run was stopped by a
time limit before the scripts wrote JSON after every row, the rows they printed are read back from
``NAME.log`` instead (one Python list per line).

    python benchmarks/report.py benchmarks/results/cpu
    python benchmarks/report.py benchmarks/results/h200/run1
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

COLUMNS = {
    "step_time": (["hidden", "batch", "K", "standard ms", "symmetrized ms", "ratio"],
                  lambda r: [r["width"], r["batch"], r["K"], f"{r['standard_s'] * 1e3:.3f}",
                             f"{r['symmetrized_s'] * 1e3:.3f}", f"{r['ratio']:.2f}"]),
    "peers": (["width", "batch", "symvi-jax ms", "symvi-jax, no grad norm ms", "numpyro ms", "floor ms",
               "symvi/numpyro", "no-norm/numpyro", "no-norm/floor"],
              lambda r: [r["width"], r["batch"]]
              + [f"{r[k] * 1e3:.3f}" for k in ("symvi-jax_s", "symvi-jax-nonorm_s", "numpyro_s", "floor_s")]
              + [f"{r[k]:.2f}" for k in ("symvi_over_numpyro", "nonorm_over_numpyro", "nonorm_over_floor")]),
    "orbit_throughput": (["net", "\\|G\\|", "map", "ms per log q^G", "elements / s"],
                         lambda r: [r["net"], r["order"], r["mode"], f"{r['seconds'] * 1e3:.2f}",
                                    f"{r['elements_per_s']:.3g}"]),
}
LOG_HEADERS = {  # the columns of the rows the scripts print
    "step_time": ["hidden", "batch", "K", "standard ms", "symmetrized ms", "ratio"],
    "peers": ["width", "batch", "symvi-jax ms", "symvi-jax, no grad norm ms", "numpyro ms", "floor ms",
              "symvi/numpyro", "symvi/floor", "no-norm/numpyro", "no-norm/floor"],
    "orbit_throughput": ["net", "\\|G\\|", "map", "ms per log q^G", "elements / s"],
}


def table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def _log_rows(path: Path) -> list:
    rows = []
    for line in path.read_text().splitlines():
        if line.startswith("[") and line.endswith("]"):
            try:
                rows.append(ast.literal_eval(line))
            except (SyntaxError, ValueError):
                continue
    return rows


def report(folder: Path) -> str:
    parts, seen = [], set()
    for json_path in sorted(folder.glob("*.json")):
        payload = json.loads(json_path.read_text())
        name = payload.get("benchmark")
        if name not in COLUMNS:
            continue
        header, render = COLUMNS[name]
        machine = payload.get("machine", {})
        note = "" if payload.get("complete", True) else " (stopped early: the rows it finished)"
        parts += [f"### {json_path.name}: {machine.get('device', '?')}, jax {machine.get('jax', '?')}{note}\n",
                  table(header, [render(r) for r in payload["rows"]]), ""]
        seen.add(name)
    for name in COLUMNS:
        log_path = folder / f"{name}.log"
        if name not in seen and log_path.exists():
            parts += [f"### {log_path.name}: the rows printed before the time limit\n",
                      table(LOG_HEADERS[name], _log_rows(log_path)), ""]
    return "\n".join(parts)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python benchmarks/report.py RESULTS_FOLDER", file=sys.stderr)
        return 2
    print(report(Path(argv[0])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
