"""Which programs a CLI command compiles: XLA compile seconds and counts per program name.

Runs ``symvi-jax ARGS`` in this process with ``jax_log_compiles`` on and sums JAX's "Finished XLA
compilation of NAME in S sec" records by NAME. Small ``jit(multiply)``-like names are eager jax ops
(each compiles its own program the first time it meets a shape); ``jit(train_fn)``-like names are
the experiment's own programs. Set ``SYMVI_JAX_CACHE=off`` so that every program compiles.

    SYMVI_JAX_CACHE=off PYTHONPATH=. python benchmarks/compile_log.py mnist --config configs/mnist_table1.yaml \\
        --widths "[5, 10]" --num-train 1000 --num-epochs 1 --num-test 300 --out /tmp/out
"""

from __future__ import annotations

import collections
import logging
import re
import sys

import jax

_FINISHED = re.compile(r"Finished XLA compilation of (.*) in ([0-9.e+-]+) sec")


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.seconds = collections.defaultdict(list)

    def emit(self, record):
        match = _FINISHED.search(record.getMessage())
        if match:
            self.seconds[match.group(1)].append(float(match.group(2)))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    jax.config.update("jax_log_compiles", True)
    collect = _Collect()
    logger = logging.getLogger("jax")
    logger.addHandler(collect)
    logger.setLevel(logging.DEBUG)
    from symvi_jax import cli

    code = cli.main(argv)
    total = sum(sum(s) for s in collect.seconds.values())
    count = sum(len(s) for s in collect.seconds.values())
    print(f"XLA compilation: {total:.1f} s for {count} programs", file=sys.stderr)
    print("| seconds | programs | name |\n| --- | --- | --- |", file=sys.stderr)
    for name, seconds in sorted(collect.seconds.items(), key=lambda item: -sum(item[1])):
        print(f"| {sum(seconds):.2f} | {len(seconds)} | `{name}` |", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
