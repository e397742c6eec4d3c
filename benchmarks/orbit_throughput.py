"""Orbit enumeration throughput: group elements per second of the exact log q^G(w).

``orbits.symmetrized_log_prob`` sums q(g.w) over every g in G; this times it (jitted, one weight
sample) on small one- and two-hidden-layer nets, with vmap over all elements and with ``lax.map``
chunks, and reports elements per second.

    python benchmarks/orbit_throughput.py [--quick] [--json benchmarks/results/orbit_throughput.json]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from _harness import interleaved_medians, markdown_table, parser, write_json
from symvi_jax import MLP, PermutationGroup, meanfield, orbits

NETS = {"4 in, 6 hidden, 3 out": (4, (6,), 3), "4 in, 8 hidden, 3 out": (4, (8,), 3),
        "4 in, 4x4 hidden, 3 out": (4, (4, 4), 3), "784 in, 7 hidden, 10 out": (784, (7,), 10)}


def main():
    args = parser(__doc__.splitlines()[0], "benchmarks/results/orbit_throughput.json").parse_args()
    nets = dict(list(NETS.items())[:1]) if args.quick else NETS
    rows, records = [], []
    for name, (din, hidden, dout) in nets.items():
        model = MLP(features=(*hidden, dout))
        params = model.init(jax.random.key(0), jnp.zeros((1, din)))["params"]
        group = PermutationGroup.from_params(params)
        q = meanfield.init(params, init_scale=0.1)
        w = meanfield.sample(jax.random.key(1), q)
        fns = {}
        for chunk in (None, 1024):
            fn = jax.jit(lambda q, w, chunk=chunk: orbits.symmetrized_log_prob(q, w, group, chunk_size=chunk))
            fns[f"chunk={chunk}"] = (lambda fn=fn: fn(q, w))
        times = interleaved_medians(fns, repeats=args.repeats)
        for label, seconds in times.items():
            rate = group.order() / seconds
            records.append(dict(net=name, order=group.order(), mode=label, seconds=seconds, elements_per_s=rate))
            rows.append([name, group.order(), label, f"{seconds * 1e3:.2f}", f"{rate:.3g}"])
            print(rows[-1], flush=True)
            write_json(args.json, {"benchmark": "orbit_throughput", "rows": records, "complete": False})
    print(markdown_table(["net", "\\|G\\|", "map", "ms per log q^G", "elements / s"], rows))
    write_json(args.json, {"benchmark": "orbit_throughput", "rows": records, "complete": True})


if __name__ == "__main__":
    main()
