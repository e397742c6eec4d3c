"""What one assignment of the orbit terms' forward loop costs on XLA:CPU, piece by piece.

For units x (d, C), r = x - m and precisions a, the loop runs K - 1 bodies
t_k = -1/2 sum_ic a_ic delta_kic (delta_kic + 2 r_ic), delta_k = x[p_k] - x (``lax.map``). Contenders,
each a whole loop, timed interleaved (medians) and reported per body:

* ``empty`` -- a body that returns a scalar of p_k: the loop's own overhead;
* ``reduce`` -- the body with ``jnp.sum`` (the library before f43c7fd);
* ``dot_ones`` -- the same with the sum over c as a product with ones (``units._row_sums``, f43c7fd);
* ``no_gather`` -- ``dot_ones`` with x in place of x[p_k]: what the row gather costs;
* ``gather_only`` -- the row gather x[p_k] and a product with ones, nothing else.

    PYTHONPATH=.:benchmarks python benchmarks/loop_body_costs.py [--widths 30 1024] [--k 20] [--repeats 15]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from _harness import interleaved_medians, markdown_table, parser, write_json
from symvi_jax.units import _row_sums

NUM_FEATURES = 795  # a 784-d-10 net's unit

BODIES = {
    "empty": lambda x, r, a, pk: pk[0].astype(x.dtype),
    "reduce": lambda x, r, a, pk: -0.5 * jnp.sum(a * (x[pk] - x) * ((x[pk] - x) + 2.0 * r)),
    "dot_ones": lambda x, r, a, pk: -0.5 * jnp.sum(_row_sums(a * (x[pk] - x) * ((x[pk] - x) + 2.0 * r))),
    "no_gather": lambda x, r, a, pk: -0.5 * jnp.sum(_row_sums(a * (x * 1.5 - x) * ((x * 1.5 - x) + 2.0 * r))),
    "gather_only": lambda x, r, a, pk: jnp.sum(_row_sums(x[pk])),
}


def main():
    p = parser(__doc__.splitlines()[0], "benchmarks/results/cpu/loop_body_costs.json")
    p.add_argument("--widths", type=int, nargs="+", default=[5, 30, 1024])
    p.add_argument("--k", type=int, default=20)
    args = p.parse_args()
    records, rows = [], []
    for d in args.widths:
        kx, kr, ka, kp = jax.random.split(jax.random.key(0), 4)
        x = jax.random.normal(kx, (d, NUM_FEATURES))
        r = 0.1 * jax.random.normal(kr, x.shape)
        a = 1.0 + jax.random.uniform(ka, x.shape)
        perms = jax.vmap(lambda key: jax.random.permutation(key, d))(jax.random.split(kp, args.k - 1))
        loops = {name: jax.jit(lambda x, r, a, perms, body=body: jax.lax.map(lambda pk: body(x, r, a, pk), perms))
                 for name, body in BODIES.items()}
        times = interleaved_medians({n: (lambda f=f: f(x, r, a, perms)) for n, f in loops.items()},
                                    repeats=3 if args.quick else args.repeats)
        for name, seconds in times.items():
            per_body = 1e6 * seconds / (args.k - 1)
            records.append(dict(width=d, K=args.k, body=name, us_per_body=per_body,
                                ns_per_element=1e3 * per_body / (d * NUM_FEATURES)))
            rows.append([d, args.k, name, f"{per_body:.2f}", f"{1e3 * per_body / (d * NUM_FEATURES):.3f}"])
        write_json(args.json, {"benchmark": "loop_body_costs", "rows": records, "complete": False})
    print(markdown_table(["d", "K", "body", "us per body", "ns per element"], rows))
    write_json(args.json, {"benchmark": "loop_body_costs", "rows": records, "complete": True})


if __name__ == "__main__":
    main()
