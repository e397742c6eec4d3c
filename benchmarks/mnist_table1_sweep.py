"""Table 1 sensitivity sweep (issue #12, item 7): one markdown table over several ``symvi-jax mnist`` runs.

Each run changes one setting the paper leaves unstated from ``configs/mnist_table1.yaml`` (the
setting is read from the run's saved config) and trains MFVI and SGM (K = 20) with paired seeds.
Per run and width: MFVI test accuracy (mean +- std over seeds) and its distance to the paper's
MFVI number, MFVI test NLL, and SGM - MFVI accuracy and NLL, paired by seed, with 95% t intervals.

    python benchmarks/mnist_table1_sweep.py out/mnist_sweep_*/results.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from symvi_jax.experiments import base, mnist
from symvi_jax.experiments.stats import paired_ci

TABLE1 = Path(__file__).resolve().parents[1] / "configs" / "mnist_table1.yaml"
SWEPT = ("init_scale", "prior_scale", "kl_scale", "num_eval_samples")


def changed(config: dict, reference) -> str:
    """The swept settings that differ from the Table 1 config, as 'key=value' (or 'Table 1 default')."""
    diff = [f"{k}={config[k]}" for k in SWEPT if config.get(k, getattr(reference, k)) != getattr(reference, k)]
    return ", ".join(diff) or "Table 1 default"


def rows_of(path: Path, reference):
    payload = json.loads(path.read_text())
    rows, label = payload["rows"], changed(payload["config"], reference)
    for width in sorted({r["width"] for r in rows}):
        mfvi = sorted((r for r in rows if r["width"] == width and r["method"] == "mfvi"), key=lambda r: r["seed"])
        sgm = sorted((r for r in rows if r["width"] == width and r["method"] == "sgm20"), key=lambda r: r["seed"])
        acc = np.array([100 * r["test_accuracy"] for r in mfvi])
        nll = np.array([r["test_nll"] for r in mfvi])
        paper = mnist.PAPER_TABLE1["mfvi"][width][0]
        cells = [label, str(width), str(len(mfvi)), f"{acc.mean():.3f} +- {acc.std(ddof=1):.3f}",
                 f"{acc.mean() - paper:+.3f}", f"{nll.mean():.4f}"]
        if sgm:
            for key, scale, digits in (("test_accuracy", 100, 3), ("test_nll", 1, 4)):
                m, lo, hi = paired_ci([scale * r[key] for r in mfvi], [scale * r[key] for r in sgm])
                cells.append(f"{m:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]")
            diff = max(float(np.max(np.abs(np.asarray(a[key][0]) - np.asarray(b[key][0]))))
                       for a, b in zip(mfvi, sgm) for key in ("unit_mean_sigma", "unit_mean_abs_loc"))
            cells.append(f"{diff:.4f}")
        else:
            cells += ["-", "-", "-"]
        yield cells


def main(paths) -> str:
    reference = base.load_config(mnist.Config, str(TABLE1))
    lines = ["| setting | width | seeds | MFVI accuracy % | MFVI - paper (pp) | MFVI NLL | SGM20 - MFVI accuracy (pp) "
             "| SGM20 - MFVI NLL | max \\|unit stat diff\\| |", "| --- |" + " --- |" * 8]
    for path in paths:
        lines += ["| " + " | ".join(cells) + " |" for cells in rows_of(Path(path), reference)]
    return "\n".join(lines)


if __name__ == "__main__":
    print(main(sys.argv[1:]))
