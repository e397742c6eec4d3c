"""The K - 1 orbit terms of one hidden layer, value and gradient: unit matrix against per-pair gathers.

log q(sigma_k.w) - log q(w) restricted to one factor's units (d units of C = 795 weights, the
784 -> d -> 10 net) and its gradient with respect to the units, the means and the scales, for
K - 1 random assignments, computed

* ``unit matrix``: from A by one (d x 2C) x (2C x d) matrix product (``method="matmul"``, the path before);
* ``gather, loop``: per-pair centred differences of the gathered rows, one assignment at a time
  (``lax.map`` forward, ``lax.scan`` backward with four (d, C) accumulators and gathers by the
  inverse permutations; ``units._paired_ratios``, the default ``method="gather"``);
* ``gather, vectorised``: the same formula for all K - 1 at once with plain autodiff (measured, dropped).

All three run jitted and interleaved in one process; the last columns check that they agree.

    PYTHONPATH=.:benchmarks python benchmarks/orbit_terms.py [--widths 30 1024] [--ks 20 64] [--repeats 10]
        [--json benchmarks/results/cpu/orbit_terms.json]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from _harness import interleaved_medians, markdown_table, parser, write_json
from symvi_jax import units


def _matmul(x, loc, sigma, p):
    a = units.log_density_matrix(x, loc, sigma)
    return jnp.sum((a - jnp.diag(a)[:, None])[jnp.arange(a.shape[0]), p], axis=-1)


def _gather(impl):
    def ratios(x, loc, sigma, p):
        return impl(x, loc, 1.0 / jnp.square(sigma), p, jnp.ones(p.shape, x.dtype))
    return ratios


def _vectorised(x, loc, precision, p, s):
    """All K - 1 assignments at once, plain autodiff (scatter-add backward): measured and dropped."""
    r = x - loc
    delta = s[:, :, None] * x[p] - x[None]
    return -0.5 * jnp.sum(precision[None] * delta * (delta + 2.0 * r[None]), axis=(1, 2))


METHODS = {"unit matrix": _matmul, "gather, loop, hand-written VJP": _gather(units._paired_ratios),
           "gather, vectorised, autodiff": _gather(_vectorised)}


def rows_for(width, k, repeats, features=795):
    keys = jax.random.split(jax.random.key(0), 5)
    loc = 0.1 * jax.random.normal(keys[0], (width, features))
    sigma = 0.05 + 0.1 * jax.random.uniform(keys[1], (width, features))
    x = loc + sigma * jax.random.normal(keys[2], (width, features))
    p = jax.vmap(lambda kk: jax.random.permutation(kk, width))(jax.random.split(keys[3], k - 1)).astype(jnp.int32)
    weights = jax.random.uniform(keys[4], (k - 1,))
    fns, results = {}, {}
    for name, ratios in METHODS.items():
        def loss(x, loc, sigma, ratios=ratios):
            return jnp.sum(weights * ratios(x, loc, sigma, p))
        fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
        results[name] = fn(x, loc, sigma)
        fns[name] = lambda fn=fn: fn(x, loc, sigma)
    times = interleaved_medians(fns, repeats=repeats)
    v_ref, g_ref = results["unit matrix"]
    out = []
    for name, seconds in times.items():
        v, g = results[name]
        out.append(dict(width=width, K=k, method=name, seconds=seconds,
                        value_relative_difference=float(abs(v - v_ref) / abs(v_ref)),
                        gradient_relative_difference=max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
                                                         for a, b in zip(g, g_ref))))
    return out


def main():
    p = parser(__doc__.splitlines()[0], "benchmarks/results/cpu/orbit_terms.json")
    p.set_defaults(repeats=10)
    p.add_argument("--widths", nargs="+", type=int, default=[30, 1024])
    p.add_argument("--ks", nargs="+", type=int, default=[20, 64])
    args = p.parse_args()
    records = []
    for width in args.widths:
        for k in args.ks:
            records += rows_for(width, k, args.repeats)
            for r in records[-len(METHODS):]:
                print(r, flush=True)
            write_json(args.json, {"benchmark": "orbit_terms", "rows": records, "complete": False})
    print(markdown_table(["width", "K", "orbit terms, value and gradient", "ms", "value rel. diff", "grad rel. diff"],
                         [[r["width"], r["K"], r["method"], f"{r['seconds'] * 1e3:.2f}",
                           f"{r['value_relative_difference']:.1e}", f"{r['gradient_relative_difference']:.1e}"]
                          for r in records]))
    write_json(args.json, {"benchmark": "orbit_terms", "rows": records, "complete": True})


if __name__ == "__main__":
    main()
