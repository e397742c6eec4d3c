"""Levers measured and dropped: other PRNG implementations, and gathers instead of unit matrices.

1. PRNG: drawing the weight noise of a 784 -> 1024 -> 10 net (814k normals) with ``threefry``
   (JAX's default), ``rbg`` and ``unsafe_rbg`` keys, each jitted, interleaved.
2. Orbit terms: the K - 1 log-ratios log q(sigma_k.w) - log q(w) of one hidden layer's units and
   their gradient, computed (a) from the d x d unit matrix A by one matrix product (what
   ``orbits.assignment_log_ratios`` does, via ``permanent._density_matrix``), and (b) by gathering
   the K - 1 permuted unit rows, with a custom VJP that gathers the cotangent by the inverse
   permutation instead of scattering it. Both give the same values and gradients (checked here).

    PYTHONPATH=.:benchmarks python benchmarks/alternatives.py [--repeats 7] [--json ...]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from _harness import interleaved_medians, markdown_table, parser, write_json
from symvi_jax import permanent


def prng_rows(repeats):
    shape_in, shape_out = (784, 1024), (1024, 10)
    fns = {}
    for impl in ("threefry2x32", "rbg", "unsafe_rbg"):
        key = jax.random.key(0, impl=impl)
        draw = jax.jit(lambda k: (jax.random.normal(jax.random.fold_in(k, 0), shape_in),
                                  jax.random.normal(jax.random.fold_in(k, 1), shape_out)))
        fns[impl] = lambda draw=draw, key=key: draw(key)
    times = interleaved_medians(fns, repeats=repeats)
    base = times["threefry2x32"]
    return [dict(impl=k, seconds=v, ratio_to_threefry=v / base) for k, v in times.items()]


@jax.custom_vjp
def _permute_rows(x, sigma):
    return x[sigma]


def _permute_rows_fwd(x, sigma):
    return x[sigma], sigma


def _permute_rows_bwd(sigma, cotangent):
    inverse = jnp.argsort(sigma, axis=-1)
    return jnp.sum(jax.vmap(lambda c, i: c[i])(cotangent, inverse), axis=0), None


_permute_rows.defvjp(_permute_rows_fwd, _permute_rows_bwd)


def _ratios_matmul(x, loc, scale, sigma):
    a = permanent._density_matrix(x, loc, scale)
    delta = a - jnp.diag(a)[:, None]
    return jnp.sum(delta[jnp.arange(a.shape[0]), sigma], axis=-1)


def _ratios_gather(x, loc, scale, sigma):
    precision = 1.0 / jnp.square(scale)
    base = jnp.sum(jnp.square(x - loc) * precision)
    return -0.5 * (jnp.sum(jnp.square(_permute_rows(x, sigma) - loc) * precision, axis=(1, 2)) - base)


def orbit_rows(repeats, width=1024, features=795, ks=(20, 64)):
    keys = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(keys[0], (width, features))
    loc = x + 0.1 * jax.random.normal(keys[1], (width, features))
    scale = 0.5 + jax.random.uniform(keys[2], (width, features))
    rows = []
    for k in ks:
        sigma = jax.vmap(lambda kk: jax.random.permutation(kk, width))(jax.random.split(keys[3], k - 1))
        weights = jax.random.uniform(jax.random.fold_in(keys[3], k), (k - 1,))  # any cotangent will do
        fns, results = {}, {}
        for name, ratios in (("unit matrix", _ratios_matmul), ("gather, inverse-permutation VJP", _ratios_gather)):
            def loss(x, loc, scale, ratios=ratios):
                return jnp.sum(weights * ratios(x, loc, scale, sigma))
            fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
            results[name] = fn(x, loc, scale)
            fns[name] = lambda fn=fn: fn(x, loc, scale)
        (v_a, g_a), (v_b, g_b) = results.values()
        gradient_error = max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a))) for a, b in zip(g_a, g_b))
        times = interleaved_medians(fns, repeats=repeats)
        for name, seconds in times.items():
            rows.append(dict(width=width, K=k, method=name, seconds=seconds,
                             value_relative_difference=float(abs(v_a - v_b) / abs(v_a)),
                             gradient_relative_error=gradient_error))
    return rows


def main():
    p = parser(__doc__.splitlines()[0], "benchmarks/results/alternatives.json")
    p.set_defaults(repeats=7)
    args = p.parse_args()
    prng = prng_rows(args.repeats)
    print(markdown_table(["PRNG", "ms for 814k normals", "ratio to threefry"],
                         [[r["impl"], f"{r['seconds'] * 1e3:.2f}", f"{r['ratio_to_threefry']:.2f}"] for r in prng]))
    orbit = orbit_rows(args.repeats, ks=(20,) if args.quick else (20, 64))
    print()
    print(markdown_table(["width", "K", "orbit terms, value and gradient", "ms", "max rel. gradient difference"],
                         [[r["width"], r["K"], r["method"], f"{r['seconds'] * 1e3:.1f}",
                           f"{r['gradient_relative_error']:.1e}"] for r in orbit]))
    write_json(args.json, {"benchmark": "alternatives", "prng": prng, "orbit_terms": orbit, "complete": True})


if __name__ == "__main__":
    main()
