"""The orbit terms' forward loop: one or two assignments per pass over the ``(d, C)`` units.

``units._forward_terms(x, loc, a, p, s, per_pass)`` computes t_k = -1/2 sum a delta_k (delta_k + 2r)
one assignment per ``lax.map`` step, or two (x, loc and a read once for both). The library takes two
per pass from d = 512 on (``units._two_per_pass``). Random units (C = 795, MNIST's 784 inputs + bias
+ 10 outputs), the K - 1 assignments of ``K``, jitted forward only, interleaved medians; ``equal``
says whether the two give the same terms bit for bit.

    PYTHONPATH=.:benchmarks python benchmarks/orbit_passes.py [--repeats 15]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from _harness import interleaved_medians, markdown_table, parser, write_json
from symvi_jax import units

C = 795
CELLS = ((30, 20), (100, 20), (256, 20), (256, 64), (512, 64), (1024, 20), (1024, 64))


def main():
    p = parser(__doc__.splitlines()[0], "benchmarks/results/cpu/orbit_passes.json")
    args = p.parse_args()
    fns = {n: jax.jit(lambda x, loc, a, p, s, n=n: units._forward_terms(x, loc, a, p, s, n)) for n in (1, 2)}
    rows = []
    for d, k in CELLS:
        keys = jax.random.split(jax.random.key(d * k), 4)
        x = jax.random.normal(keys[0], (d, C))
        loc = x + 0.1 * jax.random.normal(keys[1], (d, C))
        a = 1.0 / jnp.square(0.5 + jax.random.uniform(keys[2], (d, C)))
        perms = jax.vmap(lambda key: jax.random.permutation(key, d))(jax.random.split(keys[3], k - 1))
        args_ = (x, loc, a, perms.astype(jnp.int32), jnp.ones(perms.shape))
        one, two = (np.asarray(fns[n](*args_)) for n in (1, 2))
        t = interleaved_medians({n: (lambda n=n: fns[n](*args_)) for n in (1, 2)}, repeats=args.repeats)
        rows.append(dict(d=d, K=k, one_ms=1e3 * t[1], two_ms=1e3 * t[2], ratio=t[2] / t[1],
                         equal=bool(np.array_equal(one, two)),
                         max_rel=float(np.max(np.abs(one - two) / np.abs(one)))))
    print(markdown_table(["d", "K", "one per pass ms", "two per pass ms", "two / one", "equal", "max rel diff"],
                         [[r["d"], r["K"], f"{r['one_ms']:.3f}", f"{r['two_ms']:.3f}", f"{r['ratio']:.3f}",
                           "yes" if r["equal"] else "no", f"{r['max_rel']:.1e}"] for r in rows]))
    write_json(args.json, {"benchmark": "orbit_passes", "rows": rows, "complete": True})


if __name__ == "__main__":
    main()
