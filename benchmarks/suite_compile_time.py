"""How much of a pytest run is jax tracing, lowering and XLA compiling: per test and in total.

Runs pytest in this process (no xdist) on the given test paths, listening to jax's monitoring
events for each test's trace, lowering and backend-compile seconds and its number of compilations.

    PYTHONPATH=benchmarks python benchmarks/suite_compile_time.py tests/test_vi.py tests/test_hyper.py

The suite's own XLA settings (tests/conftest.py) apply, so set ``XLA_FLAGS`` to compare others.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time

import pytest

from _harness import markdown_table, write_json

EVENTS = {"trace": "/jax/core/compile/jaxpr_trace_duration",
          "lower": "/jax/core/compile/jaxpr_to_mlir_module_duration",
          "compile": "/jax/core/compile/backend_compile_duration"}


class Listener:
    """A pytest plugin: per test, wall seconds and the seconds of each compile event."""

    def __init__(self):
        self.rows = []
        self._now = collections.Counter()
        from jax._src import monitoring  # imported after tests/conftest.py has set XLA_FLAGS

        monitoring.register_event_duration_secs_listener(self._on_duration)

    def _on_duration(self, event, duration, **kwargs):
        for name, key in EVENTS.items():
            if event == key:
                self._now[name] += duration
                if name == "compile":
                    self._now["compilations"] += 1

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        self._now.clear()
        start = time.perf_counter()
        yield
        self.rows.append(dict(test=item.nodeid, wall=time.perf_counter() - start, **self._now))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("paths", nargs="+", help="test files or node ids")
    p.add_argument("--json", default="benchmarks/results/cpu/suite_compile_time.json")
    p.add_argument("--top", type=int, default=10, help="tests to list, slowest first")
    args = p.parse_args()
    sys.path.insert(0, "tests")
    import conftest  # noqa: F401  (sets XLA_FLAGS before jax starts its backend)

    listener = Listener()
    status = pytest.main(["-q", "-p", "no:xdist", "-p", "no:cacheprovider", *args.paths], plugins=[listener])
    totals = collections.Counter()
    for row in listener.rows:
        totals.update({k: v for k, v in row.items() if k != "test"})
    rows = [[r["test"], f"{r['wall']:.1f}", *(f"{r.get(k, 0.0):.1f}" for k in EVENTS), r.get("compilations", 0)]
            for r in sorted(listener.rows, key=lambda r: -r["wall"])[: args.top]]
    rows.append(["**all**", f"{totals['wall']:.1f}", *(f"{totals[k]:.1f}" for k in EVENTS), totals["compilations"]])
    print(markdown_table(["test", "wall s", "trace s", "lower s", "XLA compile s", "compilations"], rows))
    share = sum(totals[k] for k in EVENTS) / totals["wall"]
    print(f"tracing, lowering and compiling: {share:.0%} of the tests' wall time (XLA_FLAGS={os.environ['XLA_FLAGS']!r})")
    write_json(args.json, dict(paths=args.paths, xla_flags=os.environ["XLA_FLAGS"], status=int(status),
                               totals=dict(totals), share=share, rows=listener.rows))


if __name__ == "__main__":
    main()
