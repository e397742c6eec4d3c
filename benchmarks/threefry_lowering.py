"""The threefry hash's CPU lowering in issue 15's loops: jax's loop, unrolled, and ``prng``'s kept conditional.

Each program of (a) (2000 scanned MFVI steps, 2-16-2 tanh) and (b) (one epoch of ``vi.run``,
784-30-10, batch 100, standard and symmetrized), built from the package at ``--base`` (default
4f0b44f, before ``symvi_jax/prng.py``: every draw there binds jax's primitive), is compiled three
times with jax's CPU lowering of ``threefry2x32`` replaced for that compilation: ``rolled`` (jax's
five-iteration loop), ``unrolled`` (jax's own unrolled lowering, the GPU default, registered for the
CPU) and ``kept`` (the unrolled rounds behind a conditional that always takes them, what ``prng``
does for unbatched calls). The outputs are compared bit for bit. Registering a lowering is
process-wide: a probe of why ``prng`` keeps the conditional, not a lever.

    PYTHONPATH=.:benchmarks python benchmarks/threefry_lowering.py --repeats 9 [--base 4f0b44f]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import jax
import numpy as np
from jax._src.interpreters import mlir
from jax._src.random import threefry2x32 as jax_threefry

from _harness import interleaved_medians, markdown_table, parser, write_json
from before_after import epoch, small_mfvi
from regression import import_base
from symvi_jax import prng


RULES = {"rolled": jax_threefry._threefry2x32_cpu_lowering_rule,
         "unrolled": jax_threefry._threefry2x32_lowering_rule,
         "kept": mlir.lower_fun(prng._kept_rounds, multiple_results=True)}  # the library's own


def main():
    p = parser(__doc__.splitlines()[0], "benchmarks/results/cpu/threefry_lowering.json")
    p.add_argument("--base", default="4f0b44f", help="the revision whose programs are compiled")
    args = p.parse_args()
    makers = {"(a) MFVI, 2000 steps": small_mfvi,
              "(b) standard, 300 steps": lambda pkg: epoch(pkg, "elbo"),
              "(b) symmetrized, 300 steps": lambda pkg: epoch(pkg, "symmetrized_elbo")}
    contenders, equal = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        base = import_base(args.base, Path(tmp))
        try:
            for name, make in makers.items():
                outs = []
                for mode, rule in RULES.items():
                    mlir.register_lowering(jax_threefry.threefry2x32_p, rule, platform="cpu")
                    contenders[(name, mode)] = make(base)
                    outs.append(jax.device_get(contenders[(name, mode)]()))
                equal[name] = all(np.array_equal(a, b) for o in outs[1:]
                                  for a, b in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(o)))
        finally:
            mlir.register_lowering(jax_threefry.threefry2x32_p, RULES["rolled"], platform="cpu")
        times = interleaved_medians(contenders, repeats=3 if args.quick else args.repeats)
    records = [dict(program=name, **{f"{m}_s": times[(name, m)] for m in RULES}, bitwise_equal=equal[name])
               for name in makers]
    print(markdown_table(["program", "rolled ms", "unrolled / rolled", "kept / rolled", "outputs bitwise equal"],
                         [[r["program"], f"{1e3 * r['rolled_s']:.1f}", f"{r['unrolled_s'] / r['rolled_s']:.3f}",
                           f"{r['kept_s'] / r['rolled_s']:.3f}", "yes" if r["bitwise_equal"] else "no"]
                          for r in records]))
    write_json(args.json, {"benchmark": "threefry_lowering", "base": args.base, "rows": records, "complete": True})


if __name__ == "__main__":
    main()
