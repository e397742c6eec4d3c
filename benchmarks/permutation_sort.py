"""The permutation draws' sort: a key-value sort against ``prng.stable_argsort``'s two packed sorts.

``group.sample`` draws K permutations of d units as jax does: the stable argsort of d random
uint32 keys per row. ``lax.sort_key_val`` sorts keys and indices together, and XLA:CPU calls the
compiled comparator for every comparison; ``prng.stable_argsort`` gives the same order from two
sorts of one packed uint32 operand, which XLA:CPU sorts by value (see its docstring). Both jitted
and vmapped over the K rows, interleaved medians; ``equal`` checks the orders bit for bit.

    PYTHONPATH=.:benchmarks python benchmarks/permutation_sort.py [--repeats 15]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from _harness import interleaved_medians, markdown_table, parser, write_json
from symvi_jax import prng

SHAPES = ((64, 1024), (20, 1024), (20, 30), (1000, 30))


def main():
    p = parser(__doc__.splitlines()[0], "benchmarks/results/cpu/permutation_sort.json")
    args = p.parse_args()
    key_value = jax.jit(jax.vmap(lambda k: jax.lax.sort_key_val(k, jnp.arange(k.shape[-1], dtype=jnp.int32))[1]))
    packed = jax.jit(jax.vmap(prng.stable_argsort))
    rows = []
    for k, d in SHAPES:
        keys = jax.random.bits(jax.random.key(k * d), (k, d), jnp.uint32)
        equal = bool(np.array_equal(key_value(keys), packed(keys)))
        t = interleaved_medians({"key_value": lambda: key_value(keys), "packed": lambda: packed(keys)},
                                repeats=args.repeats)
        rows.append(dict(K=k, d=d, key_value_ms=1e3 * t["key_value"], packed_ms=1e3 * t["packed"],
                         ratio=t["packed"] / t["key_value"], equal=equal))
    print(markdown_table(["K", "d", "lax.sort_key_val ms", "stable_argsort ms", "ratio", "equal"],
                         [[r["K"], r["d"], f"{r['key_value_ms']:.3f}", f"{r['packed_ms']:.3f}", f"{r['ratio']:.3f}",
                           "yes" if r["equal"] else "no"] for r in rows]))
    write_json(args.json, {"benchmark": "permutation_sort", "rows": rows, "complete": True})


if __name__ == "__main__":
    main()
