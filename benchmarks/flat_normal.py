"""Compile time of ``jax.random.normal`` drawn with its shape, drawn flat and reshaped, and drawn by
``meanfield.standard_normal`` (the bits from a flat counter, reshaped before the float map).

Flat and reshaped, a lever measured for issue 15's compile target and not adopted: with threefry
keys the flat draw gives the same numbers bit for bit, and XLA:CPU compiles it several times
faster for some shapes, but once the draw is fused into w = mu + sigma * eps (``meanfield.sample``)
the fused arithmetic can round differently (in the last bit) at some shapes. ``standard_normal``
keeps the float map on the draw's own shape, and with it mu + sigma * eps. For each shape: compile
seconds and run time of the three draws, whether the draws are bitwise equal to
``jax.random.normal``'s, and whether mu + sigma * eps is.

    PYTHONPATH=.:benchmarks python benchmarks/flat_normal.py
"""

from __future__ import annotations

import math
import time

import jax
import numpy as np

from _harness import interleaved_medians, markdown_table, parser, write_json
from symvi_jax import meanfield

SHAPES = [(1, 784, 30), (1, 30, 10), (1, 10), (50, 30), (50, 30, 10), (50, 10), (64, 784, 30), (64, 30, 10)]


def _compile(fn, *args):
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - start


def main():
    p = parser(__doc__.splitlines()[0], "benchmarks/results/cpu/flat_normal.json")
    args = p.parse_args()
    key = jax.random.key(3)
    rows, records = [], []
    for shape in SHAPES:
        size = math.prod(shape)
        draws = {
            "shaped": lambda k, shape=shape: jax.random.normal(k, shape),
            "flat": lambda k, shape=shape, size=size: jax.random.normal(k, (size,)).reshape(shape),
            "standard_normal": lambda k, shape=shape: meanfield.standard_normal(k, shape),
        }
        compiled = {name: _compile(fn, key) for name, fn in draws.items()}
        mu = jax.random.normal(jax.random.key(4), shape[1:])
        sigma = jax.nn.softplus(jax.random.normal(jax.random.key(5), shape[1:]))
        w = {name: np.asarray(jax.jit(lambda k, fn=fn: mu + sigma * fn(k))(key), np.float64) for name, fn in draws.items()}
        times = interleaved_medians({name: lambda c=c: c[0](key) for name, c in compiled.items()}, repeats=args.repeats)
        record = dict(shape=shape)
        row = [str(shape)]
        for name in draws:
            record[f"compile_{name}_s"], record[f"run_{name}_s"] = compiled[name][1], times[name]
            row += [f"{compiled[name][1]:.2f}", f"{1e3 * times[name]:.3f}"]
        for name in ("flat", "standard_normal"):
            same_draw = np.array_equal(compiled["shaped"][0](key), compiled[name][0](key))
            same_w = np.array_equal(w["shaped"], w[name])
            max_diff = float(np.max(np.abs(w["shaped"] - w[name])))
            differing = float(np.mean(w["shaped"] != w[name]))
            record.update({f"{name}_draws_bitwise_equal": bool(same_draw), f"{name}_fused_w_bitwise_equal": bool(same_w),
                           f"{name}_max_abs_diff": max_diff, f"{name}_fraction_differing": differing})
            row += ["yes" if same_draw else "NO",
                    "yes" if same_w else f"no: {100 * differing:.0f}% of entries, max |diff| {max_diff:.1e}"]
        rows.append(row)
        records.append(record)
        print(rows[-1], flush=True)
    print(markdown_table(["shape", "compile shaped s", "run shaped ms", "compile flat s", "run flat ms",
                          "compile standard_normal s", "run standard_normal ms",
                          "flat: draws equal", "flat: mu + sigma eps equal",
                          "standard_normal: draws equal", "standard_normal: mu + sigma eps equal"], rows))
    write_json(args.json, dict(rows=records))


if __name__ == "__main__":
    main()
