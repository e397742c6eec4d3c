"""The orbit terms' value and gradient in three formulations, at the small widths of Table 1.

For one weight sample's units x (d, C), the slots' means m and precisions a = 1 / s^2, and K - 1
assignments p_k, the InfoNCE terms are t_k = -1/2 sum_ic a_ic delta_kic (delta_kic + 2 r_ic) with
delta_k = x[p_k] - x and r = x - m. Contenders, each a ``jax.custom_vjp`` differentiated with
respect to (x, m, s) under a fixed cotangent g (the loss sum_k g_k t_k):

* ``loop`` -- the library's ``units.assignment_log_ratio_terms``: one assignment at a time
  (``lax.map`` forward, ``lax.scan`` backward), O(K d C).
* ``pairwise`` -- the d x d matrix D[i, j] = -1/2 sum_c a_ic (x_jc - x_ic)(x_jc + x_ic - 2 m_ic)
  of every (slot, unit) pair, formed from the same differences, then t_k = sum_i D[i, p_k(i)];
  its backward pass reduces (d, d, C) arrays over i and over j. O(d^2 C), no loop over k.
* ``batched`` -- all K - 1 assignments at once: a (K - 1, d, C) array reduced over (d, C), and
  the backward pass's sums over k as contractions with g.

Each is timed as 50 value-and-gradient calls in one ``lax.scan``, interleaved with ``loop``
(medians), and its value and gradient are compared with ``loop``'s (relative max difference).

``--base REV`` times the library's loop against its own version at git revision REV instead (the
only other contender, ``base``; ``regression.import_base``), at ``--widths`` and ``--k``.

``--passes`` times the library's two formulations (``units.assignment_log_ratio_terms(...,
formulation="assignments" | "pairs")``), forward alone (evaluation) and value and gradient
(training), and gives each one's cost per pass over the (d, C) units: K - 1 passes for the
assignments, d for the pairs. Their ratio is the margin of ``formulation="auto"``'s rule
(``units._uses_pairs``).

    PYTHONPATH=.:benchmarks python benchmarks/orbit_formulations.py [--repeats 11]
    PYTHONPATH=.:benchmarks python benchmarks/orbit_formulations.py --base f948f53 --widths 5 10 30 1024 --k 20
    PYTHONPATH=.:benchmarks python benchmarks/orbit_formulations.py --passes --widths 10 20 30 --k 20
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp

from _harness import interleaved_medians, markdown_table, parser, write_json
from regression import import_base
from symvi_jax import units

NUM_FEATURES = 795  # a 784-d-10 net's unit: 784 incoming weights, a bias, 10 outgoing weights
REPS = 50


@jax.custom_vjp
def _pair_matrix(x, loc, a):
    delta = x[None, :, :] - x[:, None, :]  # (slot i, unit j, c)
    return -0.5 * jnp.sum(a[:, None, :] * delta * (delta + 2.0 * (x - loc)[:, None, :]), axis=2)


def _pair_fwd(x, loc, a):
    return _pair_matrix(x, loc, a), (x, loc, a)


def _pair_bwd(res, cot):
    # dD[i,j]/dx_j = -a_i (x_j - m_i), dD[i,j]/dx_i = a_i r_i, dD[i,j]/dm_i = a_i delta_ij,
    # dD[i,j]/da_i = -delta_ij (delta_ij + 2 r_i) / 2
    x, loc, a = res
    r = x - loc
    d_x = -jnp.sum(cot[:, :, None] * a[:, None, :] * (x[None, :, :] - loc[:, None, :]), axis=0)
    d_x = d_x + a * r * jnp.sum(cot, axis=1)[:, None]
    weighted = cot[:, :, None] * (x[None, :, :] - x[:, None, :])
    d_m = a * jnp.sum(weighted, axis=1)
    d_a = -0.5 * jnp.sum(weighted * ((x[None, :, :] - x[:, None, :]) + 2.0 * r[:, None, :]), axis=1)
    return d_x, d_m, d_a


_pair_matrix.defvjp(_pair_fwd, _pair_bwd)


def pairwise_terms(x, loc, sigma, p):
    matrix = _pair_matrix(x, loc, 1.0 / jnp.square(sigma))
    return jnp.sum(matrix[jnp.arange(p.shape[1])[None, :], p], axis=1)


@jax.custom_vjp
def _batched(x, loc, a, p):
    delta = x[p] - x  # (K - 1, d, C)
    return -0.5 * jnp.sum(a * delta * (delta + 2.0 * (x - loc)), axis=(1, 2))


def _batched_fwd(x, loc, a, p):
    return _batched(x, loc, a, p), (x, loc, a, p)


def _batched_bwd(res, g):  # the loop's backward pass (units._paired_ratios_bwd) with every k at once
    x, loc, a, p = res
    inv = units._inverse_rows(p)
    r = x - loc
    delta = x[p] - x
    back = a[inv] * (x - loc[inv])
    d1 = jnp.einsum("k,kdc->dc", g, delta)
    d_x = -jnp.einsum("k,kdc->dc", g, back) + a * r * jnp.sum(g)
    return d_x, a * d1, -0.5 * jnp.einsum("k,kdc->dc", g, jnp.square(delta)) - r * d1, None


_batched.defvjp(_batched_fwd, _batched_bwd)


def batched_terms(x, loc, sigma, p):
    return _batched(x, loc, 1.0 / jnp.square(sigma), p)


CONTENDERS = {"loop": units.assignment_log_ratio_terms, "pairwise": pairwise_terms, "batched": batched_terms}


def problem(width: int, k: int):
    kx, km, ks, kp, kg = jax.random.split(jax.random.key(0), 5)
    x = jax.random.normal(kx, (width, NUM_FEATURES))
    loc = x + 0.1 * jax.random.normal(km, x.shape)
    sigma = 0.5 + jax.random.uniform(ks, x.shape)
    p = jax.vmap(lambda key: jax.random.permutation(key, width))(jax.random.split(kp, k - 1))
    return (x, loc, sigma), p, jax.random.normal(kg, (k - 1,))


def programs(terms, p, g):
    def loss(x, loc, sigma):
        return jnp.sum(g * terms(x, loc, sigma, p))

    value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))

    @jax.jit
    def repeated(x, loc, sigma):
        def body(carry, _):
            value, grads = jax.value_and_grad(loss, argnums=(0, 1, 2))(x + carry * 1e-9, loc, sigma)
            return carry + 1e-12 * (value + jnp.sum(grads[0])), None
        return jax.lax.scan(body, 0.0, None, length=REPS)[0]

    return value_and_grad, repeated


def passes(args, widths):
    """Both formulations, forced, forward alone and value and gradient, per pass (``--passes``)."""
    records, rows = [], []
    formulations = ("assignments", "pairs")
    for width in widths:
        inputs, perms, g = problem(width, args.k)
        runs = {}
        for f in formulations:
            def terms(x, loc, sigma, p, f=f):
                return units.assignment_log_ratio_terms(x, loc, sigma, p, formulation=f)

            def forward(x, loc, sigma, terms=terms):
                return jax.lax.scan(lambda c, _: (c + 1e-12 * jnp.sum(terms(x + c * 1e-9, loc, sigma, perms)), None),
                                    0.0, None, length=REPS)[0]

            runs[(f, "forward")] = jax.jit(forward)
            runs[(f, "value and gradient")] = programs(terms, perms, g)[1]
        times = interleaved_medians({f"{f}, {w}": (lambda run=run: run(*inputs).block_until_ready())
                                     for (f, w), run in runs.items()}, repeats=3 if args.quick else args.repeats)
        for what in ("forward", "value and gradient"):
            us = {f: 1e6 * times[f"{f}, {what}"] / REPS for f in formulations}
            per_pass = {"assignments": us["assignments"] / (args.k - 1), "pairs": us["pairs"] / width}
            record = dict(width=width, K=args.k, what=what, assignments_us=us["assignments"], pairs_us=us["pairs"],
                          assignments_us_per_pass=per_pass["assignments"], pairs_us_per_pass=per_pass["pairs"],
                          ratio=us["pairs"] / us["assignments"],
                          pass_ratio=per_pass["pairs"] / per_pass["assignments"])
            records.append(record)
            rows.append([width, args.k, what, f"{us['assignments']:.0f}", f"{us['pairs']:.0f}",
                         f"{record['ratio']:.2f}", f"{per_pass['assignments']:.1f}", f"{per_pass['pairs']:.1f}",
                         f"{record['pass_ratio']:.2f}"])
            print(rows[-1], flush=True)
    print(markdown_table(["d", "K", "what", "assignments us", "pairs us", "pairs / assignments", "us per assignment",
                          "us per slot", "per pass, pairs / assignments"], rows))
    write_json(args.json, {"benchmark": "orbit_formulations --passes", "rows": records, "complete": True})


def main():
    p = parser(__doc__.splitlines()[0], "benchmarks/results/cpu/orbit_formulations.json")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--widths", type=int, nargs="+", default=None)
    p.add_argument("--base", default=None, help="time the loop against the library at this git revision")
    p.add_argument("--passes", action="store_true", help="forward and backward of the two formulations, per pass")
    args = p.parse_args()
    widths = args.widths or ((5, 30) if args.quick else (5, 10, 20, 30, 64))
    if args.passes:
        return passes(args, widths)
    contenders = dict(CONTENDERS)
    if args.base is not None:
        base = import_base(args.base, Path(tempfile.mkdtemp()))
        contenders = {"loop": units.assignment_log_ratio_terms, "base": base.units.assignment_log_ratio_terms}
    records, rows = [], []
    for width in widths:
        inputs, perms, g = problem(width, args.k)
        built = {name: programs(fn, perms, g) for name, fn in contenders.items()}
        value0, grads0 = built["loop"][0](*inputs)
        times = interleaved_medians({name: (lambda run=run: run(*inputs)) for name, (_, run) in built.items()},
                                    repeats=3 if args.quick else args.repeats)
        for name in (n for n in contenders if n != "loop"):
            value, grads = built[name][0](*inputs)
            value_err = float(jnp.abs(value - value0) / jnp.abs(value0))
            grad_err = max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b))) for a, b in zip(grads, grads0))
            record = dict(width=width, K=args.k, contender=name, loop_us=1e6 * times["loop"] / REPS,
                          contender_us=1e6 * times[name] / REPS, ratio=times[name] / times["loop"],
                          value_rel_diff=value_err, grad_rel_diff=grad_err)
            records.append(record)
            rows.append([width, args.k, name, f"{record['loop_us']:.0f}", f"{record['contender_us']:.0f}",
                         f"{record['ratio']:.2f}", f"{value_err:.1e}", f"{grad_err:.1e}"])
            print(rows[-1], flush=True)
        write_json(args.json, {"benchmark": "orbit_formulations", "rows": records, "complete": False})
    print(markdown_table(["d", "K", "contender", "loop us", "contender us", "contender / loop",
                          "value rel. diff", "gradient rel. diff"], rows))
    write_json(args.json, {"benchmark": "orbit_formulations", "rows": records, "complete": True})


if __name__ == "__main__":
    main()
