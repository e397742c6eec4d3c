"""The unit matrix A of a 784 -> d -> 10 net: unit-major features and one product, or one dot_general per block.

Issue 15 measured that building A per leaf block with ``dot_general`` (contracting each leaf over its
own non-unit axes, so no unit-major copy of a leaf is made) halved an earlier step. This times both
forms of A (value, and value with the gradient of a weighted sum with respect to q and w), jitted
and interleaved in one process. The per-block form lives here only: it did not pay on this CPU
(benchmarks/RESULTS.md, "Orbit terms").

    PYTHONPATH=.:benchmarks python benchmarks/unit_matrix_blocks.py [--width 1024] [--repeats 9]
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from _harness import interleaved_medians, markdown_table, parser, write_json
from symvi_jax import MLP, PermutationGroup, meanfield, units

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _blocks(tree):
    """(leaf, unit axis) of the hidden units' blocks: incoming kernel columns, bias, outgoing rows."""
    return [(tree["Dense_0"]["kernel"], 1), (tree["Dense_0"]["bias"], 0), (tree["Dense_1"]["kernel"], 0)]


def block_matrix(q, w):
    off = diag = const = 0.0
    for (x, axis), (loc, _), (sigma, _) in zip(_blocks(w), _blocks(q.loc), _blocks(meanfield.scale(q))):
        dims = tuple(i for i in range(x.ndim) if i != axis)
        precision = 1.0 / jnp.square(sigma)
        centre = jax.lax.stop_gradient(jnp.mean(loc, axis=axis, keepdims=True))
        u, m = x - centre, loc - centre
        off = off + jnp.tensordot(-0.5 * precision, jnp.square(u), (dims, dims)) + jnp.tensordot(
            m * precision, u, (dims, dims))
        const = const + jnp.sum(-jnp.log(sigma) - _HALF_LOG_2PI, axis=dims)
        off = off - 0.5 * jnp.sum(jnp.square(m) * precision, axis=dims)[:, None]
        diag = diag - 0.5 * jnp.sum(jnp.square(x - loc) * precision, axis=dims)
    off = off + const[:, None]
    return jnp.where(jnp.eye(off.shape[0], dtype=bool), (diag + const)[:, None], off)


def main():
    p = parser(__doc__.splitlines()[0], "benchmarks/results/cpu/unit_matrix_blocks.json")
    p.set_defaults(repeats=9)
    p.add_argument("--width", type=int, default=1024)
    args = p.parse_args()
    params = MLP(features=(args.width, 10)).init(jax.random.key(0), jnp.zeros((1, 784)))["params"]
    group = PermutationGroup.from_params(params)
    q = meanfield.init(params, init_scale=1e-2)
    w = meanfield.sample(jax.random.key(1), q)
    weights = jax.random.uniform(jax.random.key(2), (args.width, args.width))
    forms = {"unit-major features, one product": lambda q, w: units.unit_log_density_matrices(q, w, group, 0)[0],
             "one dot_general per block": block_matrix}
    fns = {}
    for name, form in forms.items():
        value = jax.jit(form)
        grad = jax.jit(jax.value_and_grad(lambda q, w, form=form: jnp.sum(weights * form(q, w)), argnums=(0, 1)))
        fns[f"{name}: value"] = lambda value=value: value(q, w)
        fns[f"{name}: value and gradient"] = lambda grad=grad: grad(q, w)
    a, b = (jax.jit(f)(q, w) for f in forms.values())
    difference = float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a)))
    times = interleaved_medians(fns, repeats=args.repeats)
    rows = [[name, f"{1e3 * t:.2f}"] for name, t in times.items()]
    print(markdown_table([f"A at d = {args.width}", "ms"], rows))
    print(f"max relative difference between the two forms: {difference:.1e}")
    write_json(args.json, dict(width=args.width, ms={n: 1e3 * t for n, t in times.items()},
                               relative_difference=difference, complete=True))


if __name__ == "__main__":
    main()
