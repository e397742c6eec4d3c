"""Shared timing helpers for the benchmark scripts: interleaved medians, tables, JSON output.

Timings on shared machines are noisy: every comparison runs its contenders interleaved in one
process (A, B, A, B, ...) and reports medians, and the tables quote ratios measured that way.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Mapping

import jax

__all__ = ["interleaved_medians", "block", "machine", "write_json", "markdown_table", "parser"]


def block(x):
    return jax.block_until_ready(x)


def interleaved_medians(fns: Mapping[str, Callable[[], object]], *, repeats: int = 20, warmup: int = 2) -> dict:
    """Median wall seconds of each zero-argument callable, run round-robin ``repeats`` times."""
    for fn in fns.values():
        for _ in range(warmup):
            block(fn())
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            block(fn())
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def machine() -> dict:
    devices = jax.devices()
    return {
        "platform": devices[0].platform,
        "device": getattr(devices[0], "device_kind", str(devices[0])),
        "device_count": len(devices),
        "cpu": platform.processor() or platform.machine(),
        "jax": jax.__version__,
        "python": platform.python_version(),
    }


def write_json(path: str, payload: dict) -> None:
    """Write ``payload`` (plus the machine) atomically. The scripts rewrite it after every row with
    ``complete: False``, so a run stopped by a time limit keeps the rows it finished."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(target.name + ".partial")
    staging.write_text(json.dumps({"machine": machine(), **payload}, indent=2) + "\n")
    staging.replace(target)


def markdown_table(header: list, rows: list) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def parser(description: str, default_json: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--json", default=default_json, help="where to write the JSON results")
    p.add_argument("--repeats", type=int, default=20, help="timed repetitions per contender (median)")
    p.add_argument("--quick", action="store_true", help="a small subset, for smoke tests")
    return p
