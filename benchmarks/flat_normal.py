"""Compile time of ``jax.random.normal`` drawn with its shape against drawn flat and reshaped.

A lever measured for issue 15's compile target and not adopted: with threefry keys the flat draw
gives the same numbers bit for bit, and XLA:CPU compiles it several times faster for some
shapes, but once the draw is fused into w = mu + sigma * eps (``meanfield.sample``) the fused
arithmetic can round differently (in the last bit) at some shapes. This script shows all three facts: for
each shape, compile seconds and run time of both draws, whether the draws are bitwise equal, and
whether mu + sigma * eps is.

    PYTHONPATH=.:benchmarks python benchmarks/flat_normal.py
"""

from __future__ import annotations

import math
import time

import jax
import numpy as np

from _harness import interleaved_medians, markdown_table, parser, write_json

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
        shaped = lambda k, shape=shape: jax.random.normal(k, shape)  # noqa: E731
        flat = lambda k, shape=shape, size=size: jax.random.normal(k, (size,)).reshape(shape)  # noqa: E731
        (c_shaped, t_shaped), (c_flat, t_flat) = _compile(shaped, key), _compile(flat, key)
        same_draw = np.array_equal(c_shaped(key), c_flat(key))
        mu = jax.random.normal(jax.random.key(4), shape[1:])
        sigma = jax.nn.softplus(jax.random.normal(jax.random.key(5), shape[1:]))
        w_shaped = jax.jit(lambda k: mu + sigma * shaped(k))(key)
        w_flat = jax.jit(lambda k: mu + sigma * flat(k))(key)
        same_w = np.array_equal(w_shaped, w_flat)
        a, b = np.asarray(w_shaped, np.float64), np.asarray(w_flat, np.float64)
        max_diff = float(np.max(np.abs(a - b)))
        differing = float(np.mean(a != b))
        times = interleaved_medians({"shaped": lambda: c_shaped(key), "flat": lambda: c_flat(key)},
                                    repeats=args.repeats)
        rows.append([str(shape), f"{t_shaped:.2f}", f"{t_flat:.2f}", f"{1e3 * times['shaped']:.3f}",
                     f"{1e3 * times['flat']:.3f}", "yes" if same_draw else "NO", "yes" if same_w else f"no: {100 * differing:.0f}% of entries, max |diff| {max_diff:.1e}"])
        records.append(dict(shape=shape, compile_shaped_s=t_shaped, compile_flat_s=t_flat, run_shaped_s=times["shaped"],
                            run_flat_s=times["flat"], draws_bitwise_equal=bool(same_draw),
                            fused_w_bitwise_equal=bool(same_w), max_abs_diff=max_diff,
                            fraction_differing=differing))
        print(rows[-1], flush=True)
    print(markdown_table(["shape", "compile shaped s", "compile flat s", "run shaped ms", "run flat ms",
                          "draws bitwise equal", "mu + sigma eps bitwise equal"], rows))
    write_json(args.json, dict(rows=records))


if __name__ == "__main__":
    main()
