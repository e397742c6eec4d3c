"""Float32 error of the orbit terms log q(sigma.w) - log q(w) for near-identical units (issue 12, item 5).

A 784 -> d -> 10 net (C = 795 weights per hidden unit) whose q has its hidden units in pairs of
near-identical clones: the two units of a pair have means 0.03 sigma apart per coordinate, and the
pairs sit ``spread`` sigma apart (per coordinate, standard normal times spread * sigma around a
common mean ``offset``). Swapping the two units of a pair changes log q by O(1) nats: these are the
terms that matter in the orbit sums. Each is computed in float32 by ``orbits.assignment_log_ratios``
(``method="matmul"``: the unit matrix A, as before; ``method="gather"``: the per-pair centred
differences, in the formulation ``"auto"`` picks) and by ``units.assignment_log_ratio_terms`` with
``formulation="pairs"`` (the (slot, unit) pair matrices of the same differences), and compared with a float64 reference that permutes the weights and evaluates log q
directly from the same (float32-rounded) inputs. The bound column is the error budget of the per-pair centred form,
4 eps sum_{i,c} |delta_ic| (|delta_ic| + 2 |r_ic|) / s_ic^2 with delta = x_sigma(i) - x_i and r = x - m
(see docs/estimators.md, section 2.1).

    PYTHONPATH=. python benchmarks/orbit_precision.py [--json benchmarks/results/cpu/orbit_precision.json]
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np

from symvi_jax import MLP, PermutationGroup, meanfield, orbits, units

EPS32 = float(np.finfo(np.float32).eps)

#: (name, sigma, spread in units of sigma, common offset of the means)
CASES = (
    ("sigma 1e-3, pairs 30 sigma apart, offset 0", 1e-3, 30.0, 0.0),
    ("sigma 1e-3, pairs 30 sigma apart, offset 0.5", 1e-3, 30.0, 0.5),
    ("sigma 1e-2, pairs 1000 sigma apart", 1e-2, 1000.0, 0.0),
    ("sigma 1e-3, pairs 1000 sigma apart", 1e-3, 1000.0, 0.0),
)


def clone_pairs_problem(seed: int, width: int, sigma: float, spread: float, offset: float, dtype, jitter: float = 0.03):
    """(q, w, group, swaps): q with near-identical unit pairs, one sample w, the pair transpositions."""
    model = MLP(features=(width, 10))
    params = model.init(jax.random.key(0), jnp.zeros((1, 784)))["params"]
    group = PermutationGroup.from_params(params)
    rng = np.random.default_rng(seed)

    def unit_loc(shape, axis):
        # shape with the unit axis at ``axis`` (size width): pair base + clone jitter
        pairs = list(shape)
        pairs[axis] = width // 2
        base = offset + spread * sigma * rng.standard_normal(pairs)
        base = np.repeat(base, 2, axis=axis)
        return base + jitter * sigma * rng.standard_normal(shape)

    loc = {
        "Dense_0": {"kernel": unit_loc((784, width), 1), "bias": unit_loc((width,), 0)},
        "Dense_1": {"kernel": unit_loc((width, 10), 0), "bias": rng.standard_normal(10)},
    }
    loc = jax.tree.map(lambda a: jnp.asarray(a, dtype), loc)
    q = meanfield.init(loc, init_scale=sigma)
    q = meanfield.MeanFieldState(q.loc, jax.tree.map(lambda r: r.astype(dtype), q.raw_scale))
    eps = jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape), dtype), loc)
    w = jax.tree.map(lambda m, e: m + sigma * e, q.loc, eps)
    # round every input to float32 first: the reference then measures the computation's error only
    q, w = jax.tree.map(lambda a: a.astype(jnp.float32).astype(dtype), (q, w))
    swaps = np.tile(np.arange(width), (width // 2, 1))
    for p in range(width // 2):
        swaps[p, 2 * p], swaps[p, 2 * p + 1] = 2 * p + 1, 2 * p
    return q, w, group, (jnp.asarray(swaps, jnp.int32),)


def reference(q, w, group, swaps):
    """float64 log q(sigma.w) - log q(w) by permuting the weights."""
    log_q = meanfield.log_prob(q, w)
    return jax.vmap(lambda s: meanfield.log_prob(q, group.act((s,), w)) - log_q)(swaps[0])


def difference_bound(q, w, group, swaps):
    """4 eps sum |delta| (|delta| + 2|r|) / s^2 per swap (float64), the per-pair centred form's budget."""
    x = units.unit_features(w, group, 0)
    m = units.unit_features(q.loc, group, 0)
    s = units.unit_features(meanfield.scale(q), group, 0)
    r = x - m

    def one(sig):
        delta = x[sig] - x
        return 4 * EPS32 * jnp.sum(jnp.abs(delta) * (jnp.abs(delta) + 2 * jnp.abs(r)) / s**2)

    return jax.vmap(one)(swaps[0])


def measure(width=16, seed=0, cases=CASES, methods=("matmul", "gather", "pairs")):
    """One row per case: the largest float32 error of each method and the bound (needs x64 on)."""
    if not jax.config.jax_enable_x64:
        raise ValueError("measure needs jax_enable_x64 for its float64 reference")
    rows = []
    for name, sigma, spread, offset in cases:
        q64, w64, group, swaps = clone_pairs_problem(seed, width, sigma, spread, offset, jnp.float64)
        ref = np.asarray(jax.jit(reference, static_argnums=2)(q64, w64, group, swaps))
        bound = np.asarray(jax.jit(difference_bound, static_argnums=2)(q64, w64, group, swaps))
        q32, w32 = jax.tree.map(lambda a: a.astype(jnp.float32), (q64, w64))
        row = dict(case=name, sigma=sigma, spread=spread, offset=offset, max_abs_term=float(np.max(np.abs(ref))),
                   bound=float(np.max(bound)))
        for method in methods:
            if method == "pairs":
                x, m, s = (units.unit_features(t, group, 0) for t in (w32, q32.loc, meanfield.scale(q32)))
                terms = jax.jit(units.assignment_log_ratio_terms, static_argnames="formulation")
                got = np.asarray(terms(x, m, s, swaps[0], formulation="pairs"), np.float64)
            else:
                ratios = jax.jit(orbits.assignment_log_ratios, static_argnames=("group", "method"))
                got = np.asarray(ratios(q32, w32, swaps, group, method=method), np.float64)
            row[method] = float(np.max(np.abs(got - ref)))
        rows.append(row)
    return rows


def main():
    jax.config.update("jax_enable_x64", True)
    sys.path.insert(0, "benchmarks")
    from _harness import markdown_table, parser, write_json

    p = parser(__doc__.splitlines()[0], "benchmarks/results/cpu/orbit_precision.json")
    p.add_argument("--width", type=int, default=16)
    args = p.parse_args()
    rows = measure(args.width)
    header = ["case", "max |term| (nats)", "float32 error, matmul", "float32 error, gather", "float32 error, pairs",
              "bound"]
    print(markdown_table(header, [[r["case"], f"{r['max_abs_term']:.3g}", f"{r['matmul']:.3g}", f"{r['gather']:.3g}",
                                   f"{r['pairs']:.3g}", f"{r['bound']:.3g}"] for r in rows]))
    write_json(args.json, dict(command="PYTHONPATH=. python benchmarks/orbit_precision.py", width=args.width,
                               rows=rows, complete=True))


if __name__ == "__main__":
    main()
